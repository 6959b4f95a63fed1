//! Raw HTTP/1.1 connections whose life the test controls: a request sent in pieces, several
//! requests on one kept-alive connection, a connection that says nothing, and the moment the
//! server closes it. An HTTP library hides exactly these.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use crate::http::{REQUEST_TIMEOUT, Reply};

/// Largest response head we accept.
const MAX_HEAD: usize = 64 * 1024;

/// One TCP connection to the daemon, spoken to byte by byte.
#[derive(Debug)]
pub struct RawConn {
    stream: TcpStream,
    addr: SocketAddr,
    /// Bytes read past the end of the last response.
    unread: Vec<u8>,
}

/// How a wait for the server to close ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// An orderly close (the read returned 0).
    Fin,
    /// A reset, which a server that closes with unread input sends.
    Reset,
}

impl RawConn {
    /// Connects with read and write timeouts of [`REQUEST_TIMEOUT`].
    #[track_caller]
    pub fn open(addr: SocketAddr) -> Self {
        Self {
            stream: crate::http::connect(addr),
            addr,
            unread: Vec::new(),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes `bytes` as they are.
    #[track_caller]
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("writing to {} failed: {e}", self.addr));
    }

    /// Sends a whole request and reads its response; the connection stays open unless the
    /// request or the response says otherwise.
    #[track_caller]
    pub fn request(&mut self, request: &[u8]) -> Reply {
        self.send(request);
        self.read_response(request)
    }

    /// Reads one response (headers and a `Content-Length` body) to `request`, which only
    /// labels failure messages.
    #[track_caller]
    pub fn read_response(&mut self, request: &[u8]) -> Reply {
        let description = String::from_utf8_lossy(request).into_owned();
        let head_end = loop {
            if let Some(at) = find(&self.unread, b"\r\n\r\n") {
                break at;
            }
            assert!(
                self.unread.len() <= MAX_HEAD,
                "a response head over {MAX_HEAD} bytes to:\n{description}"
            );
            if self.fill() == 0 {
                panic!(
                    "the server closed the connection before a whole response head to:\n\
                     {description}\nreceived: {}",
                    String::from_utf8_lossy(&self.unread)
                );
            }
        };
        let head = String::from_utf8_lossy(&self.unread[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP/1.1 status line: {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        assert!(
            !headers
                .iter()
                .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked")),
            "a chunked response; this reader expects Content-Length:\n{head}"
        );
        let length: usize =
            headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map_or(0, |(_, v)| {
                    v.parse()
                        .unwrap_or_else(|_| panic!("Content-Length {v:?} is not a number"))
                });
        let body_start = head_end + 4;
        while self.unread.len() < body_start + length {
            if self.fill() == 0 {
                panic!(
                    "the server closed the connection inside a response body to:\n{description}"
                );
            }
        }
        let body = self.unread[body_start..body_start + length].to_vec();
        self.unread.drain(..body_start + length);
        Reply {
            request: description,
            status,
            headers,
            body,
        }
    }

    /// Waits up to `within` for the server to close the connection, and returns when it did.
    /// Fails the test if the server sends anything, or does not close in time.
    #[track_caller]
    pub fn wait_closed(&mut self, within: Duration) -> (Instant, Closed) {
        assert!(
            self.unread.is_empty(),
            "unread bytes from the server: {}",
            String::from_utf8_lossy(&self.unread)
        );
        self.stream
            .set_read_timeout(Some(within))
            .expect("setting a read timeout");
        let mut chunk = [0u8; 4096];
        let read = self.stream.read(&mut chunk);
        let at = Instant::now();
        self.stream
            .set_read_timeout(Some(REQUEST_TIMEOUT))
            .expect("restoring the read timeout");
        match read {
            Ok(0) => (at, Closed::Fin),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => (at, Closed::Reset),
            Ok(n) => panic!(
                "expected the server to close {}, but it sent: {}",
                self.addr,
                String::from_utf8_lossy(&chunk[..n])
            ),
            Err(e) if is_timeout(&e) => {
                panic!("the server did not close the connection within {within:?}")
            }
            Err(e) => panic!("reading from {} failed: {e}", self.addr),
        }
    }

    /// Fails the test if anything arrives, or the connection closes, within `window`.
    #[track_caller]
    pub fn assert_silent_for(&mut self, window: Duration) {
        assert!(self.unread.is_empty(), "bytes already received");
        self.stream
            .set_read_timeout(Some(window))
            .expect("setting a read timeout");
        let mut chunk = [0u8; 4096];
        let read = self.stream.read(&mut chunk);
        self.stream
            .set_read_timeout(Some(REQUEST_TIMEOUT))
            .expect("restoring the read timeout");
        match read {
            Err(e) if is_timeout(&e) => {}
            Ok(0) => panic!("the server closed the connection within {window:?}"),
            Ok(n) => panic!(
                "the server answered within {window:?}: {}",
                String::from_utf8_lossy(&chunk[..n])
            ),
            Err(e) => panic!("reading from {} failed: {e}", self.addr),
        }
    }

    /// Reads more into `unread`; 0 when the server closed.
    #[track_caller]
    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.unread.extend_from_slice(&chunk[..n]);
                n
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => 0,
            Err(e) => panic!(
                "reading from {} failed ({e}); so far: {}",
                self.addr,
                String::from_utf8_lossy(&self.unread)
            ),
        }
    }
}

/// A read timeout shows as `WouldBlock` on Unix and `TimedOut` elsewhere.
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A complete `GET` request.
pub fn get(path: &str, keep_alive: bool) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: tokendealer.test\r\nConnection: {}\r\n\r\n",
        if keep_alive { "keep-alive" } else { "close" }
    )
    .into_bytes()
}

/// A complete `POST` of a form.
pub fn post_form(path: &str, authorization: Option<&str>, body: &str, keep_alive: bool) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: tokendealer.test\r\nConnection: {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
        if keep_alive { "keep-alive" } else { "close" },
        body.len()
    );
    if let Some(authorization) = authorization {
        request.push_str(&format!("Authorization: {authorization}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    request.into_bytes()
}

/// Raises this process's soft limit on open files to its hard limit, for tests that hold
/// many sockets at once; fails the test if even the hard limit is below `needed`.
#[track_caller]
pub fn raise_open_file_limit(needed: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("reading RLIMIT_NOFILE");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .unwrap_or_else(|e| panic!("raising RLIMIT_NOFILE from {soft} to {hard} failed: {e}"));
    }
    assert!(
        hard >= needed,
        "this test holds about {needed} sockets, but the hard limit on open files is {hard}; \
         raise it (ulimit -Hn, or LimitNOFILE= for a service)"
    );
}
