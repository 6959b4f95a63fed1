//! Faults: the daemon killed at random moments and at exact system calls while it writes the
//! clients file or the key directory, writes that fail with ENOSPC or EIO, and key files
//! damaged under a running daemon.
//!
//! After every fault the files still load (the daemon starts on them and `check-config`
//! accepts them), every change the admin tool acknowledged is there, no temporary file
//! outlives a restart, and no token carries a `kid` that the JWKS fetched right after it
//! lacks.
//!
//! Random kill moments come from a seeded PRNG: a failing loop prints its seed, and
//! `TOKENDEALER_FAULT_SEED=SEED` replays it. Exact moments and I/O errors come from strace
//! attached to the running daemon for one request (`-e inject=…`).
//!
//! Every token request names an `X-Forwarded-For` address of its own (these daemons trust
//! loopback as a proxy): the checks make many requests that fail on purpose, which would
//! otherwise get `127.0.0.1` throttled.

use std::{
    fs,
    net::Ipv4Addr,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed},
    thread,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde_json::Value;
use tokendealer_tests::{
    Daemon, DaemonBuilder, ISSUER, Output, Reply, TestClient,
    faults::{self, Pending, Prng, Strace},
    files,
    http::{self, Request},
    jwt, keys, secret_hash,
};

use crate::API;

const JWKS_PATH: &str = "/.well-known/jwks.json";

/// Rounds of the random-kill loops here. With `clients_file.rs` (50 `clients add`) and
/// `keys.rs` (30 `keys rotate --now`), the daemon survives 200 kills at random moments. Each
/// round restarts the daemon, which sets the pace.
const SECRET_ROTATION_KILLS: usize = 60;
const CLIENT_ADD_KILLS: usize = 30;
const KEY_ROTATION_KILLS: usize = 30;

/// Uninterrupted runs of a loop's command that time it before the kills begin.
const TIMING_RUNS: usize = 3;

/// Every system call that renames; which of them libc uses depends on the architecture.
const RENAMES: &str = "?rename,?renameat,?renameat2";

/// A daemon that believes `X-Forwarded-For` from loopback (see the module docs). ES256:
/// cheap to generate, and the algorithm is not what these tests are about.
fn builder() -> DaemonBuilder {
    Daemon::builder()
        .algorithm("ES256")
        .config("trusted_proxies = [\"127.0.0.1/32\"]")
}

/// The client whose tokens show that issuance goes on after a fault.
fn issuing_client() -> TestClient {
    TestClient::new("issuing").audiences(&[API])
}

/// An address in 10.128.0.0/9 that no earlier request of this test run used.
fn fresh_address() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    Ipv4Addr::from(0x0a80_0000 | (NEXT.fetch_add(1, Relaxed) & 0x007f_ffff))
}

/// `POST /oauth/token` for `id`/`secret` (Basic), from an address of its own.
#[track_caller]
fn token_for(daemon: &Daemon, id: &str, secret: &str) -> Reply {
    let body = http::form_body(&[("grant_type", "client_credentials")]);
    daemon.request(Request {
        method: "POST",
        url: daemon.url("/oauth/token"),
        headers: vec![
            (
                "content-type",
                "application/x-www-form-urlencoded".to_owned(),
            ),
            ("authorization", http::basic_header(id, secret)),
            ("x-forwarded-for", fresh_address().to_string()),
        ],
        body: Some(body.into_bytes()),
    })
}

/// The `kid` in a token's header.
#[track_caller]
fn kid_of(token: &str) -> String {
    let jws = jwt::decode(token);
    jws.header["kid"]
        .as_str()
        .unwrap_or_else(|| panic!("a token without a kid: {}", jws.header))
        .to_owned()
}

fn publishes(jwks: &Value, kid: &str) -> bool {
    jwks["keys"]
        .as_array()
        .is_some_and(|keys| keys.iter().any(|k| k["kid"] == kid))
}

/// A token for `client`; fails the test unless the daemon issues one whose `kid` the JWKS
/// fetched right after it publishes.
#[track_caller]
fn published_token(daemon: &Daemon, client: &TestClient, context: &str) -> String {
    let reply = token_for(daemon, &client.id, &client.secret);
    assert_eq!(
        reply.status, 200,
        "{context}: no token for `{}`:\n{reply}",
        client.id
    );
    let token = reply.json()["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{context}: no `access_token` string:\n{reply}"))
        .to_owned();
    let kid = kid_of(&token);
    let jwks = daemon.jwks();
    assert!(
        publishes(&jwks, &kid),
        "{context}: a token carries kid {kid}, which the JWKS fetched right after it lacks: {jwks}"
    );
    token
}

/// PyJWT, which shares no code with the daemon, accepts a fresh token of `client`.
#[track_caller]
fn independently_verified(daemon: &Daemon, client: &TestClient, context: &str) {
    let token = published_token(daemon, client, context);
    jwt::pyjwt_verify(&daemon.url(JWKS_PATH), &token, ISSUER, API);
}

/// The client ids `tokendealer clients list --json` shows.
#[track_caller]
fn listed_ids(daemon: &Daemon) -> Vec<String> {
    let output = daemon.admin(&["clients", "list", "--json"]);
    output.assert_success();
    let list: Value = serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{output}"));
    list.as_array()
        .unwrap_or_else(|| panic!("`clients list --json` is not an array:\n{output}"))
        .iter()
        .filter_map(|c| c["id"].as_str().map(str::to_owned))
        .collect()
}

/// The one key of `state` in `(kid, state)` pairs from the manifest.
#[track_caller]
fn kid_in<'a>(keys: &'a [(String, String)], state: &str) -> &'a str {
    let found: Vec<&str> = keys
        .iter()
        .filter(|(_, s)| s == state)
        .map(|(kid, _)| kid.as_str())
        .collect();
    match found[..] {
        [kid] => kid,
        _ => panic!("expected one {state} key in the manifest: {keys:?}"),
    }
}

fn manifest_keys(key_dir: &Path) -> Vec<(String, String)> {
    keys::manifest_keys(&keys::read_manifest(key_dir))
}

/// The `KID.pem` files in `key_dir`, sorted.
fn pem_files(key_dir: &Path) -> Vec<String> {
    keys::listing(key_dir)
        .into_iter()
        .filter(|name| name.ends_with(".pem"))
        .collect()
}

/// The `KID.pem` names the manifest calls for, sorted.
fn expected_pems(keys: &[(String, String)]) -> Vec<String> {
    let mut names: Vec<String> = keys.iter().map(|(kid, _)| format!("{kid}.pem")).collect();
    names.sort();
    names
}

#[track_caller]
fn assert_no_temp_files(dirs: &[&Path], context: &str) {
    for dir in dirs {
        let left = files::daemon_temp_files(dir);
        assert!(
            left.is_empty(),
            "{context}: temporary files remain in {}: {left:?}",
            dir.display()
        );
    }
}

/// What a killed daemon must leave: files that `check-config` accepts, a key directory whose
/// manifest names only keys that exist, and, once restarted, no temporary file and tokens
/// whose `kid` is published. Returns how many clients `check-config` counted.
#[track_caller]
fn restart_after_kill(daemon: &mut Daemon, issuing: &TestClient, context: &str) -> usize {
    let checked = faults::check_config(daemon);
    assert!(
        checked.status.success(),
        "{context}: `check-config` refuses what the kill left:\n{checked}"
    );
    let clients = checked
        .stdout
        .lines()
        .find_map(|line| {
            let (n, _) = line.split_once(": ok (")?.1.split_once(' ')?;
            n.parse().ok()
        })
        .unwrap_or_else(|| {
            panic!("{context}: `check-config` does not count the clients:\n{checked}")
        });
    keys::assert_key_dir_consistent(&keys::key_dir(daemon));
    daemon.start();
    assert_no_temp_files(&[daemon.dir(), &keys::key_dir(daemon)], context);
    published_token(daemon, issuing, context);
    clients
}

// --- SIGKILL at random moments ---

/// One admin command that a loop runs again and again, killing the daemon under it.
trait Interrupted {
    /// The next command's arguments.
    fn next(&mut self) -> Vec<String>;
    /// After the restart: whatever the tool acknowledged is there, and nothing is broken.
    /// `clients` is how many clients the file holds (`None` when the daemon was not killed).
    fn check(&mut self, daemon: &Daemon, output: &Output, clients: Option<usize>, context: &str);
}

/// `rounds` times: issue the command, SIGKILL the daemon a random number of microseconds
/// later, check what the kill left, restart.
#[track_caller]
fn kill_loop(
    daemon: &mut Daemon,
    issuing: &TestClient,
    rounds: usize,
    command: &mut impl Interrupted,
) {
    let mut rng = Prng::from_env_or_random();
    // Kill moments are drawn up to one and a half commands after issuing, so that they fall
    // while the tool starts, while the daemon writes, and after it answered. A command's
    // duration depends on the machine's load, so it is learnt as the loop goes.
    let mut typical = Duration::ZERO;
    for _ in 0..TIMING_RUNS {
        let args = command.next();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (output, took) = faults::spawn_admin(daemon, &args).finish();
        output.assert_success();
        command.check(daemon, &output, None, "an uninterrupted run");
        typical = typical.max(took);
    }

    let mut acknowledged = 0;
    for round in 1..=rounds {
        let args = command.next();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let window = u64::try_from((typical * 3 / 2).as_micros()).unwrap_or(u64::MAX);
        let delay = Duration::from_micros(rng.below(window));
        let context = format!(
            "seed {}, round {round}: `tokendealer {}` with SIGKILL {}µs after it was issued",
            rng.seed(),
            args.join(" "),
            delay.as_micros()
        );
        let pending: Pending = faults::spawn_admin(daemon, &args);
        faults::spin_until(pending.issued() + delay);
        daemon.signal(Signal::SIGKILL);
        daemon.wait_exit();
        let (output, took) = pending.finish();
        if output.status.success() {
            acknowledged += 1;
            typical = (typical * 3 + took) / 4;
        } else {
            // Cut off: the change may or may not be made, but the tool fails the usual way.
            assert_eq!(output.code(), Some(1), "{context}:\n{output}");
            // It would have taken longer than the delay: a load spike the estimate missed.
            typical = typical.max(delay + delay / 8);
        }
        let clients = restart_after_kill(daemon, issuing, &context);
        command.check(daemon, &output, Some(clients), &context);
    }
    assert!(
        (1..rounds).contains(&acknowledged),
        "seed {}: {acknowledged} of {rounds} commands were acknowledged; the kills should land \
         both before and after the daemon answers",
        rng.seed()
    );
}

/// `clients rotate-secret ID --keep-old 0`, each time for a client not rotated before, so
/// that an interrupted rotation never hides what the next one did.
struct SecretRotations {
    /// How many clients the file holds, which rotations never change.
    clients: usize,
    pool: Vec<TestClient>,
    current: Option<TestClient>,
    rotated: Vec<TestClient>,
}

impl Interrupted for SecretRotations {
    fn next(&mut self) -> Vec<String> {
        let client = self.pool.pop().expect("a client for every round");
        let args = [
            "clients",
            "rotate-secret",
            &client.id,
            "--keep-old",
            "0",
            "--json",
        ]
        .map(str::to_owned)
        .to_vec();
        self.current = Some(client);
        args
    }

    fn check(&mut self, daemon: &Daemon, output: &Output, clients: Option<usize>, context: &str) {
        assert!(
            clients.is_none_or(|n| n == self.clients),
            "{context}: the clients file holds {clients:?} clients rather than {}",
            self.clients
        );
        let old = self.current.take().expect("a rotation was issued");
        let old_reply = token_for(daemon, &old.id, &old.secret);
        if output.status.success() {
            let new = old.secret(&output.printed_secret());
            assert_eq!(
                token_for(daemon, &new.id, &new.secret).status,
                200,
                "{context}: the acknowledged new secret of `{}` does not work",
                new.id
            );
            old_reply.assert_oauth_error(401, "invalid_client");
            self.rotated.push(new);
        } else {
            // Either secret may be current (the count above shows the client is there).
            assert!(
                [200, 401].contains(&old_reply.status),
                "{context}:\n{old_reply}"
            );
        }
    }
}

#[test]
fn sigkill_during_secret_rotation_loses_no_acknowledged_secret() {
    let issuing = issuing_client();
    let pool: Vec<TestClient> = (0..SECRET_ROTATION_KILLS + TIMING_RUNS)
        .map(|n| TestClient::new(&format!("rotating-{n}")))
        .collect();
    let mut builder = builder().client(&issuing);
    for client in &pool {
        builder = builder.client(client);
    }
    let mut daemon = builder.start();
    let mut rotations = SecretRotations {
        clients: pool.len() + 1,
        pool,
        current: None,
        rotated: Vec::new(),
    };
    kill_loop(&mut daemon, &issuing, SECRET_ROTATION_KILLS, &mut rotations);
    for client in &rotations.rotated {
        token_for(&daemon, &client.id, &client.secret).assert_status(200);
    }
    independently_verified(&daemon, &issuing, "after the loop");
}

/// `clients add ID`, a new id each time.
struct ClientAdds {
    issued: usize,
    added: Vec<TestClient>,
}

impl Interrupted for ClientAdds {
    fn next(&mut self) -> Vec<String> {
        self.issued += 1;
        [
            "clients",
            "add",
            &format!("added-{}", self.issued),
            "--json",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    fn check(&mut self, daemon: &Daemon, output: &Output, clients: Option<usize>, context: &str) {
        if output.status.success() {
            let client =
                TestClient::new(&format!("added-{}", self.issued)).secret(&output.printed_secret());
            let reply = token_for(daemon, &client.id, &client.secret);
            assert_eq!(
                reply.status, 200,
                "{context}: the acknowledged client `{}` gets no token:\n{reply}",
                client.id
            );
            self.added.push(client);
        }
        // The issuing client, every acknowledged one, and perhaps some that were cut off.
        let acknowledged = self.added.len() + 1;
        assert!(
            clients.is_none_or(|n| (acknowledged..=self.issued + 1).contains(&n)),
            "{context}: the clients file holds {clients:?} clients; {acknowledged} (with the \
             issuing one) were acknowledged of {} issued",
            self.issued + 1
        );
    }
}

#[test]
fn sigkill_during_client_registration_loses_no_acknowledged_client() {
    let issuing = issuing_client();
    let mut daemon = builder().client(&issuing).start();
    let mut adds = ClientAdds {
        issued: 0,
        added: Vec::new(),
    };
    kill_loop(&mut daemon, &issuing, CLIENT_ADD_KILLS, &mut adds);
    let listed = listed_ids(&daemon);
    for client in &adds.added {
        assert!(
            listed.contains(&client.id),
            "`{}` was acknowledged but is gone",
            client.id
        );
        token_for(&daemon, &client.id, &client.secret).assert_status(200);
    }
}

/// `keys rotate --now`.
struct KeyRotations {
    key_dir: PathBuf,
    issuing: TestClient,
    before: Vec<(String, String)>,
}

impl Interrupted for KeyRotations {
    fn next(&mut self) -> Vec<String> {
        self.before = manifest_keys(&self.key_dir);
        ["keys", "rotate", "--now", "--json"]
            .map(str::to_owned)
            .to_vec()
    }

    fn check(&mut self, daemon: &Daemon, output: &Output, _: Option<usize>, context: &str) {
        let after = manifest_keys(&self.key_dir);
        let active = kid_in(&after, "active");
        let old_active = kid_in(&self.before, "active");
        let old_next = kid_in(&self.before, "next");
        if output.status.success() {
            let rotated: Value = serde_json::from_str(&output.stdout)
                .unwrap_or_else(|e| panic!("{context}: stdout is not JSON ({e}):\n{output}"));
            assert_eq!(
                rotated["active"].as_str(),
                Some(old_next),
                "{context}: the rotation promoted another key than the next one:\n{output}"
            );
            assert_eq!(
                active, old_next,
                "{context}: an acknowledged rotation was lost: before {:?}, after {after:?}",
                self.before
            );
        } else {
            assert!(
                active == old_active || active == old_next,
                "{context}: the active key is neither the old active nor the old next one: \
                 before {:?}, after {after:?}",
                self.before
            );
        }
        assert_eq!(
            pem_files(&self.key_dir),
            expected_pems(&after),
            "{context}: the key files are not those the manifest names"
        );
        let kid = kid_of(&published_token(daemon, &self.issuing, context));
        assert_eq!(
            kid, active,
            "{context}: tokens are not signed by the active key"
        );
    }
}

#[test]
fn sigkill_during_key_rotation_loses_no_acknowledged_rotation() {
    let issuing = issuing_client();
    let mut daemon = builder().client(&issuing).start();
    let mut rotations = KeyRotations {
        key_dir: keys::key_dir(&daemon),
        issuing: issuing.clone(),
        before: Vec::new(),
    };
    kill_loop(&mut daemon, &issuing, KEY_ROTATION_KILLS, &mut rotations);
    independently_verified(&daemon, &issuing, "after the loop");
}

// --- SIGKILL at an exact system call (strace) ---

/// `-e` arguments that kill the daemon at the `nth` rename it makes once attached. Counted
/// rather than matched by `-P`: strace's path filter looks only at the first argument of
/// `rename`, the staged name, which ends in a counter. strace counts per thread, and a write
/// runs on one.
fn kill_at_rename(nth: u32) -> Vec<String> {
    vec![
        "-e".into(),
        format!("trace={RENAMES},fsync"),
        "-e".into(),
        format!("inject={RENAMES}:signal=SIGKILL:when={nth}"),
    ]
}

/// strace arguments that kill the daemon at the `nth` fsync of the directory `dir`.
fn kill_at_dir_fsync(dir: &Path, nth: u32) -> Vec<String> {
    vec![
        "-P".into(),
        canonical(dir),
        "-e".into(),
        "trace=fsync".into(),
        "-e".into(),
        format!("inject=fsync:signal=SIGKILL:when={nth}"),
    ]
}

/// strace's `-P` compares the paths the kernel reports, which are canonical.
fn canonical(path: &Path) -> String {
    fs::canonicalize(path)
        .unwrap_or_else(|e| panic!("canonicalising {} failed: {e}", path.display()))
        .to_str()
        .expect("temporary paths are UTF-8")
        .to_owned()
}

/// A file in the daemon's directory for the trace, kept with the rest on failure.
fn trace_file(daemon: &Daemon) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    daemon
        .dir()
        .join(format!("strace-{}.txt", NEXT.fetch_add(1, Relaxed)))
}

/// Runs `tokendealer ARGS` with strace attached to the daemon, `strace_args` arranging a
/// SIGKILL at one exact system call; returns the trace once the daemon is dead.
#[track_caller]
fn killed_at(daemon: &mut Daemon, strace_args: &[String], args: &[&str]) -> String {
    let pid = faults::daemon_pid(daemon);
    let strace_args: Vec<&str> = strace_args.iter().map(String::as_str).collect();
    let strace = Strace::attach(pid, &trace_file(daemon), &strace_args);
    let output = daemon.admin(args);
    let trace = strace.wait_end();
    let status = daemon.wait_exit();
    assert_eq!(
        status.signal(),
        Some(Signal::SIGKILL as i32),
        "the daemon did not die of the injected SIGKILL ({status}); trace:\n{trace}"
    );
    assert_eq!(
        output.code(),
        Some(1),
        "the tool fails the usual way when the daemon dies under it:\n{output}"
    );
    trace
}

/// The trace shows `syscall` entered with `path` and never returning.
#[track_caller]
fn assert_killed_in(trace: &str, syscall: &str, path: &str) {
    assert!(
        trace.lines().any(|l| l.contains(syscall)
            && l.contains(path)
            && (l.ends_with("= ?") || l.ends_with("<unfinished ...>"))),
        "the trace shows no `{syscall}` on {path} cut short by the kill:\n{trace}"
    );
}

/// Two writes of the clients file: one adds a client, one replaces a secret.
struct ClientsWrites {
    issuing: TestClient,
    victim: TestClient,
}

const NEWCOMER: &str = "newcomer";

impl ClientsWrites {
    fn new() -> Self {
        Self {
            issuing: issuing_client(),
            victim: TestClient::new("victim"),
        }
    }

    fn daemon(&self) -> Daemon {
        builder().client(&self.issuing).client(&self.victim).start()
    }

    fn commands(&self) -> [Vec<&str>; 2] {
        [
            vec!["clients", "add", NEWCOMER, "--json"],
            vec![
                "clients",
                "rotate-secret",
                &self.victim.id,
                "--keep-old",
                "0",
                "--json",
            ],
        ]
    }

    /// Whether `text` holds the change `args` asked for.
    fn changed(&self, args: &[&str], text: &str) -> bool {
        if args[1] == "add" {
            text.contains(NEWCOMER)
        } else {
            !text.contains(&secret_hash(&self.victim.secret))
        }
    }

    /// The daemon serves the change `args` asked for.
    #[track_caller]
    fn assert_served(&self, daemon: &Daemon, args: &[&str], context: &str) {
        if args[1] == "add" {
            assert!(
                listed_ids(daemon).contains(&NEWCOMER.to_owned()),
                "{context}: `{NEWCOMER}` is not served"
            );
        } else {
            token_for(daemon, &self.victim.id, &self.victim.secret)
                .assert_oauth_error(401, "invalid_client");
        }
    }

    /// The daemon serves none of the change `args` asked for.
    #[track_caller]
    fn assert_not_served(&self, daemon: &Daemon, args: &[&str], context: &str) {
        if args[1] == "add" {
            assert!(
                !listed_ids(daemon).contains(&NEWCOMER.to_owned()),
                "{context}: `{NEWCOMER}` is served"
            );
        } else {
            let reply = token_for(daemon, &self.victim.id, &self.victim.secret);
            assert_eq!(
                reply.status, 200,
                "{context}: the old secret stopped working:\n{reply}"
            );
        }
    }
}

#[test]
fn sigkill_at_the_clients_file_rename_keeps_the_old_file() {
    let writes = ClientsWrites::new();
    for args in writes.commands() {
        let context = format!("`tokendealer {}` killed at its rename", args.join(" "));
        let mut daemon = writes.daemon();
        let path = daemon.clients_path();
        let before = fs::read_to_string(&path).expect("reading the clients file");

        let trace = killed_at(&mut daemon, &kill_at_rename(1), &args);
        assert_killed_in(&trace, "rename", path.to_str().expect("UTF-8 path"));
        assert_eq!(
            fs::read_to_string(&path).expect("reading the clients file"),
            before,
            "{context}: the clients file changed"
        );
        let staged = files::daemon_temp_files(daemon.dir());
        let [staged] = &staged[..] else {
            panic!("{context}: not exactly one staged file: {staged:?}\n{trace}")
        };
        let staged_text = fs::read_to_string(staged).expect("reading the staged file");
        assert!(
            writes.changed(&args, &staged_text),
            "{context}: the staged file does not hold the change:\n{staged_text}"
        );

        restart_after_kill(&mut daemon, &writes.issuing, &context);
        assert_eq!(
            fs::read_to_string(&path).expect("reading the clients file"),
            before,
            "{context}: the restart changed the clients file"
        );
        writes.assert_not_served(&daemon, &args, &context);
    }
}

#[test]
fn sigkill_at_the_directory_fsync_after_the_clients_file_rename_keeps_the_new_file() {
    let writes = ClientsWrites::new();
    for args in writes.commands() {
        let context = format!(
            "`tokendealer {}` killed at the directory fsync",
            args.join(" ")
        );
        let mut daemon = writes.daemon();
        let path = daemon.clients_path();
        let dir = canonical(daemon.dir());

        let strace_args = kill_at_dir_fsync(daemon.dir(), 1);
        let trace = killed_at(&mut daemon, &strace_args, &args);
        assert_killed_in(&trace, "fsync", &format!("<{dir}>"));
        let text = fs::read_to_string(&path).expect("reading the clients file");
        assert!(
            writes.changed(&args, &text),
            "{context}: the renamed file does not hold the change:\n{text}"
        );
        assert_no_temp_files(&[daemon.dir()], &context);

        restart_after_kill(&mut daemon, &writes.issuing, &context);
        writes.assert_served(&daemon, &args, &context);
    }
}

/// Where in a rotation strace kills the daemon, and whether the rotation is then made.
struct RotationKill {
    at: &'static str,
    strace_args: fn(&Path) -> Vec<String>,
    /// The syscall the trace must show cut short, and on what: a name in the key directory,
    /// or "" for the directory itself.
    killed_in: (&'static str, &'static str),
    rotated: bool,
}

/// A rotation writes the new key's file, then the manifest, each by a rename followed by
/// an fsync of the directory: `when=` counts them.
const ROTATION_KILLS: [RotationKill; 4] = [
    RotationKill {
        at: "the new key file's rename",
        strace_args: |_| kill_at_rename(1),
        killed_in: ("rename", ".pem"),
        rotated: false,
    },
    RotationKill {
        at: "the directory fsync after the new key file",
        strace_args: |dir| kill_at_dir_fsync(dir, 1),
        killed_in: ("fsync", ""),
        rotated: false,
    },
    RotationKill {
        at: "the manifest's rename",
        strace_args: |_| kill_at_rename(2),
        killed_in: ("rename", "manifest.json"),
        rotated: false,
    },
    RotationKill {
        at: "the directory fsync after the manifest",
        strace_args: |dir| kill_at_dir_fsync(dir, 2),
        killed_in: ("fsync", ""),
        rotated: true,
    },
];

#[test]
fn sigkill_at_each_write_of_a_key_rotation_leaves_a_key_dir_that_loads() {
    let issuing = issuing_client();
    for kill in &ROTATION_KILLS {
        let context = format!("`keys rotate --now` killed at {}", kill.at);
        let mut daemon = builder().client(&issuing).start();
        let key_dir = keys::key_dir(&daemon);
        let before = manifest_keys(&key_dir);
        let manifest_before = fs::read(key_dir.join("manifest.json")).expect("the manifest");

        let trace = killed_at(
            &mut daemon,
            &(kill.strace_args)(&key_dir),
            &["keys", "rotate", "--now"],
        );
        let (syscall, name) = kill.killed_in;
        let name = if name.is_empty() {
            format!("<{}>", canonical(&key_dir))
        } else {
            name.to_owned()
        };
        assert_killed_in(&trace, syscall, &name);
        keys::assert_key_dir_consistent(&key_dir);
        // Killed at a rename, the staged file is still there for the restart to remove;
        // killed after one, nothing is staged.
        let staged = keys::temp_files(&key_dir);
        assert_eq!(
            staged.len(),
            usize::from(syscall == "rename"),
            "{context}: staged files {staged:?}\n{trace}"
        );
        let manifest_after = fs::read(key_dir.join("manifest.json")).expect("the manifest");
        assert_eq!(
            manifest_after != manifest_before,
            kill.rotated,
            "{context}: the manifest {} changed",
            if kill.rotated { "has not" } else { "has" }
        );

        restart_after_kill(&mut daemon, &issuing, &context);
        let after = manifest_keys(&key_dir);
        assert_eq!(
            pem_files(&key_dir),
            expected_pems(&after),
            "{context}: after the restart the key files are not those the manifest names"
        );
        let expected_active = if kill.rotated {
            kid_in(&before, "next")
        } else {
            kid_in(&before, "active")
        };
        assert_eq!(kid_in(&after, "active"), expected_active, "{context}");
        let token = published_token(&daemon, &issuing, &context);
        assert_eq!(kid_of(&token), expected_active, "{context}");
    }
}

// --- ENOSPC and EIO (strace) ---

/// `-P` arguments for every name the daemon (process `pid`) may stage `file` under in
/// `dir`: strace matches whole paths, and the name ends in a per-process counter (which a
/// fresh daemon has not taken far).
fn staged_names(dir: &Path, file: &str, pid: i32) -> Vec<String> {
    let dir = canonical(dir);
    (0..64)
        .flat_map(|n| {
            [
                "-P".to_owned(),
                format!("{dir}/.{file}.tokendealer-tmp.{pid}.{n}"),
            ]
        })
        .collect()
}

/// Runs `tokendealer ARGS` with strace attached, `strace_args` making a system call fail;
/// returns what the tool did once strace has detached again. The trace must show the
/// failure injected into a call on `target` (a name, or `<DIR>` for a directory's fd), or
/// the test would prove nothing.
#[track_caller]
fn failed_under(daemon: &Daemon, strace_args: &[String], args: &[&str], target: &str) -> Output {
    let pid = faults::daemon_pid(daemon);
    let strace_args: Vec<&str> = strace_args.iter().map(String::as_str).collect();
    let strace = Strace::attach(pid, &trace_file(daemon), &strace_args);
    let output = daemon.admin(args);
    let trace = strace.detach();
    assert!(
        trace
            .lines()
            .any(|l| l.contains("(INJECTED)") && l.contains(target)),
        "no failure was injected on {target} during `tokendealer {}`:\n{output}\ntrace:\n{trace}",
        args.join(" ")
    );
    output
}

/// The tool fails with one sentence that names the failure.
#[track_caller]
fn assert_clear_failure(output: &Output, names: &str) {
    output.assert_code(1);
    let lines = output.stderr_lines();
    assert_eq!(lines.len(), 1, "the error is one sentence:\n{output}");
    assert!(
        lines[0].contains(names),
        "the error should say `{names}`:\n{output}"
    );
}

/// `fault` (an `inject=` spec) hits the staged clients file of an add and of a secret
/// rotation: each fails clearly and leaves the file and the clients as they were.
#[track_caller]
fn assert_failed_clients_writes_change_nothing(fault: &str, names: &str) {
    let writes = ClientsWrites::new();
    let daemon = writes.daemon();
    let path = daemon.clients_path();
    let pid = faults::daemon_pid(&daemon);
    let mut strace_args = staged_names(daemon.dir(), "clients.toml", pid);
    strace_args.extend(["-e".into(), "trace=write,fsync".into()]);
    strace_args.extend(["-e".into(), format!("inject={fault}")]);

    for args in writes.commands() {
        let context = format!("`tokendealer {}` under {fault}", args.join(" "));
        let before = fs::read_to_string(&path).expect("reading the clients file");
        let output = failed_under(
            &daemon,
            &strace_args,
            &args,
            ".clients.toml.tokendealer-tmp.",
        );
        assert_clear_failure(&output, names);
        assert_eq!(
            fs::read_to_string(&path).expect("reading the clients file"),
            before,
            "{context}: the clients file changed"
        );
        assert_no_temp_files(&[daemon.dir()], &context);
        writes.assert_not_served(&daemon, &args, &context);
        independently_verified(&daemon, &writes.issuing, &context);
    }

    // Nothing is left stuck: with the fault gone, the same change is made.
    let output = daemon.admin(&["clients", "add", NEWCOMER, "--json"]);
    output.assert_success();
    token_for(&daemon, NEWCOMER, &output.printed_secret()).assert_status(200);
}

#[test]
fn enospc_writing_the_clients_file_fails_the_change_and_keeps_the_file() {
    assert_failed_clients_writes_change_nothing("write:error=ENOSPC", "No space left on device");
}

#[test]
fn eio_syncing_the_clients_file_fails_the_change_and_keeps_the_file() {
    assert_failed_clients_writes_change_nothing("fsync:error=EIO", "Input/output error");
}

/// A rotation under `strace_args` fails clearly; the keys, the JWKS and the manifest stay as
/// they were and tokens go on being signed by the same key.
#[track_caller]
fn assert_failed_rotation_changes_nothing(
    strace_args: &dyn Fn(i32, &Path) -> Vec<String>,
    target: &str,
    names: &str,
) {
    let issuing = issuing_client();
    let daemon = builder().client(&issuing).start();
    let key_dir = keys::key_dir(&daemon);
    let manifest = fs::read(key_dir.join("manifest.json")).expect("the manifest");
    let listed = keys::list(&daemon);
    let jwks = daemon.jwks();
    let active = keys::only(&listed, "active").kid.clone();
    let pid = faults::daemon_pid(&daemon);

    let output = failed_under(
        &daemon,
        &strace_args(pid, &key_dir),
        &["keys", "rotate", "--now"],
        target,
    );
    assert_clear_failure(&output, names);
    assert_eq!(
        fs::read(key_dir.join("manifest.json")).expect("the manifest"),
        manifest,
        "the manifest changed"
    );
    assert_eq!(keys::list(&daemon), listed, "the keys changed");
    assert_eq!(daemon.jwks(), jwks, "the JWKS changed");
    assert_no_temp_files(&[&key_dir], "after the failed rotation");
    let token = published_token(&daemon, &issuing, "after the failed rotation");
    assert_eq!(kid_of(&token), active);
    independently_verified(&daemon, &issuing, "after the failed rotation");

    // With the fault gone a rotation is made, and clears what the failed one left.
    let rotated = keys::rotate_now(&daemon);
    let after = manifest_keys(&key_dir);
    assert_eq!(
        pem_files(&key_dir),
        expected_pems(&after),
        "the key files are not those the manifest names"
    );
    let token = published_token(&daemon, &issuing, "after the next rotation");
    assert_eq!(Some(kid_of(&token).as_str()), rotated["active"].as_str());
}

#[test]
fn enospc_writing_the_key_manifest_fails_the_rotation_and_keeps_the_keys() {
    assert_failed_rotation_changes_nothing(
        &|pid, key_dir| {
            let mut args = staged_names(key_dir, "manifest.json", pid);
            args.extend(["-e".into(), "trace=write,fsync".into()]);
            args.extend(["-e".into(), "inject=write:error=ENOSPC".into()]);
            args
        },
        ".manifest.json.tokendealer-tmp.",
        "No space left on device",
    );
}

#[test]
fn eio_syncing_a_new_key_file_fails_the_rotation_and_keeps_the_keys() {
    // The new key's name is its thumbprint, unknown beforehand, so no `-P`: the first fsync
    // of the thread that rotates is the one of the staged key file.
    assert_failed_rotation_changes_nothing(
        &|_, _| {
            vec![
                "-e".into(),
                "trace=fsync".into(),
                "-e".into(),
                "inject=fsync:error=EIO:when=1".into(),
            ]
        },
        ".pem.tokendealer-tmp.",
        "Input/output error",
    );
}

/// An fsync of the directory that fails after the rename: the new file is already in place,
/// so a report of failure would be untrue unless the old one came back.
#[test]
fn eio_syncing_the_directory_after_the_clients_file_rename_is_reported_truthfully() {
    let writes = ClientsWrites::new();
    for args in writes.commands() {
        let context = format!(
            "`tokendealer {}` with EIO from the directory fsync",
            args.join(" ")
        );
        let daemon = writes.daemon();
        let path = daemon.clients_path();
        let dir = canonical(daemon.dir());
        let strace_args = vec![
            "-P".into(),
            dir.clone(),
            "-e".into(),
            "trace=fsync".into(),
            "-e".into(),
            "inject=fsync:error=EIO:when=1".into(),
        ];
        let output = failed_under(&daemon, &strace_args, &args, &format!("<{dir}>"));
        // Synchronous: afterwards the daemon serves exactly what the file holds.
        daemon.admin(&["reload"]).assert_success();
        let text = fs::read_to_string(&path).expect("reading the clients file");
        if output.status.success() {
            assert!(
                writes.changed(&args, &text),
                "{context}: acknowledged, but the file lacks the change:\n{text}"
            );
            writes.assert_served(&daemon, &args, &context);
        } else {
            assert!(
                !writes.changed(&args, &text),
                "{context}: the tool reported a failure, yet the change is in the clients file \
                 and served:\n{output}"
            );
            writes.assert_not_served(&daemon, &args, &context);
        }
        independently_verified(&daemon, &writes.issuing, &context);
    }
}

#[test]
fn eio_syncing_the_directory_after_the_manifest_rename_is_reported_truthfully() {
    let issuing = issuing_client();
    let daemon = builder().client(&issuing).start();
    let key_dir = keys::key_dir(&daemon);
    let before = manifest_keys(&key_dir);
    // The second fsync of the directory in a rotation follows the manifest's rename.
    let strace_args = vec![
        "-P".into(),
        canonical(&key_dir),
        "-e".into(),
        "trace=fsync".into(),
        "-e".into(),
        "inject=fsync:error=EIO:when=2".into(),
    ];
    let output = failed_under(
        &daemon,
        &strace_args,
        &["keys", "rotate", "--now", "--json"],
        &format!("<{}>", canonical(&key_dir)),
    );
    let on_disk = manifest_keys(&key_dir);
    let active = kid_in(&on_disk, "active").to_owned();
    if output.status.success() {
        assert_eq!(active, kid_in(&before, "next"), "acknowledged but not made");
    } else {
        assert_eq!(
            active,
            kid_in(&before, "active"),
            "the tool reported a failure, yet the manifest names the rotated keys:\n{output}"
        );
    }
    await_active(&daemon, &active);
    let token = published_token(&daemon, &issuing, "after the directory fsync failed");
    assert_eq!(kid_of(&token), active);
    independently_verified(&daemon, &issuing, "after the directory fsync failed");
}

/// How soon a daemon follows a manifest changed on disk (the watcher debounces for 100 ms).
const ADOPTION_DEADLINE: Duration = Duration::from_secs(2);

/// Polls `keys list` until the daemon's active key is `kid`.
#[track_caller]
fn await_active(daemon: &Daemon, kid: &str) {
    let deadline = Instant::now() + ADOPTION_DEADLINE;
    loop {
        let listed = keys::list(daemon);
        if keys::only(&listed, "active").kid == kid {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{ADOPTION_DEADLINE:?} on, the daemon's active key is not {kid}, which the manifest \
             names: {listed:#?}"
        );
    }
}

// --- key files damaged under a running daemon ---

/// What can happen to a private key file behind the daemon's back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Damage {
    Deleted,
    /// Cut in half, as an interrupted copy leaves it.
    Truncated,
    GroupReadable,
}

impl Damage {
    const ALL: [Self; 3] = [Self::Deleted, Self::Truncated, Self::GroupReadable];

    #[track_caller]
    fn apply(self, pem: &Path) {
        match self {
            Self::Deleted => fs::remove_file(pem)
                .unwrap_or_else(|e| panic!("removing {} failed: {e}", pem.display())),
            Self::Truncated => {
                let text = fs::read(pem).expect("reading the key file");
                fs::write(pem, &text[..text.len() / 2])
                    .unwrap_or_else(|e| panic!("truncating {} failed: {e}", pem.display()));
            }
            Self::GroupReadable => files::set_mode(pem, 0o640),
        }
    }
}

/// Issues tokens back to back while `busy` runs, each checked against the JWKS fetched
/// right after it. A refusal is allowed only as a clean server error; at least one token
/// is requested whatever `busy` takes.
#[track_caller]
fn tokens_around<T>(
    daemon: &Daemon,
    client: &TestClient,
    context: &str,
    busy: impl FnOnce() -> T,
) -> T {
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        let issuing = scope.spawn(|| {
            let mut first = true;
            while first || !stop.load(Relaxed) {
                first = false;
                let reply = token_for(daemon, &client.id, &client.secret);
                if reply.status == 200 {
                    let token = reply.json()["access_token"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{context}: no `access_token`:\n{reply}"))
                        .to_owned();
                    let kid = kid_of(&token);
                    let jwks = daemon.jwks();
                    assert!(
                        publishes(&jwks, &kid),
                        "{context}: a token carries kid {kid}, which the JWKS fetched right \
                         after it lacks: {jwks}"
                    );
                } else {
                    assert!(
                        reply.status >= 500 && reply.json()["error"].is_string(),
                        "{context}: neither a token nor a clean server error:\n{reply}"
                    );
                }
            }
        });
        let result = busy();
        stop.store(true, Relaxed);
        if let Err(panic) = issuing.join() {
            std::panic::resume_unwind(panic);
        }
        result
    })
}

/// The daemon refuses to start with one sentence naming `pem` (and, for a readable key,
/// what to run).
#[track_caller]
fn assert_refuses_to_start_over(daemon: &mut Daemon, pem: &Path, damage: Damage) {
    let (sentence, output) = daemon.start_refused();
    assert!(
        sentence.contains(pem.to_str().expect("UTF-8 path")),
        "{damage:?}: the sentence names the key file:\n{output}"
    );
    if damage == Damage::GroupReadable {
        assert!(sentence.contains("chmod 600"), "{output}");
    }
}

#[test]
fn a_key_file_damaged_while_serving_never_yields_a_token_with_an_unpublished_kid() {
    let issuing = issuing_client();
    for damage in Damage::ALL {
        let context = format!("the active key file {damage:?}");
        let mut daemon = builder().client(&issuing).start();
        let damaged = keys::only(&keys::list(&daemon), "active").kid.clone();
        let pem = keys::key_dir(&daemon).join(format!("{damaged}.pem"));

        tokens_around(&daemon, &issuing, &context, || damage.apply(&pem));
        let context = format!("{context}, then `keys rotate --now`");
        let rotated = tokens_around(&daemon, &issuing, &context, || {
            daemon.admin(&["keys", "rotate", "--now", "--json"])
        });
        if rotated.status.success() {
            let token = published_token(&daemon, &issuing, &context);
            assert_ne!(kid_of(&token), damaged, "{context}: the damaged key signs");
        } else {
            rotated.assert_code(1);
        }
        let status = daemon.stop();
        assert!(
            status.success(),
            "{context}: exit status after SIGTERM: {status}"
        );

        // A key that can no longer be read never signs again: it is left out when it only
        // verifies (retiring), and the daemon refuses to start when it would sign or when
        // others may read it.
        let context = format!("{context}, then a restart");
        if !rotated.status.success() || damage == Damage::GroupReadable {
            assert_refuses_to_start_over(&mut daemon, &pem, damage);
            continue;
        }
        daemon.start();
        let jwks = daemon.jwks();
        assert!(
            !publishes(&jwks, &damaged),
            "{context}: the damaged key is still published: {jwks}"
        );
        tokens_around(&daemon, &issuing, &context, || ());
        independently_verified(&daemon, &issuing, &context);
    }
}

#[test]
fn an_active_key_file_damaged_while_serving_stops_the_next_start_with_one_sentence() {
    let issuing = issuing_client();
    for damage in Damage::ALL {
        let context = format!("the active key file {damage:?}");
        let mut daemon = builder().client(&issuing).start();
        let active = keys::only(&keys::list(&daemon), "active").kid.clone();
        let pem = keys::key_dir(&daemon).join(format!("{active}.pem"));
        tokens_around(&daemon, &issuing, &context, || damage.apply(&pem));
        let status = daemon.stop();
        assert!(
            status.success(),
            "{context}: exit status after SIGTERM: {status}"
        );
        assert_refuses_to_start_over(&mut daemon, &pem, damage);
    }
}

/// A next key whose file cannot be read is never published, and never promoted: a rotation
/// either signs with a key it can read, or fails and leaves the manifest as it was; either
/// way the daemon starts again.
#[test]
fn a_next_key_file_damaged_before_a_start_is_never_promoted() {
    let issuing = issuing_client();
    for damage in [Damage::Deleted, Damage::Truncated] {
        let context = format!("the next key file {damage:?}");
        let mut daemon = builder().client(&issuing).start();
        let key_dir = keys::key_dir(&daemon);
        let listed = keys::list(&daemon);
        let active = keys::only(&listed, "active").kid.clone();
        let next = keys::only(&listed, "next").kid.clone();
        let pem = key_dir.join(format!("{next}.pem"));
        daemon.stop();
        damage.apply(&pem);

        daemon.start();
        let jwks = daemon.jwks();
        assert!(
            !publishes(&jwks, &next),
            "{context}: the unreadable next key is published: {jwks}"
        );
        let token = published_token(&daemon, &issuing, &context);
        assert_eq!(kid_of(&token), active, "{context}");

        let manifest = fs::read(key_dir.join("manifest.json")).expect("the manifest");
        let context = format!("{context}, then `keys rotate --now`");
        let rotated = tokens_around(&daemon, &issuing, &context, || {
            daemon.admin(&["keys", "rotate", "--now", "--json"])
        });
        if rotated.status.success() {
            let token = published_token(&daemon, &issuing, &context);
            assert_ne!(kid_of(&token), next, "{context}: the unreadable key signs");
        } else {
            assert_clear_failure(&rotated, pem.to_str().expect("UTF-8 path"));
            assert!(
                fs::read(key_dir.join("manifest.json")).expect("the manifest") == manifest,
                "{context}: the rotation failed, yet the manifest changed: it now reads\n{}",
                String::from_utf8_lossy(
                    &fs::read(key_dir.join("manifest.json")).expect("the manifest")
                )
            );
        }

        let context = format!("{context}, then a restart");
        daemon.restart();
        let token = published_token(&daemon, &issuing, &context);
        assert_ne!(kid_of(&token), next, "{context}: the unreadable key signs");
        independently_verified(&daemon, &issuing, &context);
    }
}

// --- a stop signal during an admin change ---

#[test]
fn a_change_in_progress_when_the_daemon_stops_is_answered() {
    // The rename that commits an added client is held up; SIGTERM comes meanwhile. The
    // change lands either way, so its answer, which holds the only copy of the secret, must
    // reach the tool before the daemon exits.
    let mut daemon = builder().client(&issuing_client()).start();
    let pid = faults::daemon_pid(&daemon);
    let strace = Strace::attach(
        pid,
        &trace_file(&daemon),
        &[
            "-e",
            &format!("trace={RENAMES}"),
            "-e",
            &format!("inject={RENAMES}:delay_enter=2s"),
        ],
    );
    let pending = faults::spawn_admin(&daemon, &["clients", "add", "mid-stop", "--json"]);
    // The staged file is there from its write until its rename: the change is under way.
    files::wait_in(
        daemon.dir(),
        "a staged clients file",
        Duration::from_secs(30),
        || !files::daemon_temp_files(daemon.dir()).is_empty(),
    );
    daemon.signal(Signal::SIGTERM);
    let (output, _) = pending.finish();
    output.assert_success();
    let secret = output.printed_secret();
    let trace = strace.wait_end();
    let status = daemon.wait_exit();
    assert!(status.success(), "exit status: {status}; trace:\n{trace}");

    daemon.start();
    daemon.access_token(&TestClient::new("mid-stop").secret(&secret), &[]);
}
