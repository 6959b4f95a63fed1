//! The admin socket: a Unix stream socket (mode 0660) for the `tokendealer` tool.
//!
//! Who may talk is decided from the peer's credentials (SO_PEERCRED): root, the daemon's own
//! uid, and the uids and primary gids listed in the config. A peer that breaks the protocol
//! loses its own connection and nothing else.

use std::{
    fs,
    io::{self, ErrorKind},
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::Duration,
};

use tokendealer_shared::{
    admin::{
        AdminError, ClientFrame, Hello, KeyInfo, PROTOCOL_VERSION, Request, Response, ServerFrame,
        Status,
    },
    frame::{self, FrameError},
};
use tokio::{
    net::{UnixListener, UnixStream},
    sync::Semaphore,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::State;

/// How many admin connections are served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 32;
/// How long a new peer has to greet.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may sit idle between requests.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one request may take before the peer is told it failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the admin socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("refusing to replace {}: it exists and is not a socket; move it or set `admin_socket`", .0.display())]
    NotASocket(PathBuf),
    #[error("another tokendealerd is already listening on {}", .0.display())]
    InUse(PathBuf),
    #[error("cannot create the admin socket {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Binds the admin socket at `path`, replacing a stale socket a crashed daemon left behind.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let io_err = |source| BindError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_err)?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(BindError::NotASocket(path.to_owned()));
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(BindError::InUse(path.to_owned())),
            // Nobody answers: a stale socket from a daemon that did not clean up.
            Err(_) => fs::remove_file(path).map_err(io_err)?,
        },
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    // Until the chmod below the socket has the umask's mode; with the usual umask (022) only
    // the owner can connect in that window, which is no wider than what follows.
    let listener = UnixListener::bind(path).map_err(io_err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660)).map_err(io_err)?;
    Ok(listener)
}

/// Removes the socket at shutdown.
pub fn unlink(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != ErrorKind::NotFound
    {
        tracing::warn!(socket = %path.display(), error = %e, "cannot remove the admin socket");
    }
}

fn own_uid() -> u32 {
    static UID: OnceLock<u32> = OnceLock::new();
    // The owner of /proc/self is the process's uid; this keeps us free of `unsafe` libc calls.
    *UID.get_or_init(|| fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid()))
}

/// Accepts admin connections until `stop` fires; then closes those still open.
pub async fn serve(listener: UnixListener, state: Arc<State>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    loop {
        // Waiting for a slot before accepting leaves excess peers in the backlog rather than
        // holding an unbounded number of open connections.
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = slots.clone().acquire_owned() => permit.expect("semaphore never closed"),
        };
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            let _permit = permit;
            tokio::select! {
                () = stop.cancelled() => {}
                () = connection(stream, &state) => {}
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

async fn connection(stream: UnixStream, state: &State) {
    let cred = match stream.peer_cred() {
        Ok(cred) => cred,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read admin peer credentials; closing");
            return;
        }
    };
    let uid = cred.uid();
    let allowed = uid == 0
        || uid == own_uid()
        || state.config.admin_uids.contains(&uid)
        || state.config.admin_gids.contains(&cred.gid());
    if let Err(e) = converse(stream, state, uid, allowed).await {
        tracing::info!(uid, error = %e, "admin connection closed");
    }
}

async fn converse(
    stream: UnixStream,
    state: &State,
    uid: u32,
    allowed: bool,
) -> Result<(), FrameError> {
    let (mut rx, mut tx) = stream.into_split();
    let hello =
        match tokio::time::timeout(HELLO_TIMEOUT, frame::read::<ClientFrame, _>(&mut rx)).await {
            Ok(Ok(Some(ClientFrame::Hello(hello)))) => hello,
            Ok(Ok(Some(ClientFrame::Request(_)))) => {
                return Err(FrameError::Io(io::Error::new(
                    ErrorKind::InvalidData,
                    "request before hello",
                )));
            }
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(FrameError::Io(io::Error::new(
                    ErrorKind::TimedOut,
                    "no hello in time",
                )));
            }
        };
    // Our greeting goes first whatever follows: its layout is frozen, so any version of the
    // tool can read it and explain a mismatch.
    frame::write(&mut tx, &ServerFrame::Hello(Hello::current())).await?;
    if !allowed {
        tracing::warn!(uid, "admin connection refused: uid is not permitted");
        return frame::write(
            &mut tx,
            &ServerFrame::Refused(AdminError::PermissionDenied { uid }),
        )
        .await;
    }
    if hello.protocol_version != PROTOCOL_VERSION {
        tracing::warn!(
            uid,
            tool = hello.protocol_version,
            daemon = PROTOCOL_VERSION,
            "admin protocol mismatch"
        );
        let refusal = AdminError::ProtocolMismatch {
            daemon: PROTOCOL_VERSION,
            tool: hello.protocol_version,
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        return frame::write(&mut tx, &ServerFrame::Refused(refusal)).await;
    }
    loop {
        let request = match tokio::time::timeout(
            IDLE_TIMEOUT,
            frame::read::<ClientFrame, _>(&mut rx),
        )
        .await
        {
            Ok(Ok(Some(ClientFrame::Request(request)))) => request,
            Ok(Ok(Some(ClientFrame::Hello(_)))) => {
                frame::write(
                    &mut tx,
                    &ServerFrame::Response(Response::Error(AdminError::BadRequest)),
                )
                .await?;
                return Ok(());
            }
            Ok(Ok(None)) | Err(_) => return Ok(()),
            Ok(Err(e)) => return Err(e),
        };
        let response =
            match tokio::time::timeout(REQUEST_TIMEOUT, handle(state, request, uid)).await {
                Ok(response) => response,
                Err(_) => Response::Error(AdminError::Internal("the request timed out".into())),
            };
        frame::write(&mut tx, &ServerFrame::Response(response)).await?;
    }
}

async fn handle(state: &State, request: Request, uid: u32) -> Response {
    match request {
        Request::Status => {
            tracing::debug!(uid, "admin: status");
            Response::Status(Box::new(status(state)))
        }
    }
}

fn status(state: &State) -> Status {
    let keys = state.keys.load();
    Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        uptime_secs: state.started.elapsed().as_secs(),
        config_path: state.config.path.as_ref().map(|p| p.display().to_string()),
        listen: state.listen.to_string(),
        issuer: state.issuer.clone(),
        algorithm: state.config.algorithm.to_string(),
        clients_file: state.clients.path().display().to_string(),
        clients: state.clients.load().len() as u64,
        last_reload: state.clients.last_reload(),
        keys: keys
            .entries()
            .iter()
            .map(|e| KeyInfo {
                kid: e.meta.kid.clone(),
                alg: e.meta.alg.to_string(),
                state: e.meta.state,
                created: e.meta.created,
                activated: e.meta.activated,
                retire_at: e.meta.retire_at,
            })
            .collect(),
    }
}
