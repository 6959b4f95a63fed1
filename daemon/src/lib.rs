//! tokendealerd: an OAuth 2.0 client-credentials token service.
//!
//! The daemon in three steps, each usable on its own (tests bind `127.0.0.1:0` and a socket
//! in a temp dir, and never sleep):
//!
//! 1. [`load`]: keys and clients from disk, every problem reported before anything listens;
//! 2. [`Listeners::from_env_or_bind`]: the HTTP port and the admin socket, passed by
//!    systemd or bound here;
//! 3. [`run`]: serve until the `shutdown` future completes, then drain and clean up.

pub mod admin;
pub mod changes;
pub mod clients;
pub mod config;
pub mod fsio;
pub mod http;
pub mod keys;
pub mod local;
pub mod stats;
pub mod systemd;
pub mod throttle;
pub mod watch;

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokendealer_shared::admin::ReloadOutcome;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

use crate::{
    clients::ClientsStore,
    config::Config,
    keys::{KeyManager, KeySettings, KeyStore},
};

/// Why the daemon could not start. [`StartError::is_config`] errors exit with `EX_CONFIG`.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Keys(#[from] keys::KeyStoreError),
    #[error(transparent)]
    Clients(#[from] clients::LoadError),
    #[error(
        "cannot listen on {addr}: {source} (is another tokendealerd running? set `listen` in the config or pass --listen)"
    )]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Admin(#[from] admin::BindError),
    #[error("cannot use a socket passed by the service manager: {source}")]
    Inherit {
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Tls(#[from] http::tls::TlsError),
    #[error("key loading was interrupted")]
    Interrupted,
}

impl StartError {
    /// Whether this is a problem with configuration or data the admin must fix.
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Keys(_) | Self::Clients(_) | Self::Tls(_))
    }
}

/// What the daemon serves with, read from disk.
#[derive(Debug)]
pub struct Loaded {
    config: Config,
    keys: KeyManager,
    clients: ClientsStore,
    tls: Option<http::tls::Tls>,
}

fn key_settings(config: &Config) -> KeySettings {
    KeySettings {
        alg: config.algorithm,
        bits: config.rsa_bits,
        jwks_max_age: config.jwks_max_age,
        rotate_every: config.rotate_every,
    }
}

/// The longest lifetime a token may have been issued with since start-up: the config's, or
/// a client's, including one the clients file has shortened since.
fn longest_ttl(clients: &ClientsStore, token_ttl: Duration) -> Duration {
    clients
        .longest_ttl_served()
        .map_or(token_ttl, |served| served.max(token_ttl))
}

/// [`State::note_longest_ttl`], for callers holding the parts.
pub(crate) fn note_longest_ttl(keys: &KeyManager, clients: &ClientsStore, token_ttl: Duration) {
    if let Err(e) = keys.note_longest_ttl(longest_ttl(clients, token_ttl)) {
        tracing::error!(error = %e, "the longest token lifetime could not be recorded with the active key; key upkeep retries");
    }
}

/// Reads (on first use: creates) the signing keys, and reads the clients file and the TLS
/// certificate.
pub async fn load(config: Config) -> Result<Loaded, StartError> {
    let tls = config.tls.as_ref().map(http::tls::Tls::load).transpose()?;
    let (dir, settings) = (config.key_dir.clone(), key_settings(&config));
    // Key generation takes a while (RSA 4096: seconds); keep it off the reactor.
    let keys =
        tokio::task::spawn_blocking(move || KeyManager::open(KeyStore::open(&dir)?, settings))
            .await
            .map_err(|_| StartError::Interrupted)??;
    let (clients_file, token_ttl) = (config.clients_file.clone(), config.token_ttl);
    let (keys, clients) = tokio::task::spawn_blocking(move || {
        let clients = ClientsStore::open(&clients_file)?;
        note_longest_ttl(&keys, &clients, token_ttl);
        Ok::<_, StartError>((keys, clients))
    })
    .await
    .map_err(|_| StartError::Interrupted)??;
    Ok(Loaded {
        config,
        keys,
        clients,
        tls,
    })
}

/// The daemon's two listening sockets.
#[derive(Debug)]
pub struct Listeners {
    pub http: TcpListener,
    pub admin: UnixListener,
    /// The admin socket came from the service manager, which also removes it.
    pub admin_inherited: bool,
    /// Where the admin socket is: the configured path, or the passed socket's own path,
    /// which the unit's `ListenStream=` chose and the config need not repeat.
    pub admin_path: PathBuf,
}

impl Listeners {
    /// Takes the sockets systemd passed (`LISTEN_FDS`, named `http` and `admin` by
    /// `FileDescriptorName=`, or told apart by type when unnamed) and binds whichever is
    /// missing itself.
    pub fn from_env_or_bind(config: &Config) -> Result<Self, StartError> {
        let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .map(|n| n.split(':').map(str::to_owned).collect())
            .unwrap_or_default();
        Self::inherit_or_bind(config, listenfd::ListenFd::from_env(), &names)
    }

    fn inherit_or_bind(
        config: &Config,
        mut fds: listenfd::ListenFd,
        names: &[String],
    ) -> Result<Self, StartError> {
        let inherit_err = |source| StartError::Inherit { source };
        let (mut http, mut admin) = (None, None);
        for i in 0..fds.len() {
            match names.get(i).map(String::as_str) {
                Some("http") => http = fds.take_tcp_listener(i).map_err(inherit_err)?,
                Some("admin") => admin = fds.take_unix_listener(i).map_err(inherit_err)?,
                // Unnamed (or named otherwise): a TCP socket is HTTP, a Unix one admin.
                name => {
                    if let Ok(Some(l)) = fds.take_tcp_listener(i) {
                        http = Some(l);
                    } else if let Ok(Some(l)) = fds.take_unix_listener(i) {
                        admin = Some(l);
                    } else {
                        tracing::warn!(
                            fd = i + 3,
                            ?name,
                            "ignoring a passed file descriptor that is neither a TCP nor a Unix stream listener"
                        );
                    }
                }
            }
        }
        let http = match http {
            Some(l) => {
                tracing::info!(addr = ?l.local_addr().ok(), "using the HTTP socket passed by the service manager; `listen` is ignored");
                l.set_nonblocking(true).map_err(inherit_err)?;
                TcpListener::from_std(l).map_err(inherit_err)?
            }
            None => {
                let std = std::net::TcpListener::bind(config.listen).map_err(|source| {
                    StartError::Listen {
                        addr: config.listen,
                        source,
                    }
                })?;
                std.set_nonblocking(true).map_err(inherit_err)?;
                TcpListener::from_std(std).map_err(inherit_err)?
            }
        };
        let admin_inherited = admin.is_some();
        let (admin, admin_path) = match admin {
            Some(l) => {
                l.set_nonblocking(true).map_err(inherit_err)?;
                let l = UnixListener::from_std(l).map_err(inherit_err)?;
                // An abstract or unnamed socket has no path; the config's is then the best
                // description there is.
                let path = l
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(Path::to_path_buf))
                    .unwrap_or_else(|| config.admin_socket.clone());
                tracing::info!(path = %path.display(), "using the admin socket passed by the service manager");
                (l, path)
            }
            None => (
                admin::bind(&config.admin_socket)?,
                config.admin_socket.clone(),
            ),
        };
        Ok(Self {
            http,
            admin,
            admin_inherited,
            admin_path,
        })
    }
}

/// Shared state of a running daemon. Readers on the hot path only `load()` the swapped
/// snapshots; nothing here is locked per request.
#[derive(Debug)]
pub struct State {
    /// The config the daemon started with; a reload applies only its key settings, TLS
    /// files and admin access lists, kept apart below.
    pub config: Config,
    /// Who may use the admin socket besides root and the daemon's own user: the config's
    /// lists as last loaded, so that a reload takes someone's access away at once.
    pub admin_access: ArcSwap<AdminAccess>,
    /// The latest changes to clients and keys, for `status` and the dashboard.
    pub changes: changes::Changes,
    /// The last reload's failure to apply the config file, if the last reload failed so.
    config_failure: std::sync::Mutex<Option<(ReloadOutcome, u64)>>,
    /// Held by the reload running (SIGHUP and `tokendealer reload` may overlap).
    reloading: std::sync::Mutex<()>,
    pub issuer: String,
    pub default_audience: String,
    pub token_ttl: Duration,
    pub listen: SocketAddr,
    pub admin_socket: PathBuf,
    /// Where a socket bound again at `admin_socket` goes; `None` when systemd passed it.
    admin_rebind: Option<tokio::sync::mpsc::UnboundedSender<UnixListener>>,
    pub clients: Arc<ClientsStore>,
    pub keys: Arc<KeyManager>,
    pub stats: Arc<stats::Stats>,
    pub throttle: Arc<throttle::Throttle>,
    /// The HTTP listener's TLS settings; `None` serves plain HTTP.
    pub tls: Option<http::tls::Tls>,
    pub conns: http::conn::ConnStats,
    pub started: Instant,
    /// Reloads running now (SIGHUP and `tokendealer reload` may overlap): systemd hears
    /// RELOADING=1 when the first starts and READY=1 when the last ends.
    reloads_running: std::sync::atomic::AtomicUsize,
    metadata: Bytes,
    /// The RFC 8414 §3.1 path of the metadata, for an issuer with a path.
    metadata_path: Option<Box<str>>,
    /// The issuer's path, if it has one: the endpoints are served under it too.
    issuer_path: Option<Box<str>>,
}

/// The uids and gids (`admin_gids` and the resolved `admin_groups`) that may administer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAccess {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
    /// The `admin_groups` names with the gid each stands for in `gids`.
    pub groups: Vec<(String, u32)>,
}

impl AdminAccess {
    /// The lists of `config`; a group name it could not resolve keeps the gid it had in
    /// `previous`, if any (a name not found at a reload neither gains nor loses access).
    fn of(config: &Config, previous: Option<&Self>) -> Self {
        let mut access = Self {
            uids: config.admin_uids.clone(),
            gids: config.admin_gids.clone(),
            groups: Vec::new(),
        };
        for (name, gid) in &config.admin_groups {
            let kept = || {
                previous?
                    .groups
                    .iter()
                    .find(|(had, _)| had == name)
                    .map(|&(_, gid)| gid)
            };
            if let Some(gid) = gid.or_else(kept) {
                if !access.gids.contains(&gid) {
                    access.gids.push(gid);
                }
                access.groups.push((name.clone(), gid));
            }
        }
        access
    }
}

impl State {
    /// The longest lifetime a token may have been issued with since start-up (a client's
    /// `token_ttl` shortened since still has tokens out with the longer one): how long a
    /// retiring key must stay published. Earlier runs' are kept in the key manifest.
    pub fn longest_ttl(&self) -> Duration {
        longest_ttl(&self.clients, self.token_ttl)
    }

    /// Records [`State::longest_ttl`] with the active key (see
    /// [`KeyManager::note_longest_ttl`]): at start-up and after every change of the clients.
    /// Blocking when it writes.
    pub fn note_longest_ttl(&self) {
        note_longest_ttl(&self.keys, &self.clients, self.token_ttl);
    }

    /// Logs a change of signing key adopted from another daemon sharing the key directory.
    pub fn note_adopted_key(&self) {
        self.changes.note_active_key(|| self.active_kid(), None);
    }

    /// The kid of the key signing now, if one does.
    pub fn active_kid(&self) -> Option<String> {
        self.keys.load().active().map(|k| k.kid().to_owned())
    }

    /// [`State::reload`] on the blocking pool, announced to systemd (RELOADING=1 … READY=1,
    /// once for overlapping reloads). SIGHUP and `tokendealer reload` both come here.
    pub async fn reload_announced(
        self: &Arc<Self>,
    ) -> Result<ReloadOutcome, tokio::task::JoinError> {
        struct Running<'s>(&'s Arc<State>);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                if self
                    .0
                    .reloads_running
                    .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
                    == 1
                {
                    systemd::ready(self.0);
                }
            }
        }
        if self
            .reloads_running
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            == 0
        {
            systemd::reloading();
        }
        let _running = Running(self);
        let state = self.clone();
        tokio::task::spawn_blocking(move || state.reload()).await
    }

    /// SIGHUP and `tokendealer reload`: the config's key settings (a new `algorithm` gets
    /// its next key now and signs after the next rotation), TLS files and admin access
    /// lists, then the clients file. Other config changes need a restart. A config that
    /// cannot be read or applied holds back nothing else, the clients file included, and is
    /// the outcome told (and kept for `status`). Blocking.
    pub fn reload(&self) -> ReloadOutcome {
        // One at a time: a reload that read the config earlier must not store its outcome
        // over a later one's (an RSA key generated in between takes seconds).
        let _reloading = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.rebind_admin_socket();
        let config_failed = self
            .config
            .path
            .as_deref()
            .and_then(|path| self.reload_config(path));
        let outcome = self.reload_clients();
        // Kept until a reload applies the config: the clients file's own reloads, at every
        // save, must not make `status` say all is well while the config is still broken.
        // With the count of the clients file's failures so far: one after it is news.
        let failures = self
            .clients
            .reload_failures
            .load(std::sync::atomic::Ordering::Relaxed);
        *self
            .config_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            config_failed.clone().map(|failed| (failed, failures));
        config_failed.unwrap_or(outcome)
    }

    /// What `status` shows as the last reload: a config that failed to reload, until one
    /// reloads, unless the clients file failed to load since (its error, with its line, is
    /// then the news); else the clients file's last load.
    pub fn last_reload(&self) -> ReloadOutcome {
        let config = self
            .config_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let clients = self.clients.last_reload();
        match config {
            Some((failed, failures)) => {
                let failed_since = self
                    .clients
                    .reload_failures
                    .load(std::sync::atomic::Ordering::Relaxed)
                    != failures;
                match clients {
                    ReloadOutcome::Failed { .. } if failed_since => clients,
                    _ => failed,
                }
            }
            None => clients,
        }
    }

    /// Binds the admin socket again if its file was deleted (a cleanup of /run, a slip of
    /// `rm`): without it no admin tool can reach the daemon, `systemctl reload` included, and
    /// SIGHUP is the one way left to ask.
    fn rebind_admin_socket(&self) {
        let Some(rebind) = &self.admin_rebind else {
            return;
        };
        match std::fs::symlink_metadata(&self.admin_socket) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            _ => return,
        }
        match admin::bind(&self.admin_socket) {
            Ok(listener) => {
                if rebind.send(listener).is_ok() {
                    tracing::warn!(socket = %self.admin_socket.display(), "the admin socket was deleted; made it again");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the admin socket was deleted and cannot be made again");
            }
        }
    }

    /// Reloads the clients file (a save, SIGHUP, `tokendealer reload`); a file whose clients
    /// changed is logged as a change (a hand edit: the tool's own edits are recognised and
    /// not loaded again). Blocking.
    pub fn reload_clients(&self) -> ReloadOutcome {
        let (outcome, changed) = self.clients.reload_telling();
        self.note_longest_ttl();
        if changed {
            self.changes.record(
                None,
                tokendealer_shared::admin::ChangeKind::ClientsFileLoaded {
                    clients: self.clients.load().len() as u64,
                },
            );
        }
        outcome
    }

    /// Applies what a reload takes from the config file; the first failure, if any.
    fn reload_config(&self, path: &Path) -> Option<ReloadOutcome> {
        // The outcome carries file and line apart; the reason need not repeat them.
        // `then` says what the daemon does about it.
        let failed = |e: config::ConfigError, then: &str| {
            let (line, reason) = match e {
                config::ConfigError::Invalid { line, message, .. } => {
                    (line.and_then(|l| u32::try_from(l).ok()), message)
                }
                config::ConfigError::Read { source, .. } => (None, source.to_string()),
            };
            reload_failed(path.display(), line, format!("{reason}{then}"))
        };
        let (config, groups_unresolved) = match Config::load_for_reload(path) {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!(error = %e, "config not reloaded; the previous settings stay");
                return Some(failed(e, ""));
            }
        };
        // Everything else of the lists applies, a removal above all; a name not found keeps
        // the gid it had, so that an NSS outage neither locks its members out nor lets a
        // renamed group in.
        let access = AdminAccess::of(&config, Some(&self.admin_access.load()));
        let access_failed = groups_unresolved.map(|e| {
            tracing::error!(error = %e, "an admin group was not found; its members keep the access they had, the rest of the lists apply");
            failed(
                e,
                "; its members keep the access they had, the rest of the admin lists apply",
            )
        });
        if **self.admin_access.load() != access {
            tracing::info!(
                uids = ?access.uids,
                gids = ?access.gids,
                "admin access lists reloaded; they apply to open connections too"
            );
            self.admin_access.store(Arc::new(access));
        }
        let keys_failed = self.keys.reconfigure(key_settings(&config)).err().map(|e| {
            tracing::error!(error = %e, "the new key settings could not be applied; the previous ones stay");
            reload_failed(
                self.keys.dir().display(),
                None,
                format!("the new key settings could not be applied: {e}"),
            )
        });
        // A broken key directory holds back neither a renewed certificate nor the clients
        // file, nor a bad certificate the clients file.
        let tls_failed = self.reload_tls(&config);
        access_failed.or(keys_failed).or(tls_failed)
    }

    /// A renewed certificate and key are served from now on; on an error the previous ones
    /// stay, and the reload is reported failed.
    fn reload_tls(&self, config: &Config) -> Option<ReloadOutcome> {
        match (&self.tls, &config.tls) {
            (Some(tls), Some(files)) => {
                if let Err(e) = tls.reload(files) {
                    tracing::error!(error = %e, "TLS certificate not reloaded; the previous one keeps serving");
                    let file = match &e {
                        http::tls::TlsError::Read { path, .. }
                        | http::tls::TlsError::Invalid { path, .. }
                        | http::tls::TlsError::WorldReadable { path } => path,
                        http::tls::TlsError::Mismatch { key, .. } => key,
                    };
                    return Some(reload_failed(file.display(), None, e.to_string()));
                }
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
            }
            (None, None) => {}
            _ => tracing::warn!("turning TLS on or off takes a restart; the listener is unchanged"),
        }
        None
    }
}

/// A reload that failed now, on `file` (at `line`), for `reason`.
fn reload_failed(file: impl std::fmt::Display, line: Option<u32>, reason: String) -> ReloadOutcome {
    ReloadOutcome::Failed {
        at: jiff::Timestamp::now().as_second(),
        file: file.to_string(),
        line,
        reason,
    }
}

/// Told at start, and by `check-config`, when no `issuer` is set and `listen` is a wildcard.
pub const WILDCARD_WITHOUT_ISSUER: &str = "no `issuer` is configured and the listen address is a wildcard: tokens and metadata name an address no client can reach; set `issuer` to the URL clients use";

/// Serves until SIGTERM or SIGINT; SIGHUP reloads meanwhile.
pub async fn run(loaded: Loaded, listeners: Listeners, mut signals: Signals) -> io::Result<()> {
    let Loaded {
        mut config,
        keys,
        clients,
        tls,
    } = loaded;
    config.max_connections = raise_open_file_limit(config.max_connections);
    let listen = listeners.http.local_addr()?;
    let admin_inherited = listeners.admin_inherited;
    let issuer = config.issuer.clone().unwrap_or_else(|| {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let issuer = format!("{scheme}://{listen}");
        if listen.ip().is_unspecified() {
            tracing::warn!(%issuer, "{WILDCARD_WITHOUT_ISSUER}");
        }
        issuer
    });
    let change_log = changes::Changes::new(keys.load().active().map(keys::SigningKey::kid));
    // A socket systemd passed is systemd's to make again; ours, the daemon makes again.
    let (rebind, rebound) = tokio::sync::mpsc::unbounded_channel();
    let state = Arc::new(State {
        default_audience: config
            .default_audience
            .clone()
            .unwrap_or_else(|| issuer.clone()),
        metadata: http::build_metadata(&issuer).into(),
        metadata_path: http::metadata_path(&issuer),
        issuer_path: http::issuer_path(&issuer),
        issuer,
        token_ttl: config.token_ttl,
        listen,
        admin_socket: listeners.admin_path.clone(),
        admin_rebind: (!admin_inherited).then_some(rebind),
        clients: Arc::new(clients),
        stats: Arc::default(),
        throttle: Arc::new(throttle::Throttle::new(config.trusted_proxies.clone())),
        keys: Arc::new(keys),
        tls,
        conns: http::conn::ConnStats::default(),
        started: Instant::now(),
        reloads_running: std::sync::atomic::AtomicUsize::new(0),
        admin_access: ArcSwap::from_pointee(AdminAccess::of(&config, None)),
        changes: change_log,
        config_failure: std::sync::Mutex::new(None),
        reloading: std::sync::Mutex::new(()),
        config,
    });

    let stop = CancellationToken::new();
    let http_task = tokio::spawn(http::serve(listeners.http, state.clone(), stop.clone()));
    let admin_task = tokio::spawn(admin::serve(
        listeners.admin,
        rebound,
        state.clone(),
        stop.clone(),
    ));
    let tick_task = tokio::spawn(stats::tick(
        state.stats.clone(),
        state.clients.clone(),
        stop.clone(),
    ));
    let sweep_task = tokio::spawn(sweep(state.throttle.clone(), stop.clone()));
    // Without the watches the daemon still serves, and SIGHUP still reloads.
    let watching = state.clone();
    let reload_clients = move || {
        drop(watching.reload_clients());
    };
    let _clients_watch = watch::start(state.clients.path(), reload_clients.clone(), &stop)
        .inspect_err(|e| tracing::error!(error = %e, "cannot watch the clients file; edits apply on SIGHUP only"))
        .ok();
    // An edit saved between the start-up load and the watch would otherwise wait for the
    // next one. Unchanged, the file costs a read.
    tokio::task::spawn_blocking(reload_clients);
    let adopting = state.clone();
    let manifest = state.config.key_dir.join("manifest.json");
    let _keys_watch = watch::start(
        &manifest,
        move || match adopting.keys.refresh() {
            // A key another daemon made active signs here too, maybe with longer lifetimes
            // than that daemon's: its retiring window must know at once.
            Ok(true) => {
                adopting.note_longest_ttl();
                adopting.note_adopted_key();
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "a key change in the key directory was not adopted; the keys in force stay");
            }
        },
        &stop,
    )
    .inspect_err(|e| tracing::error!(error = %e, "cannot watch the key directory; key changes by other daemons apply at restart"))
    .ok();
    let upkeep_task = tokio::spawn(key_upkeep(state.clone(), stop.clone()));
    tracing::info!(
        listen = %state.listen,
        issuer = %state.issuer,
        admin_socket = %state.admin_socket.display(),
        clients = state.clients.load().len(),
        kid = state.keys.load().active_kid(),
        "tokendealerd ready"
    );
    systemd::ready(&state);
    let notify_task = tokio::spawn(systemd::keepalive(state.clone()));

    // A reload runs beside this loop, so that a stop signal is acted on while it runs (a
    // reload stuck on a file system must not keep the daemon from stopping). SIGHUPs that
    // arrive during a reload make one more after it.
    let start_reload = |state: &Arc<State>| {
        tracing::info!("SIGHUP: reloading the config's key and TLS settings and the clients file");
        let state = state.clone();
        tokio::spawn(async move { drop(state.reload_announced().await) })
    };
    let mut reload: Option<tokio::task::JoinHandle<()>> = None;
    let mut reload_again = false;
    loop {
        tokio::select! {
            () = signals.stop.next() => break,
            _ = signals.hangup.recv() => match reload {
                Some(_) => reload_again = true,
                None => reload = Some(start_reload(&state)),
            },
            _ = async { reload.as_mut().expect("guarded").await }, if reload.is_some() => {
                reload = None;
                if std::mem::take(&mut reload_again) {
                    reload = Some(start_reload(&state));
                }
            }
        }
    }

    tracing::info!("shutting down: no new connections; finishing requests in flight");
    notify_task.abort();
    systemd::stopping();
    stop.cancel();
    tokio::select! {
        _ = async { tokio::join!(http_task, admin_task, tick_task, sweep_task, upkeep_task) } => {}
        () = signals.stop.next() => {
            tracing::warn!("second stop signal: exiting without finishing the requests in flight");
        }
    }
    if !admin_inherited {
        admin::unlink(&state.admin_socket);
    }
    tracing::info!("stopped");
    Ok(())
}

/// Every connection is a file descriptor, and the usual soft limit (1024) is far below
/// `max_connections`: raise the soft limit to the hard one, as servers commonly do, and say
/// so when even that is too low.
/// Raises the open-file limit to its hard maximum, and returns how many HTTP connections
/// may be open at once: `max_connections`, or fewer if the limit leaves no room for them.
/// Past the limit, accept would fail with EMFILE, and so would every file the daemon opens
/// meanwhile (a clients edit, a reload, a key written); waiting for a free slot instead
/// keeps the excess in the listen backlog and the rest of the daemon working.
fn raise_open_file_limit(max_connections: u32) -> u32 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    // The listeners, the admin socket and its clients, watches, key and log files.
    const SPARE: u64 = 256;
    // Fewer would hardly serve: a limit this low is a mistake to be told, not obeyed.
    const LEAST: u32 = 16;
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!(error = %e, "cannot raise the open-file limit");
        }
        limit = getrlimit(Resource::Nofile);
    }
    let needed = u64::from(max_connections) + SPARE;
    let Some(have) = limit.current.filter(|&have| have < needed) else {
        return max_connections;
    };
    let room = u32::try_from(have.saturating_sub(SPARE))
        .unwrap_or(u32::MAX)
        .max(LEAST)
        .min(max_connections);
    if room == max_connections {
        return max_connections;
    }
    tracing::warn!(
        open_file_limit = have,
        max_connections,
        serving = room,
        "the open-file limit leaves room for fewer connections than max_connections: serving as many as it allows; raise LimitNOFILE= (or ulimit -n) or lower max_connections"
    );
    room
}

/// How often key upkeep looks at the clock, and at the key directory, when nothing else is
/// due sooner: the bound within which other daemons' key changes are adopted, which the
/// wait before a next key signs counts on.
const KEY_UPKEEP: Duration = Duration::from_secs(keys::store::ADOPTED_WITHIN.unsigned_abs());

/// Retiring keys leave the JWKS at their time, and automatic rotations happen, with no
/// restart and no request path involved.
async fn key_upkeep(state: Arc<State>, stop: CancellationToken) {
    let mut failed = false;
    loop {
        let now = jiff::Timestamp::now().as_second();
        let wait = if failed {
            // A due expiry stays due while upkeep fails (a full disk, a key file that cannot
            // be read): waiting for it would retry at once, in a loop.
            KEY_UPKEEP
        } else {
            state
                .keys
                .next_due()
                .map(|at| Duration::from_secs(u64::try_from(at - now).unwrap_or(0)))
                .map_or(KEY_UPKEEP, |until| until.min(KEY_UPKEEP))
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let upkeep = state.clone();
        let job = tokio::task::spawn_blocking(move || {
            // The directory watch brings other daemons' key changes at once; this brings
            // them within KEY_UPKEEP even when the watch could not be set up or missed one.
            match upkeep.keys.refresh() {
                Ok(true) => upkeep.note_adopted_key(),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "a key change in the key directory was not adopted; the keys in force stay");
                }
            }
            let maintained = upkeep.keys.maintain(upkeep.longest_ttl());
            // Each path notes the change it made itself, so that an admin's rotation is
            // never told as the schedule's.
            if let Ok(Some(rotated)) = &maintained {
                upkeep
                    .changes
                    .note_active_key(|| Some(rotated.active.clone()), None);
            }
            maintained
        });
        // Not awaited past a stop: a job stuck on the key directory (its lock held by another
        // daemon that hangs, a hung network file system) would hold the daemon's exit.
        // Whatever it writes is a rename, whole or not at all; the runtime gives it a moment.
        let result = tokio::select! {
            () = stop.cancelled() => return,
            result = job => result,
        };
        failed = match result {
            Ok(Ok(_)) => false,
            Ok(Err(e)) => {
                tracing::error!(error = %e, retry_in = ?KEY_UPKEEP, "key upkeep failed");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?KEY_UPKEEP, "key upkeep panicked");
                true
            }
        };
    }
}

/// Forgets throttling state that no longer matters, every 10 s: an attack from many
/// addresses or with many ids then holds memory for seconds of its traffic, not minutes
/// (most of its entries are one failure, forgotten after a few seconds). On a blocking
/// thread: walking a map of millions of entries would stall a worker.
async fn sweep(throttle: Arc<throttle::Throttle>, stop: CancellationToken) {
    const EVERY: Duration = Duration::from_secs(10);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {
                let throttle = throttle.clone();
                let job = tokio::task::spawn_blocking(move || throttle.sweep());
                tokio::select! {
                    // Not awaited past a stop, however long a sweep of millions takes.
                    () = stop.cancelled() => return,
                    // A panic in it is a bug to see in the log, not a reason to stop sweeping.
                    result = job => if let Err(e) = result {
                        tracing::error!(error = %e, "throttle sweep failed");
                    },
                }
            }
        }
    }
}

/// The signals the daemon acts on. Installed by [`Signals::install`] before any slow
/// start-up work (RSA key generation, a large clients file), so that none arriving then
/// kills the process with its default action: SIGTERM and SIGINT stop it (a second one
/// during the drain stops it at once), SIGHUP reloads (one received during start-up
/// reloads once the daemon is ready, picking up what changed meanwhile).
#[derive(Debug)]
pub struct Signals {
    stop: StopSignals,
    hangup: tokio::signal::unix::Signal,
}

#[derive(Debug)]
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Completes at the next SIGTERM or SIGINT.
    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received"),
            _ = self.int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

impl Signals {
    /// Installs the handlers now. Call it first thing in the runtime.
    pub fn install() -> io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            stop: StopSignals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            },
            hangup: signal(SignalKind::hangup())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A group name not found at a reload keeps the gid it had; the rest of the lists, a
    /// name taken off included, is what the config says.
    #[test]
    fn a_group_not_found_keeps_only_its_own_gid() {
        let mut before = Config::parse("admin_uids = [1000]\n", None).expect("a config");
        before.admin_groups = vec![("ops".into(), Some(50)), ("old".into(), Some(60))];
        before.admin_gids = vec![50, 60];
        let previous = AdminAccess::of(&before, None);
        assert_eq!(previous.gids, [50, 60]);

        let mut after = Config::parse("admin_gids = [7]\n", None).expect("a config");
        after.admin_groups = vec![("ops".into(), None), ("new".into(), None)];
        let access = AdminAccess::of(&after, Some(&previous));
        assert!(access.uids.is_empty(), "uid 1000 taken off");
        assert_eq!(
            access.gids,
            [7, 50],
            "ops kept its gid; old is gone; new has none yet"
        );
        assert_eq!(access.groups, [("ops".to_owned(), 50)]);
    }
}
