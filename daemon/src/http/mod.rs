//! The HTTP side: accept loop, routing, graceful drain.

mod closing;
pub mod conn;
mod discovery;
mod metrics;
mod response;
pub mod tls;
mod token;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use http::{Method, Request, Version, header};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use closing::{Closed, Closing};
use conn::{Activity, Expired, Limits, Tracked};
pub use discovery::build_metadata;
use response::{OAuthError, Resp};
pub use tokendealer_shared::form;

use crate::State;

/// How long requests in flight may take to finish once shutdown begins.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// At most one "every connection slot is taken" warning per this long.
const AT_LIMIT_WARNING_EVERY: Duration = Duration::from_secs(60);

type Builder = auto::Builder<TokioExecutor>;

/// Serves HTTP (or HTTPS, when the config names a certificate) on `listener` until
/// `shutdown` fires, then drains connections for at most [`DRAIN_DEADLINE`].
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Header and idle deadlines are kept per connection by `conn`, not per request here.
    builder
        .http1()
        .header_read_timeout(None)
        // A client may shut down its sending side once the request is out (`curl` with
        // `--no-keepalive`, some proxies, raw tests): it still gets its answer.
        .half_close(true)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);
    let limits = Limits {
        read: state.config.read_timeout,
        idle: state.config.idle_timeout,
    };
    let max = usize::try_from(state.config.max_connections).unwrap_or(usize::MAX);
    let slots = Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS)));
    let mut warned_at: Option<Instant> = None;
    let mut accept_warned_at: Option<Instant> = None;
    let closing = Closing::new();
    let connections = TaskTracker::new();

    loop {
        // A slot first: past `max_connections`, new connections wait in the listen backlog
        // (and the kernel's SYN queue) until one closes, rather than being reset.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                state.conns.at_limit.fetch_add(1, Relaxed);
                if warned_at.is_none_or(|at| at.elapsed() >= AT_LIMIT_WARNING_EVERY) {
                    warned_at = Some(Instant::now());
                    tracing::warn!(
                        max_connections = state.config.max_connections,
                        "every connection slot is taken; new connections wait until one closes"
                    );
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                }
            }
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning on the error,
                    // and say so once a minute rather than twenty times a second.
                    if accept_warned_at.is_none_or(|at| at.elapsed() >= AT_LIMIT_WARNING_EVERY) {
                        accept_warned_at = Some(Instant::now());
                        tracing::warn!(error = %e, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (state, builder, closed) = (state.clone(), builder.clone(), closing.watch());
        connections.spawn(async move {
            state.conns.accepted.fetch_add(1, Relaxed);
            state.conns.open.fetch_add(1, Relaxed);
            connection(stream, peer, &state, &builder, closed, limits).await;
            state.conns.open.fetch_sub(1, Relaxed);
            drop(slot);
        });
    }

    // Stop accepting first, so a restarting supervisor can bind the port again at once.
    drop(listener);
    closing.close();
    connections.close();
    tracing::debug!(
        connections = connections.len(),
        "HTTP listener closed; draining the connections"
    );
    tokio::select! {
        () = connections.wait() => tracing::debug!("all HTTP connections drained"),
        () = tokio::time::sleep(DRAIN_DEADLINE) => tracing::warn!("drain deadline passed; closing the remaining connections"),
    }
}

/// One accepted connection: the TLS handshake if configured, then HTTP.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: &Arc<State>,
    builder: &Builder,
    closed: Closed,
    limits: Limits,
) {
    let Some(tls) = &state.tls else {
        return http(stream, peer, state, builder, closed, limits).await;
    };
    match tokio::time::timeout(limits.read, tls.acceptor().accept(stream)).await {
        Ok(Ok(stream)) => http(stream, peer, state, builder, closed, limits).await,
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => {
            state.conns.expired(Expired::Read);
            tracing::debug!(%peer, "TLS handshake not finished within the read timeout");
        }
    }
}

async fn http<I>(
    io: I,
    peer: SocketAddr,
    state: &Arc<State>,
    builder: &Builder,
    closed: Closed,
    limits: Limits,
) where
    I: AsyncRead + AsyncWrite + conn::Transport + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let (serving, for_service) = (state.clone(), activity.clone());
    let service = service_fn(move |req: Request<Incoming>| {
        let in_flight = for_service.begin(req.version() == Version::HTTP_2);
        let state = serving.clone();
        async move {
            let resp = route(&state, req, peer).await;
            drop(in_flight);
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = builder.serve_connection(TokioIo::new(Tracked::new(io, activity.clone())), service);
    let graceful = |conn: std::pin::Pin<&mut _>| auto::Connection::graceful_shutdown(conn);
    match conn::serve_until_deadline(conn, closed, graceful, &activity, limits).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
        Err(why) => {
            state.conns.expired(why);
            tracing::debug!(%peer, ?why, "connection closed at its deadline");
        }
    }
}

/// The paths served, besides the metadata's RFC 8414 §3.1 one.
const ENDPOINTS: [&str; 8] = [
    "/oauth/token",
    "/oauth/introspect",
    "/verify_token",
    "/.well-known/jwks.json",
    "/.well-known/oauth-authorization-server",
    "/healthz",
    "/readyz",
    "/metrics",
];

async fn route(state: &State, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    let version = req.version();
    // RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without `Host`, and to
    // any request with more than one, or one that is not a host (and port).
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let refused = match (hosts.next(), hosts.next()) {
        (None, _) if version == Version::HTTP_11 => Some(OAuthError::invalid_request(
            "an HTTP/1.1 request needs a Host header",
        )),
        (Some(_), Some(_)) => Some(OAuthError::invalid_request(
            "a request has one Host header, not more",
        )),
        (Some(host), None) if !is_host(host.as_bytes()) => Some(OAuthError::invalid_request(
            "the Host header is not a host and port",
        )),
        _ => None,
    };
    // RFC 9110 §9.1: a method the server does not know at all is 501.
    let known = matches!(
        *req.method(),
        Method::POST
            | Method::GET
            | Method::HEAD
            | Method::PUT
            | Method::DELETE
            | Method::PATCH
            | Method::OPTIONS
            | Method::TRACE
            | Method::CONNECT
    );
    let refused = refused.or_else(|| (!known).then(OAuthError::not_implemented));
    if let Some(refused) = refused {
        return answered_unread(refused.into_response(), version, req.into_body()).await;
    }
    let head = req.method() == Method::HEAD;
    let get_only = |req: &Request<Incoming>| matches!(*req.method(), Method::GET | Method::HEAD);

    // For an issuer with a path (`https://host/td`), the endpoints its metadata names
    // (`https://host/td/oauth/token`) are served there as well as at the root: behind a
    // proxy that passes the path on and one that strips it alike. A path served as it is
    // comes first (with the issuer `https://host/oauth`, `/oauth/token` is the token
    // endpoint, not `/token` under the issuer).
    let full = req.uri().path();
    let path = if ENDPOINTS.contains(&full) {
        full
    } else {
        state
            .issuer_path
            .as_deref()
            .and_then(|prefix| full.strip_prefix(prefix))
            .filter(|rest| rest.starts_with('/'))
            .unwrap_or(full)
    };
    // The endpoints that read a body say themselves when they leave one unread.
    let resp = match path {
        "/oauth/token" => token::handle(state, req, peer).await,
        "/oauth/introspect" => discovery::introspect(state, req, peer).await,
        "/verify_token" => discovery::verify_token(state, req).await,
        _ => {
            let resp = match path {
                "/.well-known/jwks.json" if get_only(&req) => discovery::jwks(state),
                "/.well-known/oauth-authorization-server" if get_only(&req) => {
                    discovery::metadata(state)
                }
                "/healthz" if get_only(&req) => discovery::healthz(),
                "/readyz" if get_only(&req) => discovery::readyz(state),
                "/metrics" if get_only(&req) => metrics::metrics(state),
                "/.well-known/jwks.json"
                | "/.well-known/oauth-authorization-server"
                | "/healthz"
                | "/readyz"
                | "/metrics" => OAuthError::method_not_allowed("GET, HEAD").into_response(),
                // RFC 8414 §3.1: for an issuer with a path, the metadata's URL ends with that
                // path.
                path if state.metadata_path.as_deref() == Some(path) => {
                    if get_only(&req) {
                        discovery::metadata(state)
                    } else {
                        OAuthError::method_not_allowed("GET, HEAD").into_response()
                    }
                }
                _ => OAuthError::not_found().into_response(),
            };
            answered_unread(resp, version, req.into_body()).await
        }
    };
    if head { without_body(resp) } else { resp }
}

/// `resp`, an answer that did not need the request's body: what of the body has arrived is
/// read and dropped, and if more is to come, the answer says `Connection: close` (see
/// [`response::discard_arrived`]).
async fn answered_unread(resp: Resp, version: Version, body: Incoming) -> Resp {
    if response::discard_arrived(version, body).await {
        response::closing(resp)
    } else {
        resp
    }
}

/// Whether a `Host` value is `uri-host [ ":" port ]` (RFC 9112 §3.2, RFC 3986 §3.2.2), or
/// empty (a target without authority). Checked on the bytes: this runs for every request.
fn is_host(value: &[u8]) -> bool {
    if value.is_empty() {
        return true;
    }
    let (host, port) = if value[0] == b'[' {
        // An IP literal: an IPv6 address (or IPvFuture) in brackets.
        match value.iter().position(|&b| b == b']') {
            Some(end) => value.split_at(end + 1),
            None => return false,
        }
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(colon) => value.split_at(colon),
            None => (value, &[][..]),
        }
    };
    let port_ok = port.is_empty() || (port[0] == b':' && port[1..].iter().all(u8::is_ascii_digit));
    let host_ok = match host {
        [b'[', inside @ .., b']'] => {
            !inside.is_empty()
                && inside
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b":._~-!$&'()*+,;=".contains(&b))
        }
        // A reg-name or an IPv4 address: unreserved, sub-delims and percent escapes.
        _ => !host.is_empty() && uri_characters(host, b"-._~!$&'()*+,;="),
    };
    port_ok && host_ok
}

/// Whether `text` is made of letters, digits, the `others` RFC 3986 allows where it stands,
/// and percent escapes of two hex digits.
pub(crate) fn uri_characters(text: &[u8], others: &[u8]) -> bool {
    text.iter().enumerate().all(|(at, &b)| {
        b.is_ascii_alphanumeric()
            || others.contains(&b)
            || (b == b'%'
                && text
                    .get(at + 1..at + 3)
                    .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)))
    })
}

/// A response to HEAD: its headers, `Content-Length` included, and no content (RFC 9110
/// §9.3.2). hyper leaves the body out itself over HTTP/1 but sends it over HTTP/2, where a
/// client then resets the stream.
fn without_body(resp: Resp) -> Resp {
    let (mut parts, body) = resp.into_parts();
    let length = hyper::body::Body::size_hint(&body).exact().unwrap_or(0);
    parts
        .headers
        .entry(header::CONTENT_LENGTH)
        .or_insert_with(|| header::HeaderValue::from(length));
    Resp::from_parts(parts, response::Body::default())
}

/// The path of an issuer with one (`https://host/td` → `/td`), without a trailing slash;
/// `None` for an issuer without one.
pub fn issuer_path(issuer: &str) -> Option<Box<str>> {
    let rest = issuer.split_once("://").map_or(issuer, |(_, rest)| rest);
    let path = rest
        .find('/')
        .map_or("", |at| &rest[at..])
        .trim_end_matches('/');
    (!path.is_empty()).then(|| path.into())
}

/// Where RFC 8414 §3.1 puts the metadata of an issuer with a path (`https://host/td` →
/// `/.well-known/oauth-authorization-server/td`); `None` for an issuer without one, whose
/// metadata is at the plain well-known path.
pub fn metadata_path(issuer: &str) -> Option<Box<str>> {
    issuer_path(issuer).map(|path| format!("/.well-known/oauth-authorization-server{path}").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_values() {
        for good in [
            "x",
            "tokens.example:8443",
            "127.0.0.1",
            "[::1]:8080",
            "ex%41mple.com",
            "",
        ] {
            assert!(is_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "a b", "a:b", "user@a", "[::1", "a:80x", "%zz", ":80", "a/b", "[]",
        ] {
            assert!(!is_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn metadata_path_of_an_issuer_with_a_path() {
        assert_eq!(
            issuer_path("https://example.com/a/b/").as_deref(),
            Some("/a/b")
        );
        assert_eq!(issuer_path("https://example.com/"), None);
        assert_eq!(metadata_path("https://tokens.example"), None);
        assert_eq!(metadata_path("https://tokens.example/"), None);
        assert_eq!(metadata_path("http://127.0.0.1:8080"), None);
        assert_eq!(
            metadata_path("https://example.com/issuer1/").as_deref(),
            Some("/.well-known/oauth-authorization-server/issuer1")
        );
        assert_eq!(
            metadata_path("https://example.com/a/b").as_deref(),
            Some("/.well-known/oauth-authorization-server/a/b")
        );
    }
}
