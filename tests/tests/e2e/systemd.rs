//! The daemon as a systemd service sees it: the sd_notify conversation (READY with STATUS,
//! WATCHDOG at half the asked interval, RELOADING with MONOTONIC_USEC then READY, STOPPING)
//! on a real notify socket, and sockets passed by `systemd-socket-activate`.

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
    let child = cmd
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .env_remove("JOURNAL_STREAM")
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
