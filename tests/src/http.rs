//! A small HTTP client for the tests: every response is kept whole (status, all headers, the
//! raw body) and non-2xx statuses are answers, not errors.

use std::{
    fmt,
    io::{ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::Value;

/// How long a request may take before the test fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest response body we read.
const MAX_BODY: u64 = 1 << 20;

/// How a request to the token or introspection endpoint authenticates.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    /// No credentials.
    None,
    /// `client_secret_basic`: id and secret each form-urlencoded, then base64 of `id:secret`
    /// (RFC 6749 §2.3.1).
    Basic(&'a str, &'a str),
    /// `client_secret_post`: `client_id` and `client_secret` in the form body.
    Post(&'a str, &'a str),
    /// An `Authorization` header sent exactly as given.
    Header(&'a str),
}

impl Auth<'_> {
    /// The `Authorization` header this sends, if any.
    pub fn header(&self) -> Option<String> {
        match *self {
            Auth::Basic(id, secret) => Some(basic_header(id, secret)),
            Auth::Header(value) => Some(value.to_owned()),
            Auth::None | Auth::Post(..) => None,
        }
    }

    /// The form pairs this adds to the body.
    pub fn form_pairs(&self) -> Vec<(&str, &str)> {
        match *self {
            Auth::Post(id, secret) => vec![("client_id", id), ("client_secret", secret)],
            Auth::None | Auth::Basic(..) | Auth::Header(_) => Vec::new(),
        }
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`.
pub fn basic_header(id: &str, secret: &str) -> String {
    let raw = format!("{}:{}", form_encode(id), form_encode(secret));
    format!("Basic {}", STANDARD.encode(raw))
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub fn form_encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// A form body from pairs, in order, repeats kept.
pub fn form_body(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// A response, and the request that got it (for failure messages).
#[derive(Clone)]
pub struct Reply {
    pub request: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("the response body is not JSON ({e}):\n{self}"))
    }

    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "unexpected status:\n{self}");
        self
    }

    /// Asserts the header is present with exactly this value.
    #[track_caller]
    pub fn assert_header(&self, name: &str, value: &str) -> &Self {
        assert_eq!(self.header(name), Some(value), "header `{name}`:\n{self}");
        self
    }

    /// Asserts an RFC 6749 §5.2 error from the token endpoint: the status, a JSON body whose
    /// `error` is `error`, and the no-store headers that every token endpoint response carries.
    #[track_caller]
    pub fn assert_oauth_error(&self, status: u16, error: &str) -> &Self {
        self.assert_status(status);
        assert!(
            self.header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "an error body is JSON:\n{self}"
        );
        let body = self.json();
        assert_eq!(
            body["error"].as_str(),
            Some(error),
            "the `error` member:\n{self}"
        );
        assert!(
            body.get("error_description").is_none_or(Value::is_string),
            "`error_description` is a string when present:\n{self}"
        );
        self.assert_no_store()
    }

    /// `Cache-Control: no-store` and `Pragma: no-cache` (RFC 6749 §5.1).
    #[track_caller]
    pub fn assert_no_store(&self) -> &Self {
        let cache_control = self.header("cache-control").unwrap_or_default();
        assert!(
            cache_control
                .split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-store")),
            "`Cache-Control` lacks `no-store`:\n{self}"
        );
        self.assert_header("pragma", "no-cache")
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "request: {}", self.request)?;
        writeln!(f, "response status: {}", self.status)?;
        for (name, value) in &self.headers {
            writeln!(f, "  {name}: {value}")?;
        }
        write!(f, "response body: {}", self.text())
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An agent that returns non-2xx statuses as responses, ignores proxy variables (everything
/// is on loopback) and never follows redirects.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .max_redirects(0)
        .timeout_global(Some(REQUEST_TIMEOUT))
        .build()
        .new_agent()
}

/// A request to send with [`send`].
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    pub method: &'a str,
    pub url: String,
    pub headers: Vec<(&'a str, String)>,
    /// `None` sends no body at all.
    pub body: Option<Vec<u8>>,
}

/// Sends a request and reads the whole response.
#[track_caller]
pub fn send(agent: &ureq::Agent, req: Request<'_>) -> Reply {
    let mut description = format!("{} {}", req.method, req.url);
    for (name, value) in &req.headers {
        description.push_str(&format!("\n  {name}: {value}"));
    }
    if let Some(body) = &req.body {
        description.push_str(&format!("\n  body: {}", body_preview(body)));
    }
    let result = match req.method {
        "GET" | "HEAD" | "DELETE" | "OPTIONS" => {
            let mut builder = match req.method {
                "GET" => agent.get(&req.url),
                "HEAD" => agent.head(&req.url),
                "DELETE" => agent.delete(&req.url),
                _ => agent.options(&req.url),
            };
            for (name, value) in &req.headers {
                builder = builder.header(*name, value);
            }
            builder.call()
        }
        _ => {
            let mut builder = match req.method {
                "POST" => agent.post(&req.url),
                "PUT" => agent.put(&req.url),
                _ => agent.patch(&req.url),
            };
            for (name, value) in &req.headers {
                builder = builder.header(*name, value);
            }
            match req.body {
                Some(body) => builder.send(&body[..]),
                None => builder.send_empty(),
            }
        }
    };
    let mut response =
        result.unwrap_or_else(|e| panic!("the request failed ({e}):\n  {description}"));
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_vec()
        .unwrap_or_else(|e| panic!("reading the response body failed ({e}):\n  {description}"));
    Reply {
        request: description,
        status,
        headers,
        body,
    }
}

fn body_preview(body: &[u8]) -> String {
    const SHOWN: usize = 512;
    let text = String::from_utf8_lossy(&body[..body.len().min(SHOWN)]).into_owned();
    if body.len() > SHOWN {
        format!("{text}… ({} bytes)", body.len())
    } else {
        text
    }
}

/// Writes raw bytes to `addr` and reads until the server closes the connection, for requests
/// an HTTP library will not produce. The request should carry `Connection: close`.
#[track_caller]
pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = connect(addr);
    match stream.write_all(request) {
        Ok(()) => {}
        // A server may answer (413, say) and close before it has read everything we send;
        // its answer is still waiting to be read.
        Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {}
        Err(e) => panic!("writing a raw request to {addr} failed: {e}"),
    }
    // Half-close so a server waiting for more body sees the end; reading still works.
    let _ = stream.shutdown(Shutdown::Write);
    read_to_close(&mut stream)
}

/// A TCP connection with read and write timeouts of [`REQUEST_TIMEOUT`].
#[track_caller]
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream =
        TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr} failed: {e}"));
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .expect("setting a read timeout");
    stream
        .set_write_timeout(Some(REQUEST_TIMEOUT))
        .expect("setting a write timeout");
    stream
}

/// Reads until the peer closes (or resets) the connection, returning what arrived.
#[track_caller]
pub fn read_to_close(stream: &mut TcpStream) -> String {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            // A server that answers early and closes with unread input resets the connection;
            // what it sent before that is still the answer.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "reading a raw response failed ({e}); so far:\n{}",
                String::from_utf8_lossy(&bytes)
            ),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The status code of a raw HTTP/1.1 response.
#[track_caller]
pub fn raw_status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response:\n{response}"))
}
