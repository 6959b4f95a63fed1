//! SIGTERM: requests in flight finish, idle connections do not hold the daemon up, the exit
//! status is 0 and the admin socket is gone; a second stop signal cuts the drain short; no
//! handled signal kills the daemon while it starts.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use tokendealer_tests::{Daemon, TestClient, http};

use crate::service_client;

/// How long the daemon drains requests in flight after a stop signal (README, Signals).
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// What the daemon logs when its HTTP drain reaches [`DRAIN_DEADLINE`] with connections left
/// (`daemon/src/http/mod.rs`).
const DRAIN_DEADLINE_LOG: &str = "drain deadline passed";

#[test]
fn sigterm_exits_zero_and_removes_the_admin_socket() {
    let mut daemon = Daemon::with_client(&service_client());
    let socket = daemon.admin_socket().to_path_buf();
    assert!(socket.exists(), "no admin socket at {}", socket.display());
    let status = daemon.stop();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(!socket.exists(), "{} is left behind", socket.display());
}

/// systemd learns that the stop is deliberate (sd_notify(3) `STOPPING=1`).
#[test]
fn sigterm_notifies_stopping() {
    let mut daemon = Daemon::with_client(&service_client());
    let status = daemon.stop();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let datagrams = daemon.notifications();
    assert!(
        datagrams
            .iter()
            .any(|d| d.lines().any(|line| line == "STOPPING=1")),
        "no STOPPING=1 among the datagrams after READY=1: {datagrams:?}"
    );
}

/// Reads one response head (up to the blank line), byte by byte so nothing after it is
/// consumed.
#[track_caller]
fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => panic!(
                "the connection closed inside a response head: {}",
                String::from_utf8_lossy(&head)
            ),
            Err(e) => panic!(
                "reading a response head failed ({e}): {}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// `Expect: 100-continue` makes the request provably in flight: the server sends
/// `100 Continue` only once the handler starts reading the body. We signal then, and only
/// afterwards send the body; the token must still arrive.
/// A token request provably in flight: its head sent with `Expect: 100-continue` and the
/// `100 Continue` read, its body (returned) not sent yet.
fn request_in_flight(daemon: &Daemon, client: &TestClient) -> (TcpStream, &'static str) {
    let body = "grant_type=client_credentials";
    let mut stream = http::connect(daemon.addr());
    let head = format!(
        "POST /oauth/token HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         Expect: 100-continue\r\n\r\n",
        daemon.addr(),
        http::basic_header(&client.id, &client.secret),
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .expect("writing the request head");
    let interim = read_head(&mut stream);
    assert_eq!(http::raw_status(&interim), 100, "{interim}");
    (stream, body)
}

/// The body of a request in flight comes only once the daemon is draining (it has said
/// `STOPPING=1`, closed its listener and logged so), so the request is answered by the drain itself,
/// not before the signal was acted on: a whole 200 with a token, and then the exit.
#[test]
fn sigterm_lets_an_in_flight_request_finish() {
    let client = service_client();
    // At debug, the daemon logs when its drain begins: the test waits on that.
    let mut daemon = Daemon::builder().client(&client).log_level("debug").start();
    let (mut stream, body) = request_in_flight(&daemon, &client);

    daemon.signal(Signal::SIGTERM);
    daemon.wait_for_notification("STOPPING=1");
    daemon.wait_for_log("the drain beginning", |log| {
        log.contains("HTTP listener closed; draining the connections")
    });
    stream
        .write_all(body.as_bytes())
        .expect("writing the request body");
    let response = http::read_to_close(&mut stream);
    assert_eq!(http::raw_status(&response), 200, "{response}");
    let (_, json) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of the response head:\n{response}"));
    let token: serde_json::Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("the token response is not JSON ({e}):\n{response}"));
    assert!(
        token["access_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "no `access_token` in the drained response:\n{response}"
    );
    assert_eq!(token["token_type"], "Bearer", "{response}");

    let status = daemon.wait_exit();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

/// An idle kept-alive connection is closed when the drain starts rather than waited for:
/// the daemon exits well within its drain deadline, and never reaches it. (Waiting for the
/// stop alone would not tell: `Daemon::stop` allows longer than the deadline.)
#[test]
fn an_idle_keep_alive_connection_does_not_hold_shutdown() {
    let mut daemon = Daemon::with_client(&service_client());
    let mut stream = http::connect(daemon.addr());
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", daemon.addr());
    stream
        .write_all(request.as_bytes())
        .expect("writing a request");
    let head = read_head(&mut stream);
    assert_eq!(http::raw_status(&head), 200, "{head}");
    // The connection stays open and idle while the daemon stops.
    let asked = Instant::now();
    let status = daemon.stop();
    let took = asked.elapsed();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(
        took < DRAIN_DEADLINE / 2,
        "stopping took {took:?} with an idle connection open, as if the drain waited for it\n{}",
        daemon.diagnostics()
    );
    let log = daemon.stderr();
    assert!(
        !log.contains(DRAIN_DEADLINE_LOG),
        "the drain waited for an idle connection until its deadline:\n{log}"
    );
    drop(stream);
}

#[test]
fn a_second_stop_signal_ends_the_drain_at_once() {
    let client = service_client();
    let mut daemon = Daemon::with_client(&client);
    // Its body never comes: the drain would wait for it until its deadline.
    let (stream, _) = request_in_flight(&daemon, &client);
    daemon.signal(Signal::SIGTERM);
    daemon.wait_for_notification("STOPPING=1");
    let second = Instant::now();
    daemon.signal(Signal::SIGINT);
    let status = daemon.wait_exit();
    let took = second.elapsed();
    assert!(status.success(), "exit status after two signals: {status}");
    assert!(
        took < DRAIN_DEADLINE / 2,
        "exited {took:?} after the second signal, as if it had waited out the drain"
    );
    drop(stream);
}

#[test]
fn a_sighup_while_starting_is_not_fatal() {
    // A 4096-bit key generated at the first start takes a while; a SIGHUP then (a config
    // management run, `systemctl reload` racing a start) must not kill the daemon.
    let client = service_client();
    let mut daemon = Daemon::builder()
        .config("rsa_bits = 4096")
        .client(&client)
        .write();
    // When it reports that it is starting (before the key is generated), SIGHUP it.
    let mut sent = false;
    daemon.start_with(|pid| {
        let pid = Pid::from_raw(i32::try_from(pid).expect("a pid fits an i32"));
        nix::sys::signal::kill(pid, Signal::SIGHUP).expect("sending SIGHUP");
        sent = true;
    });
    assert!(
        sent,
        "tokendealerd never reported that it was starting (STATUS=starting…)"
    );
    daemon.access_token(&client, &[]);
}
