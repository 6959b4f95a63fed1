//! Staged signing-key rotation (SPEC "Signing keys"): next → active → retiring → removed,
//! `keys rotate [--now]` and its wait, `keys revoke`, keys kept across restarts and shared by
//! daemons on one `key_dir`, a crash in the middle of a rotation, a new `algorithm` at
//! reload, and a private key that others can read.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::PermissionsExt as _,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokendealer_tests::{
    Auth, Daemon, ISSUER, Reply, TestClient, files, jwt,
    keys::{self, FrozenJwks, ListedKey},
    process::{self, COMMAND_TIMEOUT},
};

use crate::{API, now, service_client};

const JWKS_PATH: &str = "/.well-known/jwks.json";

/// `jwks_max_age` when the config does not set it (15m).
const DEFAULT_JWKS_MAX_AGE_SECS: i64 = 15 * 60;

/// How much longer than `jwks_max_age` a next key waits before it signs, for every daemon
/// sharing the key directory to publish it (README, "Signing keys").
const PUBLICATION_MARGIN_SECS: i64 = 35;

/// How long a retiring key stays published past the last expiry of a token it signed.
const RETIRE_LEEWAY_SECS: i64 = 5 * 60;

/// Slack for a time the daemon reads from its clock between two readings of ours: the
/// daemon and the manifest count whole seconds.
const CLOCK_SLACK_SECS: i64 = 2;

/// How soon a daemon adopts a key change another daemon made in the shared directory.
const ADOPTION_DEADLINE: Duration = Duration::from_secs(1);

/// How long a reload by SIGHUP may take to publish the new next key.
const SIGHUP_DEADLINE: Duration = Duration::from_secs(10);

/// How far ahead a retiring key is made to leave, for key upkeep to wake for it: time for
/// the daemon to start before it is due.
const RETIRE_SOON_SECS: i64 = 6;

/// How long the daemon finishes requests in flight after SIGTERM, at most (README, "Signals").
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Rounds of "rotate, SIGKILL at a random moment, restart".
const KILL_ROUNDS: u32 = 30;

/// A daemon signing with `algorithm`, and its one client.
fn daemon_with(algorithm: &str) -> (Daemon, TestClient) {
    let client = service_client();
    let daemon = Daemon::builder()
        .algorithm(algorithm)
        .client(&client)
        .start();
    (daemon, client)
}

fn token(daemon: &Daemon, client: &TestClient) -> String {
    daemon.access_token(client, &[("audience", API)])
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

/// The `alg` in a token's header.
#[track_caller]
fn alg_of(token: &str) -> String {
    let jws = jwt::decode(token);
    jws.header["alg"]
        .as_str()
        .unwrap_or_else(|| panic!("a token without an alg: {}", jws.header))
        .to_owned()
}

/// PyJWT's verdict on `token` against the JWKS this daemon serves now.
#[track_caller]
fn pyjwt_verifies(daemon: &Daemon, token: &str) -> Value {
    jwt::pyjwt_verify(&daemon.url(JWKS_PATH), token, ISSUER, API)
}

fn verify_token(daemon: &Daemon, token: &str) -> Reply {
    daemon.post_json(
        "/verify_token",
        &json!({"access_token": token, "audience": API}),
    )
}

fn kid_set<'a>(kids: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    kids.into_iter().map(str::to_owned).collect()
}

fn listed_kids(keys: &[ListedKey]) -> BTreeSet<String> {
    kid_set(keys.iter().map(|k| k.kid.as_str()))
}

fn jwks_kids(daemon: &Daemon) -> BTreeSet<String> {
    kid_set(daemon.kids().iter().map(String::as_str))
}

#[track_caller]
fn json_str<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at `{pointer}` in {value}"))
}

#[test]
fn first_start_publishes_an_active_and_a_next_key() {
    let client = service_client();
    // The default algorithm, so the default key set is what is checked.
    let daemon = Daemon::with_client(&client);
    let jwks = daemon.jwks();
    assert_eq!(daemon.kids().len(), 2, "the JWKS has two keys: {jwks}");

    let listed = keys::list(&daemon);
    assert_eq!(listed.len(), 2, "{listed:#?}");
    let active = keys::only(&listed, "active");
    let next = keys::only(&listed, "next");
    assert_eq!(listed_kids(&listed), jwks_kids(&daemon), "{jwks}");
    assert_eq!(
        next.may_sign_at,
        Some(next.created + DEFAULT_JWKS_MAX_AGE_SECS + PUBLICATION_MARGIN_SECS),
        "the next key may sign jwks_max_age and the margin after it was published: {next:#?}"
    );
    assert_eq!(active.may_sign_at, None, "{active:#?}");
    assert!(active.activated.is_some(), "{active:#?}");

    let token = token(&daemon, &client);
    assert_eq!(kid_of(&token), active.kid, "tokens carry the active kid");
    pyjwt_verifies(&daemon, &token);

    let dir = keys::key_dir(&daemon);
    let on_disk: BTreeSet<(String, String)> =
        keys::assert_key_dir_consistent(&dir).into_iter().collect();
    let expected: BTreeSet<(String, String)> = [
        (active.kid.clone(), "active".to_owned()),
        (next.kid.clone(), "next".to_owned()),
    ]
    .into();
    assert_eq!(on_disk, expected, "manifest.json");
    assert!(
        dir.join(".lock").is_file(),
        "no .lock in {:?}",
        keys::listing(&dir)
    );
}

#[test]
fn a_token_from_before_a_rotation_verifies_against_the_jwks_after_it() {
    let (daemon, client) = daemon_with("ES256");
    let before = keys::list(&daemon);
    let old_active = keys::only(&before, "active").kid.clone();
    let old_next = keys::only(&before, "next").kid.clone();
    let old_token = token(&daemon, &client);
    assert_eq!(kid_of(&old_token), old_active);

    let rotated = keys::rotate_now(&daemon);
    assert_eq!(json_str(&rotated, "/active"), old_next, "{rotated}");
    assert_eq!(json_str(&rotated, "/retiring/kid"), old_active, "{rotated}");
    let new_next = json_str(&rotated, "/next").to_owned();

    let after = keys::list(&daemon);
    assert_eq!(keys::only(&after, "retiring").kid, old_active, "{after:#?}");
    assert_eq!(keys::only(&after, "active").kid, old_next, "{after:#?}");
    assert_eq!(keys::only(&after, "next").kid, new_next, "{after:#?}");
    assert_eq!(
        jwks_kids(&daemon),
        kid_set([old_active.as_str(), old_next.as_str(), new_next.as_str()]),
        "the JWKS holds the retiring, active and next keys: {}",
        daemon.jwks()
    );

    let claims = pyjwt_verifies(&daemon, &old_token);
    assert_eq!(claims["sub"], client.id.as_str(), "{claims}");
    verify_token(&daemon, &old_token).assert_status(200);
}

/// A verifier that cached the JWKS before the rotation never meets an unknown kid.
#[test]
fn after_a_rotation_tokens_carry_a_kid_the_cached_jwks_already_had() {
    let (daemon, client) = daemon_with("ES256");
    let cached = daemon.jwks();
    let frozen = FrozenJwks::serve(&cached);

    let rotated = keys::rotate_now(&daemon);
    let new_active = json_str(&rotated, "/active");
    jwt::find_key(&cached, new_active);

    let token = token(&daemon, &client);
    assert_eq!(
        kid_of(&token),
        new_active,
        "tokens carry the new active kid"
    );
    let claims = jwt::pyjwt_verify(&frozen.url(), &token, ISSUER, API);
    assert_eq!(claims["sub"], client.id.as_str(), "{claims}");
}

/// `retire_at` of the key a rotation retires, checked against our clock readings around the
/// rotation.
#[track_caller]
fn assert_retires_after(daemon: &Daemon, published_for_secs: i64) {
    let started = now();
    let rotated = keys::rotate_now(daemon);
    let finished = now();
    let listed = keys::list(daemon);
    let retiring = keys::only(&listed, "retiring");
    assert_eq!(retiring.kid, json_str(&rotated, "/retiring/kid"));
    assert_eq!(
        retiring.raw["retire_at"], rotated["retiring"]["retire_at"],
        "`keys rotate` and `keys list` agree on retire_at"
    );
    let retire_at = retiring
        .retire_at
        .unwrap_or_else(|| panic!("a retiring key without retire_at: {retiring:#?}"));
    let earliest = started + published_for_secs - CLOCK_SLACK_SECS;
    let latest = finished + published_for_secs + CLOCK_SLACK_SECS;
    assert!(
        (earliest..=latest).contains(&retire_at),
        "retire_at {} should be the rotation time plus {published_for_secs}s, between {earliest} \
         and {latest}: {retiring:#?}",
        retire_at
    );
}

#[test]
fn a_retiring_key_stays_published_for_the_token_ttl_plus_five_minutes() {
    let client = service_client();
    let daemon = Daemon::builder()
        .algorithm("ES256")
        .config(r#"token_ttl = "10m""#)
        .client(&client)
        .start();
    assert_retires_after(&daemon, 10 * 60 + RETIRE_LEEWAY_SECS);
}

/// A client whose tokens live longer than `token_ttl` sets how long the old key must stay.
#[test]
fn a_retiring_key_stays_published_for_the_longest_client_ttl() {
    let short = service_client();
    let long = TestClient::new("long-lived")
        .audiences(&[API])
        .token_ttl("20m");
    let daemon = Daemon::builder()
        .algorithm("ES256")
        .config(r#"token_ttl = "10m""#)
        .client(&short)
        .client(&long)
        .start();
    assert_retires_after(&daemon, 20 * 60 + RETIRE_LEEWAY_SECS);
}

/// Tokens issued under a lifetime the clients file has shortened since are still out: the
/// key that signed them stays published for the longer lifetime, after a restart too.
#[test]
fn a_retiring_key_stays_published_for_a_lifetime_since_shortened() {
    let long = TestClient::new("long-lived")
        .audiences(&[API])
        .token_ttl("30m");
    let mut daemon = Daemon::builder()
        .algorithm("ES256")
        .config(r#"token_ttl = "10m""#)
        .client(&long)
        .start();
    token(&daemon, &long);
    daemon.write_clients(&[long.token_ttl("10m")]);
    daemon.admin(&["reload"]).assert_success();
    daemon.restart();
    assert_retires_after(&daemon, 30 * 60 + RETIRE_LEEWAY_SECS);
}

/// The `max-age` of the JWKS response, in seconds.
#[track_caller]
fn jwks_max_age(daemon: &Daemon) -> i64 {
    let reply = daemon.get(JWKS_PATH);
    reply.assert_status(200);
    let cache_control = reply
        .header("cache-control")
        .unwrap_or_else(|| panic!("the JWKS has no Cache-Control: {reply:?}"));
    cache_control
        .split(',')
        .find_map(|d| d.trim().strip_prefix("max-age="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no max-age in `{cache_control}`"))
}

/// What `keys rotate` (without `--now`) and `keys list` say after `jwks_max_age` went from
/// ten minutes to one second at `shortened`: the next key waits until responses cached
/// under the ten minutes have expired, not one second after it was published.
#[track_caller]
fn assert_waits_for_ten_minute_caches(daemon: &Daemon, shortened: i64) {
    assert_eq!(jwks_max_age(daemon), 1, "the JWKS says the new max-age");
    let listed = keys::list(daemon);
    let next = keys::only(&listed, "next");
    let may_sign_at = next
        .may_sign_at
        .unwrap_or_else(|| panic!("the next key has no may_sign_at: {next:#?}"));
    assert!(
        may_sign_at >= shortened + 600 - CLOCK_SLACK_SECS,
        "verifiers may hold a JWKS without the next key until {}, yet it may sign at \
         {may_sign_at}: {next:#?}",
        shortened + 600
    );
    let output = daemon.admin(&["keys", "rotate"]);
    output.assert_code(1);
    assert!(
        output.stderr.contains("--now"),
        "the refusal mentions --now:\n{output}"
    );
    assert_eq!(
        keys::list(daemon),
        listed,
        "a refused rotation changes nothing"
    );
}

/// An ES256 daemon serving the JWKS with `max-age` ten minutes.
fn ten_minute_jwks_daemon() -> Daemon {
    Daemon::builder()
        .algorithm("ES256")
        .config(r#"jwks_max_age = "10m""#)
        .client(&service_client())
        .start()
}

#[test]
fn shortening_jwks_max_age_at_a_reload_waits_out_what_verifiers_cached() {
    let daemon = ten_minute_jwks_daemon();
    assert_eq!(jwks_max_age(&daemon), 600);
    keys::set_config(&daemon, "jwks_max_age", r#""1s""#);
    let shortened = now();
    daemon.admin(&["reload"]).assert_success();
    assert_waits_for_ten_minute_caches(&daemon, shortened);
}

#[test]
fn shortening_jwks_max_age_across_a_restart_waits_out_what_verifiers_cached() {
    let mut daemon = ten_minute_jwks_daemon();
    assert_eq!(jwks_max_age(&daemon), 600);
    keys::set_config(&daemon, "jwks_max_age", r#""1s""#);
    let shortened = now();
    daemon.restart();
    assert_waits_for_ten_minute_caches(&daemon, shortened);
}

#[test]
fn rotate_without_now_is_refused_while_the_next_key_is_young() {
    let (daemon, _) = daemon_with("ES256");
    let jwks = daemon.jwks();
    let listed = keys::list(&daemon);
    let next = keys::only(&listed, "next");

    let output = daemon.admin(&["keys", "rotate"]);
    output.assert_code(1);
    let lines = output.stderr_lines();
    assert_eq!(lines.len(), 1, "one sentence on stderr:\n{output}");
    assert!(
        lines[0].contains("--now"),
        "the refusal mentions --now:\n{output}"
    );
    let may_sign_at = next.raw["may_sign_at"]
        .as_str()
        .unwrap_or_else(|| panic!("the next key has no may_sign_at: {next:#?}"));
    assert!(
        lines[0].contains(may_sign_at),
        "the refusal says when rotating becomes possible ({may_sign_at}):\n{output}"
    );

    assert_eq!(
        daemon.jwks(),
        jwks,
        "a refused rotation leaves the JWKS as it was"
    );
    assert_eq!(
        keys::list(&daemon),
        listed,
        "a refused rotation leaves the keys as they were"
    );
}

/// A next key older than `jwks_max_age` but not yet by the margin for other daemons does
/// not sign; older than both, `keys rotate` promotes it. The wait is passed by moving the
/// manifest's times back while the daemon is stopped.
#[test]
fn rotate_succeeds_once_the_next_key_is_older_than_jwks_max_age_and_the_margin() {
    let client = service_client();
    let mut daemon = Daemon::builder()
        .algorithm("ES256")
        .config(r#"jwks_max_age = "1s""#)
        .client(&client)
        .start();
    let listed = keys::list(&daemon);
    let next = keys::only(&listed, "next").clone();
    assert_eq!(
        next.may_sign_at,
        Some(next.created + 1 + PUBLICATION_MARGIN_SECS),
        "{next:#?}"
    );

    // Past jwks_max_age by ten seconds; the margin has well over ten seconds to go.
    daemon.stop();
    keys::age_manifest(&keys::key_dir(&daemon), 1 + 10);
    daemon.start();
    let output = daemon.admin(&["keys", "rotate"]);
    output.assert_code(1);
    assert!(
        output.stderr.contains("--now") && output.stderr.contains("every daemon sharing"),
        "the refusal says why it waits and how not to:\n{output}"
    );

    daemon.stop();
    keys::age_manifest(&keys::key_dir(&daemon), PUBLICATION_MARGIN_SECS);
    daemon.start();
    let aged = keys::only(&keys::list(&daemon), "next").clone();
    let rotated = daemon.admin(&["keys", "rotate", "--json"]);
    rotated.assert_success();
    let rotated: Value = serde_json::from_str(&rotated.stdout)
        .unwrap_or_else(|e| panic!("`keys rotate --json` printed no JSON ({e}):\n{rotated}"));
    assert_eq!(json_str(&rotated, "/active"), next.kid, "{rotated}");

    let after = keys::list(&daemon);
    let active = keys::only(&after, "active");
    assert_eq!(active.kid, next.kid);
    assert!(
        active.activated >= aged.may_sign_at,
        "the key signs no earlier than it may: {active:#?}, {aged:#?}"
    );
    assert_eq!(kid_of(&token(&daemon, &client)), next.kid);
}

/// `rotate_every`: with no admin, the next key takes over once it is due and may sign,
/// the old one retires, and a new next key is published.
#[test]
fn rotate_every_rotates_on_its_own() {
    let client = service_client();
    // At debug, the daemon logs each change once it is noted: the test waits on that.
    let mut daemon = Daemon::builder()
        .algorithm("ES256")
        .config("jwks_max_age = \"1s\"\nrotate_every = \"2s\"")
        .client(&client)
        .log_level("debug")
        .start();
    // The next key may sign only after the margin for other daemons: made that much older
    // while the daemon is stopped, it is due at once. Its keys are read before the start,
    // as the rotation may come before any command could.
    daemon.stop();
    let key_dir = keys::key_dir(&daemon);
    keys::age_manifest(&key_dir, PUBLICATION_MARGIN_SECS);
    let before = keys::manifest_keys(&keys::read_manifest(&key_dir));
    let kid_in = |state: &str| {
        before
            .iter()
            .find(|(_, s)| s == state)
            .map(|(kid, _)| kid.clone())
            .unwrap_or_else(|| panic!("no {state} key in the manifest: {before:?}"))
    };
    let (active, next) = (kid_in("active"), kid_in("next"));
    daemon.start();

    // The rotation, and its note in the changes, come with no admin asking.
    daemon.wait_for_log("the scheduled rotation noted", |log| {
        log.lines()
            .any(|l| l.contains("change noted") && l.contains(&format!("keys rotated: {next}")))
    });
    let after = keys::list(&daemon);
    assert_eq!(keys::only(&after, "active").kid, next, "{after:#?}");
    assert_eq!(keys::only(&after, "retiring").kid, active, "{after:#?}");
    let new_next = &keys::only(&after, "next").kid;
    assert!(*new_next != active && *new_next != next, "{after:#?}");
    let token = token(&daemon, &client);
    assert_eq!(kid_of(&token), next);
    pyjwt_verifies(&daemon, &token);

    // Told as a change the daemon made, no admin's.
    let output = daemon.admin(&["status", "--json"]);
    output.assert_success();
    let status: Value = serde_json::from_str(&output.stdout).expect("JSON");
    let rotated = status["changes"]
        .as_array()
        .and_then(|changes| {
            changes
                .iter()
                .find(|c| c["kind"] == "key_rotated" && c["active"] == next.as_str())
        })
        .unwrap_or_else(|| panic!("no key_rotated change: {status:#}"));
    assert_eq!(rotated["by"], Value::Null, "{rotated}");
    assert!(status["key_rotations"].as_u64() >= Some(1), "{status:#}");
}

/// A stop is not held by key upkeep waiting for the key directory's lock (another daemon
/// sharing the directory hangs holding it, or a network file system does): the daemon exits
/// within its drain deadline while the lock is still held.
#[test]
fn a_stop_is_not_held_by_upkeep_waiting_for_the_key_directory_lock() {
    let (mut daemon, _) = daemon_with("ES256");
    keys::rotate_now(&daemon);
    daemon.stop();
    // The retiring key is due to leave in a few seconds: key upkeep wakes for it then, and
    // needs the lock to write the manifest without it.
    let key_dir = keys::key_dir(&daemon);
    keys::edit_manifest(&key_dir, |keys| {
        for key in keys.iter_mut().filter(|k| k["state"] == "retiring") {
            key["retire_at"] = Value::from(now() + RETIRE_SOON_SECS);
        }
    });
    daemon.start();
    let lock_path = key_dir.join(".lock");
    let lock = fs::File::options()
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("opening {} failed: {e}", lock_path.display()));
    lock.lock().expect("taking the key directory's lock");
    daemon.wait_for_log("key upkeep waiting for the lock", |log| {
        log.contains("waiting for the key directory's lock")
    });

    let asked = Instant::now();
    let status = daemon.stop();
    assert!(status.success(), "tokendealerd exited with {status}");
    assert!(
        asked.elapsed() < DRAIN_DEADLINE,
        "the stop took {:?} with the key directory's lock held elsewhere",
        asked.elapsed()
    );
    drop(lock);
}

/// retiring → removed on a running daemon: at its `retire_at`, with no admin asking and no
/// restart, the retiring key leaves the JWKS and the key directory; not before.
#[test]
fn a_retiring_key_leaves_the_jwks_and_the_key_directory_at_its_time() {
    let (mut daemon, client) = daemon_with("ES256");
    let rotated = keys::rotate_now(&daemon);
    let retiring = json_str(&rotated, "/retiring/kid").to_owned();
    let active = json_str(&rotated, "/active").to_owned();
    daemon.stop();
    let key_dir = keys::key_dir(&daemon);
    let retire_at = now() + RETIRE_SOON_SECS;
    keys::edit_manifest(&key_dir, |keys| {
        for key in keys.iter_mut().filter(|k| k["state"] == "retiring") {
            key["retire_at"] = Value::from(retire_at);
        }
    });
    daemon.start();
    assert!(
        jwks_kids(&daemon).contains(&retiring),
        "the retiring key is published until {retire_at}: {}",
        daemon.jwks()
    );
    let pem = key_dir.join(format!("{retiring}.pem"));
    assert!(pem.exists(), "{} is gone before its time", pem.display());

    daemon.wait_for_log("the retiring key's file removed", |log| {
        log.lines().any(|l| {
            l.contains("removed the key file of a key that left the manifest")
                && l.contains(&retiring)
        })
    });
    assert!(
        now() >= retire_at,
        "the retiring key left at {}, before its retire_at {retire_at}",
        now()
    );
    assert!(!pem.exists(), "{} remains", pem.display());
    // The JWKS is swapped just after the file goes.
    let deadline = Instant::now() + ADOPTION_DEADLINE;
    while jwks_kids(&daemon).contains(&retiring) {
        assert!(
            Instant::now() < deadline,
            "the retiring key is still published after its file was removed: {}",
            daemon.jwks()
        );
    }
    let listed = keys::list(&daemon);
    assert!(
        listed.iter().all(|k| k.state != "retiring"),
        "no retiring key is left: {listed:#?}"
    );
    assert_eq!(keys::only(&listed, "active").kid, active, "{listed:#?}");
    let on_disk = keys::assert_key_dir_consistent(&key_dir);
    assert!(
        on_disk.iter().all(|(kid, _)| *kid != retiring),
        "the manifest still names {retiring}: {on_disk:?}"
    );
    assert_eq!(kid_of(&token(&daemon, &client)), active);
}

#[test]
fn revoking_the_active_key_drops_it_from_the_jwks_and_promotes_next() {
    let (daemon, client) = daemon_with("EdDSA");
    let before = keys::list(&daemon);
    let active = keys::only(&before, "active").kid.clone();
    let next = keys::only(&before, "next").kid.clone();

    daemon
        .admin(&["keys", "revoke", active.as_str()])
        .assert_success();

    let kids = jwks_kids(&daemon);
    assert!(
        !kids.contains(&active),
        "the revoked key is still published: {kids:?}"
    );
    let after = keys::list(&daemon);
    assert_eq!(keys::only(&after, "active").kid, next, "{after:#?}");
    let new_next = &keys::only(&after, "next").kid;
    assert!(
        new_next != &active && new_next != &next,
        "a new next key: {after:#?}"
    );
    assert_eq!(
        kids,
        listed_kids(&after),
        "the JWKS is the active and the new next"
    );

    let token = token(&daemon, &client);
    assert_eq!(kid_of(&token), next, "the former next key signs");
    pyjwt_verifies(&daemon, &token);
    let pem = keys::key_dir(&daemon).join(format!("{active}.pem"));
    assert!(
        !pem.exists(),
        "the revoked key's file {} remains",
        pem.display()
    );
}

/// The key a revocation makes active records the longest token lifetime in force with its
/// first token, not at the next upkeep: a restart with shorter lifetimes, or another
/// daemon's rotation, in between would otherwise retire it before its tokens expire.
#[test]
fn the_key_a_revocation_makes_active_knows_its_longest_token_lifetime_at_once() {
    let (daemon, _) = daemon_with("EdDSA");
    let active = keys::only(&keys::list(&daemon), "active").kid.clone();
    daemon
        .admin(&["keys", "revoke", active.as_str()])
        .assert_success();
    let manifest = keys::read_manifest(&keys::key_dir(&daemon));
    let now_active = manifest["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["state"] == "active"))
        .unwrap_or_else(|| panic!("no active key: {manifest:#}"));
    assert_eq!(
        now_active["longest_ttl"], 86_400,
        "the default lifetime, 24h: {manifest:#}"
    );
}

/// Another daemon on the key directory revokes the signing key and makes active a key
/// this one cannot load (here: a manifest naming a file that is not there). The revoked
/// key must not go on signing here: it leaves the JWKS, token requests get 503 and
/// `/readyz` says not ready, until a manifest can be adopted again.
#[test]
fn a_key_revoked_elsewhere_stops_signing_here_though_its_successor_cannot_be_loaded() {
    const WITHIN: Duration = Duration::from_secs(40);
    let (daemon, client) = daemon_with("EdDSA");
    let dir = keys::key_dir(&daemon);
    let listed = keys::list(&daemon);
    let revoked = keys::only(&listed, "active").kid.clone();
    let next = keys::only(&listed, "next").kid.clone();
    let manifest = keys::read_manifest(&dir);
    let write = |manifest: &Value| {
        files::write_by_rename(
            &dir.join("manifest.json"),
            serde_json::to_vec_pretty(manifest)
                .expect("JSON")
                .as_slice(),
        );
    };
    let mut broken = manifest.clone();
    let entries = broken["keys"].as_array_mut().expect("keys");
    entries.retain(|k| k["kid"] != revoked.as_str());
    entries.push(json!({
        "kid": "u".repeat(43), "alg": "EdDSA", "state": "active",
        "created": now(), "activated": now(), "retire_at": null,
    }));
    write(&broken);

    let ask = || daemon.token_request(Auth::Basic(&client.id, &client.secret), &[]);
    let deadline = Instant::now() + WITHIN;
    let refused = loop {
        let reply = ask();
        if reply.status != 200 {
            break reply;
        }
        assert_eq!(
            kid_of(reply.json()["access_token"].as_str().expect("a token")),
            revoked
        );
        assert!(
            Instant::now() < deadline,
            "the revoked key still signs {WITHIN:?} later\n{}",
            daemon.diagnostics()
        );
    };
    refused.assert_oauth_error(503, "temporarily_unavailable");
    assert!(
        !jwks_kids(&daemon).contains(&revoked),
        "the revoked key is still published"
    );
    daemon.get("/readyz").assert_status(503);

    // The directory mended (the next key made active), signing resumes with it.
    let mut mended = manifest;
    let entries = mended["keys"].as_array_mut().expect("keys");
    entries.retain(|k| k["kid"] != revoked.as_str());
    for key in entries.iter_mut() {
        key["state"] = json!("active");
        key["activated"] = json!(now());
    }
    write(&mended);
    let deadline = Instant::now() + WITHIN;
    loop {
        let reply = ask();
        if reply.status == 200 {
            assert_eq!(
                kid_of(reply.json()["access_token"].as_str().expect("a token")),
                next
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no token {WITHIN:?} after the directory was mended: {reply}"
        );
    }
    daemon.get("/readyz").assert_status(200);
}

#[test]
fn tokens_signed_by_a_revoked_key_no_longer_verify() {
    let (daemon, client) = daemon_with("EdDSA");
    let revoked_token = token(&daemon, &client);
    pyjwt_verifies(&daemon, &revoked_token);
    verify_token(&daemon, &revoked_token).assert_status(200);

    daemon
        .admin(&["keys", "revoke", kid_of(&revoked_token).as_str()])
        .assert_success();

    let output = jwt::pyjwt_verify_output(&daemon.url(JWKS_PATH), &revoked_token, ISSUER, API);
    assert_eq!(
        output.code(),
        Some(1),
        "PyJWT still accepts a token of a revoked key:\n{output}"
    );
    let reply = verify_token(&daemon, &revoked_token);
    reply.assert_status(400);
    assert_eq!(reply.json()["error"], "invalid_token", "{reply}");
}

/// `keys revoke KID --json`: the key revoked, the state it had, and the key that signs now.
#[test]
fn keys_revoke_json_names_the_key_its_former_state_and_the_signing_key() {
    let (daemon, client) = daemon_with("EdDSA");
    let rotated = keys::rotate_now(&daemon);
    let retiring = json_str(&rotated, "/retiring/kid").to_owned();
    let active = json_str(&rotated, "/active").to_owned();
    let next = json_str(&rotated, "/next").to_owned();

    let revoke = |kid: &str| -> Value {
        let output = daemon.admin(&["keys", "revoke", kid, "--json"]);
        output.assert_success();
        serde_json::from_str(&output.stdout)
            .unwrap_or_else(|e| panic!("`keys revoke --json` printed no JSON ({e}):\n{output}"))
    };
    assert_eq!(
        revoke(&retiring),
        json!({"revoked": retiring, "former_state": "retiring", "active": active})
    );
    assert_eq!(
        jwks_kids(&daemon),
        kid_set([active.as_str(), next.as_str()]),
        "the retiring key left the JWKS"
    );

    // The active key revoked: the next one signs, and says so.
    assert_eq!(
        revoke(&active),
        json!({"revoked": active, "former_state": "active", "active": next})
    );
    assert_eq!(kid_of(&token(&daemon, &client)), next);
    let kids = jwks_kids(&daemon);
    assert!(
        !kids.contains(&active) && kids.contains(&next),
        "the JWKS after the revocation: {kids:?}"
    );
}

#[test]
fn revoking_an_unknown_kid_exits_1_and_changes_nothing() {
    let (daemon, _) = daemon_with("EdDSA");
    let jwks = daemon.jwks();
    let output = daemon.admin(&["keys", "revoke", "no-such-kid"]);
    output.assert_code(1);
    assert!(
        output.stderr.contains("no-such-kid"),
        "the message names the kid:\n{output}"
    );
    assert_eq!(daemon.jwks(), jwks);
}

#[test]
fn restart_keeps_every_key_and_its_state() {
    let (mut daemon, client) = daemon_with("ES256");
    keys::rotate_now(&daemon);
    let before = keys::list(&daemon);
    let states: BTreeSet<&str> = before.iter().map(|k| k.state.as_str()).collect();
    assert_eq!(states, ["active", "next", "retiring"].into(), "{before:#?}");
    let jwks = daemon.jwks();

    daemon.restart();

    assert_eq!(keys::list(&daemon), before, "the keys and their states");
    assert_eq!(daemon.jwks(), jwks);
    assert_eq!(
        kid_of(&token(&daemon, &client)),
        keys::only(&before, "active").kid
    );
}

/// Waits until `follower` serves `expected` as its JWKS.
#[track_caller]
fn await_jwks(follower: &Daemon, expected: &Value, leader: &Daemon) {
    let deadline = Instant::now() + ADOPTION_DEADLINE;
    loop {
        let seen = follower.jwks();
        if seen == *expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{ADOPTION_DEADLINE:?} after the rotation the other daemon still serves\n{seen}\n\
             rather than\n{expected}\n--- the daemon that rotated ---\n{}\n--- the other \
             daemon ---\n{}",
            leader.diagnostics(),
            follower.diagnostics()
        );
    }
}

/// Two ES256 daemons on one key directory, each with its own config, port, admin socket and
/// clients file; the second starts once the first has made the keys.
fn two_daemons_sharing_keys(client: &TestClient) -> (Daemon, Daemon) {
    // At debug, each logs a change once it is noted.
    let a = Daemon::builder()
        .algorithm("ES256")
        .client(client)
        .log_level("debug")
        .start();
    let mut b = Daemon::builder()
        .algorithm("ES256")
        .client(client)
        .log_level("debug")
        .write();
    keys::share_key_dir(&b, &keys::key_dir(&a));
    b.start();
    assert_eq!(
        b.jwks(),
        a.jwks(),
        "the second daemon loads the first one's keys"
    );
    (a, b)
}

#[test]
fn daemons_sharing_a_key_dir_follow_each_others_rotations() {
    let client = service_client();
    let (a, b) = two_daemons_sharing_keys(&client);

    for (leader, follower) in [(&a, &b), (&b, &a)] {
        let rotated = keys::rotate_now(leader);
        let new_active = json_str(&rotated, "/active");
        let expected = leader.jwks();
        await_jwks(follower, &expected, leader);

        let from_leader = token(leader, &client);
        let from_follower = token(follower, &client);
        assert_eq!(kid_of(&from_leader), new_active);
        assert_eq!(
            kid_of(&from_follower),
            new_active,
            "the other daemon signs with the new active key"
        );
        jwt::pyjwt_verify(&follower.url(JWKS_PATH), &from_leader, ISSUER, API);
        jwt::pyjwt_verify(&leader.url(JWKS_PATH), &from_follower, ISSUER, API);

        // Each tells the rotation once: the leader as its admin's, the follower as one it
        // adopted (no admin of its own asked).
        let latest = |daemon: &Daemon| {
            let output = daemon.admin(&["status", "--json"]);
            output.assert_success();
            let status: Value = serde_json::from_str(&output.stdout).expect("JSON");
            status["changes"][0].clone()
        };
        let told = latest(leader);
        // The follower notes it just after adopting the keys it now serves.
        follower.wait_for_log("the adopted rotation noted", |log| {
            log.lines().any(|l| {
                l.contains("change noted") && l.contains(&format!("keys rotated: {new_active}"))
            })
        });
        let adopted = latest(follower);
        assert_eq!(told["kind"], "key_rotated", "{told}");
        assert_eq!(told["active"], new_active, "{told}");
        assert!(told["by"].is_u64(), "{told}");
        assert_eq!(adopted["kind"], "key_rotated", "{adopted}");
        assert_eq!(adopted["active"], new_active, "{adopted}");
        assert_eq!(adopted["by"], Value::Null, "{adopted}");
    }
}

/// A compromised key leaves the JWKS of every daemon on the directory, not only the one asked.
#[test]
fn a_revocation_through_one_daemon_reaches_the_other() {
    let client = service_client();
    let (a, b) = two_daemons_sharing_keys(&client);
    let revoked_token = token(&b, &client);
    let revoked = kid_of(&revoked_token);

    a.admin(&["keys", "revoke", revoked.as_str()])
        .assert_success();
    await_jwks(&b, &a.jwks(), &a);

    let reply = verify_token(&b, &revoked_token);
    reply.assert_status(400);
    assert_eq!(reply.json()["error"], "invalid_token", "{reply}");
    let active = keys::only(&keys::list(&a), "active").kid.clone();
    assert_ne!(active, revoked);
    assert_eq!(
        kid_of(&token(&b, &client)),
        active,
        "the other daemon signs with the promoted key"
    );
}

/// A key directory stays usable whatever moment of a rotation the daemon dies at: the key
/// files are written before the manifest that names them, each by an atomic rename.
#[test]
fn sigkill_during_rotation_leaves_a_key_dir_that_loads() {
    let (mut daemon, client) = daemon_with("EdDSA");
    let dir = keys::key_dir(&daemon);

    // One uninterrupted `keys rotate --now`, timed from spawning the tool: kill moments are
    // drawn up to twice that, so they fall before, inside and after the daemon's work.
    let started = Instant::now();
    let status = process::wait_timeout(
        keys::spawn_admin(&daemon, &["keys", "rotate", "--now"]),
        COMMAND_TIMEOUT,
    )
    .unwrap_or_else(|killed| panic!("`keys rotate --now` did not finish ({killed})"));
    assert!(status.success(), "`keys rotate --now` failed: {status}");
    let window = started.elapsed() * 2;
    let window_nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);

    for round in 1..=KILL_ROUNDS {
        let before = keys::manifest_keys(&keys::read_manifest(&dir));
        // A quarter of the rounds kill at once, while the tool is still starting.
        let delay = if keys::random_below(4) == 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos(keys::random_below(window_nanos.max(1)))
        };
        let tool = keys::spawn_admin(&daemon, &["keys", "rotate", "--now"]);
        let kill_at = Instant::now() + delay;
        while Instant::now() < kill_at {
            std::hint::spin_loop();
        }
        daemon.signal(Signal::SIGKILL);
        daemon.wait_exit();
        let tool_status = process::wait_timeout(tool, COMMAND_TIMEOUT)
            .unwrap_or_else(|killed| panic!("round {round}: the admin tool hung ({killed})"));
        let context = format!("round {round}, killed {delay:?} after spawning `keys rotate --now`");

        let left = keys::assert_key_dir_consistent(&dir);
        if tool_status.success() {
            let promoted = before.iter().find(|(_, state)| state == "next");
            let active = left.iter().find(|(_, state)| state == "active");
            assert_eq!(
                promoted.map(|(kid, _)| kid),
                active.map(|(kid, _)| kid),
                "{context}: an acknowledged rotation was lost: before {before:?}, after {left:?}"
            );
        }

        daemon.start();
        let temp = keys::temp_files(&dir);
        assert!(
            temp.is_empty(),
            "{context}: temporary files remain after the restart: {temp:?}"
        );
        keys::assert_key_dir_consistent(&dir);
        let token = token(&daemon, &client);
        let kid = kid_of(&token);
        assert!(
            jwks_kids(&daemon).contains(&kid),
            "{context}: the token's kid {kid} is not in the JWKS {}",
            daemon.jwks()
        );
        // The independent verifier costs a Python start per call: every tenth round is
        // enough to show the keys served after a kill verify end to end.
        if round % 10 == 0 {
            pyjwt_verifies(&daemon, &token);
        }
    }
}

/// Reload with a new `algorithm`: the next key is replaced by one of the new algorithm; the
/// active key keeps signing until the next rotation.
#[test]
fn reload_with_a_new_algorithm_replaces_the_next_key_only() {
    let (daemon, client) = daemon_with("ES256");
    let before = keys::list(&daemon);
    let active = keys::only(&before, "active").clone();
    let old_next = keys::only(&before, "next").kid.clone();
    let es256_token = token(&daemon, &client);

    keys::set_config(&daemon, "algorithm", r#""EdDSA""#);
    daemon.admin(&["reload"]).assert_success();

    let after = keys::list(&daemon);
    assert_eq!(
        keys::only(&after, "active"),
        &active,
        "the active key is unchanged"
    );
    let next = keys::only(&after, "next").clone();
    assert_eq!(next.alg, "EdDSA", "{after:#?}");
    assert_ne!(next.kid, old_next, "{after:#?}");
    let jwks = daemon.jwks();
    assert_eq!(
        jwks_kids(&daemon),
        kid_set([active.kid.as_str(), next.kid.as_str()]),
        "the old next key, which never signed, left the JWKS: {jwks}"
    );
    let jwk = jwt::find_key(&jwks, &next.kid);
    assert_eq!(jwk["alg"], "EdDSA", "{jwk}");
    assert_eq!(jwk["kty"], "OKP", "{jwk}");
    assert_eq!(jwk["crv"], "Ed25519", "{jwk}");

    let still_es256 = token(&daemon, &client);
    assert_eq!(alg_of(&still_es256), "ES256");
    assert_eq!(kid_of(&still_es256), active.kid);

    keys::rotate_now(&daemon);
    let eddsa_token = token(&daemon, &client);
    assert_eq!(alg_of(&eddsa_token), "EdDSA");
    assert_eq!(kid_of(&eddsa_token), next.kid);
    pyjwt_verifies(&daemon, &eddsa_token);
    pyjwt_verifies(&daemon, &es256_token);
}

#[test]
fn sighup_publishes_a_next_key_of_a_new_algorithm() {
    let (daemon, client) = daemon_with("ES256");
    let active = keys::only(&keys::list(&daemon), "active").kid.clone();
    keys::set_config(&daemon, "algorithm", r#""EdDSA""#);
    daemon.signal(Signal::SIGHUP);

    let deadline = Instant::now() + SIGHUP_DEADLINE;
    loop {
        let listed = keys::list(&daemon);
        if listed.iter().any(|k| k.state == "next" && k.alg == "EdDSA") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{SIGHUP_DEADLINE:?} after SIGHUP there is no EdDSA next key: {listed:#?}\n{}",
            daemon.diagnostics()
        );
    }
    let token = token(&daemon, &client);
    assert_eq!(alg_of(&token), "ES256");
    assert_eq!(kid_of(&token), active);
}

/// A changed `rsa_bits` gets a next key of the new size at reload, as a new algorithm does.
#[test]
fn reload_with_new_rsa_bits_replaces_the_next_key() {
    let (daemon, _) = daemon_with("RS256");
    let modulus_bytes = |kid: &str| {
        let jwks = daemon.jwks();
        let jwk = jwt::find_key(&jwks, kid);
        jwt::b64url_decode(jwk["n"].as_str().expect("an RSA modulus"))
            .expect("base64url")
            .len()
    };
    let before = keys::list(&daemon);
    assert_eq!(modulus_bytes(&keys::only(&before, "next").kid), 256);

    keys::set_config(&daemon, "rsa_bits", "3072");
    daemon.admin(&["reload"]).assert_success();

    let after = keys::list(&daemon);
    let next = &keys::only(&after, "next").kid;
    assert_ne!(next, &keys::only(&before, "next").kid, "{after:#?}");
    assert_eq!(modulus_bytes(next), 384, "a 3072-bit next key");
    assert_eq!(
        keys::only(&after, "active"),
        keys::only(&before, "active"),
        "the active key is unchanged"
    );
}

/// A key change that cannot be written (the key directory broken) fails the reload, which
/// says so, and leaves the settings in force. (That it holds back nothing else is in
/// `tls::a_broken_key_directory_does_not_hold_back_a_renewed_certificate`.)
#[test]
fn a_reload_whose_key_settings_cannot_be_applied_fails() {
    let (daemon, _) = daemon_with("EdDSA");
    let dir = keys::key_dir(&daemon);
    let manifest = dir.join("manifest.json");
    let saved = fs::read(&manifest).expect("the manifest");
    fs::remove_file(&manifest).expect("removing the manifest");
    fs::create_dir(&manifest).expect("a directory in its place");
    keys::set_config(&daemon, "jwks_max_age", r#""1m""#);

    let output = daemon.admin(&["reload"]);
    output.assert_code(1);
    assert!(
        output.stderr.contains("key settings"),
        "the failure says what failed:\n{output}"
    );
    assert_eq!(jwks_max_age(&daemon), DEFAULT_JWKS_MAX_AGE_SECS);

    fs::remove_dir(&manifest).expect("removing the directory");
    fs::write(&manifest, saved).expect("restoring the manifest");
    daemon.admin(&["reload"]).assert_success();
    assert_eq!(jwks_max_age(&daemon), 60);
}

/// Only the key files it wrote leave the key directory: others kept there (a TLS
/// certificate, a backup, even a backup named after the key that goes) stay, through a
/// rotation, the removal of a key's file and a restart.
#[test]
fn files_of_others_in_the_key_directory_are_left_alone() {
    let client = service_client();
    let mut daemon = Daemon::builder().client(&client).write();
    let dir = keys::key_dir(&daemon);
    fs::create_dir_all(&dir).expect("the key directory");
    let theirs = |names: &[String]| {
        for name in names {
            fs::write(dir.join(name), "theirs").expect("writing a file");
        }
    };
    let mut names = vec!["tls-cert.pem".to_owned(), "backup-of-oldkey.pem".to_owned()];
    theirs(&names);
    daemon.start();
    let rotated = keys::rotate_now(&daemon);
    let retiring = json_str(&rotated, "/retiring/kid").to_owned();
    let backups = [format!("{retiring}.pem.bak"), format!("{retiring}.pem~")];
    theirs(&backups);
    names.extend(backups);

    daemon
        .admin(&["keys", "revoke", retiring.as_str()])
        .assert_success();
    let pem = dir.join(format!("{retiring}.pem"));
    assert!(
        !pem.exists(),
        "the revoked key's file remains: {:?}",
        keys::listing(&dir)
    );
    daemon.restart();
    keys::assert_key_dir_consistent(&dir);
    for name in &names {
        assert_eq!(
            fs::read_to_string(dir.join(name)).ok().as_deref(),
            Some("theirs"),
            "{name} is gone or changed: {:?}",
            keys::listing(&dir)
        );
    }
    token(&daemon, &client);
}

#[test]
fn a_group_readable_private_key_stops_a_restart_with_exit_78() {
    let (mut daemon, _) = daemon_with("EdDSA");
    let active = keys::only(&keys::list(&daemon), "active").kid.clone();
    let status = daemon.stop();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let pem = keys::key_dir(&daemon).join(format!("{active}.pem"));
    files::set_mode(&pem, 0o640);

    let (sentence, output) = daemon.start_refused();
    assert!(
        sentence.contains("chmod 600"),
        "the sentence says what to run:\n{output}"
    );
    assert!(
        sentence.contains(pem.to_str().expect("UTF-8 path")),
        "the sentence names the key file:\n{output}"
    );
}

/// A key directory or manifest that others may write would let them make the daemon sign
/// with a key of theirs: the start is refused, saying what to run.
#[test]
fn a_key_directory_others_may_write_stops_a_restart_with_exit_78() {
    let (mut daemon, client) = daemon_with("EdDSA");
    daemon.stop();
    let dir = keys::key_dir(&daemon);
    for (path, mode) in [(dir.clone(), 0o777), (dir.join("manifest.json"), 0o666)] {
        let kept = fs::metadata(&path)
            .expect("the key directory's files")
            .permissions()
            .mode();
        files::set_mode(&path, mode);
        let (sentence, output) = daemon.start_refused();
        assert!(
            sentence.contains("writable by others") && sentence.contains("chmod o-w"),
            "the sentence says why and what to run:\n{output}"
        );
        assert!(
            sentence.contains(path.to_str().expect("UTF-8 path")),
            "the sentence names {}:\n{output}",
            path.display()
        );
        files::set_mode(&path, kept & 0o7777);
    }
    daemon.start();
    token(&daemon, &client);
}
