//! Admin protocol messages. See the crate docs for framing, conversation and versioning.

use serde::{Deserialize, Serialize};

/// Bumped on any change to a message other than [`Hello`].
pub const PROTOCOL_VERSION: u32 = 1;

/// The first frame each side sends. Its layout is frozen (see the crate docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    /// The sender's package version, for error messages only.
    pub software_version: String,
}

impl Hello {
    /// The greeting of this build.
    pub fn current() -> Self {
        Self {
            protocol_version: PROTOCOL_VERSION,
            software_version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// Everything the admin tool sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// Variant 0, frozen: the greeting.
    Hello(Hello),
    Request(Request),
}

/// Everything the daemon sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// Variant 0, frozen: the greeting.
    Hello(Hello),
    /// The answer to the one request in flight.
    Response(Response),
    /// The daemon will not talk to this peer (permission, version); it closes next.
    Refused(AdminError),
}

/// A request. Each variant says which [`Response`]s it can get; any request can also get
/// [`Response::Error`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// → [`Response::Status`].
    Status,
}

/// A response to one [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Status(Box<Status>),
    Error(AdminError),
}

/// Typed failures; the admin tool turns them into one sentence each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AdminError {
    #[error(
        "permission denied: uid {uid} may not use the admin socket (ask for membership of an admin group in the daemon's config)"
    )]
    PermissionDenied { uid: u32 },
    #[error(
        "the daemon speaks admin protocol {daemon} and this tool speaks {tool}; use the tokendealer binary of the daemon's version ({daemon_version})"
    )]
    ProtocolMismatch {
        daemon: u32,
        tool: u32,
        daemon_version: String,
    },
    #[error("the request was not understood by the daemon")]
    BadRequest,
    #[error("the daemon failed: {0}")]
    Internal(String),
}

/// A snapshot of the daemon's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    /// `None` in local mode without a config file.
    pub config_path: Option<String>,
    pub listen: String,
    pub issuer: String,
    pub algorithm: String,
    pub clients_file: String,
    pub clients: u64,
    pub last_reload: ReloadOutcome,
    pub keys: Vec<KeyInfo>,
}

/// The outcome of the most recent attempt to (re)load the clients file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReloadOutcome {
    Ok {
        /// Unix seconds.
        at: i64,
        clients: u64,
    },
    Failed {
        at: i64,
        file: String,
        line: Option<u32>,
        reason: String,
    },
}

/// One signing key as the admin sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub kid: String,
    pub alg: String,
    pub state: KeyState,
    /// Unix seconds.
    pub created: i64,
    pub activated: Option<i64>,
    /// When a retiring key leaves the JWKS.
    pub retire_at: Option<i64>,
}

/// Where a key is in its life (see SPEC.md: next → active → retiring → removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Next,
    Active,
    Retiring,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Next => "next",
            Self::Active => "active",
            Self::Retiring => "retiring",
        }
    }
}
