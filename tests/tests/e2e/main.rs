//! End-to-end tests: the real `tokendealerd` and `tokendealer` on loopback, one module per
//! capability. Each test starts its own daemon in its own temporary directory on an ephemeral
//! port, so they run in parallel. Build the binaries first: `cargo build --workspace --bins`.

mod admin;
mod admin_cli;
mod algorithms;
mod clients_file;
mod config;
mod dashboard;
mod discovery;
mod faults;
mod keys;
mod limits;
mod local_mode;
mod properties;
mod shutdown;
mod systemd;
mod tls;
mod token;

use std::time::{SystemTime, UNIX_EPOCH};

use tokendealer_tests::TestClient;

/// Audiences the usual test client may ask for.
const API: &str = "https://api.example";
const OTHER_API: &str = "https://other.example";

/// The usual test client: two audiences, three scopes, an id with `.`, `-` and `_`.
fn service_client() -> TestClient {
    TestClient::new("svc.e2e-client_1")
        .audiences(&[API, OTHER_API])
        .scopes(&["runs:read", "runs:write", "admin"])
}

/// Seconds since the epoch, to check `iat`/`exp` against.
fn now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    i64::try_from(secs).expect("seconds since 1970 fit in i64")
}

/// A space-separated scope string as a sorted list, for order-free comparison.
fn scope_set(scope: &str) -> Vec<&str> {
    let mut scopes: Vec<&str> = scope.split(' ').collect();
    scopes.sort_unstable();
    scopes
}

/// `key_dir` holds PKCS#8 PEM private keys, readable by the owner only.
#[track_caller]
fn assert_private_keys(key_dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let entries = std::fs::read_dir(key_dir)
        .unwrap_or_else(|e| panic!("cannot read the key directory {}: {e}", key_dir.display()));
    let mut keys = 0;
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        if !text.contains("-----BEGIN") {
            continue;
        }
        keys += 1;
        assert!(
            text.starts_with("-----BEGIN PRIVATE KEY-----"),
            "{} is not a PKCS#8 PEM private key",
            path.display()
        );
        let mode = std::fs::metadata(&path)
            .expect("a key file's metadata")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "{} has mode {:o}, not 0600",
            path.display(),
            mode & 0o777
        );
    }
    assert!(keys > 0, "no PEM key in {}", key_dir.display());
}
