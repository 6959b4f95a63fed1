//! TLS from the outside: certificates made with the `openssl` command, and `curl` and
//! `openssl s_client` as the clients, so what is tested is what other TLS stacks see.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use crate::{
    files,
    http::Reply,
    jwt,
    process::{self, Output},
};

/// How long one `curl` may take; well under the harness's command timeout, so a hung
/// handshake shows as curl's own error.
const CURL_MAX_TIME_SECS: &str = "20";

/// A self-signed certificate for `127.0.0.1` and `localhost`, and its private key.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertPair {
    /// Makes `NAME.crt` and `NAME.key` (mode 0600) in `dir`: a P-256 key and a self-signed
    /// certificate with this common name and serial. Being self-signed, the certificate is
    /// also what clients pass as `--cacert`.
    #[track_caller]
    pub fn generate(dir: &Path, name: &str, common_name: &str, serial: u32) -> Self {
        fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("creating {} failed: {e}", dir.display()));
        let pair = Self {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        let mut cmd = Command::new("openssl");
        cmd.args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .arg("ec_paramgen_curve:prime256v1")
            .args(["-nodes", "-days", "2", "-subj"])
            .arg(format!("/CN={common_name}"))
            .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
            .args(["-set_serial", &serial.to_string()])
            .arg("-keyout")
            .arg(&pair.key)
            .arg("-out")
            .arg(&pair.cert);
        run_tool(cmd, "openssl").assert_success();
        files::set_mode(&pair.key, 0o600);
        pair
    }

    /// The certificate's PEM text.
    #[track_caller]
    pub fn cert_pem(&self) -> String {
        fs::read_to_string(&self.cert)
            .unwrap_or_else(|e| panic!("reading {} failed: {e}", self.cert.display()))
    }

    /// Puts this pair's contents at `other`'s paths (each file replaced by a rename, as a
    /// certificate renewal tool does), keeping the key private.
    #[track_caller]
    pub fn install_at(&self, other: &CertPair) {
        for (from, to) in [(&self.cert, &other.cert), (&self.key, &other.key)] {
            let bytes =
                fs::read(from).unwrap_or_else(|e| panic!("reading {} failed: {e}", from.display()));
            files::write_by_rename(to, &bytes);
        }
    }
}

/// Runs a tool the TLS tests need, saying which package provides it when it is missing.
#[track_caller]
fn run_tool(cmd: Command, package: &str) -> Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(&program).is_file()));
    assert!(
        found,
        "`{program}` is not installed; the TLS tests use it as an independent TLS stack \
         (apt-get install {package})"
    );
    process::run(cmd)
}

/// `curl` against the daemon, trusting only `ca`, ignoring proxies from the environment.
#[track_caller]
pub fn curl(ca: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--noproxy", "*"])
        .args(["--max-time", CURL_MAX_TIME_SECS])
        .arg("--cacert")
        .arg(ca)
        .args(args);
    run_tool(cmd, "curl")
}

/// `curl --include` of `url` with `args`, as a [`Reply`]; fails the test if curl fails.
#[track_caller]
pub fn curl_reply(ca: &Path, url: &str, args: &[&str]) -> Reply {
    let mut all = vec!["--include"];
    all.extend_from_slice(args);
    all.push(url);
    let output = curl(ca, &all);
    output.assert_success();
    let (head, body) = output
        .stdout
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("curl printed no response head:\n{output}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a status line: {status_line:?}\n{output}"));
    Reply {
        request: output.command.clone(),
        status,
        headers: lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect(),
        body: body.as_bytes().to_vec(),
    }
}

/// The leaf certificate (PEM) the server at `addr` presents to a new connection, as
/// `openssl s_client` sees it; `None` when the handshake fails.
#[track_caller]
pub fn served_certificate(addr: SocketAddr) -> Option<String> {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr.to_string()]);
    let output = run_tool(cmd, "openssl");
    let begin = output.stdout.find("-----BEGIN CERTIFICATE-----")?;
    let end_marker = "-----END CERTIFICATE-----";
    let end = output.stdout[begin..].find(end_marker)? + begin + end_marker.len();
    Some(output.stdout[begin..end].to_owned())
}

/// Whether two PEM texts hold the same certificate (line breaks and trailing space aside).
pub fn same_pem(a: &str, b: &str) -> bool {
    let squeeze = |s: &str| s.split_whitespace().collect::<String>();
    squeeze(a) == squeeze(b)
}

/// [`jwt::pyjwt_verify`] for a JWKS served over TLS by a server whose certificate is `ca`:
/// Python's default TLS context reads its trust store from `SSL_CERT_FILE`.
#[track_caller]
pub fn pyjwt_verify_trusting(
    ca: &Path,
    jwks_url: &str,
    token: &str,
    issuer: &str,
    audience: &str,
) -> Value {
    let mut cmd = Command::new("python3");
    cmd.arg(jwt::verifier_script())
        .args([jwks_url, token, issuer, audience])
        .env("SSL_CERT_FILE", ca)
        .env_remove("SSL_CERT_DIR")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY");
    let output = process::run(cmd);
    output.assert_success();
    serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("the verifier's stdout is not JSON ({e}):\n{output}"))
}
