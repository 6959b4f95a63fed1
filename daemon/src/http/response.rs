//! Response building shared by the endpoints, and the RFC 6749 §5.2 error.

use std::{borrow::Cow, future::poll_fn, pin::pin, task::Poll};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as _, Incoming};
use serde::Serialize;

pub type Body = Full<Bytes>;
pub type Resp = Response<Body>;

/// The largest request body any endpoint reads.
pub const BODY_LIMIT: usize = 16 * 1024;

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
const NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");
const BASIC_CHALLENGE: HeaderValue = HeaderValue::from_static("Basic realm=\"tokendealer\"");

/// A JSON response.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, JSON);
    resp
}

/// A JSON response that no cache may keep (RFC 6749 §5.1): tokens, introspection, errors.
pub fn json_no_store(status: StatusCode, body: &impl Serialize) -> Resp {
    serialized_no_store(
        status,
        serde_json::to_vec(body).expect("response serialises"),
    )
}

/// [`json_no_store`] for a body that is JSON already.
pub fn serialized_no_store(status: StatusCode, body: Vec<u8>) -> Resp {
    let mut resp = json(status, body);
    let headers = resp.headers_mut();
    headers.insert(header::CACHE_CONTROL, NO_STORE);
    headers.insert(header::PRAGMA, NO_CACHE);
    resp
}

/// An OAuth error response (RFC 6749 §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub status: StatusCode,
    pub code: &'static str,
    pub description: Option<Cow<'static, str>>,
    /// Send `WWW-Authenticate: Basic realm="tokendealer"` (RFC 6749 §5.2, RFC 7617).
    pub challenge: bool,
    /// Extra header, e.g. `Allow` for a 405.
    pub allow: Option<&'static str>,
    /// `Retry-After` in seconds, for a 429.
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_description: Option<&'a str>,
}

/// RFC 6749 §5.2: `error_description` holds printable ASCII without `"` and `\`. Some
/// descriptions quote what the client sent (a parameter's name, a scope, a resource): a
/// double quote there is shown as `'`, and any other character outside the set as `?`.
fn describable(text: Cow<'static, str>) -> Cow<'static, str> {
    let allowed = |c: char| matches!(c, '\x20'..='\x21' | '\x23'..='\x5b' | '\x5d'..='\x7e');
    if text.chars().all(allowed) {
        return text;
    }
    text.chars()
        .map(|c| match c {
            c if allowed(c) => c,
            '"' => '\'',
            _ => '?',
        })
        .collect::<String>()
        .into()
}

impl OAuthError {
    fn new(
        status: StatusCode,
        code: &'static str,
        description: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code,
            description: Some(describable(description.into())),
            challenge: false,
            allow: None,
            retry_after: None,
        }
    }

    pub fn invalid_request(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    /// Every client-authentication failure gets this one response, so that an unknown id, a
    /// wrong secret and a disabled client cannot be told apart.
    pub fn invalid_client(challenge: bool) -> Self {
        Self {
            challenge,
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            )
        }
    }

    pub fn unsupported_grant_type() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only grant_type=client_credentials is supported",
        )
    }

    pub fn invalid_target(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_target", description)
    }

    pub fn invalid_scope(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_scope", description)
    }

    pub fn invalid_token() -> Self {
        Self {
            description: None,
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_token", "")
        }
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                format!("this endpoint only accepts {allow}"),
            )
        }
    }

    pub fn too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            format!("the request body is over {BODY_LIMIT} bytes"),
        )
    }

    /// Too many failed authentications (see `throttle`): come back later.
    pub fn too_many_requests(retry_after: std::time::Duration) -> Self {
        Self {
            // Whole seconds, rounded up, at least one.
            retry_after: Some(retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "too many failed authentications; retry later",
            )
        }
    }

    /// No key may sign just now (see `KeyManager::refresh`): the client should try again,
    /// maybe at another instance.
    pub fn no_signing_key() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "no signing key is usable on this instance; retry later",
        )
    }

    pub fn not_found() -> Self {
        Self {
            description: None,
            ..Self::new(StatusCode::NOT_FOUND, "not_found", "")
        }
    }

    /// RFC 9110 §9.1: a method the server does not know at all (not one it knows but an
    /// endpoint does not allow, which is 405).
    pub fn not_implemented() -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            "invalid_request",
            "the request's method is not one this server knows",
        )
    }

    pub fn into_response(self) -> Resp {
        let body = ErrorBody {
            error: self.code,
            error_description: self.description.as_deref(),
        };
        let mut resp = json_no_store(self.status, &body);
        if self.challenge {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, BASIC_CHALLENGE);
        }
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if let Some(allow) = self.allow {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        resp
    }
}

/// Reads a request body of at most [`BODY_LIMIT`] bytes, arriving within `timeout`.
///
/// Takes the body alone, not the request: the headers are checked before, and the future
/// (which lives in every endpoint's future across the wait) stays small.
pub async fn read_body(body: Incoming, timeout: std::time::Duration) -> Result<Bytes, OAuthError> {
    // Refused on the declared length alone, before reading a byte of it.
    if body.size_hint().lower() > BODY_LIMIT as u64 {
        return Err(OAuthError::too_large());
    }
    let mut collect = pin!(Limited::new(body, BODY_LIMIT).collect());
    // A body that came with the headers is complete at the first poll: no deadline is
    // computed (a clock reading) and no timer armed. Only a slow body pays for them.
    let read = match poll_fn(|cx| Poll::Ready(collect.as_mut().poll(cx))).await {
        Poll::Ready(read) => read,
        Poll::Pending => match tokio::time::timeout(timeout, collect).await {
            Ok(read) => read,
            Err(_) => {
                return Err(OAuthError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "invalid_request",
                    format!(
                        "the request body did not arrive within {}",
                        humantime::format_duration(timeout)
                    ),
                ));
            }
        },
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(OAuthError::too_large()),
        Err(_) => Err(OAuthError::invalid_request(
            "the request body could not be read",
        )),
    }
}

/// Reads and drops what has arrived of a body its answer does not need, without waiting for
/// more: a body sent with its headers, the usual case, is then read to its end, and hyper
/// keeps the connection for the next request. Returns whether some of it is still to come
/// over HTTP/1: the connection then cannot go on (where the next request starts is
/// unknown), hyper closes it after the answer, and the answer should say so ([`closing`]).
/// HTTP/2 streams end on their own.
pub async fn discard_arrived(version: http::Version, body: Incoming) -> bool {
    if version >= http::Version::HTTP_2 || body.is_end_stream() {
        return false;
    }
    if body.size_hint().lower() > BODY_LIMIT as u64 {
        return true;
    }
    let mut collect = pin!(Limited::new(body, BODY_LIMIT).collect());
    !matches!(
        poll_fn(|cx| Poll::Ready(collect.as_mut().poll(cx))).await,
        Poll::Ready(Ok(_))
    )
}

/// An answer given before its request's body was read to the end, over HTTP/1: hyper closes
/// the connection after it, and RFC 9112 §9.6 has a server about to close say so. Without
/// `Connection: close`, a client reusing the connection meets a closed one on its next
/// request. HTTP/2 streams end on their own.
pub fn closing(mut resp: Resp) -> Resp {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Whether the request's media type is `expected`, given once (RFC 9110 §5.3: a field
/// defined as a single value may not be repeated; which one a proxy took is anyone's guess),
/// in UTF-8 if it names a charset: the body is read as UTF-8 (RFC 6749 Appendix B), and a
/// body sent as ISO-8859-1 would be read as something else.
pub fn has_media_type(headers: &http::HeaderMap, expected: &str) -> bool {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let mut parts = value.split(';');
    let media_type = parts.next().unwrap_or_default();
    media_type.trim().eq_ignore_ascii_case(expected)
        && parts.all(|parameter| match parameter.split_once('=') {
            Some((name, charset)) if name.trim().eq_ignore_ascii_case("charset") => {
                let charset = charset.trim().trim_matches('"');
                charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("us-ascii")
            }
            _ => true,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A description quoting what the client sent keeps to RFC 6749 §5.2's characters.
    #[test]
    fn descriptions_keep_to_the_characters_rfc_6749_allows() {
        let said = OAuthError::invalid_request("parameter `a\"\\é\n` is included more than once");
        assert_eq!(
            said.description.as_deref(),
            Some("parameter `a'???` is included more than once")
        );
        let plain = OAuthError::invalid_request("grant_type is missing");
        assert!(
            matches!(plain.description, Some(Cow::Borrowed(_))),
            "no copy"
        );
    }
}
