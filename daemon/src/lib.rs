//! tokendealerd: an OAuth 2.0 client-credentials token service.
//!
//! The daemon in three steps, each usable on its own (tests bind `127.0.0.1:0` and a socket
//! in a temp dir, and never sleep):
//!
//! 1. [`load`]: keys and clients from disk, every problem reported before anything listens;
//! 2. [`Listeners::bind`]: the HTTP port and the admin socket;
//! 3. [`run`]: serve until the `shutdown` future completes, then drain and clean up.

pub mod admin;
pub mod clients;
pub mod config;
pub mod fsio;
pub mod http;
pub mod keys;
pub mod local;
pub mod stats;
pub mod systemd;
pub mod throttle;

use std::{
    future::Future,
    io,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

use crate::{
    clients::ClientsStore,
    config::Config,
    keys::{KeyEntry, KeyStore, Keyring},
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
    #[error("key loading was interrupted")]
    Interrupted,
}

impl StartError {
    /// Whether this is a problem with configuration or data the admin must fix.
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Keys(_) | Self::Clients(_))
    }
}

/// What the daemon serves with, read from disk.
#[derive(Debug)]
pub struct Loaded {
    config: Config,
    keys: Vec<KeyEntry>,
    clients: ClientsStore,
}

/// Reads (on first use: creates) the signing keys, and reads the clients file.
pub async fn load(config: Config) -> Result<Loaded, StartError> {
    let (dir, alg, bits) = (config.key_dir.clone(), config.algorithm, config.rsa_bits);
    // Key generation takes a while (RSA 4096: seconds); keep it off the reactor.
    let keys = tokio::task::spawn_blocking(move || KeyStore::open(&dir)?.load_or_init(alg, bits))
        .await
        .map_err(|_| StartError::Interrupted)??;
    if let Some(active) = keys
        .iter()
        .find(|k| k.meta.state == tokendealer_shared::admin::KeyState::Active)
        && active.meta.alg != config.algorithm
    {
        tracing::warn!(
            active = %active.meta.alg,
            configured = %config.algorithm,
            "the active key's algorithm differs from `algorithm`; the change applies at the next key rotation"
        );
    }
    let clients_file = config.clients_file.clone();
    let clients = tokio::task::spawn_blocking(move || ClientsStore::open(&clients_file))
        .await
        .map_err(|_| StartError::Interrupted)??;
    Ok(Loaded {
        config,
        keys,
        clients,
    })
}

/// The daemon's two listening sockets.
#[derive(Debug)]
pub struct Listeners {
    pub http: TcpListener,
    pub admin: UnixListener,
}

impl Listeners {
    /// Binds the HTTP address and the admin socket named by `config`.
    pub async fn bind(config: &Config) -> Result<Self, StartError> {
        let http = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.listen,
                source,
            })?;
        let admin = admin::bind(&config.admin_socket)?;
        Ok(Self { http, admin })
    }
}

/// Shared state of a running daemon. Readers on the hot path only `load()` the swapped
/// snapshots; nothing here is locked per request.
#[derive(Debug)]
pub struct State {
    pub config: Config,
    pub issuer: String,
    pub default_audience: String,
    pub token_ttl: Duration,
    pub listen: SocketAddr,
    pub admin_socket: PathBuf,
    pub clients: Arc<ClientsStore>,
    pub keys: ArcSwap<Keyring>,
    pub stats: Arc<stats::Stats>,
    pub throttle: Arc<throttle::Throttle>,
    pub started: Instant,
    metadata: Bytes,
    jwks_cache_control: ::http::HeaderValue,
}

/// Serves until `shutdown` completes; SIGHUP reloads the clients file meanwhile.
pub async fn run(
    loaded: Loaded,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let Loaded {
        config,
        keys,
        clients,
    } = loaded;
    let listen = listeners.http.local_addr()?;
    let issuer = config
        .issuer
        .clone()
        .unwrap_or_else(|| format!("http://{listen}"));
    let keyring = Keyring::new(keys).expect("load() guarantees an active key");
    let state = Arc::new(State {
        default_audience: config
            .default_audience
            .clone()
            .unwrap_or_else(|| issuer.clone()),
        metadata: http::build_metadata(&issuer).into(),
        jwks_cache_control: http::jwks_cache_control(config.jwks_max_age),
        issuer,
        token_ttl: config.token_ttl,
        listen,
        admin_socket: config.admin_socket.clone(),
        clients: Arc::new(clients),
        stats: Arc::default(),
        throttle: Arc::new(throttle::Throttle::new(config.trusted_proxies.clone())),
        keys: ArcSwap::from_pointee(keyring),
        started: Instant::now(),
        config,
    });

    // Installed before READY, so a SIGHUP sent as soon as we are ready is never lost.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let stop = CancellationToken::new();
    let http_task = tokio::spawn(http::serve(listeners.http, state.clone(), stop.clone()));
    let admin_task = tokio::spawn(admin::serve(listeners.admin, state.clone(), stop.clone()));
    let tick_task = tokio::spawn(stats::tick(
        state.stats.clone(),
        state.clients.clone(),
        stop.clone(),
    ));
    let sweep_task = tokio::spawn(sweep(state.throttle.clone(), stop.clone()));
    // Without the watch the daemon still serves, and SIGHUP still reloads.
    let _watch = clients::watch::start(state.clients.clone(), stop.clone())
        .inspect_err(|e| tracing::error!(error = %e, "cannot watch the clients file; edits apply on SIGHUP only"))
        .ok();
    tracing::info!(
        listen = %state.listen,
        issuer = %state.issuer,
        admin_socket = %state.admin_socket.display(),
        clients = state.clients.load().len(),
        kid = state.keys.load().active().kid(),
        "tokendealerd ready"
    );
    systemd::ready(&state);

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading the clients file");
                systemd::reloading();
                let clients = state.clients.clone();
                let _ = tokio::task::spawn_blocking(move || clients.reload()).await;
                systemd::ready(&state);
            }
        }
    }

    tracing::info!("shutting down: no new connections; finishing requests in flight");
    systemd::stopping();
    stop.cancel();
    let _ = tokio::join!(http_task, admin_task, tick_task, sweep_task);
    admin::unlink(&state.admin_socket);
    tracing::info!("stopped");
    Ok(())
}

/// Forgets throttling state that no longer matters, once a minute.
async fn sweep(throttle: Arc<throttle::Throttle>, stop: CancellationToken) {
    const EVERY: Duration = Duration::from_secs(60);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(EVERY) => throttle.sweep(),
        }
    }
}

/// Installs the SIGTERM and SIGINT handlers now, and returns a future that completes when
/// either arrives. Call it before announcing readiness, so that no early signal kills the
/// process with its default action instead of draining it.
pub fn termination() -> io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
