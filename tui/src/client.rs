//! The admin-socket client: connect, greet, ask.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tokendealer_shared::{
    admin::{AdminError, ClientFrame, Hello, PROTOCOL_VERSION, Request, Response, ServerFrame},
    frame::{self, FrameError},
};
use tokio::net::UnixStream;

/// Where the daemon is expected when nothing says otherwise.
pub const SYSTEM_SOCKET: &str = "/run/tokendealer/admin.sock";
/// Local mode's socket, relative to the working directory.
pub const LOCAL_SOCKET: &str = "tokendealer-data/admin.sock";

/// Why talking to the daemon failed. Each is one sentence that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no tokendealer daemon at {} (is it running?)", .0.display())]
    NotRunning(PathBuf),
    /// Nothing named a socket and neither default exists.
    #[error(
        "no tokendealer daemon found: neither {SYSTEM_SOCKET} nor ./{LOCAL_SOCKET} exists; start tokendealerd, or name its socket with --socket PATH or TOKENDEALER_SOCKET"
    )]
    NoSocket,
    #[error("no permission to use {}: {}", path.display(), permission_hint(path, *owner))]
    NoPermission { path: PathBuf, owner: Option<u32> },
    #[error("the daemon at {} did not answer within {} s (is it stopped or overloaded?)", path.display(), .waited.as_secs())]
    TimedOut { path: PathBuf, waited: Duration },
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the connection to the daemon failed: {0}")]
    Frame(#[from] FrameError),
    #[error("the daemon closed the connection without answering")]
    Closed,
    #[error("the daemon answered something this tool does not expect; is it the same version?")]
    Unexpected,
    #[error(
        "the daemon speaks admin protocol {daemon} and this tool speaks {PROTOCOL_VERSION}; use the tokendealer binary of the daemon's version ({daemon_version})"
    )]
    Mismatch { daemon: u32, daemon_version: String },
    #[error("{0}")]
    Refused(AdminError),
}

/// What to do about a socket this user may not use. Only the packaged socket under
/// /run/tokendealer is opened to a group (`tokendealer-admin`); any other (local mode's
/// ./tokendealer-data is mode 0700) is its owner's, whose uid is given when it is known.
fn permission_hint(path: &Path, owner: Option<u32>) -> String {
    let system_dir = Path::new(SYSTEM_SOCKET).parent();
    if path.parent() == system_dir {
        return "join the group that owns it (e.g. `sudo usermod -aG tokendealer-admin $USER`, then log in again for the group to apply) or run as root".to_owned();
    }
    let owner = owner.map(|uid| format!(" (uid {uid})")).unwrap_or_default();
    format!("run the tool as the user who started the daemon{owner} or as root")
}

/// The owner of the socket, else of its directory (a mode-0700 directory hides the socket
/// from everyone else's `stat`).
fn socket_owner(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    std::fs::metadata(path)
        .or_else(|e| dir.map_or(Err(e), std::fs::metadata))
        .ok()
        .map(|m| m.uid())
}

/// The socket to use and whether the user named it.
#[derive(Debug, Clone)]
pub struct Socket {
    pub path: PathBuf,
    /// Neither `--socket` nor `$TOKENDEALER_SOCKET` named it: it is one of the defaults.
    pub defaulted: bool,
}

/// The socket to use: `--socket`, else `$TOKENDEALER_SOCKET` unless empty, else the system
/// socket if it exists, else local mode's.
pub fn discover(explicit: Option<PathBuf>) -> Socket {
    let from_env = || {
        std::env::var_os("TOKENDEALER_SOCKET")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    match explicit.or_else(from_env) {
        Some(path) => Socket {
            path,
            defaulted: false,
        },
        None if Path::new(SYSTEM_SOCKET).exists() => Socket {
            path: PathBuf::from(SYSTEM_SOCKET),
            defaulted: true,
        },
        None => Socket {
            path: PathBuf::from(LOCAL_SOCKET),
            defaulted: true,
        },
    }
}

/// How long the daemon may take to greet: it answers at once unless it is stopped.
const GREETING_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a read-only request may take (listing 100 000 clients takes a fraction of a
/// second). Changes are waited for however long they take: their outcome is what matters.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A greeted connection to the daemon.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    path: PathBuf,
}

impl Connection {
    /// Connects to a socket the user chose or [`discover`] found, and exchanges greetings.
    pub async fn open_found(socket: &Socket) -> Result<Self, ClientError> {
        match Self::open(&socket.path).await {
            // Neither default exists: say where else a daemon might be.
            Err(ClientError::NotRunning(_)) if socket.defaulted && !socket.path.exists() => {
                Err(ClientError::NoSocket)
            }
            other => other,
        }
    }

    /// Connects and exchanges greetings.
    pub async fn open(path: &Path) -> Result<Self, ClientError> {
        let mut stream = UnixStream::connect(path).await.map_err(|source| {
            use std::io::ErrorKind::{ConnectionRefused, NotFound, PermissionDenied};
            match source.kind() {
                NotFound | ConnectionRefused => ClientError::NotRunning(path.to_owned()),
                PermissionDenied => ClientError::NoPermission {
                    path: path.to_owned(),
                    owner: socket_owner(path),
                },
                _ => ClientError::Connect {
                    path: path.to_owned(),
                    source,
                },
            }
        })?;
        let timed_out = || ClientError::TimedOut {
            path: path.to_owned(),
            waited: GREETING_TIMEOUT,
        };
        let greeting = tokio::time::timeout(GREETING_TIMEOUT, async {
            frame::write(&mut stream, &ClientFrame::Hello(Hello::current())).await?;
            frame::read::<ServerFrame, _>(&mut stream).await
        })
        .await
        .map_err(|_| timed_out())?;
        match greeting? {
            Some(ServerFrame::Hello(hello)) if hello.protocol_version == PROTOCOL_VERSION => {
                Ok(Self {
                    stream,
                    path: path.to_owned(),
                })
            }
            Some(ServerFrame::Hello(hello)) => Err(ClientError::Mismatch {
                daemon: hello.protocol_version,
                daemon_version: hello.software_version,
            }),
            Some(ServerFrame::Refused(e)) => Err(ClientError::Refused(e)),
            Some(_) => Err(ClientError::Unexpected),
            None => Err(ClientError::Closed),
        }
    }

    /// The greeted stream, for a caller that reads and writes frames itself.
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    /// Sends one request and waits for its response. A refusal the daemon sends right after
    /// the greeting (permission denied) arrives here.
    pub async fn request(&mut self, request: Request) -> Result<Response, ClientError> {
        if request.changes_state() {
            return self.exchange(request).await;
        }
        tokio::time::timeout(READ_TIMEOUT, self.exchange(request))
            .await
            .map_err(|_| ClientError::TimedOut {
                path: self.path.clone(),
                waited: READ_TIMEOUT,
            })?
    }

    async fn exchange(&mut self, request: Request) -> Result<Response, ClientError> {
        let sent = frame::write(&mut self.stream, &ClientFrame::Request(request)).await;
        // Too large to send: nothing went out, so no answer will come.
        if let Err(FrameError::TooLarge(n)) = sent {
            return Err(FrameError::TooLarge(n).into());
        }
        loop {
            // A daemon that refused us wrote its reason and closed, so the write may have
            // failed; the reason is still waiting to be read, and says more than "broken pipe".
            let received = frame::read::<ServerFrame, _>(&mut self.stream).await;
            if let Ok(Some(ServerFrame::Refused(e))) = received {
                return Err(ClientError::Refused(e));
            }
            if let Err(e) = sent {
                return Err(e.into());
            }
            return match received? {
                Some(ServerFrame::Response(Response::Error(e))) => Err(ClientError::Refused(e)),
                Some(ServerFrame::Response(response)) => Ok(response),
                // Stats pushed to a subscribed connection may precede the answer.
                Some(ServerFrame::Event(_)) => continue,
                Some(ServerFrame::Hello(_) | ServerFrame::Refused(_)) => {
                    Err(ClientError::Unexpected)
                }
                None => Err(ClientError::Closed),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_packaged_socket_is_a_matter_of_group() {
        let packaged = permission_hint(Path::new(SYSTEM_SOCKET), Some(0));
        assert!(
            packaged.contains("usermod -aG tokendealer-admin") && packaged.contains("log in again"),
            "{packaged}"
        );
        for local in [
            Path::new(LOCAL_SOCKET).to_owned(),
            PathBuf::from("/home/ann/tokendealer-data/admin.sock"),
        ] {
            let hint = permission_hint(&local, Some(1000));
            assert!(!hint.contains("usermod"), "{}: {hint}", local.display());
            assert!(hint.contains("uid 1000"), "{}: {hint}", local.display());
        }
    }
}
