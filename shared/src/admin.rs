//! Admin protocol messages. See the crate docs for framing, conversation and versioning.

use serde::{Deserialize, Serialize};

/// Bumped on any change to a message other than [`Hello`].
pub const PROTOCOL_VERSION: u32 = 2;

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
    /// Pushed to a subscribed connection, between responses.
    Event(Event),
}

/// Pushed by the daemon after [`Request::Subscribe`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Stats(StatsTick),
}

/// The most clients one [`Request::ListClients`] page holds.
pub const MAX_PAGE: u32 = 1000;

/// A request. Each variant says which [`Response`]s it can get; any request can also get
/// [`Response::Error`] with the [`AdminError`]s listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// → [`Response::Status`].
    Status,
    /// Clients in id order, starting after `after`, at most `limit` (≤ [`MAX_PAGE`]).
    /// → [`Response::Clients`].
    ListClients { after: Option<String>, limit: u32 },
    /// Registers a client with a new secret. → [`Response::ClientAdded`];
    /// errors: `ClientExists`, `InvalidInput`, `ClientsFileInvalid`, `WriteFailed`.
    AddClient {
        id: String,
        audiences: Vec<String>,
        scopes: Vec<String>,
        ttl_secs: Option<u64>,
    },
    /// Gives a client a new secret; the old one stays valid for `keep_old_secs` (0: stops at
    /// once). → [`Response::SecretRotated`]; errors: `NoSuchClient`, `ClientsFileInvalid`,
    /// `WriteFailed`.
    RotateSecret { id: String, keep_old_secs: u64 },
    /// → [`Response::Done`]; errors: `NoSuchClient`, `ClientsFileInvalid`, `WriteFailed`.
    DisableClient { id: String },
    /// → [`Response::Done`]; errors as for `DisableClient`.
    EnableClient { id: String },
    /// → [`Response::Done`]; errors as for `DisableClient`.
    RemoveClient { id: String },
    /// Adds clients given by secret hash (the tool hashes; no secret crosses the socket).
    /// All or none. → [`Response::Imported`]; errors: `ClientExists`, `InvalidInput`,
    /// `ClientsFileInvalid`, `WriteFailed`.
    ImportClients { clients: Vec<(String, [u8; 32])> },
    /// → [`Response::Keys`].
    ListKeys,
    /// next → active, active → retiring, a new next. → [`Response::KeyRotated`]; errors:
    /// `RotationTooEarly` (unless `now`), `KeyStoreFailed`.
    RotateKey { now: bool },
    /// Drops a compromised key from the JWKS at once. → [`Response::KeyRevoked`]; errors:
    /// `NoSuchKey`, `KeyStoreFailed`.
    RevokeKey { kid: String },
    /// Re-reads the clients file and answers when done. → [`Response::Reloaded`] (whose
    /// outcome may be a failure).
    Reload,
    /// → [`Response::Subscribed`], then an [`Event::Stats`] every second until the
    /// connection closes. A subscriber that does not keep up misses ticks.
    Subscribe,
}

impl Request {
    /// Whether it changes the clients file, the keys or the daemon's state (rather than
    /// only reading them). A change is never given up on half-way by either side: it
    /// lands either way, and its answer may hold a secret shown nowhere else.
    pub fn changes_state(&self) -> bool {
        !matches!(
            self,
            Self::Status | Self::ListClients { .. } | Self::ListKeys | Self::Subscribe
        )
    }

    /// The request's name, for logs: unlike its `Debug` form it carries no client data.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::ListClients { .. } => "list clients",
            Self::AddClient { .. } => "add client",
            Self::RotateSecret { .. } => "rotate secret",
            Self::DisableClient { .. } => "disable client",
            Self::EnableClient { .. } => "enable client",
            Self::RemoveClient { .. } => "remove client",
            Self::ImportClients { .. } => "import clients",
            Self::ListKeys => "list keys",
            Self::RotateKey { .. } => "rotate key",
            Self::RevokeKey { .. } => "revoke key",
            Self::Reload => "reload",
            Self::Subscribe => "subscribe",
        }
    }
}

/// A response to one [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Status(Box<Status>),
    Clients {
        clients: Vec<ClientInfo>,
        total: u64,
    },
    /// The secret is shown this once; only its hash is stored.
    ClientAdded {
        id: String,
        secret: String,
    },
    SecretRotated {
        id: String,
        secret: String,
        /// Unix seconds until which the old secret still works; `None` when it stopped.
        old_valid_until: Option<i64>,
    },
    Done,
    Imported {
        count: u64,
    },
    Keys(Vec<KeyInfo>),
    KeyRotated {
        active: String,
        /// The previous active key and when (Unix seconds) it leaves the JWKS.
        retiring: Option<(String, i64)>,
        next: String,
        next_may_sign_at: i64,
    },
    KeyRevoked {
        kid: String,
        former_state: KeyState,
        /// The key that signs now.
        active: String,
    },
    Reloaded(ReloadOutcome),
    Subscribed,
    Error(AdminError),
}

/// Typed failures; the admin tool turns them into one sentence each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AdminError {
    #[error(
        "permission denied: uid {uid} may not use the admin socket (ask for your uid or group in the daemon's admin_uids/admin_gids)"
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
    #[error("there is no client `{0}`")]
    NoSuchClient(String),
    #[error("client `{0}` already exists")]
    ClientExists(String),
    #[error("{0}")]
    InvalidInput(String),
    #[error(
        "the clients file {file} is not valid ({reason}); fix it before changing clients through the daemon"
    )]
    ClientsFileInvalid { file: String, reason: String },
    #[error("{0}")]
    WriteFailed(String),
    #[error("{message}")]
    RotationTooEarly { message: String, possible_at: i64 },
    #[error("there is no key `{0}`")]
    NoSuchKey(String),
    #[error("{0}")]
    KeyStoreFailed(String),
    #[error("the daemon failed: {0}")]
    Internal(String),
    #[error("{max} dashboards are open on this daemon already; close one, or use the commands")]
    TooManySubscribers { max: u32 },
}

/// One client as the admin sees it. Never a secret or a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub id: String,
    pub audiences: Vec<String>,
    pub scopes: Vec<String>,
    pub ttl_secs: Option<u64>,
    pub disabled: bool,
    /// Unix seconds until which a rotated-out secret still works.
    pub old_secret_until: Option<i64>,
    /// Tokens issued since the daemon started.
    pub issued: u64,
    /// Unix seconds of the last issuance since the daemon started.
    pub last_issued: Option<i64>,
}

/// One second of activity, pushed to subscribers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsTick {
    /// Unix milliseconds at the end of the interval.
    pub at_ms: i64,
    pub interval_ms: u64,
    pub issued: u64,
    pub failures: u64,
    /// `(error code, count)` for the codes that occurred.
    pub failures_by_code: Vec<(String, u64)>,
    /// The busiest clients of the interval (at most [`MAX_TICK_CLIENTS`]).
    pub clients: Vec<ClientTick>,
    /// Latency of the interval's token requests, in microseconds.
    pub p50_us: u64,
    pub p99_us: u64,
    /// Since the daemon started.
    pub issued_total: u64,
    pub failures_total: u64,
}

/// The most clients one [`StatsTick`] lists.
pub const MAX_TICK_CLIENTS: usize = 200;

/// One client's activity in a [`StatsTick`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientTick {
    pub id: String,
    pub issued: u64,
    pub failures: u64,
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
    /// Of `clients`, those disabled.
    pub disabled: u64,
    /// Of `clients`, those whose previous secret still works (a rotation's overlap).
    pub rotating: u64,
    pub last_reload: ReloadOutcome,
    pub keys: Vec<KeyInfo>,
    /// Since the daemon started: active keys replaced (by `keys rotate`, on schedule, or
    /// by another daemon sharing the key directory), and secrets rotated.
    pub key_rotations: u64,
    pub secret_rotations: u64,
    /// The latest changes to clients and keys, newest first (at most [`MAX_CHANGES`]).
    pub changes: Vec<Change>,
}

/// The most changes a [`Status`] lists.
pub const MAX_CHANGES: usize = 32;

/// One change to the clients or the signing keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Unix seconds.
    pub at: i64,
    /// The uid of the admin who asked for it over the socket; `None` for what the daemon
    /// did itself (a scheduled rotation), another daemon did (a key adopted), or the
    /// clients file brought (a hand edit).
    pub by: Option<u32>,
    pub what: ChangeKind,
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    ClientAdded {
        id: String,
    },
    ClientRemoved {
        id: String,
    },
    ClientDisabled {
        id: String,
    },
    ClientEnabled {
        id: String,
    },
    /// Unix seconds until which the previous secret still works, if it does.
    SecretRotated {
        id: String,
        old_valid_until: Option<i64>,
    },
    ClientsImported {
        count: u64,
    },
    /// The clients file changed on disk and was loaded: what it now holds.
    ClientsFileLoaded {
        clients: u64,
    },
    /// Another key signs from now on.
    KeyRotated {
        active: String,
    },
    KeyRevoked {
        kid: String,
    },
}

impl std::fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ClientAdded { id } => write!(f, "client `{id}` added"),
            Self::ClientRemoved { id } => write!(f, "client `{id}` removed"),
            Self::ClientDisabled { id } => write!(f, "client `{id}` disabled"),
            Self::ClientEnabled { id } => write!(f, "client `{id}` enabled"),
            Self::SecretRotated { id, .. } => write!(f, "secret of `{id}` rotated"),
            Self::ClientsImported { count } => {
                write!(f, "{} imported", crate::count(*count, "client", "clients"))
            }
            Self::ClientsFileLoaded { clients } => write!(
                f,
                "clients file changed on disk: {}",
                crate::count(*clients, "client", "clients")
            ),
            Self::KeyRotated { active } => write!(f, "keys rotated: {active} signs"),
            Self::KeyRevoked { kid } => write!(f, "key {kid} revoked"),
        }
    }
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
    /// For the next key: when it may sign (published for `jwks_max_age`).
    pub may_sign_at: Option<i64>,
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
