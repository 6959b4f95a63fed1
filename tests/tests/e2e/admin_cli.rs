//! The scriptable admin tool against a running daemon's admin socket.

use std::{
    os::unix::{fs::PermissionsExt as _, net::UnixListener},
    process::Command,
};

use serde_json::Value;
use tokendealer_tests::{
    Daemon, TestClient, bins,
    daemon::{admin_command, lines_around},
    files,
};

use crate::{API, now, service_client};

#[test]
fn status_shows_version_address_and_key() {
    let daemon = Daemon::with_client(&service_client());
    let output = daemon.admin(&["status"]);
    output.assert_success();
    let kid = daemon.kids().remove(0);
    for expected in [
        env!("CARGO_PKG_VERSION").to_owned(),
        daemon.addr().to_string(),
        kid.chars().take(8).collect(),
    ] {
        assert!(
            output.stdout.contains(&expected),
            "no `{expected}` in the status:\n{output}"
        );
    }
}

#[test]
fn status_json_is_one_object_with_listen_clients_and_keys() {
    let first = service_client();
    let second = TestClient::new("second").audiences(&[API]);
    let daemon = Daemon::builder().client(&first).client(&second).start();
    let output = daemon.admin(&["status", "--json"]);
    output.assert_success();
    let status: Value = serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}):\n{output}"));
    assert_eq!(status["listen"], daemon.addr().to_string(), "{output}");
    let clients = &status["clients"];
    assert!(
        clients.as_u64() == Some(2) || clients.as_array().is_some_and(|c| c.len() == 2),
        "`clients` should count two clients:\n{output}"
    );
    let kid = daemon.kids().remove(0);
    let keys = status["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("`keys` is not an array:\n{output}"));
    let key = keys
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap_or_else(|| panic!("the signing key {kid} is not listed:\n{output}"));
    assert_eq!(key["alg"], "RS512", "{output}");
    assert_eq!(key["state"], "active", "{output}");
}

/// Only the owner and the group may connect (the SPEC's mode 0660); the peer check is
/// the second gate.
#[test]
fn admin_socket_is_mode_0660() {
    let daemon = Daemon::with_client(&service_client());
    let mode = std::fs::metadata(daemon.admin_socket())
        .expect("the admin socket's metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660, "mode {:o}", mode & 0o777);
}

#[test]
fn no_daemon_exits_1_with_one_sentence() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let absent = dir.path().join("absent.sock");
    // A socket file nobody listens on any more, as a killed daemon leaves behind.
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).expect("binding a socket"));
    for socket in [absent, stale] {
        let mut cmd = Command::new(bins::tokendealer());
        cmd.arg("--socket").arg(&socket).arg("status");
        let output = admin_command(cmd);
        output.assert_code(1);
        let lines = output.stderr_lines();
        assert_eq!(lines.len(), 1, "one sentence on stderr:\n{output}");
        assert!(lines[0].contains("no tokendealer daemon at"), "{output}");
        assert!(
            lines[0].contains(socket.to_str().expect("UTF-8 path")),
            "the message names the socket:\n{output}"
        );
    }
}

/// The daemon's log line for a clients file it loaded, whatever made it look.
const CLIENTS_RELOADED: &str = "clients file reloaded";

/// How many edits a test makes before it gives up on one that only a reload applied: the
/// daemon looks at the clients file every 5 s of its own, and that look may come first.
const EDIT_ATTEMPTS: usize = 3;

/// `tokendealer reload` is synchronous: when it returns, a client added to the file works,
/// on the very next request. `clients.toml` is a symlink into another directory, so the file
/// watch cannot apply the edit; the log shows that the reload did. Should the daemon's look
/// at the file every 5 s have come between the save and the reload, the edit proves
/// nothing and another is made.
#[test]
fn reload_picks_up_a_new_client() {
    let first = service_client();
    // At debug, the daemon logs its look at an unchanged file.
    let mut daemon = Daemon::builder().log_level("debug").write();
    let real = daemon.clients_file_elsewhere(std::slice::from_ref(&first));
    daemon.start();
    // The start-up's second look at the file, which would apply an edit saved before it, is
    // over.
    daemon.wait_for_log("the start-up look at the clients file", |log| {
        log.contains("clients file unchanged")
    });
    let mut clients = vec![first.clone()];
    for attempt in 1..=EDIT_ATTEMPTS {
        let added = TestClient::new(&format!("added-later-{attempt}")).audiences(&[API]);
        clients.push(added.clone());
        let loaded = daemon.stderr().matches(CLIENTS_RELOADED).count();
        files::write_by_rename(&real, files::clients_text(&clients).as_bytes());
        daemon.admin(&["reload"]).assert_success();
        daemon.access_token(&added, &[]);
        daemon.access_token(&first, &[]);

        let log = daemon.wait_for_log("the reload's outcome", |log| {
            log.matches("admin: reload").count() == attempt
                && lines_around(log, "admin: reload", CLIENTS_RELOADED)
                    .is_some_and(|(before, after)| before > loaded || after > 0)
        });
        let (before, after) =
            lines_around(&log, "admin: reload", CLIENTS_RELOADED).expect("the reload is logged");
        if before > loaded {
            continue; // The look every 5 s applied it first.
        }
        assert_eq!(after, 1, "the reload applied the edit once:\n{log}");
        return;
    }
    panic!(
        "each of {EDIT_ATTEMPTS} edits was applied before the reload asked for it:\n{}",
        daemon.diagnostics()
    );
}

/// A broken clients file is refused and the clients already loaded keep working; the
/// failure names the file, and `status` tells it as the last reload.
#[test]
fn reload_of_a_broken_file_fails_and_keeps_the_old_clients() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    daemon.write_file("clients.toml", "[clients.broken\n");
    let output = daemon.admin(&["reload"]);
    assert_eq!(output.code(), Some(1), "a failed reload exits 1:\n{output}");
    let lines = output.stderr_lines();
    assert_eq!(lines.len(), 1, "one sentence on stderr:\n{output}");
    assert!(
        lines[0].contains("clients.toml"),
        "the failure names the clients file:\n{output}"
    );
    daemon.access_token(&client, &[]);
    assert_last_reload_failed(&daemon, "clients.toml");
}

/// `reload --json`: one object saying how it went, on stdout, whether it succeeded (exit 0,
/// with the time and the number of clients) or failed (exit 1, with the file, the line and
/// the reason).
#[test]
fn reload_json_tells_the_outcome() {
    let first = service_client();
    let second = TestClient::new("second").audiences(&[API]);
    let daemon = Daemon::with_client(&first);
    daemon.write_clients(&[first.clone(), second]);
    let output = daemon.admin(&["reload", "--json"]);
    output.assert_success();
    let reloaded: Value = serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}):\n{output}"));
    assert_eq!(reloaded["ok"], true, "{output}");
    assert_eq!(reloaded["clients"], 2, "{output}");
    let at = reloaded["at"]
        .as_str()
        .unwrap_or_else(|| panic!("no `at` time:\n{output}"));
    let at = tokendealer_tests::keys::unix_seconds(at);
    assert!((at - now()).abs() <= 60, "`at` is not now:\n{output}");

    daemon.write_file("clients.toml", "[clients.broken\n");
    let output = daemon.admin(&["reload", "--json"]);
    assert_eq!(output.code(), Some(1), "a failed reload exits 1:\n{output}");
    let failed: Value = serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}):\n{output}"));
    assert_eq!(failed["ok"], false, "{output}");
    assert!(
        failed["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("clients.toml")),
        "the failed file:\n{output}"
    );
    assert_eq!(failed["line"], 1, "{output}");
    assert!(
        failed["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "a reason:\n{output}"
    );
    assert!(failed["at"].is_string(), "{output}");
    daemon.access_token(&first, &[]);
}

/// The last reload as `status --json` tells it, having failed on the file named `file`.
#[track_caller]
fn assert_last_reload_failed(daemon: &Daemon, file: &str) -> Value {
    let output = daemon.admin(&["status", "--json"]);
    output.assert_success();
    let status: Value = serde_json::from_str(&output.stdout).expect("status JSON");
    let last = status["last_reload"].clone();
    assert_eq!(last["ok"], false, "{output}");
    assert!(
        last["file"].as_str().is_some_and(|f| f.ends_with(file)),
        "not a failure of {file}: {output}"
    );
    last
}

/// A config that no longer parses fails the reload, naming its line once, and `status`
/// says so until the next reload; the clients file is reloaded all the same.
#[test]
fn reload_with_a_broken_config_fails_and_status_says_so() {
    let client = service_client();
    let mut daemon = Daemon::with_client(&client);
    let config = std::fs::read_to_string(daemon.config_path()).expect("the config");
    let line = config.lines().count() + 1;
    std::fs::write(daemon.config_path(), format!("{config}bogus = 1\n")).expect("the config");
    let newcomer = TestClient::new("newcomer").audiences(&[API]);
    daemon.write_clients(&[client, newcomer.clone()]);
    let output = daemon.admin(&["reload"]);
    assert_eq!(output.code(), Some(1), "a failed reload exits 1:\n{output}");
    assert!(output.stderr.contains("bogus"), "{output}");
    assert_eq!(
        output.stderr.matches(&format!("line {line}")).count(),
        1,
        "the line, said once:\n{output}"
    );
    daemon.access_token(&newcomer, &[]);

    assert_last_reload_failed(&daemon, "config.toml");
    // A hand edit of the clients file loads, and the config is still what is broken.
    let another = TestClient::new("another").audiences(&[API]);
    let loads = |log: &str| log.matches("clients file reloaded").count();
    let loaded = loads(&daemon.stderr());
    daemon.write_clients(&[newcomer, another.clone()]);
    daemon.wait_for_log("the hand edit loaded", |log| loads(log) > loaded);
    daemon.access_token(&another, &[]);
    assert_last_reload_failed(&daemon, "config.toml");
    // A clients file that fails to load after it is the news, with its line.
    let refusals = |log: &str| log.matches("clients file not loaded").count();
    let refused = refusals(&daemon.stderr());
    daemon.write_file("clients.toml", "[clients.broken\n");
    daemon.wait_for_log("the broken clients file refused", |log| {
        refusals(log) > refused
    });
    let last = assert_last_reload_failed(&daemon, "clients.toml");
    assert_eq!(last["line"], 1, "{last}");

    std::fs::write(daemon.config_path(), &config).expect("the config");
    daemon.write_clients(&[another]);
    daemon.admin(&["reload"]).assert_success();
    let output = daemon.admin(&["status", "--json"]);
    let status: Value = serde_json::from_str(&output.stdout).expect("status JSON");
    assert_eq!(status["last_reload"]["ok"], true, "{output}");
    daemon.stop();
}

/// `tokendealer --socket … ARGS` with its stdout on /dev/full: every write fails.
fn admin_writing_to_a_full_disk(daemon: &Daemon, args: &[&str]) -> tokendealer_tests::Output {
    admin_with_stdout(daemon, "> /dev/full", args)
}

/// `tokendealer --socket … ARGS` with `redirect` applied to it by the shell.
fn admin_with_stdout(daemon: &Daemon, redirect: &str, args: &[&str]) -> tokendealer_tests::Output {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(r#"exec "$@" {redirect}"#))
        .arg("sh")
        .arg(bins::tokendealer())
        .arg("--socket")
        .arg(daemon.admin_socket())
        .args(args);
    admin_command(cmd)
}

#[test]
fn a_secret_that_cannot_be_printed_is_an_error_that_says_how_to_get_another() {
    // The secret exists nowhere else: a tool that lost it must not say all went well.
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    for (args, id) in [
        (&["clients", "add", "unprinted"][..], "unprinted"),
        (
            &["clients", "rotate-secret", client.id.as_str()][..],
            client.id.as_str(),
        ),
    ] {
        let output = admin_writing_to_a_full_disk(&daemon, args);
        output.assert_code(1);
        assert!(
            output.stderr.contains("could not be printed")
                && output.stderr.contains(&format!("rotate-secret {id}")),
            "{output}"
        );
    }
    // Other output that cannot be written is an error too, if no secret is lost by it:
    // `clients list --json > backup.json` on a full disk must not look like a backup.
    for args in [
        &["completions", "bash"][..],
        &["clients", "list"],
        &["clients", "list", "--json"],
        &["status", "--json"],
        &["keys", "list"],
    ] {
        let output = admin_writing_to_a_full_disk(&daemon, args);
        output.assert_code(1);
        assert!(output.stderr.contains("cannot write"), "{args:?}: {output}");
    }
}

/// Written to /dev/null, or to a closed stdout (which Rust's runtime reopens on /dev/null),
/// a new secret would be lost without an error: the command is refused before it is made.
#[test]
fn a_secret_bound_for_dev_null_is_refused_before_anything_changes() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    for redirect in ["> /dev/null", ">&-"] {
        for args in [
            &["clients", "add", "lost"][..],
            &["clients", "rotate-secret", client.id.as_str()],
        ] {
            let output = admin_with_stdout(&daemon, redirect, args);
            output.assert_code(1);
            assert!(
                output.stderr.contains("/dev/null") && output.stderr.contains("would be lost"),
                "{redirect} {args:?}: {output}"
            );
        }
    }
    let output = daemon.admin(&["clients", "list", "--json"]);
    assert!(!output.stdout.contains("\"lost\""), "{output}");
    // The old secret was never rotated away.
    daemon.access_token(&client, &[]);
}

#[test]
fn an_empty_tokendealer_socket_counts_as_unset() {
    // Local mode: with the variable empty, the tool finds ./tokendealer-data/admin.sock.
    let daemon = Daemon::local_mode();
    let mut cmd = Command::new(bins::tokendealer());
    cmd.arg("status")
        .current_dir(daemon.dir())
        .env("TOKENDEALER_SOCKET", "")
        .env("NO_COLOR", "1");
    let output = tokendealer_tests::process::run(cmd);
    output.assert_success();
    assert!(
        output.stdout.contains(&daemon.addr().to_string()),
        "{output}"
    );
}

/// The `listen` address of `tokendealer [--socket FLAG] status --json` run with
/// `TOKENDEALER_SOCKET=ENV`, from a directory without `./tokendealer-data/`.
#[track_caller]
fn listen_of_the_daemon_found(flag: Option<&std::path::Path>, env: &std::path::Path) -> String {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut cmd = Command::new(bins::tokendealer());
    if let Some(flag) = flag {
        cmd.arg("--socket").arg(flag);
    }
    cmd.args(["status", "--json"])
        .current_dir(dir.path())
        .env("TOKENDEALER_SOCKET", env)
        .env("NO_COLOR", "1");
    let output = tokendealer_tests::process::run(cmd);
    output.assert_success();
    let status: Value = serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}):\n{output}"));
    status["listen"]
        .as_str()
        .unwrap_or_else(|| panic!("no `listen`:\n{output}"))
        .to_owned()
}

/// A non-empty `$TOKENDEALER_SOCKET` names the socket; `--socket` comes before it, even
/// when the variable names a socket nobody listens on.
#[test]
fn tokendealer_socket_is_used_and_the_socket_flag_comes_before_it() {
    let one = Daemon::with_client(&service_client());
    let other = Daemon::with_client(&service_client());
    assert_ne!(one.addr(), other.addr());

    assert_eq!(
        listen_of_the_daemon_found(None, one.admin_socket()),
        one.addr().to_string(),
        "the daemon $TOKENDEALER_SOCKET names"
    );
    assert_eq!(
        listen_of_the_daemon_found(Some(other.admin_socket()), one.admin_socket()),
        other.addr().to_string(),
        "--socket before $TOKENDEALER_SOCKET"
    );
    let absent = one.dir().join("absent.sock");
    assert_eq!(
        listen_of_the_daemon_found(Some(other.admin_socket()), &absent),
        other.addr().to_string(),
        "--socket before a $TOKENDEALER_SOCKET that leads nowhere"
    );
}

#[test]
fn the_dashboard_without_a_terminal_says_what_to_do() {
    // setsid: no controlling terminal to fall back on, as under cron or a CI runner.
    let daemon = Daemon::with_client(&service_client());
    let mut cmd = Command::new("setsid");
    cmd.arg(bins::tokendealer())
        .arg("--socket")
        .arg(daemon.admin_socket())
        .stdin(std::process::Stdio::null());
    let output = admin_command(cmd);
    output.assert_code(1);
    assert!(
        output.stderr.contains("run it in a terminal") && output.stderr.lines().count() == 1,
        "{output}"
    );
}

/// A deleted admin socket (a cleanup of /run, a slip of `rm`) leaves SIGHUP as the one way
/// to reach the daemon: it makes the socket again, and the tool works as before.
#[test]
fn sighup_makes_a_deleted_admin_socket_again() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    std::fs::remove_file(daemon.admin_socket()).expect("deleting the admin socket");
    let output = daemon.admin(&["status"]);
    assert_eq!(output.code(), Some(1), "{output}");
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    daemon.wait_for_log("the admin socket made again", |log| {
        log.contains("the admin socket was deleted; made it again")
    });
    daemon.admin(&["status"]).assert_success();
    daemon.admin(&["reload"]).assert_success();
    daemon.access_token(&client, &[]);
}

/// The one sentence a refused command printed, exit 1 and nothing on stdout.
#[track_caller]
fn refusal(output: &tokendealer_tests::Output) -> String {
    output.assert_code(1);
    let lines = output.stderr_lines();
    assert_eq!(lines.len(), 1, "one sentence on stderr:\n{output}");
    assert!(output.stdout.trim().is_empty(), "{output}");
    lines[0].to_owned()
}

/// A refusal says what to do next: which command shows what exists, or gets a new secret.
#[test]
fn refusals_name_the_command_that_helps() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let id = client.id.as_str();

    let sentence = refusal(&daemon.admin(&["clients", "add", id]));
    assert!(
        sentence.contains(&format!("client `{id}` already exists"))
            && sentence.contains(&format!("`tokendealer clients rotate-secret {id}`")),
        "{sentence}"
    );

    let seed = daemon.dir().join("seed.json");
    let secret = "0123456789abcdef0123456789abcdef";
    std::fs::write(
        &seed,
        format!(r#"{{"newcomer": "{secret}", "{id}": "{secret}"}}"#),
    )
    .expect("writing the seed");
    let seed = seed.to_str().expect("a UTF-8 path");
    let sentence = refusal(&daemon.admin(&["clients", "import", seed]));
    assert!(
        sentence.contains(&format!("client `{id}` already exists"))
            && sentence.contains("nothing was imported")
            && sentence.contains(seed),
        "{sentence}"
    );
    let listed = daemon.admin(&["clients", "list", "--json"]);
    assert!(
        !listed.stdout.contains("newcomer"),
        "all or none:\n{listed}"
    );

    for command in ["disable", "enable", "remove", "rotate-secret"] {
        let sentence = refusal(&daemon.admin(&["clients", command, "nosuch"]));
        assert!(
            sentence.contains("there is no client `nosuch`")
                && sentence.contains("`tokendealer clients list`"),
            "{command}: {sentence}"
        );
    }

    let sentence = refusal(&daemon.admin(&["keys", "revoke", "KID"]));
    assert!(
        sentence.contains("there is no key `KID`") && sentence.contains("`tokendealer keys list`"),
        "{sentence}"
    );
}

/// With no socket named and neither default present, the tool says how to name one.
#[test]
fn no_socket_found_says_how_to_name_one() {
    if std::path::Path::new("/run/tokendealer/admin.sock").exists() {
        return; // The system socket is the default here: nothing is missing.
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut cmd = Command::new(bins::tokendealer());
    cmd.arg("status").current_dir(dir.path());
    let sentence = refusal(&admin_command(cmd));
    assert!(
        sentence.contains("--socket PATH") && sentence.contains("TOKENDEALER_SOCKET"),
        "{sentence}"
    );
}

/// A lifetime the daemon would refuse is bad usage, caught before the daemon is asked, like
/// any other bad value: exit 2.
#[test]
fn token_lifetimes_out_of_bounds_are_usage_errors() {
    let daemon = Daemon::with_client(&service_client());
    for ttl in ["0s", "400d"] {
        let output = daemon.admin(&["clients", "add", "x", "--ttl", ttl]);
        output.assert_code(2);
        assert!(output.stderr.contains(ttl), "{output}");
    }
    let output = daemon.admin(&["clients", "add", "x", "--ttl", "400d"]);
    assert!(output.stderr.contains("over a year"), "{output}");
    let listed = daemon.admin(&["clients", "list", "--json"]);
    assert!(
        !listed.stdout.contains("\"x\""),
        "nothing was added:\n{listed}"
    );
    daemon
        .admin(&["clients", "add", "x", "--ttl", "366d"])
        .assert_success();
}

#[test]
fn one_client_is_counted_in_the_singular() {
    let daemon = Daemon::with_client(&service_client());
    let seed = daemon.dir().join("seed.json");
    std::fs::write(&seed, r#"{"solo": "0123456789abcdef0123456789abcdef"}"#)
        .expect("writing the seed");
    let output = daemon.admin(&["clients", "import", seed.to_str().expect("a UTF-8 path")]);
    output.assert_success();
    assert!(output.stdout.contains("imported 1 client "), "{output}");
    let status = daemon.admin(&["status"]);
    assert!(status.stdout.contains("1 client imported"), "{status}");
}

/// The manual page names no page that is not shipped (clap_mangen's tokendealer-reload(1)…).
#[test]
fn the_manual_page_refers_to_no_missing_pages() {
    let output = admin_command({
        let mut cmd = Command::new(bins::tokendealer());
        cmd.arg("man");
        cmd
    });
    output.assert_success();
    assert!(!output.stdout.contains("(1)"), "{output}");
    for command in ["clients rotate\\-secret", "keys revoke", "reload"] {
        assert!(
            output.stdout.contains(&format!("tokendealer {command}")),
            "`{command}` is not described:\n{output}"
        );
    }
}

#[test]
fn the_daemon_gives_its_own_name_with_its_version() {
    let output = tokendealer_tests::process::run({
        let mut cmd = Command::new(bins::tokendealerd());
        cmd.arg("--version");
        cmd
    });
    output.assert_success();
    assert_eq!(
        output.stdout.trim(),
        format!("tokendealerd {}", env!("CARGO_PKG_VERSION")),
        "{output}"
    );
}
