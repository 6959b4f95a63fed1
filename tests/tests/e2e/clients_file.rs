//! The clients file as people and tools change it: every way of saving it is live within a
//! second, a broken save never takes clients away and says what is wrong, and the daemon's
//! own writes survive a crash, a full disk and a hand edit made at the same moment.
//!
//! Waiting is always a loop of real token requests against a deadline, never a sleep.
//!
//! The daemon throttles failed client authentication per source address: after 20 failures
//! `127.0.0.1` would be answered 429 for seconds, whoever asks. Polling for a client that is
//! not there yet fails on purpose, so these daemons trust `127.0.0.1` as a proxy and every
//! request names an `X-Forwarded-For` address of its own; the throttle then never answers in
//! place of the registry these tests are about.

use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering::Relaxed},
        mpsc,
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use nix::sys::signal::Signal;
use serde_json::Value;
use tokendealer_tests::{
    Daemon, DaemonBuilder, Reply, TestClient, bins,
    daemon::{admin_command, lines_around},
    files::{self, KubeVolume, Tmpfs},
    http::{self, Request},
    random_secret, secret_hash,
};

/// How soon a saved edit must be live. The watcher debounces for 100 ms; the rest is slack
/// for a busy machine.
const APPLY_WITHIN: Duration = Duration::from_secs(1);

/// How soon an edit inotify cannot follow (a directory replaced, the target of a symlink in
/// another directory) must be live: the daemon looks every 5 s; the rest is slack.
const POLLED_WITHIN: Duration = Duration::from_secs(8);

/// How long a `clients add` may take to report back before the crash test gives up on it.
const CLI_REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a hand-written old secret has left when it is saved.
const OLD_SECRET_LEFT: Duration = Duration::from_secs(4);

/// How long after its `expires` an old secret may still work: the file counts whole
/// seconds, and a request may be on its way when the time passes.
const EXPIRY_SLACK: Duration = Duration::from_secs(2);

const RELOADS: &str = "tokendealer_clients_reloads_total";
const RELOAD_FAILURES: &str = "tokendealer_clients_reload_failures_total";
const LAST_RELOAD_SUCCESS: &str = "tokendealer_clients_last_reload_success_timestamp_seconds";

/// A daemon that believes `X-Forwarded-For` from loopback (see the module docs). ES256: these
/// tests restart daemons often and sign many tokens; the algorithm is not what they test.
fn builder() -> DaemonBuilder {
    Daemon::builder()
        .algorithm("ES256")
        .config("trusted_proxies = [\"127.0.0.1/32\"]")
}

/// An address in 10.0.0.0/8 that no earlier request of this test run used.
fn fresh_address() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    Ipv4Addr::from(0x0a00_0000 | (NEXT.fetch_add(1, Relaxed) & 0x00ff_ffff))
}

/// `POST /oauth/token` for `id`/`secret` (Basic), from an address of its own.
#[track_caller]
fn token_for(daemon: &Daemon, id: &str, secret: &str, params: &[(&str, &str)]) -> Reply {
    let mut pairs = vec![("grant_type", "client_credentials")];
    pairs.extend_from_slice(params);
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
        body: Some(http::form_body(&pairs).into_bytes()),
    })
}

#[track_caller]
fn token(daemon: &Daemon, client: &TestClient) -> Reply {
    token_for(daemon, &client.id, &client.secret, &[])
}

#[track_caller]
fn assert_works(daemon: &Daemon, client: &TestClient) {
    token(daemon, client).assert_status(200);
}

#[track_caller]
fn assert_refused(daemon: &Daemon, client: &TestClient) {
    token(daemon, client).assert_oauth_error(401, "invalid_client");
}

/// Token requests for `client`, back to back, until one is answered `status`; fails the test
/// if none is by `deadline`.
#[track_caller]
fn await_status(daemon: &Daemon, client: &TestClient, status: u16, deadline: Instant) -> Reply {
    loop {
        let reply = token(daemon, client);
        if reply.status == status {
            return reply;
        }
        assert!(
            Instant::now() < deadline,
            "`{}` was still answered {} rather than {status} when the deadline passed \
             ({APPLY_WITHIN:?} after the save):\n{reply}",
            client.id,
            reply.status
        );
    }
}

/// `client` gets a token within [`APPLY_WITHIN`] of `saved`.
#[track_caller]
fn works_within(daemon: &Daemon, client: &TestClient, saved: Instant) {
    await_status(daemon, client, 200, saved + APPLY_WITHIN);
}

/// `client` is refused (401 `invalid_client`) within [`APPLY_WITHIN`] of `saved`.
#[track_caller]
fn refused_within(daemon: &Daemon, client: &TestClient, saved: Instant) {
    await_status(daemon, client, 401, saved + APPLY_WITHIN)
        .assert_oauth_error(401, "invalid_client");
}

/// The value of an unlabelled metric in `/metrics`.
#[track_caller]
fn metric(daemon: &Daemon, name: &str) -> i64 {
    let reply = daemon.get("/metrics");
    reply.assert_status(200);
    let text = reply.text();
    text.lines()
        .find_map(|line| {
            let (metric, value) = line.split_once(' ')?;
            (metric == name).then(|| value.trim().parse::<i64>().ok())?
        })
        .unwrap_or_else(|| panic!("no integer sample `{name}` in /metrics:\n{text}"))
}

/// Polls `/metrics` until `name` exceeds `floor`; fails the test if it has not by `deadline`.
#[track_caller]
fn await_metric_above(daemon: &Daemon, name: &str, floor: i64, deadline: Instant) -> i64 {
    loop {
        let value = metric(daemon, name);
        if value > floor {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "`{name}` stayed at {value} (not above {floor}) until the deadline"
        );
    }
}

/// The `last_reload` object of `tokendealer status --json`.
#[track_caller]
fn last_reload(daemon: &Daemon) -> Value {
    let output = daemon.admin(&["status", "--json"]);
    output.assert_success();
    let status: Value = serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}):\n{output}"));
    let last = status["last_reload"].clone();
    assert!(last.is_object(), "no `last_reload` object:\n{output}");
    last
}

/// Polls `status --json` until `last_reload.ok` is `ok`; returns that `last_reload`.
#[track_caller]
fn await_last_reload(daemon: &Daemon, ok: bool, deadline: Instant) -> Value {
    loop {
        let last = last_reload(daemon);
        if last["ok"] == ok {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "`last_reload.ok` was not {ok} by the deadline: {last}"
        );
    }
}

/// The 1-based line of the first (`nth` = 0) or a later occurrence of `needle` in `text`.
#[track_caller]
fn line_of(text: &str, needle: &str, nth: usize) -> u64 {
    let (offset, _) = text
        .match_indices(needle)
        .nth(nth)
        .unwrap_or_else(|| panic!("`{needle}` occurs fewer than {} times in:\n{text}", nth + 1));
    text[..offset].bytes().filter(|&b| b == b'\n').count() as u64 + 1
}

/// `clients add ID --json`, which must succeed: the secret it printed.
#[track_caller]
fn add_client(daemon: &Daemon, id: &str) -> String {
    let output = daemon.admin(&["clients", "add", id, "--json"]);
    output.assert_success();
    output.printed_secret()
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
        .map(|c| {
            c["id"]
                .as_str()
                .unwrap_or_else(|| panic!("a listed client without an id:\n{output}"))
                .to_owned()
        })
        .collect()
}

/// A uniform random number below `n`.
fn random_below(n: u64) -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    u64::from_le_bytes(bytes) % n
}

// --- every way of saving the file is followed ---

/// One edit as an admin makes it: `stable` stays, `leaving` goes, `arriving` comes.
struct Edit {
    stable: TestClient,
    leaving: TestClient,
    arriving: TestClient,
}

impl Edit {
    fn new() -> Self {
        Self {
            stable: TestClient::new("stable"),
            leaving: TestClient::new("leaving"),
            arriving: TestClient::new("arriving"),
        }
    }

    fn before(&self) -> String {
        files::clients_text([&self.stable, &self.leaving])
    }

    fn after(&self) -> String {
        files::clients_text([&self.stable, &self.arriving])
    }

    fn daemon(&self) -> Daemon {
        builder().client(&self.stable).client(&self.leaving).start()
    }

    /// `save` writes the edited text; both changes must be live within a second of it.
    #[track_caller]
    fn assert_followed(&self, daemon: &Daemon, save: impl FnOnce(&[u8])) {
        self.assert_followed_within(daemon, APPLY_WITHIN, save);
    }

    /// `save` writes the edited text; both changes must be live `within` of it.
    #[track_caller]
    fn assert_followed_within(&self, daemon: &Daemon, within: Duration, save: impl FnOnce(&[u8])) {
        assert_works(daemon, &self.stable);
        assert_works(daemon, &self.leaving);
        assert_refused(daemon, &self.arriving);
        save(self.after().as_bytes());
        let saved = Instant::now();
        await_status(daemon, &self.arriving, 200, saved + within);
        await_status(daemon, &self.leaving, 401, saved + within)
            .assert_oauth_error(401, "invalid_client");
        assert_works(daemon, &self.stable);
    }
}

#[test]
fn rename_replace_is_live_within_a_second() {
    let edit = Edit::new();
    let daemon = edit.daemon();
    let path = daemon.clients_path();
    edit.assert_followed(&daemon, |text| files::write_by_rename(&path, text));
}

#[test]
fn in_place_truncate_and_write_is_live_within_a_second() {
    let edit = Edit::new();
    let daemon = edit.daemon();
    let path = daemon.clients_path();
    edit.assert_followed(&daemon, |text| files::write_in_place(&path, text));
}

#[test]
fn vim_backup_and_write_is_live_within_a_second() {
    let edit = Edit::new();
    let daemon = edit.daemon();
    let path = daemon.clients_path();
    edit.assert_followed(&daemon, |text| files::write_like_vim(&path, text));
}

#[test]
fn delete_then_recreate_is_live_within_a_second() {
    let edit = Edit::new();
    let daemon = edit.daemon();
    let path = daemon.clients_path();
    edit.assert_followed(&daemon, |text| files::delete_and_recreate(&path, text));
}

#[test]
fn kubernetes_volume_swap_is_live_within_a_second() {
    let edit = Edit::new();
    let mut daemon = builder().write();
    let mut volume = KubeVolume::create(&daemon.dir().join("volume"), edit.before().as_bytes());
    files::use_clients_file(&daemon, &volume.clients_file());
    daemon.start();
    edit.assert_followed(&daemon, |text| volume.update(text));
    assert!(
        !daemon.dir().join("volume/..2026_01_01_a").exists(),
        "the update removes the old data directory, so only the new one can be read"
    );
}

/// The clients file in a directory of its own under the daemon's, holding `text`.
fn clients_in_subdirectory(daemon: &Daemon, dir: &str, text: &str) -> std::path::PathBuf {
    let dir = daemon.dir().join(dir);
    fs::create_dir_all(&dir).expect("creating the clients directory");
    let path = dir.join("clients.toml");
    files::write_by_rename(&path, text.as_bytes());
    files::set_mode(&path, 0o600);
    path
}

/// The clients file lives in `etc/`; `swap(daemon, etc, after)` puts a new `etc/` holding
/// the text `after` in its place. The new clients must be live within [`POLLED_WITHIN`],
/// and a later edit in the new directory as quickly as any (it is watched).
#[track_caller]
fn assert_directory_swap_followed(swap: impl FnOnce(&Daemon, &Path, &str)) {
    let edit = Edit::new();
    let mut daemon = builder().write();
    let path = clients_in_subdirectory(&daemon, "etc", &edit.before());
    files::use_clients_file(&daemon, &path);
    daemon.start();
    assert_works(&daemon, &edit.leaving);
    swap(&daemon, path.parent().expect("a directory"), &edit.after());
    let saved = Instant::now();
    await_status(&daemon, &edit.arriving, 200, saved + POLLED_WITHIN);
    await_status(&daemon, &edit.leaving, 401, saved + POLLED_WITHIN);

    let later = TestClient::new("later");
    files::write_by_rename(
        &path,
        files::clients_text([&edit.stable, &edit.arriving, &later]).as_bytes(),
    );
    works_within(&daemon, &later, Instant::now());
}

#[test]
fn a_replaced_directory_is_followed() {
    // `mv etc.new etc`: the watch stays on the old directory's inode; the daemon notices the
    // directory changed and watches the new one.
    assert_directory_swap_followed(|daemon, etc, after| {
        let staged = clients_in_subdirectory(daemon, "etc.new", after);
        fs::rename(etc, daemon.dir().join("etc.old")).expect("moving etc away");
        fs::rename(staged.parent().expect("a directory"), etc).expect("moving etc.new into place");
    });
}

#[test]
fn a_directory_deleted_and_made_again_is_followed() {
    // `rm -rf etc; mkdir etc`: the new directory may even get the old one's inode number;
    // the watch went with the old one and must be set on the new.
    assert_directory_swap_followed(|daemon, etc, after| {
        fs::remove_dir_all(etc).expect("removing etc");
        clients_in_subdirectory(daemon, "etc", after);
    });
}

#[test]
fn an_edit_of_a_symlink_target_elsewhere_is_followed() {
    // clients.toml links to a file in another directory (kept in a git checkout, say); an
    // edit there changes no entry of the watched directory.
    let edit = Edit::new();
    let mut daemon = builder().write();
    let target = clients_in_subdirectory(&daemon, "checkout", &edit.before());
    let link = daemon.dir().join("etc").join("clients.toml");
    fs::create_dir_all(link.parent().expect("a directory")).expect("creating etc");
    symlink(&target, &link).expect("linking clients.toml");
    files::use_clients_file(&daemon, &link);
    daemon.start();
    edit.assert_followed_within(&daemon, POLLED_WITHIN, |text| {
        files::write_in_place(&target, text);
    });

    // An admin edit writes through the link: it stays a link, and the target changes.
    daemon
        .admin(&["clients", "add", "through-link"])
        .assert_success();
    assert!(
        fs::symlink_metadata(&link)
            .expect("the link's metadata")
            .file_type()
            .is_symlink(),
        "the admin edit replaced the link with a file"
    );
    let text = fs::read_to_string(&target).expect("reading the target");
    assert!(text.contains("[clients.through-link]"), "{text}");
}

#[test]
fn disabled_client_is_refused_within_a_second() {
    let stable = TestClient::new("stable");
    let client = TestClient::new("to-disable");
    let daemon = builder().client(&stable).client(&client).start();
    assert_works(&daemon, &client);
    files::write_by_rename(
        &daemon.clients_path(),
        files::clients_text([&stable, &client.clone().disabled()]).as_bytes(),
    );
    let saved = Instant::now();
    refused_within(&daemon, &client, saved);
    assert_works(&daemon, &stable);
}

// --- a broken save keeps the previous clients and says why ---

/// Saves `broken` over a file holding `old`: `old` must keep getting tokens, the failure must
/// show in `status --json` (on one of `lines`, when given, with a reason containing
/// `reason_has`) and in `/metrics`, and the fixed file saved next must be applied.
#[track_caller]
fn assert_broken_save_is_kept_out(
    old: &TestClient,
    broken: &[u8],
    lines: &[u64],
    reason_has: &str,
) {
    let daemon = builder().client(old).start();
    let path = daemon.clients_path();
    let failures = metric(&daemon, RELOAD_FAILURES);
    let last_success = metric(&daemon, LAST_RELOAD_SUCCESS);

    files::write_by_rename(&path, broken);
    let saved = Instant::now();
    await_metric_above(&daemon, RELOAD_FAILURES, failures, saved + APPLY_WITHIN);
    assert_works(&daemon, old);

    let last = last_reload(&daemon);
    assert_eq!(last["ok"], false, "last_reload: {last}");
    assert!(last["at"].is_string(), "last_reload says when: {last}");
    assert_eq!(
        last["file"].as_str(),
        path.to_str(),
        "last_reload names the file: {last}"
    );
    if !lines.is_empty() {
        let line = last["line"].as_u64();
        assert!(
            line.is_some_and(|l| lines.contains(&l)),
            "last_reload should name line {lines:?}: {last}"
        );
    }
    let reason = last["reason"].as_str().unwrap_or_default();
    assert!(
        !reason.trim().is_empty() && reason.contains(reason_has),
        "last_reload.reason should mention `{reason_has}`: {last}"
    );
    assert_eq!(
        metric(&daemon, LAST_RELOAD_SUCCESS),
        last_success,
        "a failed reload is not a success"
    );

    let new = TestClient::new("new");
    files::write_by_rename(&path, files::clients_text([old, &new]).as_bytes());
    let fixed = Instant::now();
    works_within(&daemon, &new, fixed);
    assert_works(&daemon, old);
    let last = await_last_reload(&daemon, true, fixed + APPLY_WITHIN);
    assert!(last.get("reason").is_none_or(Value::is_null), "{last}");
    assert!(metric(&daemon, LAST_RELOAD_SUCCESS) >= last_success);
}

#[test]
fn garbage_bytes_keep_the_previous_clients_and_are_reported() {
    let old = TestClient::new("old");
    // A PNG header: not UTF-8, so not TOML; no line to point at.
    let garbage = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\xff\xfe\xfd\0";
    assert_broken_save_is_kept_out(&old, garbage, &[], "");
}

#[test]
fn truncated_file_keeps_the_previous_clients_and_names_the_line() {
    let old = TestClient::new("old");
    let whole = files::clients_text([&old, &TestClient::new("second")]);
    // Cut in the middle of the second table's hash, as a copy interrupted half-way leaves it.
    let second = whole
        .find("[clients.\"second\"]")
        .expect("the second table");
    let cut = whole[second..].find("sha256:").expect("its hash") + second + 20;
    let truncated = &whole[..cut];
    let line = truncated.bytes().filter(|&b| b == b'\n').count() as u64 + 1;
    assert_broken_save_is_kept_out(&old, truncated.as_bytes(), &[line], "");
}

#[test]
fn unknown_key_keeps_the_previous_clients_and_names_the_line() {
    let old = TestClient::new("old");
    let text = format!("{}scope = [\"read\"]\n", files::clients_text([&old]));
    let line = line_of(&text, "scope = ", 0);
    assert_broken_save_is_kept_out(&old, text.as_bytes(), &[line], "scope");
}

#[test]
fn duplicate_client_id_keeps_the_previous_clients_and_names_the_line() {
    let old = TestClient::new("old");
    let twin = TestClient::new("old");
    let text = files::clients_text([&old, &twin]);
    let line = line_of(&text, "[clients.\"old\"]", 1);
    assert_broken_save_is_kept_out(&old, text.as_bytes(), &[line], "duplicate");
}

#[test]
fn malformed_hash_keeps_the_previous_clients_and_names_the_client() {
    let old = TestClient::new("old");
    let text = format!(
        "{}[clients.broken-hash]\naudiences = []\nsecret_hashes = [\"sha256:abc\"]\n",
        files::clients_text([&old])
    );
    // The hash's own line, not its table's header.
    let line = line_of(&text, "sha256:abc", 0);
    assert_broken_save_is_kept_out(&old, text.as_bytes(), &[line], "broken-hash");
}

/// A lifetime of a thousand years (a typo) would keep every key that signed with it in the
/// JWKS for as long; one under a second would issue tokens expired on arrival.
#[test]
fn a_token_ttl_out_of_bounds_keeps_the_previous_clients_and_names_the_line() {
    let old = TestClient::new("old");
    for ttl in ["1000y", "500ms"] {
        let text = format!(
            "{}[clients.typo]\nsecret_hashes = [\"{}\"]\ntoken_ttl = \"{ttl}\"\n",
            files::clients_text([&old]),
            secret_hash("x")
        );
        let line = line_of(&text, "token_ttl", 0);
        assert_broken_save_is_kept_out(&old, text.as_bytes(), &[line], "token_ttl");
    }
}

#[test]
fn deleted_file_keeps_the_previous_clients_and_its_return_is_applied() {
    let old = TestClient::new("old");
    let daemon = builder().client(&old).start();
    let path = daemon.clients_path();
    let failures = metric(&daemon, RELOAD_FAILURES);

    fs::remove_file(&path).expect("removing the clients file");
    let removed = Instant::now();
    await_metric_above(&daemon, RELOAD_FAILURES, failures, removed + APPLY_WITHIN);
    assert_works(&daemon, &old);
    let last = last_reload(&daemon);
    assert_eq!(last["ok"], false, "{last}");
    assert!(
        last["reason"]
            .as_str()
            .is_some_and(|r| !r.trim().is_empty()),
        "{last}"
    );

    let new = TestClient::new("new");
    fs::write(&path, files::clients_text([&old, &new])).expect("recreating the clients file");
    let recreated = Instant::now();
    works_within(&daemon, &new, recreated);
    assert_works(&daemon, &old);
    await_last_reload(&daemon, true, recreated + APPLY_WITHIN);
}

// --- bursts and load ---

#[test]
fn hundred_saves_in_a_second_end_on_the_last() {
    const VERSIONS: usize = 100;
    let stable = TestClient::new("stable");
    let rotating = TestClient::new("rotating");
    let daemon = builder().client(&stable).client(&rotating).start();
    let path = daemon.clients_path();

    // Version N gives `rotating` a new secret and holds `cN` as its only other client.
    let versions: Vec<(TestClient, TestClient)> = (1..=VERSIONS)
        .map(|n| {
            (
                rotating.clone().secret(&random_secret()),
                TestClient::new(&format!("c{n}")),
            )
        })
        .collect();
    let texts: Vec<String> = versions
        .iter()
        .map(|(r, c)| files::clients_text([&stable, r, c]))
        .collect();

    let started = Instant::now();
    for text in &texts {
        files::write_by_rename(&path, text.as_bytes());
    }
    let saved = Instant::now();
    assert!(
        saved - started < Duration::from_secs(1),
        "the {VERSIONS} saves took {:?}; the burst must fit in a second to test anything",
        saved - started
    );

    let (last_rotating, last_client) = &versions[VERSIONS - 1];
    // Polled on the newest id, not on `rotating`: the polls before the reload are failed
    // authentications, and past 50 of them the daemon answers an id's failures with 429,
    // which would hide the 401 for `rotating`'s previous secret checked below.
    works_within(&daemon, last_client, saved);
    assert_works(&daemon, last_rotating);
    assert_works(&daemon, &stable);
    let (previous_rotating, previous_client) = &versions[VERSIONS - 2];
    assert_refused(&daemon, previous_rotating);
    assert_refused(&daemon, previous_client);
    assert_refused(&daemon, &versions[0].1);
    assert_refused(&daemon, &rotating);
}

/// What the request stream saw, by client id and status.
#[derive(Default)]
struct Tally {
    counts: BTreeMap<(String, u16), u64>,
    /// The first answer that breaks the rule, for the failure message.
    first_wrong: Option<Reply>,
}

/// Sets a flag when dropped, so a panicking writer still stops the request stream (and the
/// thread scope can end).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Relaxed);
    }
}

#[test]
fn requests_never_fail_for_unchanged_clients_across_fifty_reloads() {
    const RELOAD_COUNT: i64 = 50;
    // The churning client is asked this seldom so that its own failures stay under the
    // daemon's per-client-id guard (50 failures, then 429s) for the whole test.
    const CHURN_EVERY: Duration = Duration::from_millis(150);

    let stable: Vec<TestClient> = (0..3)
        .map(|i| TestClient::new(&format!("stable-{i}")))
        .collect();
    let churn = TestClient::new("churn");
    let mut start = builder();
    for client in stable.iter().chain([&churn]) {
        start = start.client(client);
    }
    let daemon = start.start();
    let path = daemon.clients_path();
    let reloads = metric(&daemon, RELOADS);
    let done = AtomicBool::new(false);

    let tally = thread::scope(|scope| {
        let stream = scope.spawn(|| {
            let mut tally = Tally::default();
            let mut next_churn = Instant::now();
            while !done.load(Relaxed) {
                for client in &stable {
                    let reply = token(&daemon, client);
                    if reply.status != 200 && tally.first_wrong.is_none() {
                        tally.first_wrong = Some(reply.clone());
                    }
                    *tally
                        .counts
                        .entry((client.id.clone(), reply.status))
                        .or_default() += 1;
                }
                if Instant::now() >= next_churn {
                    next_churn = Instant::now() + CHURN_EVERY;
                    let reply = token(&daemon, &churn);
                    if !matches!(reply.status, 200 | 401) && tally.first_wrong.is_none() {
                        tally.first_wrong = Some(reply.clone());
                    }
                    *tally
                        .counts
                        .entry((churn.id.clone(), reply.status))
                        .or_default() += 1;
                }
            }
            tally
        });

        let stop_stream = StopOnDrop(&done);
        // Each version adds or removes `churn`; the next is saved only once the daemon has
        // applied this one, so every version is a reload of its own.
        for version in 1..=RELOAD_COUNT {
            let mut clients = stable.clone();
            if version % 2 == 0 {
                clients.push(churn.clone());
            }
            files::write_by_rename(&path, files::clients_text(&clients).as_bytes());
            let saved = Instant::now();
            await_metric_above(
                &daemon,
                RELOADS,
                reloads + version - 1,
                saved + APPLY_WITHIN,
            );
        }
        drop(stop_stream);
        stream.join().expect("the request stream panicked")
    });

    // The only answers allowed besides 200: `churn`'s 401s while it is removed.
    let failures: Vec<_> = tally
        .counts
        .iter()
        .filter(|((id, status), _)| *status != 200 && !(*id == churn.id && *status == 401))
        .collect();
    assert!(
        failures.is_empty() && tally.first_wrong.is_none(),
        "answers other than 200 for unchanged clients (or other than 200/401 for `churn`): \
         {failures:?}\nfirst such answer:\n{:?}",
        tally.first_wrong
    );
    for client in &stable {
        assert!(
            tally
                .counts
                .get(&(client.id.clone(), 200))
                .copied()
                .unwrap_or(0)
                > 0,
            "no request for `{}` was made: {:?}",
            client.id,
            tally.counts
        );
    }
    assert!(
        tally.counts.contains_key(&(churn.id.clone(), 401))
            && tally.counts.contains_key(&(churn.id.clone(), 200)),
        "`churn` was never seen both present and removed, so the stream did not span the \
         reloads: {:?}",
        tally.counts
    );
    assert_eq!(
        metric(&daemon, RELOADS) - reloads,
        RELOAD_COUNT,
        "one reload per saved version"
    );
}

// --- SIGHUP ---

/// Only SIGHUP can apply this edit at once: `clients.toml` is a symlink into another
/// directory, whose edits make no event in the watched one. The test waits for the reload
/// SIGHUP announces (RELOADING=1, then READY=1 when it is done), after which the edit holds
/// for the very next request, and the log shows that this reload applied it. The daemon's
/// look at the file every 5 s may come between the save and the signal: such an edit proves
/// nothing, and another is made.
#[test]
fn sighup_applies_a_change_the_watcher_cannot_see() {
    const SIGHUP_LINE: &str = "SIGHUP: reloading";
    const RELOADED: &str = "clients file reloaded";
    const ATTEMPTS: usize = 3;
    let mut was = TestClient::new("old");
    // At debug, the daemon logs its look at an unchanged file.
    let mut daemon = builder().log_level("debug").write();
    let real = daemon.clients_file_elsewhere(std::slice::from_ref(&was));
    daemon.start();
    // The start-up's second look at the file, which would apply an edit saved before it, is
    // over.
    daemon.wait_for_log("the start-up look at the clients file", |log| {
        log.contains("clients file unchanged")
    });
    assert_works(&daemon, &was);

    for attempt in 1..=ATTEMPTS {
        let new = TestClient::new(&format!("new-{attempt}"));
        let loaded = daemon.stderr().matches(RELOADED).count();
        files::write_by_rename(&real, files::clients_text([&new]).as_bytes());
        // Not asked whether `new` is refused yet: the look every 5 s may apply the edit at
        // any moment. The log below tells whether anything did before the signal.
        daemon.signal(Signal::SIGHUP);
        daemon.wait_for_notification("RELOADING=1");
        daemon.wait_for_notification("READY=1");
        // The reload is over: its outcome holds for the very next request.
        assert_works(&daemon, &new);
        assert_refused(&daemon, &was);

        let log = daemon.wait_for_log("the SIGHUP reload's outcome", |log| {
            log.matches(SIGHUP_LINE).count() == attempt
                && lines_around(log, SIGHUP_LINE, RELOADED)
                    .is_some_and(|(before, after)| before > loaded || after > 0)
        });
        let (before, after) =
            lines_around(&log, SIGHUP_LINE, RELOADED).expect("the SIGHUP is logged");
        if before > loaded {
            // The look every 5 s applied it first.
            was = new;
            continue;
        }
        assert_eq!(after, 1, "the SIGHUP reload applied the edit once:\n{log}");
        return;
    }
    panic!(
        "each of {ATTEMPTS} edits was applied before the SIGHUP reload:\n{}",
        daemon.diagnostics()
    );
}

// --- the daemon's own writes ---

/// A hand-written file with comments at the top, inline and between clients.
fn hand_written(hand: &TestClient) -> String {
    format!(
        "# Who may get tokens. Reviewed by the platform team.\n\
         # Only secret hashes live here; the secrets are in the vault.\n\
         \n\
         # The reporting job.\n\
         [clients.{}]  # owner: data team\n\
         secret_hashes = [\"{}\"]  # rotated 2026-01\n\
         audiences = [\"https://reports.example\"]\n\
         \n\
         # New clients go below.\n",
        hand.id,
        secret_hash(&hand.secret)
    )
}

const HAND_COMMENTS: [&str; 5] = [
    "# Who may get tokens. Reviewed by the platform team.",
    "# Only secret hashes live here; the secrets are in the vault.",
    "# The reporting job.",
    "# owner: data team",
    "# rotated 2026-01",
];

#[test]
fn cli_add_keeps_comments_stores_only_hashes_and_mode_0600() {
    let hand = TestClient::new("reports");
    let mut daemon = builder().write();
    let path = daemon.clients_path();
    files::write_by_rename(&path, hand_written(&hand).as_bytes());
    // Readable by the group before; the daemon's write makes it the owner's only.
    files::set_mode(&path, 0o640);
    daemon.start();

    let output = daemon.admin(&[
        "clients",
        "add",
        "svc",
        "--audience",
        "https://a",
        "--scope",
        "read",
    ]);
    output.assert_success();
    let secret = output
        .stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("no secret printed:\n{output}"))
        .trim()
        .to_owned();
    assert!(
        secret.len() >= 32 && secret.bytes().all(|b| b.is_ascii_hexdigit()),
        "the last line should be the secret:\n{output}"
    );

    let text = fs::read_to_string(&path).expect("reading the clients file");
    for comment in HAND_COMMENTS {
        assert!(text.contains(comment), "`{comment}` was lost:\n{text}");
    }
    assert!(
        !text.contains(&secret),
        "the plaintext secret is in the file:\n{text}"
    );
    assert!(
        text.contains(&secret_hash(&secret)),
        "the new secret's sha256 hash is not in the file:\n{text}"
    );
    for line in text
        .lines()
        .filter(|l| l.trim_start().starts_with("secret_hashes"))
    {
        let values: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
        assert!(
            !values.is_empty() && values.iter().all(|v| v.starts_with("sha256:")),
            "a secret_hashes entry that is not a sha256: hash: {line}"
        );
    }
    let mode = fs::metadata(&path)
        .expect("the clients file's metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {:o}", mode & 0o777);

    let reply = token_for(&daemon, "svc", &secret, &[("scope", "read")]);
    reply.assert_status(200);
    assert_works(&daemon, &hand);
}

/// `rotate-secret` and `disable` change values the admin may have commented, in a file an
/// editor saved with CRLF line breaks: the comments stay on their lines, the breaks stay
/// CRLF.
#[test]
fn cli_changes_keep_the_comments_on_the_changed_lines_and_crlf_line_breaks() {
    let hand = TestClient::new("reports");
    let mut daemon = builder().write();
    let path = daemon.clients_path();
    let text = format!(
        "{}disabled = false  # on since the audit\n",
        hand_written(&hand)
    );
    files::write_by_rename(&path, text.replace('\n', "\r\n").as_bytes());
    daemon.start();

    let output = daemon.admin(&["clients", "rotate-secret", &hand.id, "--keep-old", "1h"]);
    output.assert_success();
    daemon
        .admin(&["clients", "disable", &hand.id])
        .assert_success();

    let text = fs::read_to_string(&path).expect("reading the clients file");
    for comment in HAND_COMMENTS.iter().chain(&["# on since the audit"]) {
        assert!(text.contains(comment), "`{comment}` was lost:\n{text}");
    }
    assert!(
        text.contains("disabled = true  # on since the audit\r\n"),
        "the value changed, its comment stayed:\n{text}"
    );
    assert_eq!(
        text.matches('\n').count(),
        text.matches("\r\n").count(),
        "every line break is still CRLF: {text:?}"
    );
    assert_refused(&daemon, &hand);
}

#[test]
fn hand_edit_saved_just_before_a_cli_write_is_kept() {
    let hand = TestClient::new("reports");
    let late = TestClient::new("late");
    let mut daemon = builder().write();
    let path = daemon.clients_path();
    files::write_by_rename(&path, hand_written(&hand).as_bytes());
    daemon.start();

    let edited = format!(
        "{}# Added by hand.\n{}",
        hand_written(&hand),
        late.to_toml()
    );
    files::write_by_rename(&path, edited.as_bytes());
    let saved = Instant::now();
    let secret = &add_client(&daemon, "svc");

    let text = fs::read_to_string(&path).expect("reading the clients file");
    for kept in HAND_COMMENTS
        .iter()
        .chain(&["# Added by hand.", "[clients.\"late\"]"])
    {
        assert!(text.contains(kept), "`{kept}` was lost:\n{text}");
    }
    token_for(&daemon, "svc", secret, &[]).assert_status(200);
    works_within(&daemon, &late, saved);
    assert_works(&daemon, &hand);
}

/// One `tokendealer clients add` the crash test made, and what it answered.
struct Attempt {
    id: String,
    output: tokendealer_tests::Output,
    took: Duration,
}

#[test]
fn sigkill_during_cli_writes_loses_no_acknowledged_client() {
    const ITERATIONS: usize = 50;

    let base = TestClient::new("base");
    let mut daemon = builder().client(&base).start();
    let dir = daemon.dir().to_path_buf();
    let mut acknowledged: Vec<(String, String)> = Vec::new();
    let mut refused = 0usize;
    // The kill comes after a random number of finished adds and then a random spin of up to
    // one add's duration, so it lands anywhere in the next add, its write included. The
    // duration is measured as we go, since it depends on the machine's load.
    let mut typical_add = Duration::from_millis(20);

    for iteration in 0..ITERATIONS {
        let socket = daemon.admin_socket().to_path_buf();
        let finished_before_kill = random_below(4);
        let typical_micros = u64::try_from(typical_add.as_micros()).unwrap_or(u64::MAX);
        let spin = Duration::from_micros(random_below(typical_micros.max(1)));
        let stop = AtomicBool::new(false);
        let (tx, rx) = mpsc::channel::<Attempt>();

        let attempts: Vec<Attempt> = thread::scope(|scope| {
            let socket = &socket;
            let stop = &stop;
            scope.spawn(move || {
                for n in 0.. {
                    if stop.load(Relaxed) {
                        break;
                    }
                    let id = format!("c{iteration}-{n}");
                    let mut cmd = Command::new(bins::tokendealer());
                    cmd.arg("--socket")
                        .arg(socket)
                        .args(["clients", "add", &id, "--json"]);
                    let started = Instant::now();
                    let output = admin_command(cmd);
                    let took = started.elapsed();
                    let failed = !output.status.success();
                    if tx.send(Attempt { id, output, took }).is_err() || failed {
                        break;
                    }
                }
            });
            let _stop = StopOnDrop(stop);
            let mut seen = Vec::new();
            while (seen.len() as u64) < finished_before_kill {
                let attempt = rx
                    .recv_timeout(CLI_REPLY_TIMEOUT)
                    .expect("a `clients add` reports back");
                let failed = !attempt.output.status.success();
                seen.push(attempt);
                if failed {
                    break;
                }
            }
            let until = Instant::now() + spin;
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            daemon.signal(Signal::SIGKILL);
            stop.store(true, Relaxed);
            daemon.wait_exit();
            seen
        })
        .into_iter()
        .chain(rx.try_iter())
        .collect();

        let mut new = Vec::new();
        for attempt in attempts {
            if attempt.output.status.success() {
                typical_add = (typical_add * 3 + attempt.took) / 4;
                new.push((attempt.id, attempt.output.printed_secret()));
            } else {
                // Cut off by the kill: the client may or may not be in the file, but the
                // tool must fail the usual way, not crash.
                attempt.output.assert_code(1);
                refused += 1;
            }
        }

        // The file parses: the daemon becomes ready on it.
        daemon.start();
        let left = files::daemon_temp_files(&dir);
        assert!(
            left.is_empty(),
            "iteration {iteration}: temporary files left after the restart: {left:?}"
        );
        for (id, secret) in &new {
            token_for(&daemon, id, secret, &[]).assert_status(200);
        }
        acknowledged.extend(new);
    }

    assert!(
        acknowledged.len() >= ITERATIONS / 2,
        "only {} adds were acknowledged in {ITERATIONS} iterations ({refused} cut off): the \
         kills came too early to test anything",
        acknowledged.len()
    );
    let listed = listed_ids(&daemon);
    for (id, secret) in &acknowledged {
        assert!(listed.contains(id), "`{id}` was acknowledged but is gone");
        token_for(&daemon, id, secret, &[]).assert_status(200);
    }
    assert_works(&daemon, &base);
}

#[test]
fn full_disk_fails_the_cli_write_and_leaves_the_file_untouched() {
    let tmpfs = Tmpfs::mount("64k");
    let base = TestClient::new("base");
    let mut daemon = builder().write();
    let clients_file = tmpfs.path().join("clients.toml");
    files::write_by_rename(&clients_file, files::clients_text([&base]).as_bytes());
    files::use_clients_file(&daemon, &clients_file);
    daemon.start();
    assert_works(&daemon, &base);

    let before = fs::read(&clients_file).expect("reading the clients file");
    let filler = tmpfs.path().join("filler");
    files::fill_filesystem(&filler);

    let output = daemon.admin(&["clients", "add", "x"]);
    output.assert_code(1);
    assert_eq!(
        output.stderr_lines().len(),
        1,
        "the error is one sentence:\n{output}"
    );
    assert!(
        output.stderr.to_lowercase().contains("space"),
        "the error should say the disk is full:\n{output}"
    );
    assert_eq!(
        fs::read(&clients_file).expect("reading the clients file"),
        before,
        "the clients file changed"
    );
    let left = files::daemon_temp_files(tmpfs.path());
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
    assert_works(&daemon, &base);
    assert!(
        !listed_ids(&daemon).contains(&"x".to_owned()),
        "`x` is listed although its write failed"
    );
    token_for(&daemon, "x", &random_secret(), &[]).assert_oauth_error(401, "invalid_client");

    fs::remove_file(&filler).expect("removing the filler");
    let secret = &add_client(&daemon, "x");
    token_for(&daemon, "x", secret, &[]).assert_status(200);
    assert_works(&daemon, &base);
    // Stopped before the tmpfs is unmounted, so nothing of the daemon's holds it.
    daemon.stop();
}

/// A save caught between its truncation and its write leaves the file empty; an admin edit
/// then would write a file of that one change and drop every other client. It is refused,
/// and the file is left for its writer to finish.
#[test]
fn an_admin_edit_of_an_emptied_file_is_refused_and_drops_no_client() {
    let base = TestClient::new("base");
    let daemon = builder().client(&base).start();
    assert_works(&daemon, &base);
    let path = daemon.clients_path();
    fs::write(&path, b"").expect("emptying the clients file in place");

    let output = daemon.admin(&["clients", "add", "x"]);
    output.assert_code(1);
    assert!(
        output.stderr.contains("empty"),
        "the error should say the file is empty:\n{output}"
    );
    assert!(
        fs::read(&path)
            .expect("reading the clients file")
            .is_empty(),
        "the emptied file was written over"
    );
    assert_works(&daemon, &base);
    assert_eq!(listed_ids(&daemon), ["base"]);
}

/// Edits drop expired secret hashes on the way; a client whose every secret has expired
/// keeps them (an empty list would make the file invalid and refuse every edit).
#[test]
fn a_client_whose_every_secret_has_expired_does_not_block_admin_edits() {
    let base = TestClient::new("base");
    let mut daemon = builder().client(&base).write();
    let path = daemon.clients_path();
    let expired_secret = random_secret();
    let expired_hash = secret_hash(&expired_secret);
    let text = format!(
        "{}\n[clients.gone]\nsecret_hashes = [{{ hash = \"{expired_hash}\", expires = 2020-01-01T00:00:00Z }}]\n",
        fs::read_to_string(&path).expect("reading the clients file")
    );
    files::write_by_rename(&path, text.as_bytes());
    daemon.start();

    token_for(&daemon, "gone", &expired_secret, &[]).assert_oauth_error(401, "invalid_client");
    let secret = &add_client(&daemon, "x");
    token_for(&daemon, "x", secret, &[]).assert_status(200);
    assert_works(&daemon, &base);
    let text = fs::read_to_string(&path).expect("reading the clients file");
    assert!(
        text.contains("[clients.gone]") && text.contains(&expired_hash),
        "the locked-out client kept its expired secret:\n{text}"
    );
    token_for(&daemon, "gone", &expired_secret, &[]).assert_oauth_error(401, "invalid_client");
}

/// A secret kept through a rotation (`{ hash, expires }`) works until its time and is
/// refused from then on, by the clock alone (no reload in between), while the current
/// secret goes on working.
#[test]
fn an_old_secret_works_until_it_expires_then_is_refused() {
    let base = TestClient::new("base");
    let daemon = builder().client(&base).start();
    let path = daemon.clients_path();
    let (old, current) = (random_secret(), random_secret());
    let expires = SystemTime::now() + OLD_SECRET_LEFT;
    let text = format!(
        "{}\n[clients.rotating]\nsecret_hashes = [\"{}\", {{ hash = \"{}\", expires = {} }}]\n",
        fs::read_to_string(&path).expect("reading the clients file"),
        secret_hash(&current),
        secret_hash(&old),
        humantime::format_rfc3339_seconds(expires),
    );
    let saved = Instant::now();
    files::write_by_rename(&path, text.as_bytes());
    let rotating = TestClient::new("rotating").secret(&current);
    works_within(&daemon, &rotating, saved);
    token_for(&daemon, "rotating", &old, &[]).assert_status(200);

    let refused = loop {
        let reply = token_for(&daemon, "rotating", &old, &[]);
        if reply.status != 200 {
            break reply;
        }
        assert!(
            Instant::now() < saved + OLD_SECRET_LEFT + EXPIRY_SLACK,
            "the old secret still works {EXPIRY_SLACK:?} after it expired"
        );
    };
    refused.assert_oauth_error(401, "invalid_client");
    assert!(
        SystemTime::now() + Duration::from_secs(1) >= expires,
        "the old secret was refused before its time ({})",
        humantime::format_rfc3339_seconds(expires)
    );
    assert_works(&daemon, &rotating);
}

/// A page of `clients list` stays under the admin frame limit however long the clients'
/// lists are: 1000 clients with 20 audiences of 60 bytes are about 1.3 MB.
#[test]
fn clients_with_long_audience_lists_are_listed_whole() {
    let audiences: Vec<String> = (0..20)
        .map(|i| format!("https://service-{i:02}.internal.example/{}", "a".repeat(20)))
        .collect();
    let audiences: Vec<&str> = audiences.iter().map(String::as_str).collect();
    let clients: Vec<TestClient> = (0..1000)
        .map(|i| TestClient::new(&format!("c{i:04}")).audiences(&audiences))
        .collect();
    let mut daemon = builder().write();
    daemon.write_clients(&clients);
    daemon.start();

    let ids = listed_ids(&daemon);
    assert_eq!(ids.len(), 1000, "every client is listed");
    assert_eq!(ids.first().map(String::as_str), Some("c0000"));
    assert_eq!(ids.last().map(String::as_str), Some("c0999"));
}

// --- permissions ---

/// The `WARN` lines of the daemon's log that name `path`.
fn warnings_about(daemon: &Daemon, path: &Path) -> Vec<String> {
    let path = path.display().to_string();
    daemon
        .stderr()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(&path))
        .map(str::to_owned)
        .collect()
}

#[test]
fn group_readable_clients_file_is_warned_about() {
    let mut daemon = builder().client(&TestClient::new("a")).write();
    files::set_mode(&daemon.clients_path(), 0o644);
    daemon.start();
    let warnings = warnings_about(&daemon, &daemon.clients_path());
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("group") || w.contains("other")),
        "no warning that the clients file is group/other readable:\n{}",
        daemon.stderr()
    );
}

/// Whoever may write the clients file decides who gets tokens: one that others may write
/// is not loaded. At start the daemon refuses (exit 78, saying what to run); while it runs,
/// a save that leaves the file writable by all is not applied, and the failure is told.
#[test]
fn a_clients_file_others_may_write_is_not_loaded() {
    let first = TestClient::new("a");
    let mut daemon = builder().client(&first).write();
    let path = daemon.clients_path();
    files::set_mode(&path, 0o666);
    let (sentence, _) = daemon.start_refused();
    assert!(
        sentence.contains("writable by others") && sentence.contains("chmod o-w"),
        "{sentence}"
    );

    files::set_mode(&path, 0o600);
    daemon.start();
    let added = TestClient::new("b");
    // Saved already writable by all, as an editor keeping a loose mode would.
    let temp = path.with_extension("saving");
    fs::write(&temp, files::clients_text([&first, &added])).expect("writing the new file");
    files::set_mode(&temp, 0o666);
    let saved = Instant::now();
    fs::rename(&temp, &path).expect("putting the new file in place");
    let failed = await_last_reload(&daemon, false, saved + POLLED_WITHIN);
    assert!(
        failed["reason"]
            .as_str()
            .is_some_and(|r| r.contains("writable by others")),
        "{failed}"
    );
    assert_refused(&daemon, &added);
    assert_works(&daemon, &first);
}

/// A FIFO where the clients file was is refused at once, not waited on: a reload fails
/// saying why, the previous clients keep being served, and a file put back is loaded.
#[test]
fn a_fifo_for_the_clients_file_is_refused_not_waited_on() {
    let first = TestClient::new("a");
    let daemon = builder().client(&first).start();
    let path = daemon.clients_path();
    fs::remove_file(&path).expect("removing the clients file");
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let output = daemon.admin(&["reload"]);
    output.assert_code(1);
    assert!(
        output.stderr.contains("not a regular file"),
        "the refusal says why:\n{output}"
    );
    assert_works(&daemon, &first);

    let added = TestClient::new("b");
    fs::remove_file(&path).expect("removing the FIFO");
    files::write_by_rename(&path, files::clients_text([&first, &added]).as_bytes());
    daemon.admin(&["reload"]).assert_success();
    assert_works(&daemon, &added);
}

#[test]
fn owner_only_clients_file_is_not_warned_about() {
    let daemon = builder().client(&TestClient::new("a")).start();
    let mode = fs::metadata(daemon.clients_path())
        .expect("the clients file's metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the harness writes the clients file 0600");
    let warnings = warnings_about(&daemon, &daemon.clients_path());
    assert!(warnings.is_empty(), "unexpected warnings: {warnings:?}");
}
