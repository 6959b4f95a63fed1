//! The daemon as a systemd service sees it: the sd_notify conversation (READY with STATUS,
//! WATCHDOG at half the asked interval, RELOADING with MONOTONIC_USEC then READY, STOPPING)
//! on a real notify socket, sockets passed by `systemd-socket-activate`, and logging to a
//! journal socket with native fields (or plain lines when there is none).

use std::{
    fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use tokendealer_tests::{bins, clients::TestClient};

const DEADLINE: Duration = Duration::from_secs(20);

/// A daemon started by hand, so the test controls its whole environment.
struct Service {
    child: Child,
    notify: UnixDatagram,
    dir: tempfile::TempDir,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// The next datagram that has `line` as one of its lines, with when it arrived.
    fn expect(&self, line: &str) -> (String, Instant) {
        let deadline = Instant::now() + DEADLINE;
        let mut buf = vec![0u8; 4096];
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            match self.notify.recv(&mut buf) {
                Ok(n) => {
                    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if message.lines().any(|l| l == line || l.starts_with(line)) {
                        return (message, Instant::now());
                    }
                    seen.push(message);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("notify socket: {e}"),
            }
        }
        panic!(
            "no `{line}` notification within {DEADLINE:?}; got {seen:#?}\ndaemon log:\n{}",
            self.log()
        );
    }

    fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits"));
        nix::sys::signal::kill(pid, signal).expect("signalling the daemon");
    }
}

fn setup(extra_config: &str) -> (tempfile::TempDir, UnixDatagram) {
    let dir = tempfile::tempdir().expect("temp dir");
    let client = TestClient::new("svc");
    fs::write(dir.path().join("clients.toml"), client.to_toml()).expect("clients file");
    fs::write(
        dir.path().join("config.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_socket = \"admin.sock\"\nclients_file = \"clients.toml\"\nkey_dir = \"keys\"\nalgorithm = \"EdDSA\"\n{extra_config}"
        ),
    )
    .expect("config file");
    let notify = UnixDatagram::bind(dir.path().join("notify.sock")).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    (dir, notify)
}

fn spawn(mut cmd: Command, dir: tempfile::TempDir, notify: UnixDatagram) -> Service {
    let stderr = fs::File::create(dir.path().join("stderr")).expect("stderr file");
    // The test's own journal, if it sets one up; never the one this process may run under.
    if !cmd.get_envs().any(|(key, _)| key == "JOURNAL_STREAM") {
        cmd.env_remove("JOURNAL_STREAM");
    }
    let child = cmd
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("starting the daemon");
    Service { child, notify, dir }
}

fn get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connecting to the daemon");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("reply");
    reply
}

fn value<'a>(message: &'a str, key: &str) -> &'a str {
    message
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {message:?}"))
}

#[test]
fn speaks_sd_notify_ready_watchdog_reload_and_stopping() {
    let (dir, notify) = setup("");
    let mut cmd = Command::new(bins::tokendealerd());
    cmd.arg("--config")
        .arg(dir.path().join("config.toml"))
        .env("NOTIFY_SOCKET", dir.path().join("notify.sock"))
        // As systemd sets them for WatchdogSec=400ms.
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID");
    let service = spawn(cmd, dir, notify);

    let (ready, _) = service.expect("READY=1");
    let status = value(&ready, "STATUS=");
    assert!(
        status.contains("1 clients") && status.contains("tokens/s"),
        "{status}"
    );
    let listen = value(&ready, "X_TOKENDEALER_LISTEN=").to_owned();
    assert!(get(&listen, "/healthz").starts_with("HTTP/1.1 200"));

    // Keep-alives at half the 400 ms interval.
    let (_, mut last) = service.expect("WATCHDOG=1");
    for _ in 0..3 {
        let (_, at) = service.expect("WATCHDOG=1");
        let gap = at - last;
        assert!(
            gap >= Duration::from_millis(100) && gap <= Duration::from_millis(390),
            "watchdog keep-alives {gap:?} apart for a 400 ms watchdog"
        );
        last = at;
    }

    service.signal(Signal::SIGHUP);
    let (reloading, _) = service.expect("RELOADING=1");
    let usec: u64 = value(&reloading, "MONOTONIC_USEC=")
        .parse()
        .expect("MONOTONIC_USEC is a number of microseconds");
    assert!(usec > 0);
    service.expect("READY=1");

    // The status line is refreshed while serving.
    service.expect("STATUS=");

    service.signal(Signal::SIGTERM);
    service.expect("STOPPING=1");
    let mut service = service;
    let status = service.child.wait().expect("waiting for the daemon");
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        service.log()
    );
}

/// A reload still running when the daemon is told to stop (here stuck reading a FIFO where
/// the config file was: the clients file and the key files are opened without waiting, the
/// config as it is) must not say READY=1 after STOPPING=1: systemd would take the stopping
/// service for a running one again.
#[test]
fn a_reload_running_at_the_stop_says_nothing_after_stopping() {
    let (dir, notify) = setup("");
    let config = dir.path().join("config.toml");
    let mut cmd = Command::new(bins::tokendealerd());
    cmd.arg("--config")
        .arg(dir.path().join("config.toml"))
        .env("NOTIFY_SOCKET", dir.path().join("notify.sock"))
        .env_remove("WATCHDOG_USEC");
    let mut service = spawn(cmd, dir, notify);
    service.expect("READY=1");
    fs::remove_file(&config).expect("removing the config file");
    nix::unistd::mkfifo(&config, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    service.signal(Signal::SIGHUP);
    service.expect("RELOADING=1");
    service.signal(Signal::SIGTERM);
    service.expect("STOPPING=1");
    let status = service.child.wait().expect("waiting for the daemon");
    assert!(status.success(), "{status}\n{}", service.log());
    // Everything sent after STOPPING=1, to the daemon's exit.
    let mut after = Vec::new();
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = service.notify.recv(&mut buf) {
        after.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        !after
            .iter()
            .any(|m| m.lines().any(|l| l == "READY=1" || l == "RELOADING=1")),
        "sent after STOPPING=1: {after:#?}"
    );
}

#[test]
fn takes_the_sockets_systemd_socket_activate_passes() {
    // An address this machine does not have: if the daemon tried to bind `listen` itself, it
    // would fail to start.
    let (dir, notify) = setup("");
    let config = fs::read_to_string(dir.path().join("config.toml")).expect("config");
    let config = config
        .replace("listen = \"127.0.0.1:0\"", "listen = \"192.0.2.1:8080\"")
        .replace(
            "admin_socket = \"admin.sock\"",
            "admin_socket = \"not-bound-by-the-daemon.sock\"",
        );
    fs::write(dir.path().join("config.toml"), config).expect("config");
    let port = {
        let probe = TcpListener::bind("127.0.0.1:0").expect("probe port");
        probe.local_addr().expect("probe addr").port()
    };
    let addr = format!("127.0.0.1:{port}");
    let admin = dir.path().join("admin.sock");
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(&addr)
        .arg("-l")
        .arg(&admin)
        .arg("--fdname=http:admin")
        .arg("-E")
        .arg(format!(
            "NOTIFY_SOCKET={}",
            dir.path().join("notify.sock").display()
        ))
        .arg(bins::tokendealerd())
        .arg("--config")
        .arg(dir.path().join("config.toml"));
    let service = spawn(cmd, dir, notify);

    // systemd-socket-activate starts the daemon on the first connection, which waits in the
    // backlog of the passed socket until the daemon serves it.
    let mut first = None;
    let deadline = Instant::now() + DEADLINE;
    while first.is_none() && Instant::now() < deadline {
        first = TcpStream::connect(&addr).ok();
    }
    let mut first = first.unwrap_or_else(|| panic!("{addr} never listened"));
    write!(
        first,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut reply = String::new();
    first.read_to_string(&mut reply).expect("reply");
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "{reply}\n{}",
        service.log()
    );

    let (ready, _) = service.expect("READY=1");
    assert_eq!(value(&ready, "X_TOKENDEALER_LISTEN="), addr);
    // The socket it serves admins on, not the config's path it never bound.
    assert_eq!(
        Path::new(value(&ready, "X_TOKENDEALER_ADMIN=")),
        admin.as_path()
    );
    let status = Command::new(bins::tokendealer())
        .arg("--socket")
        .arg(&admin)
        .args(["status", "--json"])
        .output()
        .expect("running tokendealer status");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        !service
            .dir
            .path()
            .join("not-bound-by-the-daemon.sock")
            .exists(),
        "the daemon bound its own admin socket beside the passed one"
    );
    assert!(
        service.log().contains("passed by the service manager"),
        "{}",
        service.log()
    );

    service.signal(Signal::SIGTERM);
    let mut service = service;
    assert!(
        service.child.wait().expect("wait").success(),
        "{}",
        service.log()
    );
    // The passed socket belongs to the service manager, which removes it; the daemon must not.
    assert!(
        Path::new(&admin).exists(),
        "the daemon removed a socket it did not create"
    );
}

/// Runs the daemon with `run` mounted over `/run` in a mount namespace of its own (we are
/// root in CI), so that its `/run/systemd/journal/socket` is whatever the test put there,
/// and with `JOURNAL_STREAM` set as systemd sets it for a service.
fn under_private_run(dir: tempfile::TempDir, notify: UnixDatagram, run: &Path) -> Service {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$0" /run && exec "$@""#)
        .arg(run)
        .arg(bins::tokendealerd())
        .arg("--config")
        .arg(dir.path().join("config.toml"))
        .env("NOTIFY_SOCKET", dir.path().join("notify.sock"))
        .env("JOURNAL_STREAM", "0:0");
    spawn(cmd, dir, notify)
}

/// One entry in journald's native protocol: `KEY=value` lines, or for values with a
/// newline `KEY`, a newline, the length as u64 little-endian, the bytes and a newline.
fn journal_fields(mut datagram: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    while !datagram.is_empty() {
        let end = datagram
            .iter()
            .position(|&b| b == b'\n')
            .expect("each field ends with a newline");
        let line = &datagram[..end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            ));
            datagram = &datagram[end + 1..];
        } else {
            let rest = &datagram[end + 1..];
            let len = usize::try_from(u64::from_le_bytes(
                rest[..8].try_into().expect("an 8-byte length"),
            ))
            .expect("length fits");
            fields.push((
                String::from_utf8_lossy(line).into_owned(),
                String::from_utf8_lossy(&rest[8..8 + len]).into_owned(),
            ));
            datagram = &rest[8 + len + 1..];
        }
    }
    fields
}

/// The first journal entry whose MESSAGE contains `message`.
fn journal_entry(
    journal: &UnixDatagram,
    message: &str,
    service: &Service,
) -> Vec<(String, String)> {
    let deadline = Instant::now() + DEADLINE;
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        match journal.recv(&mut buf) {
            Ok(n) => {
                let fields = journal_fields(&buf[..n]);
                if fields
                    .iter()
                    .any(|(k, v)| k == "MESSAGE" && v.contains(message))
                {
                    return fields;
                }
                seen.push(fields);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("journal socket: {e}"),
        }
    }
    panic!(
        "no journal entry with `{message}` within {DEADLINE:?}; got {seen:#?}\nstderr:\n{}",
        service.log()
    );
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key} in {fields:#?}"))
}

#[test]
fn logs_native_journal_fields_when_systemd_connects_stderr_to_the_journal() {
    let (dir, notify) = setup("");
    let run = dir.path().join("run");
    fs::create_dir_all(run.join("systemd/journal")).expect("journal directory");
    let journal = UnixDatagram::bind(run.join("systemd/journal/socket")).expect("journal socket");
    journal
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    // A client whose secret this test knows (setup's is its own).
    let client = TestClient::new("svc");
    fs::write(dir.path().join("clients.toml"), client.to_toml()).expect("clients file");
    let service = under_private_run(dir, notify, &run);
    let (ready, _) = service.expect("READY=1");
    let listen = value(&ready, "X_TOKENDEALER_LISTEN=").to_owned();

    let entry = journal_entry(&journal, "tokendealerd ready", &service);
    assert_eq!(field(&entry, "PRIORITY"), "6", "info is syslog priority 6");
    assert_eq!(
        field(&entry, "LISTEN"),
        listen,
        "structured fields stay fields"
    );
    assert_eq!(field(&entry, "CLIENTS"), "1");
    assert_eq!(field(&entry, "TARGET"), "tokendealer_daemon");
    assert_eq!(field(&entry, "SYSLOG_IDENTIFIER"), "tokendealerd");

    // A token issued: its log entry names the client as a field of its own.
    let mut stream = TcpStream::connect(&listen).expect("connecting");
    let body = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        client.id, client.secret
    );
    write!(
        stream,
        "POST /oauth/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("request");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("reply");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let issued = journal_entry(&journal, "issued access token", &service);
    assert_eq!(field(&issued, "CLIENT"), "svc");
    assert!(
        !issued.iter().any(|(_, v)| v.contains(&client.secret)),
        "a secret reached the journal"
    );

    let error = {
        service.signal(Signal::SIGTERM);
        service.expect("STOPPING=1");
        let mut service = service;
        let status = service.child.wait().expect("waiting for the daemon");
        assert!(status.success(), "{status}\n{}", service.log());
        service.log()
    };
    // The journal has the lines; stderr (also the journal, under systemd) does not repeat them.
    assert!(!error.contains("tokendealerd ready"), "{error}");
}

#[test]
fn falls_back_to_plain_lines_when_the_journal_socket_is_missing() {
    let (dir, notify) = setup("");
    let run = dir.path().join("run");
    fs::create_dir_all(&run).expect("an empty /run");
    let service = under_private_run(dir, notify, &run);
    service.expect("READY=1");
    // Log lines are written by a thread of their own; an exit flushes them.
    service.signal(Signal::SIGTERM);
    let mut service = service;
    let status = service.child.wait().expect("waiting for the daemon");
    let log = service.log();
    assert!(status.success(), "{status}\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("INFO") && l.contains("tokendealerd ready")),
        "{log}"
    );
}
