//! The end-to-end harness for tokendealer: it runs the real `tokendealerd` and `tokendealer`
//! binaries from a temporary directory, on loopback, and shows their output when a test fails.
//!
//! - [`Daemon`] writes a config and a clients file into a fresh temporary directory, starts
//!   `tokendealerd` with `NOTIFY_SOCKET` pointing at a datagram socket of ours, and waits for
//!   `READY=1` (never a sleep). The same datagram tells the bound HTTP address and admin socket.
//! - Its stdout and stderr go to files in that directory, so a chatty daemon never blocks on a
//!   full pipe; when a test panics while a [`Daemon`] is alive, its `Drop` prints the command
//!   line, stdout and stderr before killing it (ripgrep's `TestCommand` habit).
//! - [`Reply`] is an HTTP response kept whole (status, headers, raw body) whose assertions
//!   print the request and the response.
//! - [`jwt`] decodes tokens without trusting them, recomputes RFC 7638 thumbprints, and runs
//!   the independent PyJWT verifier (`tests/verify_jwt.py`).
//!
//! The binaries are not this package's own, so cargo does not build them for `cargo test -p
//! tokendealer-tests`: run `cargo build --workspace --bins` first. [`bins`] finds them beside
//! the test executable, as ripgrep's harness does.

pub mod access;
pub mod admin_wire;
pub mod bins;
pub mod clients;
pub mod conn;
pub mod daemon;
pub mod faults;
pub mod files;
pub mod http;
pub mod jwt;
pub mod keys;
pub mod metrics;
pub mod process;
pub mod tls;
pub mod tmux;

pub use clients::{TestClient, random_secret, secret_hash};
pub use daemon::{Daemon, DaemonBuilder};
pub use http::{Auth, Reply};
pub use process::Output;

/// The issuer every configured test daemon uses.
pub const ISSUER: &str = "https://tokendealer.test";
