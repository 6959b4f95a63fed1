//! Everything a verifier or an operator reads: JWKS, RFC 8414 metadata, health, and the two
//! ways of checking a token (`/verify_token`, RFC 7662 introspection).

use std::net::IpAddr;

use http::{HeaderValue, Request, StatusCode, header};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    form::Authorization,
    response::{self, OAuthError, Resp},
    token,
};
use crate::{State, keys::Keyring};

pub fn jwks(state: &State) -> Resp {
    let mut resp = response::json(StatusCode::OK, state.keys.load().jwks());
    // From the settings in force: a reload may change `jwks_max_age`, and the key
    // manager's rotation rule counts with what verifiers were told.
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        jwks_cache_control(state.keys.settings().jwks_max_age),
    );
    resp
}

pub fn metadata(state: &State) -> Resp {
    response::json(StatusCode::OK, state.metadata.clone())
}

/// RFC 8414 §2, built once at start-up.
pub fn build_metadata(issuer: &str) -> Vec<u8> {
    let base = issuer.trim_end_matches('/');
    let methods = ["client_secret_basic", "client_secret_post"];
    serde_json::to_vec(&json!({
        "issuer": issuer,
        "token_endpoint": format!("{base}/oauth/token"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": methods,
        "introspection_endpoint": format!("{base}/oauth/introspect"),
        "introspection_endpoint_auth_methods_supported": methods,
    }))
    .expect("metadata serialises")
}

pub fn jwks_cache_control(max_age: std::time::Duration) -> HeaderValue {
    HeaderValue::try_from(format!("public, max-age={}", max_age.as_secs())).expect("ASCII header")
}

pub fn healthz() -> Resp {
    response::json(StatusCode::OK, &b"{\"status\":\"ok\"}"[..])
}

pub fn readyz(state: &State) -> Resp {
    // Keys and clients are loaded before the listeners open, so a daemon that answers is
    // ready, unless no key may sign (revoked elsewhere, its successor unreadable here): a
    // balancer should then send token requests to another instance.
    let keys = state.keys.load();
    let (status, code) = match keys.active() {
        Some(_) => ("ready", StatusCode::OK),
        None => ("no signing key", StatusCode::SERVICE_UNAVAILABLE),
    };
    let body = json!({
        "status": status,
        "clients": state.clients.load().len(),
        "active_kid": keys.active().map(crate::keys::SigningKey::kid),
    });
    response::json(code, body.to_string())
}

/// Verifies a token we issued: known `kid`, the algorithm pinned to that key's (never the
/// header's choice), signature, `typ`, `iss`, times, and `aud` when one is given.
pub fn verify(keys: &Keyring, issuer: &str, token: &str, audience: Option<&str>) -> Option<Value> {
    let header = jsonwebtoken::decode_header(token).ok()?;
    let typ_ok = header.typ.as_deref().is_some_and(|t| {
        t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
    });
    if !typ_ok {
        return None;
    }
    let key = keys.get(header.kid.as_deref()?)?;
    let mut validation = jsonwebtoken::Validation::new(key.alg().jwt());
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["exp", "iat", "nbf", "iss", "aud", "sub"]);
    // The tokens are ours: no skew to allow for at their end (the library's default grants
    // 60 s), and a token is expired from its `exp` second on (RFC 7519 §4.1.4: the time must
    // be before it). Their `nbf` is their `iat`, so it tells nothing the signature does not;
    // checked with no leeway it would refuse a token just issued by a daemon sharing the
    // key directory whose clock runs a second ahead.
    validation.validate_nbf = false;
    validation.leeway = 0;
    validation.reject_tokens_expiring_in_less_than = 1;
    match audience {
        Some(aud) => validation.set_audience(&[aud]),
        None => validation.validate_aud = false,
    }
    jsonwebtoken::decode::<Value>(token, key.decoding_key(), &validation)
        .ok()
        .map(|data| data.claims)
}

#[derive(Deserialize)]
struct VerifyRequest {
    access_token: String,
    audience: Option<String>,
}

/// The seed's `POST /verify_token`: JSON in, the claims out, or 400 `invalid_token`.
/// Shaped like the token endpoint's handler: checks, then only the body across the wait.
pub fn verify_token<'s>(
    state: &'s State,
    req: Request<Incoming>,
) -> impl Future<Output = Resp> + Send + 's {
    let post = req.method() == http::Method::POST;
    let version = req.version();
    let body = req.into_body();
    async move {
        if !post {
            let refused = OAuthError::method_not_allowed("POST").into_response();
            return if response::discard_arrived(version, body).await {
                response::closing(refused)
            } else {
                refused
            };
        }
        match response::read_body(body, state.config.read_timeout).await {
            Ok(body) => verify_request(state, &body),
            // Too large, too slow or broken: the rest of it is not read.
            Err(e) if version < http::Version::HTTP_2 => response::closing(e.into_response()),
            Err(e) => e.into_response(),
        }
    }
}

fn verify_request(state: &State, body: &[u8]) -> Resp {
    let Ok(request) = serde_json::from_slice::<VerifyRequest>(body) else {
        return OAuthError::invalid_token().into_response();
    };
    // As the seed did: a request naming no audience is checked against the service default.
    let audience = request
        .audience
        .as_deref()
        .unwrap_or(&state.default_audience);
    match verify(
        &state.keys.load(),
        &state.issuer,
        &request.access_token,
        Some(audience),
    ) {
        Some(claims) => response::json_no_store(StatusCode::OK, &claims),
        None => OAuthError::invalid_token().into_response(),
    }
}

/// RFC 7662. The caller authenticates as a client, like at the token endpoint, and the
/// request is checked and read the same way.
pub fn introspect<'s>(
    state: &'s State,
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
) -> impl Future<Output = Resp> + Send + 's {
    token::form_request(
        state,
        req,
        peer,
        move |authorization, body, source| introspection(state, authorization, body, source),
        |answered| answered.unwrap_or_else(OAuthError::into_response),
    )
}

fn introspection(
    state: &State,
    authorization: Option<Authorization>,
    body: &[u8],
    source: IpAddr,
) -> Result<Resp, OAuthError> {
    let params = token::parse_params(body)?;
    let credentials = token::credentials(authorization, &params)?;
    let registry = state.clients.load();
    token::authenticate(state, &registry, &credentials, source, token::unix_now())?;
    let Some(token) = params.get("token") else {
        return Err(OAuthError::invalid_request("token is missing"));
    };
    let body = match verify(&state.keys.load(), &state.issuer, token, None) {
        Some(Value::Object(mut claims)) => {
            claims.insert("active".into(), true.into());
            claims.insert("token_type".into(), "Bearer".into());
            Value::Object(claims)
        }
        _ => json!({ "active": false }),
    };
    Ok(response::json_no_store(StatusCode::OK, &body))
}
