//! What a connection may cost the daemon: `read_timeout` for request heads and bodies,
//! `idle_timeout` for kept-alive connections, `max_connections`, and slow clients that must
//! not starve good ones. The connections are raw sockets, so the test decides exactly what is
//! sent and sees exactly when the server closes.

use std::{
    io::Write,
    net::TcpStream,
    time::{Duration, Instant},
};

use tokendealer_tests::{
    Daemon, ISSUER, Reply, TestClient,
    conn::{self, RawConn},
    http::{self, REQUEST_TIMEOUT},
    jwt, metrics,
};

use crate::{API, service_client};

/// How late past its deadline a busy CI machine may close a connection and still pass.
const LATE: Duration = Duration::from_secs(10);

/// How long a counter may lag the close the client saw.
const COUNTED_WITHIN: Duration = Duration::from_secs(10);

const READ_TIMED_OUT: &str = r#"tokendealer_http_connections_timed_out_total{phase="read"}"#;
const IDLE_TIMED_OUT: &str = r#"tokendealer_http_connections_timed_out_total{phase="idle"}"#;
const OPEN: &str = "tokendealer_http_connections";
const AT_LIMIT: &str = "tokendealer_http_connections_at_limit_total";
const ACCEPTED: &str = "tokendealer_http_connections_accepted_total";

/// A request head cut off in the middle of a header name.
const PARTIAL_HEAD: &[u8] = b"POST /oauth/token HTTP/1.1\r\nHost: tokendealer.test\r\nContent-Le";

/// Fails the test unless `elapsed` is no earlier than 0.8 × `timeout` and no later than
/// `timeout` + [`LATE`].
#[track_caller]
fn assert_about(elapsed: Duration, timeout: Duration, what: &str) {
    assert!(
        elapsed >= timeout.mul_f64(0.8),
        "{what} after {elapsed:?}, before its {timeout:?} deadline"
    );
    assert!(
        elapsed <= timeout + LATE,
        "{what} only after {elapsed:?}, long past its {timeout:?} deadline"
    );
}

/// A token request for `client` on a raw connection.
fn token_request(client: &TestClient, keep_alive: bool) -> Vec<u8> {
    conn::post_form(
        "/oauth/token",
        Some(&http::basic_header(&client.id, &client.secret)),
        "grant_type=client_credentials",
        keep_alive,
    )
}

#[test]
fn a_request_head_must_arrive_within_the_read_timeout() {
    const READ_TIMEOUT: Duration = Duration::from_secs(1);
    let daemon = Daemon::builder()
        .client(&service_client())
        .config("read_timeout = \"1s\"\nidle_timeout = \"30s\"")
        .start();
    let started = Instant::now();
    let mut partial = RawConn::open(daemon.addr());
    partial.send(PARTIAL_HEAD);
    let mut silent = RawConn::open(daemon.addr());

    let (closed, _) = partial.wait_closed(READ_TIMEOUT + LATE);
    assert_about(
        closed - started,
        READ_TIMEOUT,
        "a connection that sent half a request head was closed",
    );
    let (closed, _) = silent.wait_closed(READ_TIMEOUT + LATE);
    assert_about(
        closed - started,
        READ_TIMEOUT,
        "a connection that sent nothing was closed",
    );
    let counted = metrics::await_at_least(daemon.addr(), READ_TIMED_OUT, 2.0, COUNTED_WITHIN);
    assert!(
        (counted - 2.0).abs() < f64::EPSILON,
        "`{READ_TIMED_OUT}` is {counted}, not 2"
    );
    let idle = metrics::value(daemon.addr(), IDLE_TIMED_OUT);
    assert!(idle.abs() < f64::EPSILON, "`{IDLE_TIMED_OUT}` is {idle}");
}

/// After a response the idle timeout runs; once the next request's first byte arrives, its
/// head is held to the (shorter) read timeout, so a client cannot dribble a head for as long
/// as the idle timeout allows.
#[test]
fn the_next_request_head_on_a_kept_alive_connection_has_the_read_timeout() {
    const READ_TIMEOUT: Duration = Duration::from_secs(1);
    const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
    let daemon = Daemon::builder()
        .client(&service_client())
        .config("read_timeout = \"1s\"\nidle_timeout = \"30s\"")
        .start();
    let mut conn = RawConn::open(daemon.addr());
    conn.request(&conn::get("/healthz", true))
        .assert_status(200);
    let started = Instant::now();
    conn.send(PARTIAL_HEAD);
    let (closed, _) = conn.wait_closed(IDLE_TIMEOUT);
    assert_about(
        closed - started,
        READ_TIMEOUT,
        "a second request head cut short was closed",
    );
    metrics::await_at_least(daemon.addr(), READ_TIMED_OUT, 1.0, COUNTED_WITHIN);
}

#[test]
fn a_request_body_that_does_not_arrive_gets_408() {
    const READ_TIMEOUT: Duration = Duration::from_secs(1);
    let client = service_client();
    let daemon = Daemon::builder()
        .client(&client)
        .config("read_timeout = \"1s\"")
        .start();
    let body = "grant_type=client_credentials";
    let head = format!(
        "POST /oauth/token HTTP/1.1\r\nHost: tokendealer.test\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nAuthorization: {}\r\n\
         Content-Length: {}\r\n\r\n",
        http::basic_header(&client.id, &client.secret),
        body.len() + 100,
    );
    let started = Instant::now();
    let mut conn = RawConn::open(daemon.addr());
    conn.send(head.as_bytes());
    conn.send(body.as_bytes());
    let reply = conn.read_response(head.as_bytes());
    assert_about(started.elapsed(), READ_TIMEOUT, "the 408 came");
    reply.assert_oauth_error(408, "invalid_request");
    let description = reply.json()["error_description"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        description.contains("did not arrive within"),
        "the description says what went wrong:\n{reply}"
    );
}

#[test]
fn a_kept_alive_connection_is_closed_after_the_idle_timeout() {
    const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
    let daemon = Daemon::builder()
        .client(&service_client())
        .config("read_timeout = \"500ms\"\nidle_timeout = \"2s\"")
        .start();
    let mut conn = RawConn::open(daemon.addr());
    conn.request(&conn::get("/healthz", true))
        .assert_status(200);
    let answered = Instant::now();
    let (closed, _) = conn.wait_closed(IDLE_TIMEOUT + LATE);
    assert_about(
        closed - answered,
        IDLE_TIMEOUT,
        "an idle kept-alive connection was closed",
    );
    metrics::await_at_least(daemon.addr(), IDLE_TIMED_OUT, 1.0, COUNTED_WITHIN);
    let read = metrics::value(daemon.addr(), READ_TIMED_OUT);
    assert!(
        read.abs() < f64::EPSILON,
        "an idle close counted as a read timeout ({read})"
    );
}

/// HTTP/2 (prior knowledge, as a service mesh speaks it): PINGs between requests are no
/// request on its way, so they neither cut the connection at the read timeout nor keep it
/// past the idle timeout; at that deadline it ends with GOAWAY (the client's connection
/// ends cleanly), not with a bare close.
#[test]
fn an_http2_connection_idles_through_pings_and_ends_with_goaway() {
    const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
    const PING_EVERY: Duration = Duration::from_millis(200);
    let daemon = Daemon::builder()
        .client(&service_client())
        .config("read_timeout = \"1s\"\nidle_timeout = \"3s\"")
        .start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (answered, ended) = runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(daemon.addr())
            .await
            .expect("connecting");
        let (mut requests, mut connection) = h2::client::handshake(tcp)
            .await
            .expect("an HTTP/2 handshake");
        let mut pings = connection.ping_pong().expect("PINGs");
        let mut connection = tokio::spawn(connection);
        let request = ::http::Request::get(daemon.url("/healthz"))
            .body(())
            .expect("a request");
        let (response, _) = requests
            .send_request(request, true)
            .expect("sending the request");
        let response = response.await.expect("a response");
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        while body.data().await.is_some() {}
        let answered = Instant::now();
        // Pinged, not waited on: the pings are the load, the connection's end the event.
        let mut every = tokio::time::interval(PING_EVERY);
        loop {
            tokio::select! {
                ended = &mut connection => break drop(ended.expect("the connection task")),
                _ = every.tick() => drop(pings.ping(h2::Ping::opaque()).await),
            }
        }
        // What a client that wants to send again is told.
        let ended = requests.ready().await.map(drop);
        (answered, ended)
    });
    assert_about(
        answered.elapsed(),
        IDLE_TIMEOUT,
        "an HTTP/2 connection that only pinged was closed",
    );
    assert!(
        ended.as_ref().is_err_and(h2::Error::is_go_away),
        "the connection ended without GOAWAY: {ended:?}"
    );
    metrics::await_at_least(daemon.addr(), IDLE_TIMED_OUT, 1.0, COUNTED_WITHIN);
}

/// Requests spaced closer than the idle timeout keep a connection open for longer than the
/// idle timeout in total. The spacing comes from the server itself: between two requests the
/// test waits for the server to close another connection that sends nothing, which takes the
/// read timeout, a quarter of the idle timeout.
#[test]
fn a_connection_in_use_outlives_the_idle_timeout() {
    const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
    const REQUESTS: usize = 6;
    let daemon = Daemon::builder()
        .client(&service_client())
        .config("read_timeout = \"500ms\"\nidle_timeout = \"2s\"")
        .start();
    let mut busy = RawConn::open(daemon.addr());
    let started = Instant::now();
    busy.request(&conn::get("/healthz", true))
        .assert_status(200);
    for _ in 1..REQUESTS {
        RawConn::open(daemon.addr()).wait_closed(IDLE_TIMEOUT + LATE);
        busy.request(&conn::get("/healthz", true))
            .assert_status(200);
    }
    let used_for = started.elapsed();
    assert!(
        used_for > IDLE_TIMEOUT,
        "the connection was used for {used_for:?} only, which proves nothing about a \
         {IDLE_TIMEOUT:?} idle timeout"
    );
    let idle = metrics::value(daemon.addr(), IDLE_TIMED_OUT);
    assert!(
        idle.abs() < f64::EPSILON,
        "a connection in use was counted as idle ({idle})"
    );
}

#[test]
fn past_max_connections_a_new_connection_waits_for_a_free_slot() {
    const MAX: usize = 4;
    /// Long enough that an answer that was going to come would have; the daemon answers
    /// `/healthz` in microseconds.
    const UNANSWERED_FOR: Duration = Duration::from_millis(500);
    let daemon = Daemon::builder()
        .client(&service_client())
        .config("max_connections = 4\nread_timeout = \"5s\"\nidle_timeout = \"60s\"")
        .start();
    let addr = daemon.addr();
    // Each answered once, so each certainly holds a slot, then kept alive and quiet.
    let mut held: Vec<RawConn> = (0..MAX)
        .map(|_| {
            let mut conn = RawConn::open(addr);
            conn.request(&conn::get("/healthz", true))
                .assert_status(200);
            conn
        })
        .collect();

    let request = conn::get("/healthz", false);
    let mut fifth = RawConn::open(addr);
    fifth.send(&request);
    fifth.assert_silent_for(UNANSWERED_FOR);

    drop(held.pop());
    let freed = Instant::now();
    fifth.read_response(&request).assert_status(200);
    let waited = freed.elapsed();
    assert!(
        waited < LATE,
        "the waiting connection was served {waited:?} after a slot freed"
    );
    fifth.wait_closed(REQUEST_TIMEOUT);

    // A scrape needs a slot too: three are held, and the fifth has closed.
    let exposition = metrics::scrape(addr);
    let at_limit = metrics::sample(&exposition, AT_LIMIT).unwrap_or_default();
    assert!(
        at_limit > 0.0,
        "`{AT_LIMIT}` did not count the full house:\n{exposition}"
    );
    let accepted = metrics::sample(&exposition, ACCEPTED).unwrap_or_default();
    assert!(
        accepted >= 6.0,
        "`{ACCEPTED}` is {accepted}: four held, the fifth and this scrape:\n{exposition}"
    );
    drop(held);
}

/// Slowloris: a thousand connections that each send part of a request head and then nothing
/// hold their slots for the whole read timeout, while a good client's token requests, over
/// fresh and kept-alive connections, all succeed promptly.
#[test]
#[expect(
    clippy::print_stderr,
    reason = "the figures (connections held, success rate, latency) are read from the test output"
)]
fn a_thousand_slow_clients_do_not_starve_good_ones() {
    const SLOW: usize = 1000;
    const GOOD: usize = 200;
    /// Far beyond any healthy token request on loopback, far below the slow clients' timeout.
    const PROMPT: Duration = Duration::from_secs(5);
    /// Each good token PyJWT verifies (a Python process apiece); the rest are checked for
    /// the same signing key and subject.
    const VERIFIED: [usize; 3] = [0, GOOD / 2, GOOD - 1];

    // The slow sockets, the good ones, and whatever the other tests in this process hold.
    conn::raise_open_file_limit(SLOW as u64 + 512);
    let client = service_client();
    let daemon = Daemon::builder()
        .client(&client)
        .config("read_timeout = \"30s\"")
        .start();
    let addr = daemon.addr();
    let started = Instant::now();

    let slow: Vec<TcpStream> = (0..SLOW)
        .map(|i| {
            let mut stream = http::connect(addr);
            stream
                .write_all(PARTIAL_HEAD)
                .unwrap_or_else(|e| panic!("slow connection {i}: writing failed: {e}"));
            stream
        })
        .collect();
    let held_before = metrics::await_at_least(addr, OPEN, SLOW as f64, REQUEST_TIMEOUT);
    let connected_in = started.elapsed();

    let mut kept_alive = RawConn::open(addr);
    let mut latencies = Vec::with_capacity(GOOD);
    let mut tokens = Vec::with_capacity(GOOD);
    let mut failures: Vec<Reply> = Vec::new();
    for i in 0..GOOD {
        let fresh = i % 2 == 1;
        let request = token_request(&client, !fresh);
        let sent = Instant::now();
        let reply = if fresh {
            RawConn::open(addr).request(&request)
        } else {
            kept_alive.request(&request)
        };
        latencies.push(sent.elapsed());
        match reply.json()["access_token"].as_str() {
            Some(token) if reply.status == 200 => tokens.push(token.to_owned()),
            _ => failures.push(reply),
        }
    }
    let held_after = metrics::value(addr, OPEN);
    let elapsed = started.elapsed();

    let max_latency = latencies.iter().max().copied().unwrap_or_default();
    let mut sorted = latencies.clone();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2];
    eprintln!(
        "slowloris: {SLOW} slow connections opened in {connected_in:?}; \
         open connections before the good requests: {held_before}, after: {held_after}; \
         good token requests: {}/{GOOD} succeeded ({:.1}%), median latency {median:?}, \
         max latency {max_latency:?}; whole test {elapsed:?}",
        tokens.len(),
        tokens.len() as f64 * 100.0 / GOOD as f64,
    );

    assert!(
        failures.is_empty(),
        "{} of {GOOD} good requests failed; the first:\n{}",
        failures.len(),
        failures[0]
    );
    assert!(
        held_after >= SLOW as f64,
        "the slow connections were not all held during the good requests \
         ({held_after} open after them)"
    );
    assert!(
        max_latency < PROMPT,
        "a good request took {max_latency:?} beside the slow ones"
    );
    let kid = jwt::decode(&tokens[0]).header["kid"].clone();
    for token in &tokens {
        let jws = jwt::decode(token);
        assert_eq!(jws.header["kid"], kid, "{}", jws.header);
        assert_eq!(jws.claims["sub"], client.id.as_str(), "{}", jws.claims);
    }
    let jwks_url = daemon.url("/.well-known/jwks.json");
    for i in VERIFIED {
        jwt::pyjwt_verify(&jwks_url, &tokens[i], ISSUER, API);
    }
    drop(slow);
}

/// hyper's head limits: more than 100 header fields is `431` and the connection ends; a
/// head over the 64 KiB read buffer is refused the same way (or, when the client is still
/// sending, the connection is reset). Either way nothing is served, and the next client is.
#[test]
fn oversized_request_heads_are_refused_and_the_daemon_keeps_serving() {
    let client = service_client();
    let daemon = Daemon::builder().client(&client).start();

    let mut many = String::from("POST /oauth/token HTTP/1.1\r\nHost: tokendealer.test\r\n");
    for i in 0..120 {
        many.push_str(&format!("X-Filler-{i}: {i}\r\n"));
    }
    many.push_str("Content-Length: 0\r\n\r\n");
    let mut conn = RawConn::open(daemon.addr());
    let reply = conn.request(many.as_bytes());
    assert_eq!(reply.status, 431, "120 header fields:\n{reply}");

    let huge = format!(
        "POST /oauth/token HTTP/1.1\r\nHost: tokendealer.test\r\nX-Filler: {}\r\nContent-Length: 0\r\n\r\n",
        "a".repeat(80 * 1024)
    );
    let mut stream = http::connect(daemon.addr());
    // The daemon may close before it has read all of it: a failed write is an answer too.
    let _ = stream.write_all(huge.as_bytes());
    let answer = answer_to_oversized_head(&mut stream);
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 431"),
        "an 80 KiB header was answered with:\n{}",
        String::from_utf8_lossy(&answer)
    );

    let mut good = RawConn::open(daemon.addr());
    let reply = good.request(&token_request(&client, false));
    assert_eq!(reply.status, 200, "{reply}");
}

/// Reads what the daemon sends after a request head it refuses, until it ends the connection
/// (a close or a reset); fails the test if the connection is still open, with nothing more
/// coming, after [`REFUSED_WITHIN`]. A refused head is answered at once: a daemon that waits
/// instead, holding the connection, is what this catches.
#[track_caller]
fn answer_to_oversized_head(stream: &mut TcpStream) -> Vec<u8> {
    const REFUSED_WITHIN: Duration = Duration::from_secs(5);
    stream
        .set_read_timeout(Some(REFUSED_WITHIN))
        .expect("setting a read timeout");
    // A read that times out fails the test: the connection was held, not ended.
    http::read_to_close(stream).into_bytes()
}
