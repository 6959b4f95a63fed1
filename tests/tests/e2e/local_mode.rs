//! `tokendealerd` with no `--config`: it makes `./tokendealer-data/`, prints the demo
//! client's secret once in a ready-to-paste `curl`, and keeps its key and clients across
//! restarts.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
};

use tokendealer_tests::{Daemon, http::Request, jwt, secret_hash};

use crate::assert_private_keys;

/// What the first start printed: the demo secret and URL from the `curl` line.
struct Curl {
    line: String,
    secret: String,
    url: String,
}

/// Finds `curl … -u demo:SECRET … http://…/oauth/token` in stdout.
fn printed_curl(stdout: &str) -> Option<Curl> {
    let line = stdout
        .lines()
        .find(|l| l.contains("curl ") && l.contains("-u demo:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let user = words
        .windows(2)
        .find(|w| w[0] == "-u")
        .map(|w| w[1].trim_matches(|c| c == '\'' || c == '"'))?;
    let secret = user.strip_prefix("demo:")?;
    let url = words.iter().find(|w| w.starts_with("http://"))?;
    Some(Curl {
        line: line.to_owned(),
        secret: secret.to_owned(),
        url: url.trim_matches(|c| c == '\'' || c == '"').to_owned(),
    })
}

#[track_caller]
fn first_curl(daemon: &Daemon) -> Curl {
    let stdout = daemon.stdout();
    printed_curl(&stdout).unwrap_or_else(|| {
        panic!(
            "no `curl -s -u demo:SECRET … /oauth/token` line on the first start's stdout:\n{stdout}"
        )
    })
}

/// The dashboard command in stdout, `PROGRAM --socket PATH`: its program and socket.
fn printed_dashboard(stdout: &str) -> Option<(PathBuf, PathBuf)> {
    let line = stdout.lines().map(str::trim).find(|l| {
        l.contains("tokendealer") && l.contains(" --socket ") && !l.contains(" clients ")
    })?;
    let (program, socket) = line.split_once(" --socket ")?;
    let unquote = |s: &str| PathBuf::from(s.trim().trim_matches(|c| c == '\'' || c == '"'));
    Some((unquote(program), unquote(socket)))
}

/// What `curl -s -u demo:SECRET -d grant_type=client_credentials URL` sends: `-u` joins id
/// and secret as they are (the demo secret is hex, so form encoding would not change it), and
/// `-d` makes it a form POST.
fn run_curl(daemon: &Daemon, curl: &Curl) -> String {
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("demo:{}", curl.secret)
        )
    );
    let reply = daemon.request(Request {
        method: "POST",
        url: curl.url.clone(),
        headers: vec![
            ("authorization", basic),
            (
                "content-type",
                "application/x-www-form-urlencoded".to_owned(),
            ),
        ],
        body: Some(b"grant_type=client_credentials".to_vec()),
    });
    reply.assert_status(200);
    reply.json()["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access_token:\n{reply}"))
        .to_owned()
}

fn data_dir(daemon: &Daemon) -> PathBuf {
    daemon.dir().join("tokendealer-data")
}

#[test]
fn first_start_prints_a_curl_that_gets_a_verifiable_token() {
    let daemon = Daemon::local_mode();
    let curl = first_curl(&daemon);
    assert!(
        curl.line.contains("-d grant_type=client_credentials"),
        "{}",
        curl.line
    );
    assert_eq!(
        curl.url,
        daemon.url("/oauth/token"),
        "the curl names the bound address"
    );
    assert!(
        curl.secret.len() >= 32,
        "a generated secret carries at least 128 bits: {}",
        curl.line
    );

    let token = run_curl(&daemon, &curl);
    let meta = daemon.get("/.well-known/oauth-authorization-server").json();
    let issuer = meta["issuer"].as_str().expect("an issuer").to_owned();
    let claims = jwt::decode(&token).claims;
    let audience = match &claims["aud"] {
        serde_json::Value::Array(list) => list[0].as_str().expect("a string aud").to_owned(),
        aud => aud.as_str().expect("a string aud").to_owned(),
    };
    let verified = jwt::pyjwt_verify(
        &daemon.url("/.well-known/jwks.json"),
        &token,
        &issuer,
        &audience,
    );
    assert_eq!(verified["client_id"], "demo", "{verified}");
}

#[test]
fn first_start_prints_the_dashboard_command() {
    let daemon = Daemon::local_mode();
    let stdout = daemon.stdout();
    let (program, socket) = printed_dashboard(&stdout)
        .unwrap_or_else(|| panic!("no `tokendealer --socket PATH` line on stdout:\n{stdout}"));
    assert!(socket.is_absolute(), "{}", socket.display());
    assert_eq!(socket, daemon.admin_socket());
    assert_same_file(&socket, &data_dir(&daemon).join("admin.sock"));
    // Pasted as printed, with `status` for a one-shot answer, it works: the test's PATH does
    // not hold the tools, so it names the one built beside the daemon.
    let output = std::process::Command::new(&program)
        .arg("--socket")
        .arg(&socket)
        .arg("status")
        .env_remove("TOKENDEALER_SOCKET")
        .output()
        .unwrap_or_else(|e| panic!("running the printed `{}`: {e}", program.display()));
    assert!(
        output.status.success(),
        "the printed dashboard command failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[track_caller]
fn assert_same_file(a: &Path, b: &Path) {
    let canonical = |p: &Path| {
        p.canonicalize()
            .unwrap_or_else(|e| panic!("{} does not exist: {e}", p.display()))
    };
    assert_eq!(canonical(a), canonical(b));
}

#[test]
fn local_mode_keeps_hashes_and_private_keys_in_its_data_directory() {
    let daemon = Daemon::local_mode();
    let curl = first_curl(&daemon);
    let data = data_dir(&daemon);
    assert!(
        data.join("config.toml").is_file(),
        "no config.toml in {}",
        data.display()
    );
    let clients = std::fs::read_to_string(data.join("clients.toml"))
        .unwrap_or_else(|e| panic!("no clients.toml in {}: {e}", data.display()));
    assert!(
        clients.contains(&secret_hash(&curl.secret)),
        "clients.toml holds the demo secret's hash:\n{clients}"
    );
    assert!(
        !clients.contains(&curl.secret),
        "clients.toml holds the plaintext secret:\n{clients}"
    );
    assert_private_keys(&data.join("keys"));
}

#[test]
fn second_start_prints_no_secret_and_reuses_key_and_clients() {
    let mut daemon = Daemon::local_mode();
    let curl = first_curl(&daemon);
    let kids = daemon.kids();
    daemon.restart();
    let stdout = daemon.stdout();
    assert!(
        !stdout.contains(&curl.secret),
        "the second start printed the secret again:\n{stdout}"
    );
    assert_eq!(
        daemon.kids(),
        kids,
        "the signing key changed across a restart"
    );
    let curl = Curl {
        url: daemon.url("/oauth/token"),
        ..curl
    };
    run_curl(&daemon, &curl);
}

/// Whoever lost the demo secret shown by the first start is told, by the next, how to get
/// a new one: the printed command, pasted as it is, prints a secret that gets a token.
#[test]
fn second_start_says_how_to_get_a_new_demo_secret() {
    let mut daemon = Daemon::local_mode();
    let curl = first_curl(&daemon);
    daemon.restart();
    let stdout = daemon.stdout();
    let line = stdout
        .lines()
        .map(str::trim)
        .find(|l| l.ends_with(" clients rotate-secret demo"))
        .unwrap_or_else(|| {
            panic!("no `tokendealer … clients rotate-secret demo` line on the second start's stdout:\n{stdout}")
        });
    let words: Vec<&str> = line.split_whitespace().collect();
    let output = std::process::Command::new(words[0])
        .args(&words[1..])
        .env_remove("TOKENDEALER_SOCKET")
        .output()
        .unwrap_or_else(|e| panic!("running the printed `{line}`: {e}"));
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the printed `{line}` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let secret = printed
        .lines()
        .nth(1)
        .unwrap_or_else(|| panic!("no new secret printed:\n{printed}"))
        .trim()
        .to_owned();
    assert_ne!(secret, curl.secret, "{printed}");
    let curl = Curl {
        url: daemon.url("/oauth/token"),
        secret,
        ..curl
    };
    run_curl(&daemon, &curl);
}

/// The demo secret is shown only once the port is bound. A first start that fails before
/// (the port is taken) keeps no demo client whose secret nobody saw: the next start makes a
/// new one and shows it.
#[test]
fn a_first_start_that_cannot_bind_leaves_no_unseen_demo_secret() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("binding a port to take");
    let port = taken.local_addr().expect("the taken port").port();
    let mut daemon = Daemon::new(vec!["--listen".into(), format!("127.0.0.1:{port}").into()]);
    let output = daemon.start_expecting_exit();
    assert!(!output.status.success(), "{output}");
    assert!(
        printed_curl(&output.stdout).is_none(),
        "a secret was printed by a start that failed:\n{output}"
    );
    assert!(
        !data_dir(&daemon).join("clients.toml").exists(),
        "the demo client whose secret was never shown is still in clients.toml:\n{output}"
    );

    drop(taken);
    daemon.set_args(vec!["--listen".into(), "127.0.0.1:0".into()]);
    daemon.start();
    let curl = first_curl(&daemon);
    let curl = Curl {
        url: daemon.url("/oauth/token"),
        ..curl
    };
    run_curl(&daemon, &curl);
}
