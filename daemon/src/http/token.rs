//! `POST /oauth/token`: the client-credentials grant (RFC 6749 §4.4), read top to bottom:
//! parse → authenticate → authorize → sign → respond.

use std::{
    cell::RefCell,
    io::Write as _,
    net::{IpAddr, SocketAddr},
    sync::atomic::Ordering::Relaxed,
    time::{Instant, SystemTime},
};

use aws_lc_rs::rand::SecureRandom;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use http::{Method, Request, StatusCode, header};
use hyper::body::Incoming;
use serde::Serialize;
use tokendealer_shared::clients_file::{check_audience, check_scope_token};

use super::{
    form::{self, Authorization, Params, ParamsError},
    response::{self, OAuthError, Resp},
};
use crate::{State, clients::Client, clients::Registry};

const GRANT_TYPE: &str = "client_credentials";
const FORM: &str = "application/x-www-form-urlencoded";

/// Not an `async fn`: the request line and headers are checked before the body is awaited,
/// and only what the rest needs is kept across that wait. The future lives in the
/// connection for every request; an `async fn` would carry the whole request in it (twice,
/// as argument and as local), and be copied whole at each level it is awaited from.
pub fn handle<'s>(
    state: &'s State,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> impl Future<Output = Resp> + Send + 's {
    let started = Instant::now();
    form_request(
        state,
        req,
        peer,
        move |authorization, body, source| issue(state, authorization, body, source, peer),
        move |issued| {
            let resp = issued.unwrap_or_else(|e| {
                tracing::debug!(%peer, error = e.code, status = e.status.as_u16(), "token request refused");
                state.stats.failure(e.code);
                e.into_response()
            });
            state.stats.latency.record(started.elapsed());
            resp
        },
    )
}

/// A client-authenticated form request, as the token endpoint and introspection take it:
/// refused at once when its source is throttled (before any work, hashing included), then
/// [`check_head`], then its body is read, and `finish` (synchronous) answers from the Basic
/// credentials, the body and the throttling source; `respond` makes the response of that
/// or of an earlier refusal. One future, not one awaiting another, which would hold the
/// inner one twice.
pub fn form_request<'s>(
    state: &'s State,
    req: Request<Incoming>,
    peer: SocketAddr,
    finish: impl FnOnce(Option<Authorization>, &[u8], IpAddr) -> Result<Resp, OAuthError> + Send + 's,
    respond: impl FnOnce(Result<Resp, OAuthError>) -> Resp + Send + 's,
) -> impl Future<Output = Resp> + Send + 's {
    let (head, body) = req.into_parts();
    let source = state.throttle.source(peer.ip(), &head.headers);
    let checked = state
        .throttle
        .check(source)
        .map_err(|t| OAuthError::too_many_requests(t.retry_after))
        .and_then(|()| check_head(&head));
    let version = head.version;
    drop(head);
    async move {
        let (answered, unread) = match checked {
            Ok(authorization) => match response::read_body(body, state.config.read_timeout).await {
                Ok(body) => (finish(authorization, &body, source), false),
                // Too large, too slow or broken: the rest of it is not read.
                Err(e) => (Err(e), version < http::Version::HTTP_2),
            },
            // Refused on its head (throttled, no form, a query string): the body is not
            // needed; what has arrived of it is dropped.
            Err(e) => (Err(e), response::discard_arrived(version, body).await),
        };
        let resp = respond(answered);
        if unread {
            response::closing(resp)
        } else {
            resp
        }
    }
}

fn issue(
    state: &State,
    authorization: Option<Authorization>,
    body: &[u8],
    source: IpAddr,
    peer: SocketAddr,
) -> Result<Resp, OAuthError> {
    let params = parse_params(body)?;
    let credentials = credentials(authorization, &params)?;
    check_grant_type(&params)?;
    // One reading of the clock: secret expiry, the token's times and the client's
    // last-issued time all agree.
    let now = unix_now();
    let registry = state.clients.load();
    let client = authenticate(state, &registry, &credentials, source, now)?;
    let grant = authorize(client, &params, &state.default_audience)?;
    let keys = state.keys.load();
    let key = keys.active().ok_or_else(OAuthError::no_signing_key)?;
    let issued = sign(state, key, client, &grant, now);
    state.stats.issued.fetch_add(1, Relaxed);
    client.counters.issued.fetch_add(1, Relaxed);
    client.counters.last_issued.store(now, Relaxed);
    tracing::info!(
        client = %client.id,
        aud = ?grant.audiences,
        scope = grant.scope.as_deref().unwrap_or(""),
        jti = %issued.jti,
        kid = key.kid(),
        %peer,
        %source,
        "issued access token"
    );
    Ok(response::serialized_no_store(
        StatusCode::OK,
        token_response(&issued.token, issued.expires_in, grant.scope.as_deref()),
    ))
}

/// How the client authenticated (RFC 6749 §2.3.1). Body credentials borrow from the
/// parsed form.
#[derive(Debug)]
pub enum Credentials<'p> {
    Basic {
        id: String,
        secret: String,
    },
    Post {
        id: &'p str,
        secret: &'p str,
    },
    /// No usable credentials; `challenge` when the client should be told to use Basic.
    Missing {
        challenge: bool,
    },
}

/// Checks method, URL and media type, and reads Basic credentials from the `Authorization`
/// header: everything that can be refused before the body is read. Shared with
/// introspection, which authenticates its caller the same way.
pub fn check_head(head: &http::request::Parts) -> Result<Option<Authorization>, OAuthError> {
    if head.method != Method::POST {
        return Err(OAuthError::method_not_allowed("POST"));
    }
    // RFC 6749 §2.3.1: credentials never travel in the URL, where logs and proxies keep them.
    if head.uri.query().is_some_and(|q| !q.is_empty()) {
        return Err(OAuthError::invalid_request(
            "parameters belong in the request body, not the URL",
        ));
    }
    if !response::has_media_type(&head.headers, FORM) {
        return Err(OAuthError::invalid_request(
            "the request body must be application/x-www-form-urlencoded (in UTF-8), in one Content-Type header",
        ));
    }
    let mut authorizations = head.headers.get_all(header::AUTHORIZATION).iter();
    match (authorizations.next(), authorizations.next()) {
        (_, Some(_)) => Err(OAuthError::invalid_request(
            "more than one Authorization header",
        )),
        (Some(value), None) => form::parse_authorization(value.as_bytes())
            .map(Some)
            .map_err(|e| OAuthError::invalid_request(e.0)),
        (None, None) => Ok(None),
    }
}

/// The form parameters of a body read after [`check_head`].
pub fn parse_params(body: &[u8]) -> Result<Params<'_>, OAuthError> {
    Params::parse(body).map_err(|e| match e {
        ParamsError::Malformed(m) => OAuthError::invalid_request(m.0),
        ParamsError::Repeated(_) | ParamsError::TooMany => {
            OAuthError::invalid_request(e.to_string())
        }
    })
}

/// The client's credentials, from the `Authorization` header or the body, never both.
pub fn credentials<'p>(
    authorization: Option<Authorization>,
    params: &'p Params<'_>,
) -> Result<Credentials<'p>, OAuthError> {
    let body_id = params.get("client_id");
    let body_secret = params.get("client_secret");
    match authorization {
        Some(Authorization::Other) => Err(OAuthError::invalid_client(true)),
        Some(Authorization::Basic { id, secret }) => {
            if body_secret.is_some() {
                return Err(OAuthError::invalid_request(
                    "use one client authentication method: Basic or client_secret in the body, not both",
                ));
            }
            // RFC 6749 allows client_id in the body beside Basic, but only the same one.
            if body_id.is_some_and(|b| b != id) {
                return Err(OAuthError::invalid_request(
                    "client_id in the body differs from the one in the Authorization header",
                ));
            }
            Ok(Credentials::Basic { id, secret })
        }
        None => match (body_id, body_secret) {
            (Some(id), Some(secret)) => Ok(Credentials::Post { id, secret }),
            (None, None) => Ok(Credentials::Missing { challenge: true }),
            _ => Ok(Credentials::Missing { challenge: false }),
        },
    }
}

fn check_grant_type(params: &Params<'_>) -> Result<(), OAuthError> {
    match params.get("grant_type") {
        None => Err(OAuthError::invalid_request("grant_type is missing")),
        Some(GRANT_TYPE) => Ok(()),
        Some(_) => Err(OAuthError::unsupported_grant_type()),
    }
}

/// Authenticates the client. Every failure is the same `invalid_client`, or, once its
/// address or client id has failed too often, the same `429`.
pub fn authenticate<'r>(
    state: &State,
    registry: &'r Registry,
    credentials: &Credentials<'_>,
    source: IpAddr,
    now: i64,
) -> Result<&'r Client, OAuthError> {
    let (id, secret, basic) = match credentials {
        Credentials::Basic { id, secret } => (id.as_str(), secret.as_str(), true),
        Credentials::Post { id, secret } => (*id, *secret, false),
        Credentials::Missing { challenge } => return Err(OAuthError::invalid_client(*challenge)),
    };
    // Checked when the request came in too; a request that came in with others before its
    // address was blocked, its body held back, must not get its guess tried after it.
    state
        .throttle
        .check(source)
        .map_err(|t| OAuthError::too_many_requests(t.retry_after))?;
    registry.authenticate(id, secret, now).ok_or_else(|| {
        if let Some(known) = registry.get(id) {
            known.counters.failures.fetch_add(1, Relaxed);
        }
        match state.throttle.failure(source, Some(id)) {
            Ok(()) => OAuthError::invalid_client(basic),
            Err(t) => OAuthError::too_many_requests(t.retry_after),
        }
    })
}

/// What the client is granted; the audiences are borrowed from the request, the client or
/// the configuration, all of which outlive the grant.
#[derive(Debug, PartialEq, Eq)]
struct Grant<'a> {
    audiences: Vec<&'a str>,
    /// Space-separated, `None` when empty.
    scope: Option<String>,
}

fn authorize<'a>(
    client: &'a Client,
    params: &'a Params<'_>,
    default_audience: &'a str,
) -> Result<Grant<'a>, OAuthError> {
    let mut audiences: Vec<&str> = Vec::new();
    let requested_audience = params.get("audience").into_iter().map(|a| (a, false));
    let requested_resources = params.all("resource").map(|r| (r, true));
    for (target, is_resource) in requested_audience.chain(requested_resources) {
        let well_formed = if is_resource {
            is_resource_indicator(target)
        } else {
            // `*` in a client's list allows any audience; as an audience it names none, and
            // a token for "*" would be taken by whoever checks for it.
            check_audience(target).is_ok() && target != "*"
        };
        if !well_formed {
            return Err(OAuthError::invalid_target(if is_resource {
                "a resource must be an absolute URI without a fragment (RFC 8707)"
            } else {
                "an audience must be non-empty, hold no spaces and not be `*`"
            }));
        }
        if !(client.any_audience || client.audiences.iter().any(|a| a == target)) {
            return Err(OAuthError::invalid_target(
                "the requested audience is not allowed for this client",
            ));
        }
        if !audiences.contains(&target) {
            audiences.push(target);
        }
    }
    // RFC 9068 §3: with no target requested, a default audience.
    if audiences.is_empty() {
        audiences = if client.audiences.is_empty() {
            vec![default_audience]
        } else {
            client.audiences.iter().map(String::as_str).collect()
        };
    }

    let scope = match params.get("scope") {
        None => client.scopes.join(" "),
        Some(requested) => {
            let mut granted: Vec<&str> = Vec::new();
            for token in requested.split(' ').filter(|t| !t.is_empty()) {
                if check_scope_token(token).is_err() {
                    return Err(OAuthError::invalid_scope(
                        "the scope parameter is malformed",
                    ));
                }
                if !client.scopes.iter().any(|s| s == token) {
                    return Err(OAuthError::invalid_scope(
                        "the requested scope exceeds what this client may be granted",
                    ));
                }
                if !granted.contains(&token) {
                    granted.push(token);
                }
            }
            if granted.is_empty() {
                return Err(OAuthError::invalid_scope("the scope parameter is empty"));
            }
            granted.join(" ")
        }
    };
    Ok(Grant {
        audiences,
        scope: (!scope.is_empty()).then_some(scope),
    })
}

/// RFC 8707 §2: an absolute URI (`scheme:` …, RFC 3986 §4.3) with no fragment: only the
/// characters RFC 3986 allows, each `%` beginning an escape of two hex digits, and an
/// authority, if it has one, that is a host and port (brackets closed).
fn is_resource_indicator(value: &str) -> bool {
    let Some((scheme, rest)) = value.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    // `#` is not among them: no fragment.
    let characters_ok = super::uri_characters(value.as_bytes(), b"-._~:/?[]@!$&'()*+,;=");
    let authority_ok = rest.strip_prefix("//").is_none_or(|after| {
        let authority = &after[..after.find(['/', '?']).unwrap_or(after.len())];
        authority.is_empty() || authority.parse::<http::uri::Authority>().is_ok()
    });
    scheme_ok && !rest.is_empty() && characters_ok && authority_ok
}

#[derive(Serialize)]
#[serde(untagged)]
enum Audience<'a> {
    One(&'a str),
    Many(&'a [&'a str]),
}

/// RFC 9068 §2.2.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    client_id: &'a str,
    aud: Audience<'a>,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
}

struct Issued {
    token: String,
    jti: String,
    expires_in: u64,
}

fn sign(
    state: &State,
    key: &crate::keys::SigningKey,
    client: &Client,
    grant: &Grant<'_>,
    iat: i64,
) -> Issued {
    let ttl = client.token_ttl.unwrap_or(state.token_ttl);
    let jti = new_jti();
    let aud = match grant.audiences.as_slice() {
        [one] => Audience::One(one),
        many => Audience::Many(many),
    };
    let claims = Claims {
        iss: &state.issuer,
        sub: &client.id,
        client_id: &client.id,
        aud,
        iat,
        nbf: iat,
        exp: iat.saturating_add_unsigned(ttl.as_secs()),
        jti: &jti,
        scope: grant.scope.as_deref(),
    };
    Issued {
        token: key.sign(&claims),
        jti,
        expires_in: ttl.as_secs(),
    }
}

/// 128 random bits, base64url: unique without coordination between daemons. Taken from a
/// per-thread buffer filled 1 KiB at a time, one call into the system generator per 64
/// tokens rather than one per token. A `jti` is no secret: it travels in the token.
fn new_jti() -> String {
    const POOL: usize = 1024;
    thread_local! {
        static RANDOM: RefCell<(usize, [u8; POOL])> = const { RefCell::new((POOL, [0; POOL])) };
    }
    let bytes: [u8; 16] = RANDOM.with_borrow_mut(|(used, pool)| {
        if *used == POOL {
            aws_lc_rs::rand::SystemRandom::new()
                .fill(pool)
                .expect("system randomness is available");
            *used = 0;
        }
        let bytes = pool[*used..*used + 16]
            .try_into()
            .expect("the pool is a multiple of 16 bytes");
        *used += 16;
        bytes
    });
    B64.encode(bytes)
}

/// The RFC 6749 §5.1 response body. Written out rather than through serde: the token is
/// most of it, and a compact JWS (base64url and dots) has nothing to escape, while
/// serde_json would look at each of its hundreds of bytes for a character to escape.
fn token_response(token: &str, expires_in: u64, scope: Option<&str>) -> Vec<u8> {
    debug_assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')),
        "a compact JWS needs no JSON escaping"
    );
    let mut body = Vec::with_capacity(token.len() + 128);
    body.extend_from_slice(b"{\"access_token\":\"");
    body.extend_from_slice(token.as_bytes());
    write!(
        body,
        "\",\"token_type\":\"Bearer\",\"expires_in\":{expires_in}"
    )
    .expect("writing to a Vec does not fail");
    if let Some(scope) = scope {
        body.extend_from_slice(b",\"scope\":");
        serde_json::to_writer(&mut body, scope).expect("a string serialises");
    }
    body.push(b'}');
    body
}

pub fn unix_now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    i64::try_from(secs).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::hash_secret;
    use tokendealer_shared::clients_file::{self, format_hash};

    /// RFC 8707 resource indicators are absolute RFC 3986 URIs without a fragment.
    #[test]
    fn resource_indicators_are_absolute_uris() {
        for good in [
            "https://api.example",
            "https://api.example:8443/v1/runs?x=1",
            "https://[::1]:8080/",
            "https://x/%C3%A9",
            "urn:example:resource",
            "file:///srv/data",
        ] {
            assert!(is_resource_indicator(good), "{good}");
        }
        for bad in [
            "api.example/v1",
            "//api.example",
            "https://x/#frag",
            "https://x/%zz",
            "https://x/é<>",
            "https://[::1",
            "https://x y",
            "1https://x",
            "https:",
        ] {
            assert!(!is_resource_indicator(bad), "{bad}");
        }
    }

    fn client(extra: &str) -> Registry {
        let h = format_hash(&hash_secret("s"));
        Registry::from_specs(
            clients_file::parse(&format!(
                "[clients.c]\nsecret_hashes = [\"{h}\"]\n{extra}\n"
            ))
            .unwrap(),
            None,
        )
    }

    /// A grant with what it borrows copied out, so that it outlives the test's registry.
    #[derive(Debug)]
    struct Granted {
        audiences: Vec<String>,
        scope: Option<String>,
    }

    fn grant(extra: &str, body: &str) -> Result<Granted, OAuthError> {
        let r = client(extra);
        let params = Params::parse(body.as_bytes()).unwrap();
        authorize(r.get("c").unwrap(), &params, "https://issuer").map(|g| Granted {
            audiences: g.audiences.iter().map(|a| (*a).to_owned()).collect(),
            scope: g.scope,
        })
    }

    #[test]
    fn scope_defaults_to_the_allow_list_and_subsets_are_kept() {
        let extra = "scopes = [\"a\", \"b\", \"c\"]";
        assert_eq!(grant(extra, "").unwrap().scope.as_deref(), Some("a b c"));
        assert_eq!(
            grant(extra, "scope=c+a+c").unwrap().scope.as_deref(),
            Some("c a")
        );
        assert_eq!(grant(extra, "scope=a+d").unwrap_err().code, "invalid_scope");
        assert_eq!(grant("", "").unwrap().scope, None);
        assert_eq!(grant("", "scope=a").unwrap_err().code, "invalid_scope");
    }

    #[test]
    fn audience_defaults_and_allow_list() {
        assert_eq!(grant("", "").unwrap().audiences, ["https://issuer"]);
        assert_eq!(
            grant("audiences = [\"*\"]", "").unwrap().audiences,
            ["https://issuer"]
        );
        let two = "audiences = [\"https://a\", \"https://b\"]";
        assert_eq!(
            grant(two, "").unwrap().audiences,
            ["https://a", "https://b"]
        );
        assert_eq!(
            grant(two, "audience=https://b").unwrap().audiences,
            ["https://b"]
        );
        assert_eq!(
            grant(
                two,
                "resource=https://a&resource=https://b&audience=https://a"
            )
            .unwrap()
            .audiences,
            ["https://a", "https://b"]
        );
        assert_eq!(
            grant(two, "audience=https://c").unwrap_err().code,
            "invalid_target"
        );
        assert_eq!(
            grant("audiences = [\"*\"]", "audience=anything")
                .unwrap()
                .audiences,
            ["anything"]
        );
        for star in ["audience=*", "resource=*"] {
            assert_eq!(
                grant("audiences = [\"*\"]", star).unwrap_err().code,
                "invalid_target",
                "{star}"
            );
        }
    }

    #[test]
    fn resource_must_be_an_absolute_uri_without_fragment() {
        let any = "audiences = [\"*\"]";
        assert!(grant(any, "resource=https://x/api").is_ok());
        assert!(grant(any, "resource=urn:example:x").is_ok());
        for bad in [
            "resource=relative/path",
            "resource=https://x%23frag",
            "resource=1http://x",
        ] {
            assert_eq!(grant(any, bad).unwrap_err().code, "invalid_target", "{bad}");
        }
    }

    #[test]
    fn token_response_is_the_json_of_its_fields() {
        let body = |scope| {
            serde_json::from_slice::<serde_json::Value>(&token_response("a.b-_.c", 300, scope))
                .unwrap()
        };
        assert_eq!(
            body(Some("read \"w\\")),
            serde_json::json!({
                "access_token": "a.b-_.c",
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "read \"w\\",
            })
        );
        assert_eq!(
            body(None),
            serde_json::json!({"access_token": "a.b-_.c", "token_type": "Bearer", "expires_in": 300})
        );
    }

    #[test]
    fn jtis_are_distinct_across_refills_of_the_pool() {
        // 64 per refill: 200 cross three.
        let jtis: std::collections::HashSet<String> = (0..200).map(|_| new_jti()).collect();
        assert_eq!(jtis.len(), 200);
        assert!(jtis.iter().all(|j| j.len() == 22), "{jtis:?}");
    }

    #[test]
    fn credentials_methods() {
        let params = Params::parse(b"client_id=a&client_secret=s").unwrap();
        assert!(matches!(
            credentials(None, &params),
            Ok(Credentials::Post { .. })
        ));
        let basic = || {
            Some(Authorization::Basic {
                id: "a".into(),
                secret: "s".into(),
            })
        };
        assert_eq!(
            credentials(basic(), &params).unwrap_err().code,
            "invalid_request"
        );
        let same_id = Params::parse(b"client_id=a").unwrap();
        assert!(matches!(
            credentials(basic(), &same_id),
            Ok(Credentials::Basic { .. })
        ));
        let other_id = Params::parse(b"client_id=b").unwrap();
        assert_eq!(
            credentials(basic(), &other_id).unwrap_err().code,
            "invalid_request"
        );
        let none = Params::default();
        assert!(matches!(
            credentials(None, &none),
            Ok(Credentials::Missing { challenge: true })
        ));
    }
}
