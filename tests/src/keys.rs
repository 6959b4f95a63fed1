//! Signing keys from the outside: `tokendealer keys list|rotate --json` parsed, the key
//! directory (`manifest.json`, `KID.pem`) checked as a crash must leave it, config lines
//! rewritten for a reload or a shared `key_dir`, and a frozen copy of a JWKS served the way a
//! verifier's cache would keep it.

use std::{
    fs,
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use serde_json::Value;

use crate::{Daemon, bins, clients::toml_string, files};

/// The key directory the builder configures.
pub fn key_dir(daemon: &Daemon) -> PathBuf {
    daemon.dir().join("keys")
}

/// One row of `tokendealer keys list --json`, its times as Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedKey {
    pub kid: String,
    pub alg: String,
    pub state: String,
    pub created: i64,
    pub activated: Option<i64>,
    pub retire_at: Option<i64>,
    pub may_sign_at: Option<i64>,
    /// The row as printed, times as the admin tool renders them.
    pub raw: Value,
}

/// `tokendealer keys list --json`; fails the test unless it succeeds with an array of keys.
#[track_caller]
pub fn list(daemon: &Daemon) -> Vec<ListedKey> {
    let output = daemon.admin(&["keys", "list", "--json"]);
    output.assert_success();
    let value: Value = serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("`keys list --json` printed no JSON ({e}):\n{output}"));
    let rows = value
        .as_array()
        .unwrap_or_else(|| panic!("`keys list --json` is not an array:\n{output}"));
    rows.iter()
        .map(|row| {
            let text = |name: &str| {
                row[name]
                    .as_str()
                    .unwrap_or_else(|| panic!("`{name}` is not a string in {row}:\n{output}"))
                    .to_owned()
            };
            let time = |name: &str| match &row[name] {
                Value::Null => None,
                Value::String(t) => Some(unix_seconds(t)),
                other => panic!("`{name}` is {other}, not a time or null, in {row}:\n{output}"),
            };
            ListedKey {
                kid: text("kid"),
                alg: text("alg"),
                state: text("state"),
                created: time("created")
                    .unwrap_or_else(|| panic!("a key without `created`: {row}")),
                activated: time("activated"),
                retire_at: time("retire_at"),
                may_sign_at: time("may_sign_at"),
                raw: row.clone(),
            }
        })
        .collect()
}

/// The one listed key in `state`; fails the test unless there is exactly one.
#[track_caller]
pub fn only<'a>(keys: &'a [ListedKey], state: &str) -> &'a ListedKey {
    let found: Vec<&ListedKey> = keys.iter().filter(|k| k.state == state).collect();
    match found[..] {
        [key] => key,
        _ => panic!(
            "expected exactly one `{state}` key, found {}: {keys:#?}",
            found.len()
        ),
    }
}

/// `tokendealer keys rotate --now --json`; fails the test unless it succeeds, and returns
/// what it printed.
#[track_caller]
pub fn rotate_now(daemon: &Daemon) -> Value {
    let output = daemon.admin(&["keys", "rotate", "--now", "--json"]);
    output.assert_success();
    serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("`keys rotate --json` printed no JSON ({e}):\n{output}"))
}

/// Starts `tokendealer --socket ADMIN ARGS` without waiting for it, its output discarded: for
/// a request that the test interrupts by killing the daemon.
#[track_caller]
pub fn spawn_admin(daemon: &Daemon, args: &[&str]) -> Child {
    Command::new(bins::tokendealer())
        .arg("--socket")
        .arg(daemon.admin_socket())
        .args(args)
        .env_remove("TOKENDEALER_SOCKET")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start the admin tool: {e}"))
}

/// Unix seconds of an RFC 3339 UTC time as the admin tool prints it
/// (`2026-01-02T03:04:05Z`, fractional seconds ignored). Written out here rather than taken
/// from the daemon's time library, so that a wrong rendering cannot cancel itself out.
#[track_caller]
pub fn unix_seconds(text: &str) -> i64 {
    #[track_caller]
    fn bad(text: &str) -> ! {
        panic!("`{text}` is not an RFC 3339 UTC time like 2026-01-02T03:04:05Z")
    }
    let Some((date, time)) = text.split_once('T') else {
        bad(text)
    };
    let Some(time) = time.strip_suffix('Z') else {
        bad(text)
    };
    let time = time.split_once('.').map_or(time, |(whole, _)| whole);
    let numbers = |part: &str, sep: char| -> Vec<i64> {
        part.split(sep)
            .map(|n| n.parse().unwrap_or_else(|_| bad(text)))
            .collect()
    };
    let (date, time) = (numbers(date, '-'), numbers(time, ':'));
    let ([year, month, day], [hour, minute, second]) = (&date[..], &time[..]) else {
        bad(text)
    };
    days_from_civil(*year, *month, *day) * 86_400 + hour * 3_600 + minute * 60 + second
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Sets a top-level `key = value` line of the daemon's `config.toml` (`value` is TOML),
/// replacing the line the builder wrote or appending one. The file is replaced by a rename.
#[track_caller]
pub fn set_config(daemon: &Daemon, key: &str, value: &str) {
    let path = daemon.config_path();
    let config = fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {} failed: {e}", path.display()));
    let line = format!("{key} = {value}");
    let mut replaced = false;
    let mut text: String = config
        .lines()
        .map(|l| {
            let named = l
                .split_once('=')
                .is_some_and(|(name, _)| name.trim() == key);
            if named {
                replaced = true;
                format!("{line}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    if !replaced {
        text.push_str(&format!("{line}\n"));
    }
    daemon.write_file("config.toml", &text);
}

/// Points the daemon's config at another key directory (for the next start).
#[track_caller]
pub fn share_key_dir(daemon: &Daemon, key_dir: &Path) {
    let dir = key_dir.to_str().expect("temporary paths are UTF-8");
    set_config(daemon, "key_dir", &toml_string(dir));
}

/// `manifest.json` of `key_dir`, parsed; fails the test when it is missing or not JSON.
#[track_caller]
pub fn read_manifest(key_dir: &Path) -> Value {
    let path = key_dir.join("manifest.json");
    let bytes =
        fs::read(&path).unwrap_or_else(|e| panic!("reading {} failed: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{} is not JSON ({e}):\n{}",
            path.display(),
            String::from_utf8_lossy(&bytes)
        )
    })
}

/// Rewrites `key_dir`'s manifest with `edit`, replacing it by a rename as the daemon writes
/// it. The daemons sharing the directory must be stopped.
#[track_caller]
pub fn edit_manifest(key_dir: &Path, edit: impl FnOnce(&mut Vec<Value>)) {
    let mut manifest = read_manifest(key_dir);
    let keys = manifest["keys"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("the manifest has no `keys` array"));
    edit(keys);
    let text = serde_json::to_string_pretty(&manifest).expect("JSON");
    let (path, temp) = (
        key_dir.join("manifest.json"),
        key_dir.join("manifest.json.edited"),
    );
    fs::write(&temp, text).unwrap_or_else(|e| panic!("writing {} failed: {e}", temp.display()));
    fs::rename(&temp, &path)
        .unwrap_or_else(|e| panic!("renaming to {} failed: {e}", path.display()));
}

/// Moves every time in `key_dir`'s manifest `secs` into the past, as if its keys had been
/// made that much earlier: how a test lets a next key outlive its wait without waiting. The
/// daemons sharing the directory must be stopped.
#[track_caller]
pub fn age_manifest(key_dir: &Path, secs: i64) {
    edit_manifest(key_dir, |keys| {
        for key in keys {
            for time in ["created", "activated", "retire_at"] {
                if let Some(t) = key[time].as_i64() {
                    key[time] = Value::from(t - secs);
                }
            }
        }
    });
}

/// `(kid, state)` of every key the manifest names, in its order.
#[track_caller]
pub fn manifest_keys(manifest: &Value) -> Vec<(String, String)> {
    manifest["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("the manifest has no `keys` array: {manifest}"))
        .iter()
        .map(|k| {
            let member = |name: &str| {
                k[name]
                    .as_str()
                    .unwrap_or_else(|| panic!("a manifest key without a string `{name}`: {k}"))
                    .to_owned()
            };
            (member("kid"), member("state"))
        })
        .collect()
}

/// What a crash must never break: the manifest parses, names exactly one active key, and
/// every key it names has its `KID.pem`, mode 0600. Returns the manifest's `(kid, state)`s.
#[track_caller]
pub fn assert_key_dir_consistent(key_dir: &Path) -> Vec<(String, String)> {
    let manifest = read_manifest(key_dir);
    let keys = manifest_keys(&manifest);
    let active = keys.iter().filter(|(_, state)| state == "active").count();
    assert_eq!(
        active, 1,
        "the manifest names {active} active keys: {manifest}"
    );
    for (kid, state) in &keys {
        let pem = key_dir.join(format!("{kid}.pem"));
        let meta = fs::metadata(&pem).unwrap_or_else(|e| {
            panic!(
                "the manifest names the {state} key {kid} but {} is unreadable ({e}); \
                 directory: {:?}; manifest: {manifest}",
                pem.display(),
                listing(key_dir)
            )
        });
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{} is not mode 0600",
            pem.display()
        );
    }
    keys
}

/// The daemon's temporary files (`*.tokendealer-tmp.*`) in `key_dir`.
pub fn temp_files(key_dir: &Path) -> Vec<PathBuf> {
    files::daemon_temp_files(key_dir)
}

/// The names in a directory, for failure messages.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A uniformly random number below `bound` (which must be positive).
pub fn random_below(bound: u64) -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    // The modulo bias is irrelevant for the small bounds tests use.
    u64::from_le_bytes(bytes) % bound
}

/// How long the frozen JWKS server waits for a request head.
const SERVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A JWKS frozen as a verifier's cache holds it: served on loopback, unchanged, until dropped.
/// PyJWT fetches only `http(s)` URLs, so the old document gets a server of its own.
pub struct FrozenJwks {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    server: Option<JoinHandle<()>>,
}

impl FrozenJwks {
    /// Serves `jwks` to every request until dropped.
    pub fn serve(jwks: &Value) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let addr = listener.local_addr().expect("the bound address");
        let stop = Arc::new(AtomicBool::new(false));
        let body = jwks.to_string();
        let stopped = stop.clone();
        let server = thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(mut stream) = stream {
                    answer(&mut stream, &body);
                }
            }
        });
        Self {
            addr,
            stop,
            server: Some(server),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }
}

impl Drop for FrozenJwks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}

/// Reads a request head and answers `200` with the JSON body; errors just end the exchange.
fn answer(stream: &mut TcpStream, body: &str) {
    let _ = stream.set_read_timeout(Some(SERVE_TIMEOUT));
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_seconds_of_known_times() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), 0);
        assert_eq!(unix_seconds("2000-03-01T00:00:00Z"), 951_868_800);
        assert_eq!(unix_seconds("2026-01-02T03:04:05Z"), 1_767_323_045);
        assert_eq!(unix_seconds("2024-02-29T23:59:59.5Z"), 1_709_251_199);
    }
}
