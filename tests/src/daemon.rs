//! A `tokendealerd` of our own in a temporary directory.

use std::{
    ffi::OsString,
    fmt::Write as _,
    fs::{self, File},
    io::ErrorKind,
    net::SocketAddr,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use nix::sys::signal::{self, Signal};
use serde_json::Value;
use tempfile::TempDir;

use crate::{
    ISSUER, TestClient, bins,
    clients::toml_string,
    http::{self, Auth, Reply, Request},
    process::{self, Output},
};

/// How long the daemon may take to signal `READY=1`. Generous: the machine may be busy
/// building, and RSA key generation in a debug build is not instant.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long [`Daemon::wait_for_log`] waits for a log line.
pub const LOG_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the daemon may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The slice of a receive on the notify socket; between slices we check whether the child has
/// exited, so a daemon that dies at startup fails the test at once, not after the deadline.
const NOTIFY_SLICE: Duration = Duration::from_millis(100);

/// Builds a configured daemon: `config.toml`, `clients.toml` and `keys/` in a fresh
/// temporary directory, all paths absolute.
#[derive(Debug, Clone, Default)]
pub struct DaemonBuilder {
    algorithm: Option<String>,
    without_issuer: bool,
    extra_config: Vec<String>,
    clients: Vec<TestClient>,
    log_level: Option<String>,
}

impl DaemonBuilder {
    /// The `algorithm` key.
    #[must_use]
    pub fn algorithm(mut self, algorithm: &str) -> Self {
        self.algorithm = Some(algorithm.to_owned());
        self
    }

    /// Leaves `issuer` out of `config.toml`, so the daemon derives it from its bound address.
    #[must_use]
    pub fn without_issuer(mut self) -> Self {
        self.without_issuer = true;
        self
    }

    /// An extra line (or lines) of TOML for `config.toml`, e.g. `token_ttl = "2h"`.
    #[must_use]
    pub fn config(mut self, toml: &str) -> Self {
        self.extra_config.push(toml.to_owned());
        self
    }

    /// The daemon's log level (`TOKENDEALER_LOG`), e.g. `debug`.
    #[must_use]
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = Some(level.to_owned());
        self
    }

    /// A client for `clients.toml`.
    #[must_use]
    pub fn client(mut self, client: &TestClient) -> Self {
        self.clients.push(client.clone());
        self
    }

    /// Writes the files without starting the daemon.
    pub fn write(self) -> Daemon {
        let mut daemon = Daemon::new(Vec::new());
        let dir = daemon.dir().to_path_buf();
        let mut config = if self.without_issuer {
            String::new()
        } else {
            format!("issuer = {}\n", toml_string(ISSUER))
        };
        write!(
            config,
            "listen = \"127.0.0.1:0\"\nadmin_socket = {}\nclients_file = {}\nkey_dir = {}\n",
            toml_path(&dir.join("admin.sock")),
            toml_path(&dir.join("clients.toml")),
            toml_path(&dir.join("keys")),
        )
        .expect("writing to a String");
        if let Some(algorithm) = &self.algorithm {
            writeln!(config, "algorithm = {}", toml_string(algorithm))
                .expect("writing to a String");
        }
        for extra in &self.extra_config {
            writeln!(config, "{extra}").expect("writing to a String");
        }
        daemon.write_file("config.toml", &config);
        daemon.write_clients(&self.clients);
        if let Some(level) = self.log_level {
            daemon.set_env("TOKENDEALER_LOG", &level);
        }
        daemon.set_args(vec![
            "--config".into(),
            dir.join("config.toml").into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ]);
        daemon
    }

    /// Writes the files and starts the daemon.
    #[track_caller]
    pub fn start(self) -> Daemon {
        let mut daemon = self.write();
        daemon.start();
        daemon
    }
}

/// What the `READY=1` datagram told.
#[derive(Debug, Clone)]
struct Ready {
    listen: SocketAddr,
    admin: PathBuf,
}

/// The outcome of one launch.
enum Launch {
    Ready(Ready),
    Exited(ExitStatus),
}

/// One run of the daemon: its command line and where its output goes.
#[derive(Debug, Clone, Default)]
struct RunLog {
    command: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// A `tokendealerd` process (or the files for one) in its own temporary directory. Killed with
/// SIGKILL on drop if still running; on drop during a panic its output is printed and the
/// directory is kept.
pub struct Daemon {
    dir: TempDir,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    child: Option<Child>,
    ready: Option<Ready>,
    /// Bound for the daemon's whole run, so its later datagrams (STATUS=, STOPPING=1) are
    /// received rather than refused.
    notify: Option<UnixDatagram>,
    runs: u32,
    log: RunLog,
    agent: ureq::Agent,
}

impl Daemon {
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder::default()
    }

    /// A daemon with one client and defaults for everything else.
    #[track_caller]
    pub fn with_client(client: &TestClient) -> Self {
        Self::builder().client(client).start()
    }

    /// Local mode: no `--config`, run in the temporary directory (so `./tokendealer-data/`
    /// lands there), on an ephemeral port.
    #[track_caller]
    pub fn local_mode() -> Self {
        let mut daemon = Self::new(vec!["--listen".into(), "127.0.0.1:0".into()]);
        daemon.start();
        daemon
    }

    /// A daemon that runs `tokendealerd ARGS` in a fresh temporary directory that holds
    /// nothing yet; write files with [`Daemon::write_file`].
    pub fn new(args: Vec<OsString>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tokendealer-e2e-")
            .tempdir()
            .expect("a temporary directory");
        Self {
            cwd: dir.path().to_path_buf(),
            dir,
            args,
            env: Vec::new(),
            child: None,
            ready: None,
            notify: None,
            runs: 0,
            log: RunLog::default(),
            agent: http::agent(),
        }
    }

    /// Replaces the command line arguments (for the next start).
    pub fn set_args(&mut self, args: Vec<OsString>) {
        self.args = args;
    }

    /// Sets an environment variable for the next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Sets the working directory for the next start (default: the temporary directory).
    pub fn set_cwd(&mut self, cwd: PathBuf) {
        self.cwd = cwd;
    }

    /// The temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file the builder wrote.
    pub fn config_path(&self) -> PathBuf {
        self.dir().join("config.toml")
    }

    /// The clients file the builder wrote.
    pub fn clients_path(&self) -> PathBuf {
        self.dir().join("clients.toml")
    }

    /// Writes `name` (relative to the temporary directory), creating parent directories.
    ///
    /// The file is replaced by a rename, as editors do, so a running daemon that watches it
    /// never reads it half-written.
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir().join(name);
        let parent = path.parent().expect("a file in the temporary directory");
        fs::create_dir_all(parent).expect("creating a directory in the temporary directory");
        let mut staged =
            tempfile::NamedTempFile::new_in(parent).expect("a temporary file beside the target");
        std::io::Write::write_all(&mut staged, contents.as_bytes())
            .unwrap_or_else(|e| panic!("writing beside {} failed: {e}", path.display()));
        staged
            .persist(&path)
            .unwrap_or_else(|e| panic!("replacing {} failed: {e}", path.display()));
        path
    }

    /// Writes `clients.toml` with these clients.
    pub fn write_clients(&self, clients: &[TestClient]) {
        let text: String = clients
            .iter()
            .map(|c| format!("{}\n", c.to_toml()))
            .collect();
        self.write_file("clients.toml", &text);
    }

    /// Starts the daemon and waits for `READY=1`; fails the test if it exits first.
    #[track_caller]
    pub fn start(&mut self) {
        self.start_with(|_| {});
    }

    /// Starts the daemon and waits for `READY=1` as [`Daemon::start`] does, running
    /// `during_startup` with its pid when it reports that it is starting (a `STATUS=`
    /// datagram before `READY=1`, sent once its signal handlers are in).
    #[track_caller]
    pub fn start_with(&mut self, during_startup: impl FnOnce(u32)) {
        match self.launch(during_startup) {
            Launch::Ready(ready) => self.ready = Some(ready),
            Launch::Exited(status) => panic!(
                "tokendealerd exited ({status}) before it signalled READY=1:\n{}",
                self.take_diagnostics()
            ),
        }
    }

    /// Starts the daemon expecting it to refuse: waits for it to exit and returns what it
    /// printed. Fails the test if it signals `READY=1` instead.
    #[track_caller]
    pub fn start_expecting_exit(&mut self) -> Output {
        match self.launch(|_| {}) {
            Launch::Exited(status) => Output {
                command: self.log.command.clone(),
                status,
                stdout: self.stdout(),
                stderr: self.stderr(),
            },
            Launch::Ready(_) => {
                panic!("tokendealerd started although it should have refused to")
            }
        }
    }

    /// Starts the daemon expecting it to refuse with `EX_CONFIG` (78) and exactly one
    /// `tokendealerd:` sentence on stderr; returns that sentence and the whole output.
    #[track_caller]
    pub fn start_refused(&mut self) -> (String, Output) {
        let output = self.start_expecting_exit();
        output.assert_code(78);
        let sentences: Vec<String> = output
            .stderr_lines()
            .into_iter()
            .filter(|l| l.starts_with("tokendealerd:"))
            .map(str::to_owned)
            .collect();
        assert_eq!(sentences.len(), 1, "one sentence on stderr:\n{output}");
        (sentences[0].clone(), output)
    }

    /// Sends SIGTERM and waits for the daemon to exit; returns its exit status.
    #[track_caller]
    pub fn stop(&mut self) -> ExitStatus {
        let child = self
            .child
            .take()
            .expect("stop() needs a running daemon: start it first");
        self.ready = None;
        if let Err(e) = signal::kill(process::pid_of(&child), Signal::SIGTERM) {
            panic!("sending SIGTERM to tokendealerd failed: {e}");
        }
        match process::wait_timeout(child, STOP_TIMEOUT) {
            Ok(status) => status,
            Err(killed) => panic!(
                "tokendealerd did not exit within {STOP_TIMEOUT:?} of SIGTERM and was killed \
                 ({killed}):\n{}",
                self.take_diagnostics()
            ),
        }
    }

    /// Stops the daemon (it must exit 0) and starts it again with the same files.
    #[track_caller]
    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(
            status.success(),
            "tokendealerd exited with {status} after SIGTERM"
        );
        self.start();
    }

    /// Sends `sig` to the running daemon.
    #[track_caller]
    pub fn signal(&self, sig: Signal) {
        let child = self.child.as_ref().expect("the daemon is running");
        signal::kill(process::pid_of(child), sig)
            .unwrap_or_else(|e| panic!("sending {sig} to tokendealerd failed: {e}"));
    }

    /// Waits for a daemon that was told to stop (e.g. by [`Daemon::signal`]) to exit.
    #[track_caller]
    pub fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.take().expect("the daemon is running");
        self.ready = None;
        match process::wait_timeout(child, STOP_TIMEOUT) {
            Ok(status) => status,
            Err(killed) => panic!(
                "tokendealerd did not exit within {STOP_TIMEOUT:?} and was killed ({killed})"
            ),
        }
    }

    /// The datagrams the daemon sent on `NOTIFY_SOCKET` since `READY=1` that have not been
    /// read yet. After the daemon has exited this is everything it sent.
    pub fn notifications(&self) -> Vec<String> {
        let Some(notify) = &self.notify else {
            return Vec::new();
        };
        notify
            .set_nonblocking(true)
            .expect("making the notify socket non-blocking");
        let mut buf = vec![0u8; 64 * 1024];
        let mut datagrams = Vec::new();
        loop {
            match notify.recv(&mut buf) {
                Ok(n) => datagrams.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("receiving on the notify socket failed: {e}"),
            }
        }
        notify
            .set_nonblocking(false)
            .expect("making the notify socket blocking again");
        datagrams
    }

    /// Waits until the daemon sends a datagram with the line `line` (e.g. `STOPPING=1`) on
    /// `NOTIFY_SOCKET`; the datagrams read meanwhile are gone for [`Daemon::notifications`].
    #[track_caller]
    pub fn wait_for_notification(&self, line: &str) {
        let notify = self.notify.as_ref().expect("the daemon signalled READY=1");
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut buf = vec![0u8; 64 * 1024];
        let mut seen = Vec::new();
        loop {
            match notify.recv(&mut buf) {
                Ok(n) => {
                    let datagram = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if datagram.lines().any(|l| l == line) {
                        return;
                    }
                    seen.push(datagram);
                }
                Err(e) if receive_again(&e) => {}
                Err(e) => panic!("receiving on the notify socket failed: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "no `{line}` on the notify socket within {STOP_TIMEOUT:?}; received {seen:?}"
            );
        }
    }

    fn ready(&self) -> &Ready {
        self.ready
            .as_ref()
            .expect("the daemon is not running: start it first")
    }

    /// The bound HTTP address, from `X_TOKENDEALER_LISTEN`.
    pub fn addr(&self) -> SocketAddr {
        self.ready().listen
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The URL of `path` on this daemon.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// The admin socket, from `X_TOKENDEALER_ADMIN`.
    pub fn admin_socket(&self) -> &Path {
        &self.ready().admin
    }

    /// What the current (or last) run printed on stdout.
    pub fn stdout(&self) -> String {
        fs::read(&self.log.stdout)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// What the current (or last) run printed on stderr (its log).
    pub fn stderr(&self) -> String {
        fs::read(&self.log.stderr)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Reads the current run's log until `done` accepts it and returns it, looking again
    /// whenever the log grows; after [`LOG_TIMEOUT`] fails the test with `what` (what the
    /// test waited for) and the log.
    #[track_caller]
    pub fn wait_for_log(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let what = format!("the daemon logging {what}");
        crate::files::wait_in(self.dir(), &what, LOG_TIMEOUT, || done(&self.stderr()));
        self.stderr()
    }

    /// The command, stdout and stderr of the current (or last) run.
    pub fn diagnostics(&self) -> String {
        format!(
            "tokendealerd run {} in {}\ncommand: {}\n--- daemon stdout ---\n{}\n--- daemon stderr ---\n{}\n--- end of daemon output ---",
            self.runs,
            self.dir().display(),
            self.log.command,
            self.stdout(),
            self.stderr()
        )
    }

    /// Diagnostics for a panic message; clears the log so `Drop` does not print it twice.
    fn take_diagnostics(&mut self) -> String {
        let text = self.diagnostics();
        self.log = RunLog::default();
        text
    }

    fn launch(&mut self, starting: impl FnOnce(u32)) -> Launch {
        assert!(self.child.is_none(), "the daemon is already running");
        self.runs += 1;
        self.notify = None;
        let notify_path = self.dir().join("notify.sock");
        match fs::remove_file(&notify_path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => panic!("removing the old {} failed: {e}", notify_path.display()),
        }
        let notify = UnixDatagram::bind(&notify_path)
            .unwrap_or_else(|e| panic!("binding {} failed: {e}", notify_path.display()));
        notify
            .set_read_timeout(Some(NOTIFY_SLICE))
            .expect("setting a read timeout on the notify socket");

        let stdout = self
            .dir()
            .join(format!("tokendealerd-{}.stdout", self.runs));
        let stderr = self
            .dir()
            .join(format!("tokendealerd-{}.stderr", self.runs));
        let mut cmd = Command::new(bins::tokendealerd());
        cmd.args(&self.args)
            .current_dir(&self.cwd)
            .env("NOTIFY_SOCKET", &notify_path)
            // Socket activation and the admin tool's default socket are the caller's, not ours.
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("TOKENDEALER_SOCKET")
            // Plain log lines in failure output.
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("creating the daemon's stdout file"))
            .stderr(File::create(&stderr).expect("creating the daemon's stderr file"));
        self.log = RunLog {
            command: process::describe(&cmd),
            stdout,
            stderr,
        };
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {}: {e}", self.log.command));
        let child = self.child.insert(child);
        let mut starting = Some(starting);

        let deadline = Instant::now() + READY_TIMEOUT;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match notify.recv(&mut buf) {
                Ok(n) => {
                    let datagram = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if datagram.lines().any(|line| line == "READY=1") {
                        self.notify = Some(notify);
                        return Launch::Ready(parse_ready(&datagram));
                    }
                    if datagram
                        .lines()
                        .any(|line| line.starts_with("STATUS=starting"))
                        && let Some(starting) = starting.take()
                    {
                        starting(child.id());
                    }
                    // STATUS=, EXTEND_TIMEOUT_USEC= and the like: not what we wait for.
                }
                Err(e) if receive_again(&e) => {}
                Err(e) => panic!("receiving on the notify socket failed: {e}"),
            }
            if let Some(status) = child.try_wait().expect("polling the daemon's status") {
                self.child = None;
                return Launch::Exited(status);
            }
            assert!(
                Instant::now() < deadline,
                "tokendealerd did not signal READY=1 within {READY_TIMEOUT:?}"
            );
        }
    }

    // --- HTTP ---

    /// `GET path`.
    #[track_caller]
    pub fn get(&self, path: &str) -> Reply {
        self.request(Request {
            method: "GET",
            url: self.url(path),
            ..Request::default()
        })
    }

    /// Sends any request built by the caller.
    #[track_caller]
    pub fn request(&self, req: Request<'_>) -> Reply {
        http::send(&self.agent, req)
    }

    /// `POST path` with a raw body and content type (`None`: no `Content-Type` header).
    #[track_caller]
    pub fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        auth: Auth<'_>,
        body: &[u8],
    ) -> Reply {
        let mut headers = Vec::new();
        if let Some(content_type) = content_type {
            headers.push(("content-type", content_type.to_owned()));
        }
        if let Some(authorization) = auth.header() {
            headers.push(("authorization", authorization));
        }
        self.request(Request {
            method: "POST",
            url: self.url(path),
            headers,
            body: Some(body.to_vec()),
        })
    }

    /// `POST path` with a form body; `Auth::Post` credentials are appended to the pairs.
    #[track_caller]
    pub fn post_form(&self, path: &str, auth: Auth<'_>, pairs: &[(&str, &str)]) -> Reply {
        let mut all = pairs.to_vec();
        all.extend(auth.form_pairs());
        let body = http::form_body(&all);
        self.post_raw(
            path,
            Some("application/x-www-form-urlencoded"),
            auth,
            body.as_bytes(),
        )
    }

    /// `POST path` with a JSON body.
    #[track_caller]
    pub fn post_json(&self, path: &str, value: &Value) -> Reply {
        self.post_raw(
            path,
            Some("application/json"),
            Auth::None,
            value.to_string().as_bytes(),
        )
    }

    /// `POST /oauth/token` with `grant_type=client_credentials` and `params`.
    #[track_caller]
    pub fn token_request(&self, auth: Auth<'_>, params: &[(&str, &str)]) -> Reply {
        let mut pairs = vec![("grant_type", "client_credentials")];
        pairs.extend_from_slice(params);
        self.post_form("/oauth/token", auth, &pairs)
    }

    /// A token for `client` (Basic auth); fails the test unless the daemon issues one.
    #[track_caller]
    pub fn access_token(&self, client: &TestClient, params: &[(&str, &str)]) -> String {
        let reply = self.token_request(Auth::Basic(&client.id, &client.secret), params);
        reply.assert_status(200);
        reply.json()["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no `access_token` string:\n{reply}"))
            .to_owned()
    }

    /// The JWKS document.
    #[track_caller]
    pub fn jwks(&self) -> Value {
        let reply = self.get("/.well-known/jwks.json");
        reply.assert_status(200);
        reply.json()
    }

    /// The `kid`s the JWKS publishes, in order.
    #[track_caller]
    pub fn kids(&self) -> Vec<String> {
        let jwks = self.jwks();
        jwks["keys"]
            .as_array()
            .unwrap_or_else(|| panic!("no `keys` array in the JWKS: {jwks}"))
            .iter()
            .map(|k| {
                k["kid"]
                    .as_str()
                    .unwrap_or_else(|| panic!("a JWK without a `kid`: {k}"))
                    .to_owned()
            })
            .collect()
    }

    // --- the admin tool ---

    /// Runs `tokendealer --socket ADMIN ARGS` and returns what it did.
    #[track_caller]
    pub fn admin(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(bins::tokendealer());
        cmd.arg("--socket").arg(self.admin_socket()).args(args);
        admin_command(cmd)
    }
}

/// Runs the admin tool with a clean environment for its socket choice.
#[track_caller]
pub fn admin_command(mut cmd: Command) -> Output {
    cmd.env_remove("TOKENDEALER_SOCKET").env("NO_COLOR", "1");
    process::run(cmd)
}

impl Drop for Daemon {
    #[expect(
        clippy::print_stderr,
        reason = "a failing test's captured stderr is where the daemon's output belongs"
    )]
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            if !self.log.command.is_empty() {
                eprintln!("{}", self.diagnostics());
            }
            // Left for a post-mortem: config, clients, keys and every run's output.
            self.dir.disable_cleanup(true);
            eprintln!("kept {} for inspection", self.dir().display());
        }
    }
}

/// Whether a receive on the notify socket only ran out of its slice (or was interrupted by
/// a signal handled in the test process: with a receive timeout set, the kernel returns
/// EINTR instead of restarting) and is to be tried again.
fn receive_again(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

fn parse_ready(datagram: &str) -> Ready {
    let field = |name: &str| {
        datagram
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("the READY=1 datagram lacks {name}=:\n{datagram}"))
    };
    let listen = field("X_TOKENDEALER_LISTEN");
    Ready {
        listen: listen.parse().unwrap_or_else(|e| {
            panic!("X_TOKENDEALER_LISTEN={listen} is not a socket address ({e})")
        }),
        admin: PathBuf::from(field("X_TOKENDEALER_ADMIN")),
    }
}

fn toml_path(path: &Path) -> String {
    toml_string(path.to_str().expect("temporary paths are UTF-8"))
}

impl Daemon {
    /// Makes `clients.toml` a symlink to `elsewhere/clients.toml`, which holds `clients`, and
    /// returns that target. An edit of the target makes no event in the directory the daemon
    /// watches: only a reload, or the daemon's look at the file every 5 s, can apply it. Call
    /// it before the start.
    pub fn clients_file_elsewhere(&self, clients: &[TestClient]) -> PathBuf {
        let text: String = clients
            .iter()
            .map(|c| format!("{}\n", c.to_toml()))
            .collect();
        let real = self.write_file("elsewhere/clients.toml", &text);
        match fs::remove_file(self.clients_path()) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => panic!("removing {} failed: {e}", self.clients_path().display()),
        }
        std::os::unix::fs::symlink(&real, self.clients_path())
            .unwrap_or_else(|e| panic!("linking {} failed: {e}", self.clients_path().display()));
        real
    }
}

/// In `log`, how many lines contain `needle` before the last line that contains `marker`,
/// and how many after it; `None` while no line contains `marker`. Tells which of two causes
/// (a reload asked for, a look at the file of the daemon's own) made a logged effect.
pub fn lines_around(log: &str, marker: &str, needle: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = log.lines().collect();
    let at = lines.iter().rposition(|l| l.contains(marker))?;
    let count = |part: &[&str]| part.iter().filter(|l| l.contains(needle)).count();
    Some((count(&lines[..at]), count(&lines[at + 1..])))
}
