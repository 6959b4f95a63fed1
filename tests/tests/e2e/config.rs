//! The config file: refusals with exit 78 (EX_CONFIG) and a sentence that names the file and
//! line, `check-config`, relative paths, `--listen`, and what survives a restart.

use std::{fs, net::TcpListener, path::Path, process::Command};

use serde_json::json;
use tokendealer_tests::{
    Daemon, ISSUER, Output, bins, clients::toml_string, http, jwt, keys, process,
};

use crate::{API, assert_private_keys, service_client};

/// `EX_CONFIG` from sysexits.h.
const EX_CONFIG: i32 = 78;

/// Five valid lines that keep every path inside the test's directory, so a daemon that wrongly
/// accepts a bad line still touches nothing outside it. A line appended to this is line 6.
fn valid_config(daemon: &Daemon) -> String {
    let path = |name: &str| {
        toml_string(
            daemon
                .dir()
                .join(name)
                .to_str()
                .expect("temporary paths are UTF-8"),
        )
    };
    format!(
        "issuer = {}\nlisten = \"127.0.0.1:0\"\nadmin_socket = {}\nclients_file = {}\nkey_dir = {}\n",
        toml_string(ISSUER),
        path("admin.sock"),
        path("clients.toml"),
        path("keys"),
    )
}

/// A daemon whose `config.toml` is the valid lines plus `line6`.
fn daemon_with_line6(line6: &str) -> Daemon {
    let daemon = Daemon::builder().client(&service_client()).write();
    let text = format!("{}{line6}\n", valid_config(&daemon));
    daemon.write_file("config.toml", &text);
    daemon
}

/// Some line of stderr names the config file and the line.
#[track_caller]
fn assert_names_file_and_line(output: &Output, file: &Path, line: u32) {
    let file = file.to_str().expect("UTF-8 path");
    let named = output.stderr.lines().any(|l| {
        l.contains(file)
            && (l.contains(&format!("line {line}")) || l.contains(&format!("{file}:{line}")))
    });
    assert!(
        named,
        "stderr should name {file} and line {line} in one sentence:\n{output}"
    );
}

#[track_caller]
fn assert_refused_at_start(line6: &str) {
    let mut daemon = daemon_with_line6(line6);
    let output = daemon.start_expecting_exit();
    output.assert_code(EX_CONFIG);
    assert_names_file_and_line(&output, &daemon.config_path(), 6);
}

#[test]
fn syntax_error_exits_78_naming_file_and_line() {
    assert_refused_at_start("token_ttl = 24h");
}

#[test]
fn invalid_value_exits_78_naming_file_and_line() {
    assert_refused_at_start(r#"algorithm = "HS256""#);
}

#[test]
fn invalid_duration_exits_78_naming_file_and_line() {
    assert_refused_at_start(r#"token_ttl = "soon""#);
}

#[test]
fn an_unknown_admin_group_exits_78_naming_it() {
    let mut daemon = daemon_with_line6(r#"admin_groups = ["no-such-group-here"]"#);
    let output = daemon.start_expecting_exit();
    output.assert_code(EX_CONFIG);
    assert_names_file_and_line(&output, &daemon.config_path(), 6);
    assert!(output.stderr.contains("no-such-group-here"), "{output}");
}

/// RSA keys under 2048 bits are refused before any key is made: exit 78 and one sentence
/// naming `rsa_bits`, the file and the line.
#[test]
fn rsa_bits_1024_exits_78_naming_it() {
    let mut daemon = daemon_with_line6("algorithm = \"RS256\"\nrsa_bits = 1024");
    let (sentence, output) = daemon.start_refused();
    assert!(
        sentence.contains("rsa_bits") && sentence.contains("1024"),
        "the sentence names `rsa_bits` and its value:\n{output}"
    );
    assert_names_file_and_line(&output, &daemon.config_path(), 7);
    let keys = daemon.dir().join("keys");
    assert!(
        fs::read_dir(&keys).map_or(true, |mut entries| entries.next().is_none()),
        "a refused start made keys in {}",
        keys.display()
    );
}

/// `deny_unknown_fields`: a typo is an error, not a silent default.
#[test]
fn unknown_key_exits_78_naming_it() {
    let mut daemon = daemon_with_line6(r#"algoritm = "ES256""#);
    let output = daemon.start_expecting_exit();
    output.assert_code(EX_CONFIG);
    assert_names_file_and_line(&output, &daemon.config_path(), 6);
    assert!(output.stderr.contains("algoritm"), "{output}");
}

fn check_config(file: &Path) -> Output {
    let mut cmd = Command::new(bins::tokendealerd());
    cmd.arg("check-config").arg(file);
    process::run(cmd)
}

#[test]
fn check_config_accepts_a_valid_config() {
    let daemon = Daemon::builder().client(&service_client()).write();
    let output = check_config(&daemon.config_path());
    output.assert_success();
    assert!(output.stderr.is_empty(), "nothing to warn of:\n{output}");
}

/// What a start warns of, `check-config` warns of too, and still accepts the config: no
/// `issuer` with a wildcard `listen` names an address no client can reach.
#[test]
fn check_config_warns_of_a_wildcard_listen_without_issuer() {
    let daemon = Daemon::builder()
        .without_issuer()
        .client(&service_client())
        .write();
    keys::set_config(&daemon, "listen", r#""0.0.0.0:8080""#);
    let output = check_config(&daemon.config_path());
    output.assert_success();
    let lines = output.stderr_lines();
    assert_eq!(lines.len(), 1, "one warning:\n{output}");
    assert!(
        lines[0].contains("warning") && lines[0].contains("set `issuer`"),
        "{output}"
    );
}

#[test]
fn check_config_refuses_with_one_sentence() {
    let daemon = daemon_with_line6(r#"algoritm = "ES256""#);
    let output = check_config(&daemon.config_path());
    output.assert_code(EX_CONFIG);
    assert_eq!(
        output.stderr_lines().len(),
        1,
        "one sentence on stderr:\n{output}"
    );
    assert_names_file_and_line(&output, &daemon.config_path(), 6);
}

/// `check-config` refuses what a start would refuse (exit 78) in the files the config
/// names, not only the config itself: a missing clients file, a private key others may read.
#[test]
fn check_config_refuses_what_a_start_would() {
    let client = service_client();
    let mut daemon = Daemon::builder().client(&client).write();
    let clients = daemon.clients_path();
    let kept = fs::read(&clients).expect("the clients file");
    fs::remove_file(&clients).expect("removing the clients file");
    let output = check_config(&daemon.config_path());
    output.assert_code(EX_CONFIG);
    assert!(output.stderr.contains("does not exist"), "{output}");
    let started = daemon.start_expecting_exit();
    started.assert_code(EX_CONFIG);

    fs::write(&clients, kept).expect("restoring the clients file");
    daemon.start();
    let kid = daemon.kids().remove(0);
    daemon.stop();
    let pem = daemon.dir().join("keys").join(format!("{kid}.pem"));
    tokendealer_tests::files::set_mode(&pem, 0o640);
    let output = check_config(&daemon.config_path());
    output.assert_code(EX_CONFIG);
    assert!(output.stderr.contains("chmod 600"), "{output}");
    daemon.start_expecting_exit().assert_code(EX_CONFIG);
}

/// As a unit's `ExecStart` line holds it: `--config FILE check-config`.
#[test]
fn check_config_takes_the_config_of_config() {
    let daemon = Daemon::builder().client(&service_client()).write();
    let mut cmd = Command::new(bins::tokendealerd());
    cmd.arg("--config")
        .arg(daemon.config_path())
        .arg("check-config");
    process::run(cmd).assert_success();
}

#[test]
fn restart_keeps_the_key_and_the_clients() {
    let client = service_client();
    let mut daemon = Daemon::with_client(&client);
    let kids = daemon.kids();
    let token = daemon.access_token(&client, &[("audience", API)]);
    daemon.restart();
    assert_eq!(daemon.kids(), kids, "the JWKS changed across a restart");
    daemon
        .post_json(
            "/verify_token",
            &json!({"access_token": token, "audience": API}),
        )
        .assert_status(200);
    let again = daemon.access_token(&client, &[("audience", API)]);
    assert_eq!(
        jwt::decode(&again).header["kid"],
        jwt::decode(&token).header["kid"],
        "a restart signs with the same key"
    );
    assert_private_keys(&daemon.dir().join("keys"));
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let client = service_client();
    let mut daemon = Daemon::new(Vec::new());
    let config = daemon.write_file(
        "etc/config.toml",
        &format!(
            "issuer = {}\nlisten = \"127.0.0.1:0\"\nadmin_socket = \"admin.sock\"\nclients_file = \"clients.toml\"\nkey_dir = \"keys\"\n",
            toml_string(ISSUER)
        ),
    );
    daemon.write_file("etc/clients.toml", &client.to_toml());
    let elsewhere = daemon.dir().join("elsewhere");
    fs::create_dir(&elsewhere).expect("creating a working directory");
    daemon.set_cwd(elsewhere.clone());
    daemon.set_args(vec!["--config".into(), config.into()]);
    daemon.start();

    let etc = daemon.dir().join("etc");
    assert_eq!(
        daemon.admin_socket().canonicalize().ok(),
        etc.join("admin.sock").canonicalize().ok(),
        "the admin socket belongs beside the config"
    );
    assert_private_keys(&etc.join("keys"));
    daemon.access_token(&client, &[]);
    let stray: Vec<_> = fs::read_dir(&elsewhere)
        .expect("reading the working directory")
        .collect();
    assert!(
        stray.is_empty(),
        "files created in the working directory: {stray:?}"
    );
}

#[test]
fn listen_flag_overrides_the_config() {
    let mut daemon = Daemon::builder().client(&service_client()).write();
    // TEST-NET-1: not an address of this host, so binding it would fail.
    let text = valid_config(&daemon).replace("127.0.0.1:0", "192.0.2.1:9");
    daemon.write_file("config.toml", &text);
    daemon.start();
    assert!(daemon.addr().ip().is_loopback(), "{}", daemon.addr());
    daemon.get("/healthz").assert_status(200);
}

/// Without `--listen` the daemon binds exactly the address the config names: a port of the
/// test's choosing, not an ephemeral one and not the default 8080.
#[test]
fn listen_comes_from_the_config_without_the_flag() {
    let mut daemon = Daemon::builder().client(&service_client()).write();
    // A port free a moment ago: bound by us, then let go for the daemon.
    let listen = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port");
    let text = valid_config(&daemon).replace("127.0.0.1:0", &listen.to_string());
    daemon.write_file("config.toml", &text);
    daemon.set_args(vec!["--config".into(), daemon.config_path().into()]);
    daemon.start();
    assert_eq!(
        daemon.addr(),
        listen,
        "the daemon did not listen where the config says\n{}",
        daemon.diagnostics()
    );
    let reply = http::send(
        &http::agent(),
        http::Request {
            method: "GET",
            url: format!("http://{listen}/healthz"),
            ..http::Request::default()
        },
    );
    reply.assert_status(200);
}
