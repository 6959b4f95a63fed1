//! The admin socket end to end: every `tokendealer` clients and keys subcommand against a real
//! daemon (human text and `--json`), who may talk on the socket (SO_PEERCRED), what a
//! misbehaving peer costs (its own connection and nothing else), live stats ticks, and
//! `/metrics` moving with real token requests.
//!
//! `status`, `reload` and the no-daemon message are in `admin_cli`.

use std::{
    fs,
    io::{ErrorKind, Read as _, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokendealer_shared::{
    admin::{
        AdminError, ClientFrame, Event, Hello, PROTOCOL_VERSION, Request, Response, ServerFrame,
        StatsTick,
    },
    frame::MAX_FRAME,
};
use tokendealer_tests::{
    Auth, Daemon, Output, TestClient,
    access::{NOBODY, open_socket_to_everyone, own_uid},
    admin_wire::{self, Received},
    bins,
    daemon::admin_command,
    jwt, random_secret, secret_hash,
};

use crate::{API, OTHER_API, now, service_client};

/// The overlap `clients rotate-secret` gives the old secret without `--keep-old` (24h).
const DEFAULT_OVERLAP_SECS: i64 = 24 * 3_600;

/// How long to wait for the stats ticks that should come every second.
const TICKS_WITHIN: Duration = Duration::from_secs(20);

/// The daemon gives up writing to a peer that does not read after this long (`WRITE_TIMEOUT`
/// in `daemon/src/admin.rs`); issuance held up behind such a peer would take at least this.
const DAEMON_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A secret as `tokendealer clients import` takes it without `--force`: 32 characters or more.
fn seed_secret() -> String {
    format!("{}{}", random_secret(), random_secret())
}

// --- running the tool ---

/// Runs `tokendealer ARGS --json`, which must succeed, and parses its stdout as one document.
#[track_caller]
fn admin_json(daemon: &Daemon, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let output = daemon.admin(&args);
    output.assert_success();
    serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{output}"))
}

/// Exit 1, nothing on stdout, and one sentence on stderr that contains each of `needles`.
#[track_caller]
fn assert_fails_with(output: &Output, needles: &[&str]) {
    output.assert_code(1);
    let lines = output.stderr_lines();
    assert_eq!(lines.len(), 1, "one sentence on stderr:\n{output}");
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "the error does not mention `{needle}`:\n{output}"
        );
    }
    assert!(
        output.stdout.trim().is_empty(),
        "a failure prints nothing on stdout:\n{output}"
    );
}

/// `tokendealer clients add ID ARGS`: the new secret, from the human output.
#[track_caller]
fn add_client(daemon: &Daemon, id: &str, args: &[&str]) -> String {
    let mut all = vec!["clients", "add", id];
    all.extend_from_slice(args);
    let output = daemon.admin(&all);
    output.assert_success();
    let secret = output
        .stdout
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_else(|| panic!("no secret printed:\n{output}"))
        .to_owned();
    assert_secret_shape(&secret, &output);
    secret
}

/// At least 128 bits (22 base64 or 32 hex characters), one word a shell need not quote.
#[track_caller]
fn assert_secret_shape(secret: &str, output: &Output) {
    assert!(
        secret.len() >= 22
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b)),
        "`{secret}` does not look like a generated secret of at least 128 bits:\n{output}"
    );
}

/// Every client in `tokendealer clients list --json`.
#[track_caller]
fn list_json(daemon: &Daemon) -> Vec<Value> {
    match admin_json(daemon, &["clients", "list"]) {
        Value::Array(clients) => clients,
        other => panic!("`clients list --json` is not an array: {other:#}"),
    }
}

/// The client `id` in `tokendealer clients list --json`, if it is listed.
#[track_caller]
fn listed(daemon: &Daemon, id: &str) -> Option<Value> {
    list_json(daemon).into_iter().find(|c| c["id"] == id)
}

/// The row of client `id` in `tokendealer clients list`, split into its columns.
#[track_caller]
fn list_row(daemon: &Daemon, id: &str) -> Vec<String> {
    let output = daemon.admin(&["clients", "list"]);
    output.assert_success();
    let header = output.stdout.lines().next().unwrap_or_default();
    for column in ["ID", "AUDIENCES", "SCOPES", "TTL", "ISSUED"] {
        assert!(
            header.contains(column),
            "the header lacks {column}:\n{output}"
        );
    }
    output
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|cells| cells.first().is_some_and(|c| c == id))
        .unwrap_or_else(|| panic!("`{id}` is not listed:\n{output}"))
}

// --- the token endpoint ---

/// The client gets a token on the very next request: the tool returns only once the daemon
/// has applied the change, so the first request after it must see it.
#[track_caller]
fn assert_gets_token_at_once(daemon: &Daemon, id: &str, secret: &str) {
    daemon
        .token_request(Auth::Basic(id, secret), &[])
        .assert_status(200);
}

/// The client is refused as `invalid_client` on the very next request.
#[track_caller]
fn assert_refused_at_once(daemon: &Daemon, id: &str, secret: &str) {
    daemon
        .token_request(Auth::Basic(id, secret), &[])
        .assert_oauth_error(401, "invalid_client");
}

// --- the clients file ---

#[track_caller]
fn clients_file(daemon: &Daemon) -> String {
    fs::read_to_string(daemon.clients_path()).expect("reading clients.toml")
}

/// The file holds each secret's `sha256:` hash and none of the secrets themselves.
#[track_caller]
fn assert_only_hashes_stored(daemon: &Daemon, secrets: &[&str]) {
    let file = clients_file(daemon);
    for secret in secrets {
        assert!(
            !file.contains(secret),
            "clients.toml holds the plaintext secret `{secret}`:\n{file}"
        );
        assert!(
            file.contains(&secret_hash(secret)),
            "clients.toml lacks {} (the hash of `{secret}`):\n{file}",
            secret_hash(secret)
        );
    }
}

// --- times ---

/// Unix seconds of an RFC 3339 UTC time such as `2026-11-28T10:00:00Z` (fraction ignored).
#[track_caller]
fn unix_seconds(time: &str) -> i64 {
    let bad = || -> ! { panic!("`{time}` is not an RFC 3339 UTC time") };
    let (date, clock) = time.split_once('T').unwrap_or_else(|| bad());
    let clock = clock.strip_suffix('Z').unwrap_or_else(|| bad());
    let clock = clock.split('.').next().unwrap_or_else(|| bad());
    let numbers = |text: &str, sep: char| -> Vec<i64> {
        text.split(sep)
            .map(|n| n.parse().unwrap_or_else(|_| bad()))
            .collect()
    };
    let (ymd, hms) = (numbers(date, '-'), numbers(clock, ':'));
    let (Ok([y, m, d]), Ok([hh, mm, ss])) = (<[i64; 3]>::try_from(ymd), <[i64; 3]>::try_from(hms))
    else {
        bad()
    };
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    days * 86_400 + hh * 3_600 + mm * 60 + ss
}

#[test]
fn unix_seconds_of_rfc3339() {
    assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), 0);
    assert_eq!(unix_seconds("2000-03-01T00:00:01Z"), 951_868_801);
    assert_eq!(unix_seconds("2026-11-28T10:00:00.5Z"), 1_795_860_000);
}

/// `actual` is `expected` give or take a minute (the tool and the test read the clock apart).
#[track_caller]
fn assert_about(actual: i64, expected: i64, what: &str) {
    assert!(
        (actual - expected).abs() <= 60,
        "{what} is {actual}, {}s from the expected {expected}",
        actual - expected
    );
}

// --- clients add ---

/// The secret is printed once, works at once, and only its hash reaches the file.
#[test]
fn clients_add_prints_a_secret_that_gets_a_token_at_once_and_stores_only_its_hash() {
    let daemon = Daemon::with_client(&service_client());
    let output = daemon.admin(&["clients", "add", "fresh", "--audience", API]);
    output.assert_success();
    assert!(
        output.stdout.contains("fresh"),
        "the output names the client:\n{output}"
    );
    let secret = output.stdout.lines().last().unwrap_or_default().trim();
    assert_secret_shape(secret, &output);
    assert_eq!(
        output.stdout.matches(secret).count(),
        1,
        "the secret is printed once:\n{output}"
    );
    assert_gets_token_at_once(&daemon, "fresh", secret);
    assert_only_hashes_stored(&daemon, &[secret]);
}

#[test]
fn clients_add_json_gives_the_id_and_a_working_secret() {
    let daemon = Daemon::with_client(&service_client());
    let added = admin_json(&daemon, &["clients", "add", "scripted", "--audience", API]);
    assert_eq!(added["id"], "scripted", "{added:#}");
    let secret = added["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("no `secret` string: {added:#}"));
    assert_gets_token_at_once(&daemon, "scripted", secret);
    assert_only_hashes_stored(&daemon, &[secret]);
}

/// Two secrets generated for two clients differ (they come from a random source).
#[test]
fn clients_add_generates_a_different_secret_each_time() {
    let daemon = Daemon::with_client(&service_client());
    let first = add_client(&daemon, "one", &[]);
    let second = add_client(&daemon, "two", &[]);
    assert_ne!(first, second);
    assert_refused_at_once(&daemon, "one", &second);
}

#[test]
fn clients_list_shows_audiences_scopes_ttl_and_issued_tokens() {
    let daemon = Daemon::with_client(&service_client());
    let secret = add_client(
        &daemon,
        "lister",
        &[
            "--audience",
            API,
            "--audience",
            OTHER_API,
            "--scope",
            "runs:read",
            "--scope",
            "runs:write",
            "--ttl",
            "1h",
        ],
    );
    let before = listed(&daemon, "lister").expect("the new client is listed");
    assert_eq!(before["issued"], 0, "{before:#}");
    assert_eq!(before["last_issued"], Value::Null, "{before:#}");

    for _ in 0..3 {
        let reply = daemon.token_request(Auth::Basic("lister", &secret), &[]);
        reply.assert_status(200);
        assert_eq!(
            reply.json()["expires_in"],
            3_600,
            "the client's ttl:\n{reply}"
        );
    }

    let client = listed(&daemon, "lister").expect("the client is listed");
    assert_eq!(client["audiences"], json!([API, OTHER_API]), "{client:#}");
    assert_eq!(
        client["scopes"],
        json!(["runs:read", "runs:write"]),
        "{client:#}"
    );
    assert_eq!(client["token_ttl"], "1h", "{client:#}");
    assert_eq!(client["disabled"], false, "{client:#}");
    assert_eq!(client["old_secret_until"], Value::Null, "{client:#}");
    assert_eq!(client["issued"], 3, "{client:#}");
    let last = client["last_issued"]
        .as_str()
        .unwrap_or_else(|| panic!("`last_issued` is not a time: {client:#}"));
    assert_about(unix_seconds(last), now(), "last_issued");
    let other = listed(&daemon, "svc.e2e-client_1").expect("the configured client is listed");
    assert_eq!(
        other["issued"], 0,
        "tokens are counted per client: {other:#}"
    );

    let row = list_row(&daemon, "lister");
    assert_eq!(
        row[1..6],
        [
            "enabled".to_owned(),
            format!("{API},{OTHER_API}"),
            "runs:read,runs:write".to_owned(),
            "1h".to_owned(),
            "3".to_owned(),
        ],
        "the row of `lister`: {row:?}"
    );
}

#[test]
fn clients_add_of_an_existing_id_fails_naming_it() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let file = clients_file(&daemon);
    let output = daemon.admin(&["clients", "add", &client.id]);
    assert_fails_with(&output, &[&client.id]);
    assert_eq!(clients_file(&daemon), file, "the file is unchanged");
    daemon.access_token(&client, &[]);
}

#[test]
fn clients_add_refuses_an_invalid_id() {
    let daemon = Daemon::with_client(&service_client());
    let file = clients_file(&daemon);
    for id in ["has space", "slash/y", "quote\"", "ünicode"] {
        assert_fails_with(&daemon.admin(&["clients", "add", id]), &[]);
    }
    assert_eq!(clients_file(&daemon), file, "nothing was added");
    assert_eq!(list_json(&daemon).len(), 1, "nothing was added");
}

#[test]
fn clients_add_refuses_an_invalid_scope_naming_it() {
    let daemon = Daemon::with_client(&service_client());
    let file = clients_file(&daemon);
    let output = daemon.admin(&["clients", "add", "scoped", "--scope", "bad\"scope"]);
    assert_fails_with(&output, &["bad\"scope"]);
    let output = daemon.admin(&["clients", "add", "scoped", "--scope", "two words"]);
    assert_fails_with(&output, &["two words"]);
    assert_eq!(clients_file(&daemon), file, "nothing was added");
    assert!(listed(&daemon, "scoped").is_none(), "nothing was added");
}

#[test]
fn clients_subcommands_without_their_id_are_usage_errors() {
    let daemon = Daemon::with_client(&service_client());
    for args in [
        &["clients", "add"][..],
        &["clients", "disable"],
        &["clients", "enable"],
        &["clients", "remove"],
        &["clients", "rotate-secret"],
        &["clients", "import"],
        &["clients", "rotate-secret", "x", "--keep-old", "soon"],
        &["clients", "add", "x", "--ttl", "forever"],
    ] {
        let output = daemon.admin(args);
        output.assert_code(2);
        assert!(!output.stderr.is_empty(), "usage is explained:\n{output}");
    }
    assert_eq!(list_json(&daemon).len(), 1, "nothing was added");
}

// --- disable, enable, remove ---

#[test]
fn clients_disable_refuses_tokens_at_once_and_enable_restores_them() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);

    let output = daemon.admin(&["clients", "disable", &client.id]);
    output.assert_success();
    assert!(
        output.stdout.contains(&client.id) && output.stdout.contains("disabled"),
        "{output}"
    );
    assert_refused_at_once(&daemon, &client.id, &client.secret);
    let listed_client = listed(&daemon, &client.id).expect("a disabled client stays listed");
    assert_eq!(listed_client["disabled"], true, "{listed_client:#}");
    assert_eq!(list_row(&daemon, &client.id)[1], "disabled");

    let enabled = admin_json(&daemon, &["clients", "enable", &client.id]);
    assert_eq!(enabled, json!({"id": client.id, "ok": true}));
    assert_gets_token_at_once(&daemon, &client.id, &client.secret);
    let listed_client = listed(&daemon, &client.id).expect("the client is listed");
    assert_eq!(listed_client["disabled"], false, "{listed_client:#}");
}

/// Disabling a disabled client, or enabling an enabled one, is done already: it succeeds,
/// the file is not written again, and the changes feed tells nothing more.
#[test]
fn disabling_a_disabled_client_again_changes_nothing() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let count = |kind: &str| {
        let status = admin_json(&daemon, &["status"]);
        status["changes"]
            .as_array()
            .unwrap_or_else(|| panic!("no changes in the status: {status:#}"))
            .iter()
            .filter(|c| c["kind"] == kind)
            .count()
    };
    let untouched = clients_file(&daemon);
    daemon
        .admin(&["clients", "enable", &client.id])
        .assert_success();
    assert_eq!(
        clients_file(&daemon),
        untouched,
        "an enabled client enabled"
    );
    assert_eq!(count("client_enabled"), 0);

    daemon
        .admin(&["clients", "disable", &client.id])
        .assert_success();
    let disabled = clients_file(&daemon);
    daemon
        .admin(&["clients", "disable", &client.id])
        .assert_success();
    assert_eq!(
        clients_file(&daemon),
        disabled,
        "a disabled client disabled"
    );
    assert_eq!(count("client_disabled"), 1);
    assert_refused_at_once(&daemon, &client.id, &client.secret);
}

/// The human form of `enable` names the client and says what became of it, as `disable`
/// does; the client gets a token on the next request.
#[test]
fn clients_enable_names_the_client_and_says_enabled() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    daemon
        .admin(&["clients", "disable", &client.id])
        .assert_success();
    assert_refused_at_once(&daemon, &client.id, &client.secret);

    let output = daemon.admin(&["clients", "enable", &client.id]);
    output.assert_success();
    let lines: Vec<&str> = output.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line:\n{output}");
    assert!(
        lines[0].contains(&client.id) && lines[0].contains("enabled"),
        "the line names the client and says `enabled`:\n{output}"
    );
    assert!(
        !lines[0].contains("disabled"),
        "`enabled`, not `disabled`:\n{output}"
    );
    assert_gets_token_at_once(&daemon, &client.id, &client.secret);
    assert_eq!(list_row(&daemon, &client.id)[1], "enabled");
}

#[test]
fn clients_disable_json_confirms_the_id() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let disabled = admin_json(&daemon, &["clients", "disable", &client.id]);
    assert_eq!(disabled, json!({"id": client.id, "ok": true}));
    assert_refused_at_once(&daemon, &client.id, &client.secret);
}

#[test]
fn clients_remove_refuses_tokens_and_drops_the_client() {
    let client = service_client();
    let keep = TestClient::new("keep").audiences(&[API]);
    let daemon = Daemon::builder().client(&client).client(&keep).start();

    let output = daemon.admin(&["clients", "remove", &client.id]);
    output.assert_success();
    assert!(
        output.stdout.contains(&client.id) && output.stdout.contains("removed"),
        "{output}"
    );
    assert_refused_at_once(&daemon, &client.id, &client.secret);
    assert!(
        listed(&daemon, &client.id).is_none(),
        "a removed client is not listed"
    );
    let file = clients_file(&daemon);
    assert!(
        !file.contains(&secret_hash(&client.secret)),
        "the removed client's hash is still in the file:\n{file}"
    );
    daemon.access_token(&keep, &[]);
}

#[test]
fn clients_remove_json_confirms_the_id() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let removed = admin_json(&daemon, &["clients", "remove", &client.id]);
    assert_eq!(removed, json!({"id": client.id, "ok": true}));
    assert_refused_at_once(&daemon, &client.id, &client.secret);
    assert!(list_json(&daemon).is_empty());
}

#[test]
fn changing_an_unknown_client_fails_naming_it() {
    let daemon = Daemon::with_client(&service_client());
    let file = clients_file(&daemon);
    for command in ["disable", "enable", "remove", "rotate-secret"] {
        for json in [false, true] {
            let mut args = vec!["clients", command, "ghost"];
            if json {
                args.push("--json");
            }
            let output = daemon.admin(&args);
            assert_fails_with(&output, &["there is no client `ghost`"]);
        }
    }
    assert_eq!(clients_file(&daemon), file, "the file is unchanged");
}

// --- rotate-secret ---

/// What `rotate-secret --json` keeping the old secret until about `expected_until` must
/// show: a new secret, and the overlap's end, in its answer and in the list; both secrets
/// work from the next request on. Returns the new secret.
#[track_caller]
fn assert_rotated_keeping_old(
    daemon: &Daemon,
    client: &TestClient,
    rotated: &Value,
    expected_until: i64,
) -> String {
    assert_eq!(rotated["id"], client.id.as_str(), "{rotated:#}");
    let secret = rotated["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("no new `secret`: {rotated:#}"));
    assert_ne!(secret, client.secret);
    let until = rotated["old_valid_until"]
        .as_str()
        .unwrap_or_else(|| panic!("no `old_valid_until` time: {rotated:#}"));
    assert_about(unix_seconds(until), expected_until, "old_valid_until");

    assert_gets_token_at_once(daemon, &client.id, secret);
    assert_gets_token_at_once(daemon, &client.id, &client.secret);
    let listed_client = listed(daemon, &client.id).expect("the client is listed");
    let listed_until = listed_client["old_secret_until"]
        .as_str()
        .unwrap_or_else(|| panic!("no `old_secret_until` time: {listed_client:#}"));
    assert_about(
        unix_seconds(listed_until),
        expected_until,
        "old_secret_until",
    );
    secret.to_owned()
}

/// During the overlap both secrets work, the list says until when, and the file keeps the
/// old hash as `{ hash = …, expires = … }`.
#[test]
fn rotate_secret_keep_old_keeps_the_old_secret_working_for_that_long() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let rotated = admin_json(
        &daemon,
        &["clients", "rotate-secret", &client.id, "--keep-old", "1h"],
    );
    let expected_until = now() + 3_600;
    let secret = &assert_rotated_keeping_old(&daemon, &client, &rotated, expected_until);
    assert!(
        list_row(&daemon, &client.id)[1].starts_with("rotating"),
        "the state column says the secret is rotating"
    );

    let file = clients_file(&daemon);
    assert_only_hashes_stored(&daemon, &[secret, &client.secret]);
    let old_hash = secret_hash(&client.secret);
    let old_entry = file
        .lines()
        .find(|l| l.contains(&old_hash))
        .expect("the old hash is in the file");
    let entry = old_entry
        .split_once('{')
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(inside, _)| inside)
        .unwrap_or_else(|| panic!("the old hash is not an inline table:\n{file}"));
    assert!(
        entry.contains(&format!("hash = \"{old_hash}\"")),
        "the old hash is `hash = …` in its table:\n{file}"
    );
    let expires = entry
        .split_once("expires = ")
        .map(|(_, v)| v.split(',').next().unwrap_or_default().trim())
        .unwrap_or_else(|| panic!("the old hash has no `expires`:\n{file}"));
    assert_about(
        unix_seconds(expires),
        expected_until,
        "`expires` in the file",
    );
}

/// Without `--keep-old` the overlap is the default, 24 hours (README, SPEC): the new secret
/// and the old one both work from the next request on.
#[test]
fn rotate_secret_without_keep_old_keeps_the_old_secret_for_a_day() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let rotated = admin_json(&daemon, &["clients", "rotate-secret", &client.id]);
    let expected_until = now() + DEFAULT_OVERLAP_SECS;
    let secret = &assert_rotated_keeping_old(&daemon, &client, &rotated, expected_until);
    assert_only_hashes_stored(&daemon, &[secret, &client.secret]);

    // The human form says so too.
    let output = daemon.admin(&["clients", "rotate-secret", &client.id]);
    output.assert_success();
    assert!(
        output.stdout.contains("the old secret keeps working until"),
        "the output says until when the old secret works:\n{output}"
    );
}

#[test]
fn rotate_secret_keep_old_0_stops_the_old_secret_at_once() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let output = daemon.admin(&["clients", "rotate-secret", &client.id, "--keep-old", "0"]);
    output.assert_success();
    let lines: Vec<&str> = output.stdout.lines().map(str::trim).collect();
    let secret = lines
        .iter()
        .copied()
        .find(|l| !l.contains(' ') && !l.is_empty())
        .unwrap_or_else(|| panic!("no new secret on a line of its own:\n{output}"));
    assert_secret_shape(secret, &output);
    assert!(
        output.stdout.contains("no longer works"),
        "the output says the old secret stopped:\n{output}"
    );

    assert_refused_at_once(&daemon, &client.id, &client.secret);
    assert_gets_token_at_once(&daemon, &client.id, secret);
    let listed_client = listed(&daemon, &client.id).expect("the client is listed");
    assert_eq!(
        listed_client["old_secret_until"],
        Value::Null,
        "{listed_client:#}"
    );
    let file = clients_file(&daemon);
    assert!(
        !file.contains(&secret_hash(&client.secret)),
        "the old hash is still in the file:\n{file}"
    );
    assert_only_hashes_stored(&daemon, &[secret]);
}

/// A client given a second current secret by hand (an overlap made without an expiry): a
/// rotation keeps one old secret, and which of the two is still in use is not the tool's to
/// guess, so an overlap is refused and nothing changes.
#[test]
fn rotate_secret_with_an_overlap_of_a_client_with_two_current_secrets_is_refused() {
    let client = service_client();
    let second = random_secret();
    let mut daemon = Daemon::builder().client(&client).write();
    let hash = format!("\"{}\"", secret_hash(&client.secret));
    let two = client
        .to_toml()
        .replace(&hash, &format!("{hash}, \"{}\"", secret_hash(&second)));
    daemon.write_file("clients.toml", &two);
    daemon.start();

    let output = daemon.admin(&["clients", "rotate-secret", &client.id, "--keep-old", "1h"]);
    assert_fails_with(&output, &[&client.id, "2 secrets without an expiry"]);
    assert_eq!(clients_file(&daemon), two, "the file is unchanged");
    assert_gets_token_at_once(&daemon, &client.id, &client.secret);
    assert_gets_token_at_once(&daemon, &client.id, &second);
}

/// A client whose only secret is the old one of an earlier rotation: a rotation keeps that
/// one, for no longer than it had, and says until when.
#[test]
fn rotate_secret_keeps_an_old_secret_for_no_longer_than_it_had() {
    let client = service_client();
    let mut daemon = Daemon::builder().client(&client).write();
    let had_until = now() + 600;
    let until = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_secs(had_until.unsigned_abs()),
    );
    let hash = format!("\"{}\"", secret_hash(&client.secret));
    let old_only = client
        .to_toml()
        .replace(&hash, &format!("{{ hash = {hash}, expires = {until} }}"));
    daemon.write_file("clients.toml", &old_only);
    daemon.start();

    let rotated = admin_json(
        &daemon,
        &["clients", "rotate-secret", &client.id, "--keep-old", "1h"],
    );
    let said = rotated["old_valid_until"]
        .as_str()
        .unwrap_or_else(|| panic!("no `old_valid_until` time: {rotated:#}"));
    assert_eq!(unix_seconds(said), had_until, "{rotated:#}");
    assert_gets_token_at_once(&daemon, &client.id, &client.secret);
    let secret = rotated["secret"].as_str().expect("the new secret");
    assert_gets_token_at_once(&daemon, &client.id, secret);
}

// --- import ---

/// Writes the seed's `{"client_id": "secret"}` file into the daemon's directory.
fn write_seed(daemon: &Daemon, seed: &[(&str, &str)]) -> String {
    let map: serde_json::Map<String, Value> = seed
        .iter()
        .map(|(id, secret)| ((*id).to_owned(), Value::from(*secret)))
        .collect();
    let path = daemon.write_file("seed.json", &Value::Object(map).to_string());
    path.to_str().expect("UTF-8 temporary path").to_owned()
}

#[test]
fn clients_import_registers_every_seed_client_with_only_hashes_stored() {
    let daemon = Daemon::with_client(&service_client());
    let (alpha, beta) = (seed_secret(), seed_secret());
    let seed = write_seed(&daemon, &[("alpha", &alpha), ("beta.svc", &beta)]);
    let output = daemon.admin(&["clients", "import", &seed]);
    output.assert_success();
    assert!(output.stdout.contains('2'), "the count is shown:\n{output}");
    assert_gets_token_at_once(&daemon, "alpha", &alpha);
    assert_gets_token_at_once(&daemon, "beta.svc", &beta);
    assert_refused_at_once(&daemon, "alpha", &beta);
    assert_only_hashes_stored(&daemon, &[&alpha, &beta]);
    assert_eq!(list_json(&daemon).len(), 3);
}

#[test]
fn clients_import_json_counts_the_clients() {
    let daemon = Daemon::with_client(&service_client());
    let secret = seed_secret();
    let seed = write_seed(&daemon, &[("imported", &secret)]);
    let imported = admin_json(&daemon, &["clients", "import", &seed]);
    assert_eq!(imported, json!({"imported": 1}));
    assert_gets_token_at_once(&daemon, "imported", &secret);
    assert_only_hashes_stored(&daemon, &[&secret]);
}

#[test]
fn clients_import_refuses_a_short_secret_unless_forced() {
    let daemon = Daemon::with_client(&service_client());
    let strong = seed_secret();
    let weak = "only-20-characters!!";
    let seed = write_seed(&daemon, &[("strong", &strong), ("weakling", weak)]);
    let file = clients_file(&daemon);

    let output = daemon.admin(&["clients", "import", &seed]);
    assert_fails_with(&output, &["weakling"]);
    assert!(
        !output.stderr.contains("strong"),
        "only the weak client is blamed:\n{output}"
    );
    assert_eq!(clients_file(&daemon), file, "nothing was imported");
    assert_refused_at_once(&daemon, "strong", &strong);
    assert!(listed(&daemon, "strong").is_none(), "nothing was imported");

    let output = daemon.admin(&["clients", "import", &seed, "--force"]);
    output.assert_success();
    assert_gets_token_at_once(&daemon, "weakling", weak);
    assert_gets_token_at_once(&daemon, "strong", &strong);
    assert_only_hashes_stored(&daemon, &[&strong, weak]);
}

/// A seed of `count` clients with ids of 20 characters written into the daemon's directory:
/// the ids and secrets, and the seed's path.
fn write_seeds(daemon: &Daemon, count: usize) -> (Vec<(String, String)>, String) {
    let secrets: Vec<(String, String)> = (0..count)
        .map(|i| (format!("seeded-client-{i:07}"), seed_secret()))
        .collect();
    let seed: Vec<(&str, &str)> = secrets
        .iter()
        .map(|(id, secret)| (id.as_str(), secret.as_str()))
        .collect();
    let path = write_seed(daemon, &seed);
    (secrets, path)
}

/// An import that fills most of a frame (about 950 KB: 18 000 clients) is read and applied
/// whole: what the frame limit allows, the daemon decodes.
#[test]
fn clients_import_of_nearly_a_frame_is_applied_whole() {
    let daemon = Daemon::with_client(&service_client());
    let (secrets, seed) = write_seeds(&daemon, 18_000);

    let imported = admin_json(&daemon, &["clients", "import", &seed]);
    assert_eq!(imported, json!({"imported": 18_000}));
    let (first, last) = (&secrets[0], &secrets[17_999]);
    assert_gets_token_at_once(&daemon, &first.0, &first.1);
    assert_gets_token_at_once(&daemon, &last.0, &last.1);
    assert_eq!(list_json(&daemon).len(), 18_001);
}

/// An import is one request, all or none; one too large for a frame is refused with what
/// to do, and nothing is imported.
#[test]
fn clients_import_too_large_for_one_request_says_to_split_it() {
    let daemon = Daemon::with_client(&service_client());
    let (_, seed) = write_seeds(&daemon, 40_000);
    let file = clients_file(&daemon);

    // `admin` fails the test should the tool wait for an answer that never comes.
    let output = daemon.admin(&["clients", "import", &seed]);
    assert_fails_with(&output, &["40000 clients", "split"]);
    assert_eq!(clients_file(&daemon), file, "nothing was imported");
    assert_eq!(list_json(&daemon).len(), 1);
}

/// What the seed file holds is refused as a whole, naming the client, when an id is listed
/// twice (a JSON parser keeps the last without a word), a secret is empty (even with
/// `--force`: `curl -u id:` would get a token) or an id cannot be registered.
#[test]
fn clients_import_refuses_a_duplicate_an_empty_secret_and_a_bad_id_naming_the_client() {
    let daemon = Daemon::with_client(&service_client());
    let (first, again) = (seed_secret(), seed_secret());
    let file = clients_file(&daemon);
    for (seed, blamed, says) in [
        (
            format!(r#"{{"fine": "{first}", "twice": "{first}", "twice": "{again}"}}"#),
            "twice",
            "listed twice",
        ),
        (
            format!(r#"{{"fine": "{first}", "blank": ""}}"#),
            "blank",
            "empty secret",
        ),
        (
            format!(r#"{{"fine": "{first}", "has space": "{again}"}}"#),
            "has space",
            "the id must be",
        ),
    ] {
        let path = daemon.write_file("seed.json", &seed);
        let path = path.to_str().expect("UTF-8 temporary path");
        for force in [false, true] {
            let args = ["clients", "import", path, "--force"];
            let output = daemon.admin(&args[..if force { 4 } else { 3 }]);
            assert_fails_with(&output, &[blamed, says]);
            assert_eq!(clients_file(&daemon), file, "nothing was imported");
            assert!(listed(&daemon, "fine").is_none(), "nothing was imported");
        }
    }
}

/// All or none: one id that exists already stops the whole import.
#[test]
fn clients_import_with_an_existing_id_imports_nothing() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let (newcomer, clash) = (seed_secret(), seed_secret());
    let seed = write_seed(
        &daemon,
        &[("aaa-newcomer", &newcomer), (&client.id, &clash)],
    );
    let file = clients_file(&daemon);

    let output = daemon.admin(&["clients", "import", &seed]);
    assert_fails_with(&output, &[&client.id]);
    assert_eq!(clients_file(&daemon), file, "nothing was imported");
    assert!(
        listed(&daemon, "aaa-newcomer").is_none(),
        "nothing was imported"
    );
    assert_refused_at_once(&daemon, "aaa-newcomer", &newcomer);
    assert_refused_at_once(&daemon, &client.id, &clash);
    daemon.access_token(&client, &[]);
}

// --- keys ---

#[test]
fn keys_list_shows_the_one_active_key_of_the_jwks() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let mut jwks_kids = daemon.kids();
    jwks_kids.sort();
    let signing_kid = jwt::decode(&daemon.access_token(&client, &[])).header["kid"].clone();

    let keys = admin_json(&daemon, &["keys", "list"]);
    let keys = keys
        .as_array()
        .unwrap_or_else(|| panic!("`keys list --json` is not an array: {keys:#}"));
    let mut listed_kids: Vec<String> = keys
        .iter()
        .map(|k| k["kid"].as_str().expect("a `kid` string").to_owned())
        .collect();
    listed_kids.sort();
    assert_eq!(listed_kids, jwks_kids, "the keys the JWKS publishes");
    let active: Vec<&Value> = keys.iter().filter(|k| k["state"] == "active").collect();
    assert_eq!(active.len(), 1, "one active key: {keys:?}");
    assert_eq!(active[0]["kid"], signing_kid, "the active key signs");
    assert_eq!(active[0]["alg"], "RS512");
    assert_about(
        unix_seconds(active[0]["created"].as_str().expect("a `created` time")),
        now(),
        "the new key's `created`",
    );

    let output = daemon.admin(&["keys", "list"]);
    output.assert_success();
    let kid = signing_kid.as_str().expect("a `kid` string");
    let row = output
        .stdout
        .lines()
        .find(|l| l.starts_with(kid))
        .unwrap_or_else(|| panic!("no row for {kid}:\n{output}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[..3], [kid, "RS512", "active"], "{output}");
}

// --- who may talk: SO_PEERCRED ---

/// `tokendealer --socket … ARGS` run as uid and gid [`NOBODY`] with no supplementary groups.
fn admin_as_nobody(socket: &Path, args: &[&str]) -> Output {
    admin_as_nobody_in(socket, &[], args)
}

#[test]
fn a_uid_that_is_not_permitted_is_refused_naming_its_uid() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    open_socket_to_everyone(&daemon);
    for args in [&["status"][..], &["clients", "add", "intruder"]] {
        let output = admin_as_nobody(daemon.admin_socket(), args);
        assert_fails_with(&output, &["permission denied", &NOBODY.to_string()]);
    }
    let log = daemon.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains(&NOBODY.to_string()) && l.contains("refused")),
        "the daemon's log has no refusal line for uid {NOBODY}:\n{log}"
    );
    assert!(listed(&daemon, "intruder").is_none(), "nothing was added");
    // Root, which is also the daemon's own uid here, is let in.
    daemon.admin(&["status"]).assert_success();
}

#[test]
fn admin_uids_lets_a_listed_uid_in() {
    let daemon = Daemon::builder()
        .client(&service_client())
        .config(&format!("admin_uids = [{NOBODY}]"))
        .start();
    open_socket_to_everyone(&daemon);
    let output = admin_as_nobody(daemon.admin_socket(), &["status"]);
    output.assert_success();
    assert!(
        output.stdout.contains(&daemon.addr().to_string()),
        "{output}"
    );
    let output = admin_as_nobody(daemon.admin_socket(), &["clients", "add", "by-nobody"]);
    output.assert_success();
    assert!(listed(&daemon, "by-nobody").is_some());
}

/// Taking someone off `admin_uids` is a reload, not a restart: from then on they are
/// refused; put back, they are let in again.
#[test]
fn a_reload_applies_the_admin_access_lists() {
    let daemon = Daemon::builder()
        .client(&service_client())
        .config(&format!("admin_uids = [{NOBODY}]"))
        .start();
    open_socket_to_everyone(&daemon);
    admin_as_nobody(daemon.admin_socket(), &["status"]).assert_success();
    let config = fs::read_to_string(daemon.config_path()).expect("the config");
    let without = config.replace(&format!("admin_uids = [{NOBODY}]"), "");
    assert_ne!(without, config);
    fs::write(daemon.config_path(), &without).expect("writing the config");
    daemon.admin(&["reload"]).assert_success();
    let output = admin_as_nobody(daemon.admin_socket(), &["clients", "add", "after-revoke"]);
    assert_fails_with(&output, &["permission denied", &NOBODY.to_string()]);
    assert!(listed(&daemon, "after-revoke").is_none());

    fs::write(daemon.config_path(), &config).expect("writing the config");
    daemon.admin(&["reload"]).assert_success();
    admin_as_nobody(daemon.admin_socket(), &["status"]).assert_success();
}

#[test]
fn admin_gids_lets_a_listed_group_in() {
    let daemon = Daemon::builder()
        .client(&service_client())
        .config(&format!("admin_gids = [{NOBODY}]"))
        .start();
    open_socket_to_everyone(&daemon);
    admin_as_nobody(daemon.admin_socket(), &["status"]).assert_success();
}

#[test]
fn admin_groups_names_a_group_whose_members_are_let_in() {
    // `nogroup` is NOBODY's group on Debian and Ubuntu; the name is looked up at start.
    let daemon = Daemon::builder()
        .client(&service_client())
        .config("admin_groups = [\"nogroup\"]")
        .start();
    open_socket_to_everyone(&daemon);
    admin_as_nobody(daemon.admin_socket(), &["status"]).assert_success();
}

/// A name in `admin_groups` that cannot be looked up at a reload (a group deleted, NSS
/// down) fails the reload naming it, but the rest of the lists apply, a removal above all,
/// and so does the rest of the config (here a new algorithm).
#[test]
fn a_reload_whose_admin_group_cannot_be_found_applies_the_rest() {
    let daemon = Daemon::builder()
        .client(&service_client())
        .algorithm("EdDSA")
        .config("admin_groups = [\"nogroup\"]")
        .start();
    open_socket_to_everyone(&daemon);
    let config = fs::read_to_string(daemon.config_path()).expect("the config");
    let reload_with = |groups: &str| {
        let text = config
            .replace("[\"nogroup\"]", groups)
            .replace("algorithm = \"EdDSA\"", "algorithm = \"ES256\"");
        assert!(text.contains(groups) && text.contains("ES256"), "{text}");
        fs::write(daemon.config_path(), text).expect("writing the config");
        let output = daemon.admin(&["reload"]);
        assert_eq!(output.code(), Some(1), "{output}");
        assert!(
            output.stderr.contains("no-such-group-here")
                && output.stderr.contains("the rest of the admin lists apply"),
            "{output}"
        );
    };
    // `nogroup` (NOBODY's group) stays, the new name is not found.
    reload_with("[\"nogroup\", \"no-such-group-here\"]");
    admin_as_nobody(daemon.admin_socket(), &["status"]).assert_success();
    let keys = tokendealer_tests::keys::list(&daemon);
    assert!(
        keys.iter().any(|k| k.state == "next" && k.alg == "ES256"),
        "the new algorithm's next key: {keys:#?}"
    );
    // `nogroup` taken off while the other name is still not found: the removal applies.
    reload_with("[\"no-such-group-here\"]");
    let output = admin_as_nobody(daemon.admin_socket(), &["status"]);
    assert_fails_with(&output, &["permission denied"]);
}

/// A gid for the tests below that no user here has as primary group.
const ADMIN_GROUP: u32 = 4242;

/// `tokendealer --socket … ARGS` as uid and primary gid [`NOBODY`], with `groups` as its
/// supplementary groups (as `usermod -aG` gives them; none when empty).
fn admin_as_nobody_in(socket: &Path, groups: &[u32], args: &[&str]) -> Output {
    let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg(if groups.is_empty() {
            "--clear-groups".to_owned()
        } else {
            format!("--groups={}", groups.join(","))
        })
        .arg(bins::tokendealer())
        .arg("--socket")
        .arg(socket)
        .args(args);
    admin_command(cmd)
}

/// The socket file as `tokendealer-admin.socket` makes it: `root:GROUP`, mode 0660 (the
/// directories above traversable).
fn socket_file_for_group(daemon: &Daemon, group: u32, mode: u32) {
    open_socket_to_everyone(daemon);
    std::os::unix::fs::chown(daemon.admin_socket(), Some(0), Some(group))
        .expect("giving the admin socket to the group");
    fs::set_permissions(daemon.admin_socket(), fs::Permissions::from_mode(mode))
        .expect("setting the admin socket's mode");
}

#[test]
fn a_supplementary_member_of_an_admin_group_is_let_in_through_its_socket_file() {
    // SO_PEERCRED carries the primary gid only; the socket file, open to the group alone,
    // is what tells that the peer is a member: the kernel checked all its groups.
    let daemon = Daemon::builder()
        .client(&service_client())
        .config(&format!("admin_gids = [{ADMIN_GROUP}]"))
        .start();
    socket_file_for_group(&daemon, ADMIN_GROUP, 0o660);
    admin_as_nobody_in(daemon.admin_socket(), &[ADMIN_GROUP], &["status"]).assert_success();
    let added = admin_as_nobody_in(
        daemon.admin_socket(),
        &[ADMIN_GROUP],
        &["clients", "add", "by-member"],
    );
    added.assert_success();
    assert!(listed(&daemon, "by-member").is_some());

    // Open to everyone, the file vouches for nobody: the peer is checked by its ids alone.
    fs::set_permissions(daemon.admin_socket(), fs::Permissions::from_mode(0o666))
        .expect("opening the admin socket to everyone");
    let output = admin_as_nobody_in(daemon.admin_socket(), &[ADMIN_GROUP], &["status"]);
    assert_fails_with(&output, &["permission denied", &NOBODY.to_string()]);
}

#[test]
fn a_socket_file_with_an_acl_vouches_for_nobody() {
    // With an ACL the group bits are its mask: a named user entry can open the file to
    // someone in no admin group.
    let daemon = Daemon::builder()
        .client(&service_client())
        .config(&format!("admin_gids = [{ADMIN_GROUP}]"))
        .start();
    socket_file_for_group(&daemon, ADMIN_GROUP, 0o660);
    let output = tokendealer_tests::process::run({
        let mut cmd = Command::new("setfacl");
        cmd.arg("-m")
            .arg(format!("u:{NOBODY}:rw"))
            .arg(daemon.admin_socket());
        cmd
    });
    output.assert_success();
    let output = admin_as_nobody(daemon.admin_socket(), &["status"]);
    assert_fails_with(&output, &["permission denied", &NOBODY.to_string()]);
}

#[test]
fn a_socket_file_of_a_group_that_is_not_an_admin_group_vouches_for_nobody() {
    let daemon = Daemon::builder()
        .client(&service_client())
        .config(&format!("admin_gids = [{ADMIN_GROUP}]"))
        .start();
    let other = ADMIN_GROUP + 1;
    socket_file_for_group(&daemon, other, 0o660);
    let output = admin_as_nobody_in(daemon.admin_socket(), &[other], &["status"]);
    assert_fails_with(&output, &["permission denied", &NOBODY.to_string()]);
}

// --- peers that break the protocol ---

/// After a peer broke the protocol: a connection greeted before it still answers, the tool
/// still works, and tokens are still issued.
#[track_caller]
fn assert_only_that_connection_was_closed(
    daemon: &Daemon,
    client: &TestClient,
    bystander: &mut UnixStream,
) {
    match admin_wire::request(bystander, Request::Status) {
        Response::Status(status) => assert_eq!(status.listen, daemon.addr().to_string()),
        other => panic!("the bystander connection got {other:?} for Status"),
    }
    daemon.admin(&["status"]).assert_success();
    daemon.access_token(client, &[]);
}

/// What the daemon sent a peer before closing on it holds no answer to a request.
#[track_caller]
fn assert_no_response(received: &[u8]) {
    let frames = admin_wire::decode_all(received);
    assert!(
        !frames.iter().any(|f| matches!(f, ServerFrame::Response(_))),
        "the daemon answered a broken connection: {frames:?}"
    );
}

#[test]
fn garbage_bytes_close_only_that_connection() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let mut bystander = admin_wire::open(daemon.admin_socket());
    let socket = daemon.admin_socket();

    // As a first frame: an HTTP request, and a small frame whose body decodes to nothing.
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0, 0, 0, 8, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0xfa, 0xf9, 0xf8],
    ] {
        let mut stream = admin_wire::connect(socket);
        stream.write_all(garbage).expect("writing garbage");
        assert_no_response(&admin_wire::read_until_closed(&mut stream));
    }
    // After a proper greeting, where the daemon would otherwise wait minutes for a request.
    let mut stream = admin_wire::open(socket);
    stream
        .write_all(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff])
        .expect("writing garbage");
    assert_no_response(&admin_wire::read_until_closed(&mut stream));

    assert_only_that_connection_was_closed(&daemon, &client, &mut bystander);
}

/// `VmPeak` of a process, in KiB: a 4 GiB buffer, even untouched, would show here.
fn vm_peak_kib(pid: u64) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmPeak:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmPeak in /proc/{pid}/status:\n{status}"))
}

/// A length of 4 GiB - 1 is refused on sight: the connection closes at once and the daemon's
/// address space never grows by anything like it.
#[test]
fn an_oversized_length_prefix_closes_the_connection_without_allocating() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let pid = admin_json(&daemon, &["status"])["pid"]
        .as_u64()
        .expect("the daemon's pid");
    let peak_before = vm_peak_kib(pid);
    let mut bystander = admin_wire::open(daemon.admin_socket());

    let mut first = admin_wire::connect(daemon.admin_socket());
    first.write_all(&[0xff; 4]).expect("writing a length");
    assert_no_response(&admin_wire::read_until_closed(&mut first));

    // On a greeted connection the daemon waits minutes for a request; only the check on the
    // length closes this one within the test's read timeout.
    let mut greeted = admin_wire::open(daemon.admin_socket());
    greeted.write_all(&[0xff; 4]).expect("writing a length");
    assert_no_response(&admin_wire::read_until_closed(&mut greeted));

    let grown_kib = vm_peak_kib(pid).saturating_sub(peak_before);
    assert!(
        grown_kib < 512 * 1024,
        "the daemon's peak address space grew by {grown_kib} KiB after an oversized length"
    );
    assert_only_that_connection_was_closed(&daemon, &client, &mut bystander);
}

/// The bytes of a `ListClients` request frame whose body is exactly `len` bytes, its
/// `after` padded to fit (an id after every client's: the answer is an empty page).
fn list_frame_of(len: usize) -> Vec<u8> {
    let mut after_len = len;
    loop {
        let after = Some("~".repeat(after_len));
        let bytes = admin_wire::encode(&ClientFrame::Request(Request::ListClients {
            after,
            limit: 1,
        }));
        match (bytes.len() - 4).cmp(&len) {
            std::cmp::Ordering::Equal => return bytes,
            std::cmp::Ordering::Greater => after_len -= bytes.len() - 4 - len,
            std::cmp::Ordering::Less => after_len += len - (bytes.len() - 4),
        }
    }
}

#[test]
fn a_frame_of_one_mib_is_answered_and_a_byte_more_closes_the_connection() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let mut bystander = admin_wire::open(daemon.admin_socket());

    let mut at_limit = admin_wire::open(daemon.admin_socket());
    at_limit
        .write_all(&list_frame_of(MAX_FRAME))
        .expect("writing a 1 MiB frame");
    match admin_wire::receive(&mut at_limit) {
        Received::Frame(ServerFrame::Response(Response::Clients { clients, .. }))
            if clients.is_empty() => {}
        other => panic!(
            "a 1 MiB ListClients after every client got {other:?}:\n{}",
            daemon.stderr()
        ),
    }

    let mut over = admin_wire::open(daemon.admin_socket());
    let length = u32::try_from(MAX_FRAME + 1).expect("small");
    over.write_all(&length.to_be_bytes())
        .expect("writing a length");
    assert_no_response(&admin_wire::read_until_closed(&mut over));
    assert_only_that_connection_was_closed(&daemon, &client, &mut bystander);
}

#[test]
fn a_truncated_frame_closes_only_that_connection() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let mut bystander = admin_wire::open(daemon.admin_socket());

    for greeted in [false, true] {
        let mut stream = if greeted {
            admin_wire::open(daemon.admin_socket())
        } else {
            admin_wire::connect(daemon.admin_socket())
        };
        // A frame that announces 100 bytes and brings 10, then the end of our side.
        let mut frame = vec![0, 0, 0, 100];
        frame.extend_from_slice(&[1; 10]);
        stream.write_all(&frame).expect("writing a truncated frame");
        stream
            .shutdown(std::net::Shutdown::Write)
            .expect("closing our side");
        assert_no_response(&admin_wire::read_until_closed(&mut stream));
    }
    assert_only_that_connection_was_closed(&daemon, &client, &mut bystander);
}

#[test]
fn a_request_before_hello_is_not_answered_and_closes_the_connection() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let mut bystander = admin_wire::open(daemon.admin_socket());

    let mut stream = admin_wire::connect(daemon.admin_socket());
    admin_wire::send(
        &mut stream,
        &ClientFrame::Request(Request::AddClient {
            id: "sneaky".into(),
            audiences: Vec::new(),
            scopes: Vec::new(),
            ttl_secs: None,
        }),
    );
    assert_no_response(&admin_wire::read_until_closed(&mut stream));

    assert!(
        listed(&daemon, "sneaky").is_none(),
        "a request before Hello was carried out"
    );
    assert_only_that_connection_was_closed(&daemon, &client, &mut bystander);
}

#[test]
fn a_protocol_version_mismatch_gets_the_daemons_hello_then_a_refusal() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let mut stream = admin_wire::connect(daemon.admin_socket());
    admin_wire::send(
        &mut stream,
        &ClientFrame::Hello(Hello {
            protocol_version: 9_999,
            software_version: "99.0.0".into(),
        }),
    );
    match admin_wire::receive_frame(&mut stream) {
        ServerFrame::Hello(hello) => {
            assert_eq!(hello.protocol_version, PROTOCOL_VERSION);
            assert_eq!(hello.software_version, env!("CARGO_PKG_VERSION"));
        }
        other => panic!("the daemon's first frame is {other:?}, not its Hello"),
    }
    match admin_wire::receive_frame(&mut stream) {
        ServerFrame::Refused(AdminError::ProtocolMismatch {
            daemon: daemon_protocol,
            tool,
            daemon_version,
        }) => {
            assert_eq!(daemon_protocol, PROTOCOL_VERSION);
            assert_eq!(tool, 9_999);
            assert_eq!(daemon_version, env!("CARGO_PKG_VERSION"));
        }
        other => panic!("expected a ProtocolMismatch refusal, got {other:?}"),
    }
    match admin_wire::receive(&mut stream) {
        Received::Closed => {}
        Received::Frame(frame) => panic!("the daemon went on after refusing: {frame:?}"),
    }
    daemon.admin(&["status"]).assert_success();
    daemon.access_token(&client, &[]);
}

// --- live stats ---

/// A greeted connection subscribed to stats ticks.
#[track_caller]
fn subscriber(daemon: &Daemon) -> UnixStream {
    let mut stream = admin_wire::open(daemon.admin_socket());
    match admin_wire::request(&mut stream, Request::Subscribe) {
        Response::Subscribed => stream,
        other => panic!("Subscribe was answered {other:?}"),
    }
}

/// Reads ticks until `enough` holds for those read so far; fails the test after
/// [`TICKS_WITHIN`]. Each read waits for the daemon's next tick, so nothing sleeps.
#[track_caller]
fn ticks_until(stream: &mut UnixStream, enough: impl Fn(&[StatsTick]) -> bool) -> Vec<StatsTick> {
    let deadline = Instant::now() + TICKS_WITHIN;
    let mut ticks = Vec::new();
    while !enough(&ticks) {
        assert!(
            Instant::now() < deadline,
            "the ticks did not add up within {TICKS_WITHIN:?}: {ticks:#?}"
        );
        match admin_wire::receive_frame(stream) {
            ServerFrame::Event(Event::Stats(tick)) => ticks.push(tick),
            other => panic!("a subscriber got {other:?} between ticks"),
        }
    }
    ticks
}

/// The last tick saw no requests. A tick reads the daemon-wide counters before the
/// per-client ones, so a request finishing at that moment may reach a client's count a tick
/// later; once a quiet tick has followed the traffic, every count has settled.
fn ends_quiet(ticks: &[StatsTick]) -> bool {
    ticks
        .last()
        .is_some_and(|t| t.issued == 0 && t.failures == 0)
}

/// What ticks say about one client, summed.
fn client_totals(ticks: &[StatsTick], id: &str) -> (u64, u64) {
    ticks
        .iter()
        .flat_map(|t| &t.clients)
        .filter(|c| c.id == id)
        .fold((0, 0), |(i, f), c| (i + c.issued, f + c.failures))
}

/// Token requests sent at once, to see that issuance does not queue behind anything.
const THREADS: usize = 4;
const TOKENS: usize = 500;

/// One connection subscribes and then never reads, while it floods the daemon with requests
/// whose answers fill the socket: the daemon's writes to it block. Issuance must not wait on
/// it, and a subscriber that does read gets ticks that account for every token.
#[test]
fn a_subscriber_that_never_reads_stalls_neither_issuance_nor_other_subscribers() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let mut reader = subscriber(&daemon);

    let mut stalled = admin_wire::open(daemon.admin_socket());
    admin_wire::send(&mut stalled, &ClientFrame::Request(Request::Subscribe));
    // Twenty thousand Status requests, written without reading any answer: the answers, some
    // hundred bytes each, are megabytes, far more than the socket holds.
    let flood = admin_wire::encode(&ClientFrame::Request(Request::Status)).repeat(20_000);
    stalled
        .set_nonblocking(true)
        .expect("a non-blocking socket");
    let mut written = 0;
    while written < flood.len() {
        match stalled.write(&flood[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("flooding the admin socket failed: {e}"),
        }
    }

    let started = Instant::now();
    thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..TOKENS / THREADS {
                        daemon
                            .token_request(Auth::Basic(&client.id, &client.secret), &[])
                            .assert_status(200);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("a token request failed");
        }
    });
    let took = started.elapsed();
    assert!(
        took < DAEMON_WRITE_TIMEOUT,
        "{TOKENS} tokens took {took:?}: issuance waited on the peer that does not read"
    );

    // The daemon had written more to the stalled peer than a few frames, unread all along.
    let mut pending = 0;
    let mut chunk = [0u8; 64 * 1024];
    loop {
        match stalled.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => pending += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("reading what the stalled peer was sent failed: {e}"),
        }
    }
    assert!(
        pending >= 16 * 1024,
        "the daemon wrote only {pending} bytes to the stalled peer; the test did not stall it"
    );

    let tokens = TOKENS as u64;
    let ticks = ticks_until(&mut reader, |ticks| {
        ticks.iter().map(|t| t.issued).sum::<u64>() >= tokens && ends_quiet(ticks)
    });
    assert_eq!(
        ticks.iter().map(|t| t.issued).sum::<u64>(),
        tokens,
        "{ticks:#?}"
    );
    assert_eq!(ticks.last().map(|t| t.issued_total), Some(tokens));
    for pair in ticks.windows(2) {
        assert_eq!(
            pair[1].issued_total,
            pair[0].issued_total + pair[1].issued,
            "issued_total grows by each tick's issued: {pair:#?}"
        );
    }
    // A request is counted as issued just before its latency is recorded, so each of the
    // THREADS requests in flight at a tick may land in different ticks; a tick with more
    // issued than that has latencies of its own.
    let busy: Vec<&StatsTick> = ticks.iter().filter(|t| t.issued > THREADS as u64).collect();
    assert!(!busy.is_empty(), "no tick saw the traffic: {ticks:#?}");
    for tick in &busy {
        assert!(
            tick.p50_us > 0 && tick.p99_us >= tick.p50_us,
            "latency quantiles of a busy tick: {tick:#?}"
        );
        assert!(
            tick.clients
                .iter()
                .any(|c| c.id == client.id && c.issued > 0),
            "a busy tick does not name the only client that got tokens: {tick:#?}"
        );
    }
    assert_eq!(
        client_totals(&ticks, &client.id),
        (tokens, 0),
        "the per-client counts of the ticks add up to the tokens issued: {ticks:#?}"
    );
    daemon.admin(&["status"]).assert_success();
}

#[test]
fn stats_ticks_count_failures_by_code_and_by_client() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let mut reader = subscriber(&daemon);
    for _ in 0..3 {
        daemon
            .token_request(Auth::Basic(&client.id, "not-the-secret"), &[])
            .assert_oauth_error(401, "invalid_client");
    }
    for _ in 0..2 {
        daemon.access_token(&client, &[]);
    }
    let ticks = ticks_until(&mut reader, |ticks| {
        ticks.iter().map(|t| t.failures).sum::<u64>() >= 3
            && ticks.iter().map(|t| t.issued).sum::<u64>() >= 2
            && ends_quiet(ticks)
    });
    assert_eq!(ticks.iter().map(|t| t.failures).sum::<u64>(), 3);
    let invalid_client: u64 = ticks
        .iter()
        .flat_map(|t| &t.failures_by_code)
        .filter(|(code, _)| code == "invalid_client")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(invalid_client, 3, "{ticks:#?}");
    assert_eq!(ticks.last().map(|t| t.failures_total), Some(3));
    assert_eq!(
        client_totals(&ticks, &client.id),
        (2, 3),
        "the client's issued and failed requests: {ticks:#?}"
    );
}

// --- /metrics ---

/// The value of one series in a Prometheus text exposition; 0 when it is absent (a counter
/// that has not moved may not be exposed yet).
#[track_caller]
fn metric(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| {
            v.split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("`{series}` has no number:\n{exposition}"))
        })
}

#[track_caller]
fn scrape(daemon: &Daemon) -> String {
    let reply = daemon.get("/metrics");
    reply.assert_status(200);
    reply.text()
}

#[test]
fn metrics_count_each_issued_token_by_client_when_asked_to() {
    let client = service_client();
    let other = TestClient::new("other").audiences(&[API]);
    let daemon = Daemon::builder()
        .config("metrics_by_client = true\n")
        .client(&client)
        .client(&other)
        .start();
    let series = format!(
        "tokendealer_tokens_issued_total{{client=\"{}\"}}",
        client.id
    );
    let other_series = "tokendealer_tokens_issued_total{client=\"other\"}";
    daemon.access_token(&other, &[]);
    let before = scrape(&daemon);
    for _ in 0..7 {
        daemon.access_token(&client, &[]);
    }
    let after = scrape(&daemon);
    assert_eq!(
        metric(&after, &series) - metric(&before, &series),
        7.0,
        "before:\n{before}\nafter:\n{after}"
    );
    assert_eq!(metric(&after, other_series), 1.0, "{after}");
}

#[test]
fn metrics_name_no_client_by_default() {
    let client = service_client();
    let other = TestClient::new("other").audiences(&[API]);
    let daemon = Daemon::builder().client(&client).client(&other).start();
    let total = "tokendealer_tokens_issued_total";
    daemon.access_token(&other, &[]);
    let before = scrape(&daemon);
    for _ in 0..7 {
        daemon.access_token(&client, &[]);
    }
    let after = scrape(&daemon);
    assert_eq!(metric(&after, total), 8.0, "{after}");
    assert_eq!(metric(&after, total) - metric(&before, total), 7.0);
    for id in [client.id.as_str(), "other"] {
        assert!(!after.contains(id), "/metrics names `{id}`:\n{after}");
    }

    // A counter: removing a client that got tokens does not take them back.
    daemon
        .admin(&["clients", "remove", "other"])
        .assert_success();
    assert_refused_at_once(&daemon, "other", &other.secret);
    assert_eq!(metric(&scrape(&daemon), total), 8.0);
}

#[test]
fn metrics_count_wrong_secrets_as_invalid_client_failures() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let series = "tokendealer_token_failures_total{error=\"invalid_client\"}";
    let issued = "tokendealer_tokens_issued_total";
    let before = scrape(&daemon);
    for _ in 0..3 {
        daemon
            .token_request(Auth::Basic(&client.id, "wrong"), &[])
            .assert_oauth_error(401, "invalid_client");
    }
    let after = scrape(&daemon);
    assert_eq!(
        metric(&after, series) - metric(&before, series),
        3.0,
        "before:\n{before}\nafter:\n{after}"
    );
    assert_eq!(metric(&after, issued), 0.0, "nothing was issued:\n{after}");
}

#[test]
fn metrics_latency_histogram_counts_every_token_request() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let count = "tokendealer_token_request_duration_seconds_count";
    let sum = "tokendealer_token_request_duration_seconds_sum";
    let infinite = "tokendealer_token_request_duration_seconds_bucket{le=\"+Inf\"}";
    let before = scrape(&daemon);
    for _ in 0..3 {
        daemon.access_token(&client, &[]);
    }
    daemon
        .token_request(Auth::Basic(&client.id, "wrong"), &[])
        .assert_status(401);
    let after = scrape(&daemon);
    assert_eq!(
        metric(&after, count) - metric(&before, count),
        4.0,
        "before:\n{before}\nafter:\n{after}"
    );
    assert!(metric(&after, sum) > metric(&before, sum), "{after}");
    assert_eq!(metric(&after, infinite), metric(&after, count), "{after}");
}

#[test]
fn metrics_carry_build_info() {
    let daemon = Daemon::with_client(&service_client());
    let metrics = scrape(&daemon);
    let series = format!(
        "tokendealer_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(metric(&metrics, &series), 1.0, "{metrics}");
}

/// Connections left open (a script's leaked ones, a peer that greets and says nothing,
/// dashboards) never keep a command out, `systemctl reload`'s among them: with every slot
/// taken, the connection idle longest is closed for a newcomer; dashboards keep theirs, and
/// no more than 24 may be open, so that there is always one to close.
#[test]
fn open_connections_and_dashboards_never_keep_a_command_out() {
    const SLOTS: usize = 32;
    const DASHBOARDS: usize = 24;
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let socket = daemon.admin_socket();
    let mut dashboards: Vec<UnixStream> = (0..DASHBOARDS)
        .map(|_| {
            let mut stream = admin_wire::open(socket);
            assert_eq!(
                admin_wire::request(&mut stream, Request::Subscribe),
                Response::Subscribed
            );
            stream
        })
        .collect();
    let mut refused = admin_wire::open(socket);
    match admin_wire::request(&mut refused, Request::Subscribe) {
        Response::Error(e @ AdminError::TooManySubscribers { max: 24 }) => {
            assert!(e.to_string().contains("24 dashboards are open"), "{e}");
        }
        other => panic!("a 25th subscription got {other:?}"),
    }
    // Idle since its refusal, and now the first of the idle ones: the rest of the slots
    // are taken by peers that greeted and went quiet.
    let mut quiet: Vec<UnixStream> = (DASHBOARDS + 1..SLOTS)
        .map(|_| admin_wire::open(socket))
        .collect();

    // The tool gives up after 10 s: waiting for an idle timeout (minutes) would fail it.
    daemon.admin(&["reload"]).assert_success();
    assert_no_response(&admin_wire::read_until_closed(&mut refused));
    // The reload's slot, free again, taken by one more quiet peer.
    quiet.push(admin_wire::open(socket));
    daemon.admin(&["status"]).assert_success();
    assert_no_response(&admin_wire::read_until_closed(&mut quiet[0]));
    // The others, and every dashboard, are still served.
    for stream in quiet[1..].iter_mut().chain(&mut dashboards) {
        assert!(matches!(
            admin_wire::request(stream, Request::Status),
            Response::Status(_)
        ));
    }
    daemon.access_token(&client, &[]);
}

/// `status` tells what changed and who asked: clients registered, disabled, secrets and
/// keys rotated, keys revoked, hand edits of the clients file; newest first, with counts.
#[test]
fn status_lists_the_changes_newest_first_with_who_made_them() {
    let client = service_client();
    // At debug, the daemon logs each change once it is noted: the test waits on that.
    let mut daemon = Daemon::builder().client(&client).log_level("debug").start();
    let uid = u64::from(own_uid());
    add_client(&daemon, "fresh", &[]);
    daemon
        .admin(&["clients", "disable", "fresh"])
        .assert_success();
    daemon
        .admin(&[
            "clients",
            "rotate-secret",
            client.id.as_str(),
            "--keep-old",
            "1h",
        ])
        .assert_success();
    daemon.admin(&["keys", "rotate", "--now"]).assert_success();
    let retiring =
        tokendealer_tests::keys::only(&tokendealer_tests::keys::list(&daemon), "retiring")
            .kid
            .clone();
    daemon
        .admin(&["keys", "revoke", retiring.as_str()])
        .assert_success();
    let seed = write_seed(&daemon, &[("seeded", &"s".repeat(40))]);
    daemon
        .admin(&["clients", "import", seed.as_str()])
        .assert_success();

    let status = admin_json(&daemon, &["status"]);
    let kinds: Vec<&str> = status["changes"]
        .as_array()
        .expect("a list of changes")
        .iter()
        .map(|c| c["kind"].as_str().expect("a kind"))
        .collect();
    assert_eq!(
        kinds,
        [
            "clients_imported",
            "key_revoked",
            "key_rotated",
            "secret_rotated",
            "client_disabled",
            "client_added"
        ],
        "{status:#}"
    );
    let changes = &status["changes"];
    for change in changes.as_array().expect("a list") {
        assert_eq!(change["by"], uid, "{change}");
        assert!(change["at"].is_string(), "{change}");
    }
    assert_eq!(changes[0]["count"], 1, "{status:#}");
    assert_eq!(changes[1]["kid"], retiring.as_str(), "{status:#}");
    assert_eq!(changes[4]["client"], "fresh");
    assert_eq!(changes[4]["text"], "client `fresh` disabled");
    assert_eq!(changes[3]["client"], client.id.as_str());
    assert!(changes[3]["old_valid_until"].is_string(), "{status:#}");
    assert_eq!(status["disabled"], 1, "{status:#}");
    assert_eq!(status["rotating"], 1, "{status:#}");
    assert_eq!(
        status["key_rotations"], 1,
        "the revocation is no rotation: {status:#}"
    );
    assert_eq!(status["secret_rotations"], 1, "{status:#}");

    // A hand edit comes from the file, not from anyone the daemon knows.
    let newcomer = TestClient::new("by-hand").audiences(&[API]);
    let mut text = fs::read_to_string(daemon.clients_path()).expect("the clients file");
    text.push_str(&format!("\n{}", newcomer.to_toml()));
    fs::write(daemon.clients_path(), text).expect("a hand edit");
    daemon.wait_for_log("the hand edit noted", |log| {
        log.contains("change noted") && log.contains("clients file changed on disk")
    });
    let loaded = admin_json(&daemon, &["status"])["changes"][0].clone();
    assert_eq!(loaded["kind"], "clients_file_loaded", "{loaded}");
    assert_eq!(loaded["by"], Value::Null, "{loaded}");
    assert_eq!(loaded["clients"], 4, "{loaded}");

    // The text form, for people.
    let output = daemon.admin(&["status"]);
    output.assert_success();
    for needle in [
        "4 from",
        "(1 disabled, 1 with an old secret still working)",
        "1 of the signing key, 1 of secrets",
        "client `fresh` disabled",
        &format!("uid {uid}"),
        "the file",
    ] {
        assert!(
            output.stdout.contains(needle),
            "no `{needle}` in:\n{output}"
        );
    }
    daemon.stop();
}
