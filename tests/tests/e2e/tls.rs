//! The HTTP listener over TLS: tokens, metadata and JWKS as curl and PyJWT see them, the
//! protocol versions refused, certificate renewal by `tokendealer reload` and SIGHUP, and the
//! certificate and key problems that stop the daemon at start with exit 78.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use tokendealer_tests::{
    Daemon, DaemonBuilder, Output, TestClient,
    conn::RawConn,
    files, http, metrics,
    tls::{self, CertPair},
};

use crate::{API, service_client};

/// `EX_CONFIG` from sysexits.h.
const EX_CONFIG: i32 = 78;

/// How long a SIGHUP-triggered reload may take to show in the served certificate.
const RELOAD_WITHIN: Duration = Duration::from_secs(30);

/// The certificate and key the daemon is configured with, relative to its config file.
const CERT: &str = "tls/server.crt";
const KEY: &str = "tls/server.key";

/// A builder whose config names [`CERT`] and [`KEY`].
fn tls_builder(client: &TestClient) -> DaemonBuilder {
    Daemon::builder()
        .client(client)
        .config(&format!("tls_cert = \"{CERT}\"\ntls_key = \"{KEY}\""))
}

/// The pair at the paths the config names.
fn configured_pair(daemon: &Daemon) -> CertPair {
    CertPair {
        cert: daemon.dir().join(CERT),
        key: daemon.dir().join(KEY),
    }
}

/// Writes the daemon's files and a first certificate ("server", CN `tokendealer-a`), starts
/// it, and returns it with that certificate.
#[track_caller]
fn start_tls(builder: DaemonBuilder) -> (Daemon, CertPair) {
    let mut daemon = builder.write();
    let pair = CertPair::generate(&daemon.dir().join("tls"), "server", "tokendealer-a", 1);
    daemon.start();
    (daemon, pair)
}

fn https_url(daemon: &Daemon, path: &str) -> String {
    format!("https://{}{path}", daemon.addr())
}

/// Fails the test unless a new connection is presented `expected`'s certificate.
#[track_caller]
fn assert_serves(daemon: &Daemon, expected: &CertPair) {
    let served = tls::served_certificate(daemon.addr())
        .unwrap_or_else(|| panic!("no certificate served\n{}", daemon.diagnostics()));
    assert!(
        tls::same_pem(&served, &expected.cert_pem()),
        "a new connection was not presented {}; it got:\n{served}",
        expected.cert.display()
    );
    // And a client that trusts only that certificate gets through.
    tls::curl_reply(&expected.cert, &https_url(daemon, "/healthz"), &[]).assert_status(200);
}

#[test]
fn a_token_over_tls_verifies_and_the_metadata_says_https() {
    let client = service_client();
    let (daemon, pair) = start_tls(tls_builder(&client).without_issuer());
    let issuer = format!("https://{}", daemon.addr());

    let metadata = tls::curl_reply(
        &pair.cert,
        &https_url(&daemon, "/.well-known/oauth-authorization-server"),
        &[],
    );
    metadata.assert_status(200);
    let metadata = metadata.json();
    assert_eq!(metadata["issuer"], issuer.as_str(), "{metadata}");
    assert_eq!(
        metadata["token_endpoint"],
        format!("{issuer}/oauth/token"),
        "{metadata}"
    );
    assert_eq!(
        metadata["jwks_uri"],
        format!("{issuer}/.well-known/jwks.json"),
        "{metadata}"
    );

    let credentials = format!("{}:{}", client.id, client.secret);
    let reply = tls::curl_reply(
        &pair.cert,
        &https_url(&daemon, "/oauth/token"),
        &[
            "--user",
            &credentials,
            "--data",
            "grant_type=client_credentials",
        ],
    );
    reply.assert_status(200).assert_no_store();
    let token = reply.json()["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no `access_token`:\n{reply}"))
        .to_owned();
    // PyJWT fetches the JWKS over TLS, trusting only our certificate.
    let claims = tls::pyjwt_verify_trusting(
        &pair.cert,
        &format!("{issuer}/.well-known/jwks.json"),
        &token,
        &issuer,
        API,
    );
    assert_eq!(claims["sub"], client.id.as_str(), "{claims}");
}

/// ALPN offers h2 and http/1.1; a client gets what it asks for.
#[test]
fn alpn_negotiates_http2_and_http1() {
    let (daemon, pair) = start_tls(tls_builder(&service_client()));
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let output = tls::curl(
            &pair.cert,
            &[
                flag,
                "--output",
                "/dev/null",
                "--write-out",
                "%{http_code} %{http_version}",
                &https_url(&daemon, "/healthz"),
            ],
        );
        output.assert_success();
        assert_eq!(output.stdout, format!("200 {version}"), "{output}");
    }
}

/// RFC 9110 §9.3.2: a HEAD response has no content. hyper leaves it out over HTTP/1 on its
/// own, not over HTTP/2, where a client that gets DATA on a HEAD resets the stream.
#[test]
fn head_over_http2_gets_the_headers_and_no_content() {
    let (daemon, pair) = start_tls(tls_builder(&service_client()));
    for path in [
        "/healthz",
        "/.well-known/jwks.json",
        "/.well-known/oauth-authorization-server",
        "/metrics",
    ] {
        for flag in ["--http2", "--http1.1"] {
            let reply = tls::curl_reply(&pair.cert, &https_url(&daemon, path), &[flag, "--head"]);
            reply.assert_status(200);
            assert!(reply.body.is_empty(), "{flag} HEAD {path}:\n{reply}");
            let length = reply.header("content-length").unwrap_or_default();
            assert!(
                length.parse::<u64>().is_ok_and(|n| n > 0),
                "{flag} HEAD {path} gives the GET's Content-Length:\n{reply}"
            );
        }
    }
}

#[test]
fn tls_1_1_is_refused() {
    let (daemon, pair) = start_tls(tls_builder(&service_client()));
    let url = https_url(&daemon, "/healthz");
    // The same client, allowed TLS 1.2, gets through: the refusal below is the version's.
    tls::curl_reply(&pair.cert, &url, &["--tlsv1.2"]).assert_status(200);
    // The lowered security level lets OpenSSL offer TLS 1.0 and 1.1 at all, so it is the
    // server that says no.
    let output = tls::curl(
        &pair.cert,
        &[
            "--tlsv1.0",
            "--tls-max",
            "1.1",
            "--ciphers",
            "DEFAULT:@SECLEVEL=0",
            &url,
        ],
    );
    assert!(!output.status.success(), "TLS 1.1 was accepted:\n{output}");
    assert!(
        output.stderr.contains("alert"),
        "the server should refuse the handshake with an alert:\n{output}"
    );
}

#[test]
fn plain_http_on_the_tls_port_gets_no_http_answer() {
    let (daemon, _pair) = start_tls(tls_builder(&service_client()));
    let answer = http::raw_exchange(
        daemon.addr(),
        b"GET /healthz HTTP/1.1\r\nHost: tokendealer.test\r\nConnection: close\r\n\r\n",
    );
    assert!(
        !answer.starts_with("HTTP/"),
        "plain HTTP got an HTTP answer on the TLS port:\n{answer}"
    );
}

/// The handshake is bounded by the read timeout too: a client that opens a connection and
/// never says hello does not hold it.
#[test]
fn a_handshake_that_never_starts_is_closed_at_the_read_timeout() {
    const READ_TIMEOUT: Duration = Duration::from_secs(1);
    const LATE: Duration = Duration::from_secs(10);
    let (daemon, pair) = start_tls(tls_builder(&service_client()).config("read_timeout = \"1s\""));
    let started = Instant::now();
    let mut silent = RawConn::open(daemon.addr());
    let (closed, _) = silent.wait_closed(READ_TIMEOUT + LATE);
    let elapsed = closed - started;
    assert!(
        elapsed >= READ_TIMEOUT.mul_f64(0.8),
        "closed after {elapsed:?}, before the {READ_TIMEOUT:?} read timeout"
    );
    let exposition = tls::curl_reply(&pair.cert, &https_url(&daemon, "/metrics"), &[]).text();
    let series = r#"tokendealer_http_connections_timed_out_total{phase="read"}"#;
    let counted = metrics::sample(&exposition, series).unwrap_or_default();
    assert!(counted >= 1.0, "`{series}` is {counted}:\n{exposition}");
}

#[test]
fn reload_serves_a_renewed_certificate_and_keeps_the_old_one_on_failure() {
    let (daemon, first) = start_tls(tls_builder(&service_client()));
    let configured = configured_pair(&daemon);
    let spare = daemon.dir().join("spare");
    assert_serves(&daemon, &first);

    // `tokendealer reload` is synchronous: the next connection sees the new certificate.
    let second = CertPair::generate(&spare, "second", "tokendealer-b", 2);
    second.install_at(&configured);
    daemon.admin(&["reload"]).assert_success();
    assert_serves(&daemon, &second);

    // SIGHUP is not: poll real handshakes until the new certificate shows.
    let third = CertPair::generate(&spare, "third", "tokendealer-c", 3);
    third.install_at(&configured);
    daemon.signal(Signal::SIGHUP);
    let deadline = Instant::now() + RELOAD_WITHIN;
    let third_pem = third.cert_pem();
    loop {
        let served = tls::served_certificate(daemon.addr());
        if served.is_some_and(|pem| tls::same_pem(&pem, &third_pem)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the certificate installed before SIGHUP was not served within {RELOAD_WITHIN:?}\n{}",
            daemon.diagnostics()
        );
    }
    assert_serves(&daemon, &third);

    // A broken renewal: the reload fails, says which file, and the last good one serves on.
    files::write_by_rename(&configured.cert, b"not a certificate\n");
    let output = daemon.admin(&["reload"]);
    assert!(
        !output.status.success(),
        "reload succeeded with a garbage certificate:\n{output}"
    );
    let cert_path = configured.cert.to_str().expect("UTF-8 path");
    assert!(
        output.stdout.contains(cert_path) || output.stderr.contains(cert_path),
        "the failed reload does not name {cert_path}:\n{output}"
    );
    assert_serves(&daemon, &third);

    // A key anyone can read is refused at reload as at start. The renewal brings a new
    // pair, so that serving the previous certificate shows the refusal took effect.
    let fourth = CertPair::generate(&spare, "fourth", "tokendealer-d", 4);
    fourth.install_at(&configured);
    files::set_mode(&configured.key, 0o644);
    let output = daemon.admin(&["reload"]);
    assert!(
        !output.status.success(),
        "reload accepted a world-readable key:\n{output}"
    );
    let key_path = configured.key.to_str().expect("UTF-8 path");
    assert!(
        output.stdout.contains(key_path) || output.stderr.contains(key_path),
        "the failed reload does not name {key_path}:\n{output}"
    );
    assert_serves(&daemon, &third);
}

/// SPEC: errors go to stderr as one sentence that says what failed, so a failed certificate
/// reload names the certificate there.
/// A reload whose key settings cannot be written fails, and says so, but the renewed
/// certificate it also brings is served all the same.
#[test]
fn a_broken_key_directory_does_not_hold_back_a_renewed_certificate() {
    let (daemon, _) = start_tls(tls_builder(&service_client()));
    let renewed = CertPair::generate(&daemon.dir().join("spare"), "renewed", "tokendealer-r", 2);
    renewed.install_at(&configured_pair(&daemon));
    let manifest = daemon.dir().join("keys/manifest.json");
    std::fs::remove_file(&manifest).expect("removing the key manifest");
    std::fs::create_dir(&manifest).expect("a directory in its place");
    let config = daemon.config_path();
    let text = std::fs::read_to_string(&config).expect("the config");
    std::fs::write(&config, format!("{text}jwks_max_age = \"1m\"\n")).expect("the config");

    let output = daemon.admin(&["reload"]);
    output.assert_code(1);
    assert!(output.stderr.contains("key settings"), "{output}");
    assert_serves(&daemon, &renewed);
}

#[test]
fn a_failed_certificate_reload_names_the_certificate_on_stderr() {
    let (daemon, _) = start_tls(tls_builder(&service_client()));
    let configured = configured_pair(&daemon);
    // The configured file itself is about to be overwritten: remember what it served.
    let before = tls::served_certificate(daemon.addr())
        .unwrap_or_else(|| panic!("no certificate served\n{}", daemon.diagnostics()));
    files::write_by_rename(&configured.cert, b"not a certificate\n");
    let output = daemon.admin(&["reload"]);
    output.assert_code(1);
    let cert_path = configured.cert.to_str().expect("UTF-8 path");
    let lines = output.stderr_lines();
    assert!(
        lines.len() == 1 && lines[0].contains(cert_path),
        "stderr should be one sentence naming {cert_path}:\n{output}"
    );
    let after = tls::served_certificate(daemon.addr())
        .unwrap_or_else(|| panic!("no certificate served\n{}", daemon.diagnostics()));
    assert!(
        tls::same_pem(&before, &after),
        "the previous certificate stopped serving after a failed reload"
    );
}

// --- refusals at start ---

/// Starts `daemon` expecting exit 78 with one line on stderr that names `file`.
#[track_caller]
fn assert_refused_naming(daemon: &mut Daemon, file: &Path) -> Output {
    let output = daemon.start_expecting_exit();
    output.assert_code(EX_CONFIG);
    let file = file.to_str().expect("UTF-8 path");
    let lines = output.stderr_lines();
    assert!(
        lines.len() == 1 && lines[0].contains(file),
        "stderr should be one sentence naming {file}:\n{output}"
    );
    output
}

#[test]
fn a_certificate_without_a_key_is_a_config_error() {
    let mut daemon = Daemon::builder()
        .client(&service_client())
        .config(&format!("tls_cert = \"{CERT}\""))
        .write();
    CertPair::generate(&daemon.dir().join("tls"), "server", "tokendealer-a", 1);
    let config = daemon.config_path();
    let output = assert_refused_naming(&mut daemon, &config);
    assert!(output.stderr.contains("tls_key"), "{output}");
}

#[test]
fn a_world_readable_key_is_refused_at_start() {
    let mut daemon = tls_builder(&service_client()).write();
    let pair = CertPair::generate(&daemon.dir().join("tls"), "server", "tokendealer-a", 1);
    files::set_mode(&pair.key, 0o644);
    assert_refused_naming(&mut daemon, &pair.key);
}

#[test]
fn a_key_that_does_not_fit_the_certificate_is_refused_at_start() {
    let mut daemon = tls_builder(&service_client()).write();
    let pair = CertPair::generate(&daemon.dir().join("tls"), "server", "tokendealer-a", 1);
    let other = CertPair::generate(&daemon.dir().join("other"), "other", "tokendealer-b", 2);
    let other_key = std::fs::read(&other.key).expect("reading the other key");
    files::write_by_rename(&pair.key, &other_key);
    assert_refused_naming(&mut daemon, &pair.key);
}

#[test]
fn a_missing_certificate_is_refused_at_start() {
    let mut daemon = tls_builder(&service_client()).write();
    let pair = CertPair::generate(&daemon.dir().join("tls"), "server", "tokendealer-a", 1);
    std::fs::remove_file(&pair.cert).expect("removing the certificate");
    assert_refused_naming(&mut daemon, &pair.cert);
}
