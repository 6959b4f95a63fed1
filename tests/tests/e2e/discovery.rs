//! The JWKS, RFC 8414 metadata, health endpoints, `/verify_token` and RFC 7662 introspection.

use std::io::Write as _;

use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::Sha256;
use tokendealer_tests::{Auth, Daemon, ISSUER, Reply, TestClient, conn::RawConn, http, jwt};

use crate::{API, OTHER_API, now, service_client};

const PRIVATE_MEMBERS: [&str; 6] = ["d", "p", "q", "dp", "dq", "qi"];

#[test]
fn jwks_publishes_the_signing_key_under_its_thumbprint() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let reply = daemon.get("/.well-known/jwks.json");
    reply.assert_status(200);
    let jwks = reply.json();
    let keys = jwks["keys"].as_array().expect("a `keys` array");
    assert!(!keys.is_empty(), "{reply}");
    for key in keys {
        for member in ["kty", "kid", "alg"] {
            assert!(key[member].is_string(), "JWK without `{member}`: {key}");
        }
        assert_eq!(key["use"], "sig", "{key}");
        assert_eq!(
            key["kid"].as_str(),
            Some(jwt::thumbprint(key).as_str()),
            "the kid is the RFC 7638 thumbprint: {key}"
        );
        for member in PRIVATE_MEMBERS {
            assert!(
                key.get(member).is_none(),
                "the JWKS leaks the private `{member}`: {key}"
            );
        }
    }
    let token = daemon.access_token(&client, &[]);
    let header = jwt::decode(&token).header;
    let kid = header["kid"].as_str().expect("a kid");
    assert_eq!(jwt::find_key(&jwks, kid)["alg"], header["alg"], "{jwks}");
}

#[test]
fn jwks_cache_lifetime_defaults_to_15_minutes() {
    let daemon = Daemon::with_client(&service_client());
    assert_max_age(&daemon.get("/.well-known/jwks.json"), 900);
}

#[test]
fn jwks_cache_lifetime_follows_jwks_max_age() {
    let daemon = Daemon::builder()
        .config(r#"jwks_max_age = "5m""#)
        .client(&service_client())
        .start();
    assert_max_age(&daemon.get("/.well-known/jwks.json"), 300);
}

#[track_caller]
fn assert_max_age(reply: &Reply, seconds: u64) {
    reply.assert_status(200);
    let cache_control = reply.header("cache-control").unwrap_or_default();
    assert!(
        cache_control
            .split(',')
            .any(|d| d.trim() == format!("max-age={seconds}")),
        "`Cache-Control` should hold max-age={seconds}:\n{reply}"
    );
}

#[test]
fn metadata_describes_the_server() {
    let daemon = Daemon::with_client(&service_client());
    let reply = daemon.get("/.well-known/oauth-authorization-server");
    reply.assert_status(200);
    let meta = reply.json();
    assert_eq!(meta["issuer"], ISSUER, "{reply}");
    for (member, path) in [
        ("token_endpoint", "/oauth/token"),
        ("jwks_uri", "/.well-known/jwks.json"),
        ("introspection_endpoint", "/oauth/introspect"),
    ] {
        let url = meta[member].as_str().unwrap_or_default();
        assert!(
            url.starts_with("http") && url.ends_with(path),
            "`{member}` should be an absolute URL ending in {path}:\n{reply}"
        );
    }
    assert!(
        meta["grant_types_supported"]
            .as_array()
            .is_some_and(|g| g.contains(&json!("client_credentials"))),
        "{reply}"
    );
    assert_eq!(
        meta["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post"]),
        "{reply}"
    );
}

/// RFC 8414 §3.1: an issuer with a path has its metadata at the well-known path followed
/// by that path (and, for clients that append, at the plain one too). The endpoints it
/// names, under the issuer's path, are served there, as they are at the root (for a proxy
/// that strips the path).
#[test]
fn metadata_of_an_issuer_with_a_path_is_where_rfc_8414_puts_it() {
    let issuer = "https://tokens.example/tenant-a";
    let client = service_client();
    let daemon = Daemon::builder()
        .without_issuer()
        .config(&format!("issuer = \"{issuer}\""))
        .client(&client)
        .start();
    let meta = daemon
        .get("/.well-known/oauth-authorization-server/tenant-a")
        .json();
    let path_of = |name: &str| {
        let url = meta[name]
            .as_str()
            .unwrap_or_else(|| panic!("no `{name}` in {meta}"));
        url.strip_prefix("https://tokens.example")
            .unwrap_or_else(|| panic!("`{name}` is not under the issuer: {url}"))
            .to_owned()
    };
    let (token_path, jwks_path) = (path_of("token_endpoint"), path_of("jwks_uri"));
    assert!(token_path.starts_with("/tenant-a/"), "{token_path}");
    for path in [token_path.as_str(), "/oauth/token"] {
        let reply = daemon.post_form(
            path,
            Auth::Basic(&client.id, &client.secret),
            &[("grant_type", "client_credentials"), ("audience", API)],
        );
        reply.assert_status(200);
    }
    for path in [jwks_path.as_str(), "/.well-known/jwks.json"] {
        let reply = daemon.get(path);
        reply.assert_status(200);
        assert_eq!(reply.json(), daemon.jwks(), "{path}");
    }
    daemon
        .get("/tenant-b/.well-known/jwks.json")
        .assert_status(404);
    daemon
        .get("/tenant-a-b/.well-known/jwks.json")
        .assert_status(404);
    for path in [
        "/.well-known/oauth-authorization-server/tenant-a",
        "/.well-known/oauth-authorization-server",
    ] {
        let reply = daemon.get(path);
        reply.assert_status(200);
        assert_eq!(reply.json()["issuer"], issuer, "{path}: {reply}");
    }
    daemon
        .get("/.well-known/oauth-authorization-server/tenant-b")
        .assert_status(404);

    // An issuer path that begins an endpoint's path takes nothing from it.
    let daemon = Daemon::builder()
        .without_issuer()
        .config(r#"issuer = "https://tokens.example/oauth""#)
        .client(&client)
        .start();
    for path in ["/oauth/token", "/oauth/oauth/token"] {
        let reply = daemon.post_form(
            path,
            Auth::Basic(&client.id, &client.secret),
            &[("grant_type", "client_credentials"), ("audience", API)],
        );
        reply.assert_status(200);
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host` is answered 400, and so is any request
/// with two, or one that is not a host and port; a token request among them too, with its
/// credentials right.
#[test]
fn an_http_1_1_request_without_host_is_400() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    // The whole answer, HTTP/1.0 ones included, read to the close.
    let ask = |request: String| {
        let mut stream = http::connect(daemon.addr());
        stream
            .write_all(request.as_bytes())
            .expect("writing a request");
        http::read_to_close(&mut stream)
    };
    let get = |hosts: &str, version: &str| {
        ask(format!(
            "GET /healthz HTTP/{version}\r\n{hosts}Connection: close\r\n\r\n"
        ))
    };
    let refused = |answer: &str| {
        http::raw_status(answer) == 400 && answer.contains(r#""error":"invalid_request""#)
    };
    for (hosts, version) in [
        ("", "1.1"),
        ("Host: a\r\nHost: b\r\n", "1.1"),
        ("Host: a\r\nHost: b\r\n", "1.0"),
        ("Host: a b/c@\r\n", "1.1"),
        ("Host: user@a\r\n", "1.1"),
    ] {
        let answer = get(hosts, version);
        assert!(refused(&answer), "HTTP/{version} with {hosts:?}:\n{answer}");
    }
    for (hosts, version) in [
        ("Host: x\r\n", "1.1"),
        ("Host: [::1]:8080\r\n", "1.1"),
        ("Host: \r\n", "1.1"),
        ("", "1.0"),
    ] {
        let answer = get(hosts, version);
        assert_eq!(
            http::raw_status(&answer),
            200,
            "HTTP/{version} with {hosts:?}:\n{answer}"
        );
    }
    let body = http::form_body(&[("grant_type", "client_credentials")]);
    let reply = ask(format!(
        "POST /oauth/token HTTP/1.1\r\nHost: evil.example\r\nHost: {}\r\n\
         Authorization: {}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        daemon.addr(),
        http::basic_header(&client.id, &client.secret),
        body.len()
    ));
    assert!(refused(&reply), "two Hosts on a token request:\n{reply}");
}

/// RFC 9110 §9.1: a method the server does not know is 501; one it knows that the endpoint
/// does not take is 405 with `Allow`.
#[test]
fn an_unknown_method_is_501() {
    let daemon = Daemon::with_client(&service_client());
    let reply = RawConn::open(daemon.addr())
        .request(b"FROB /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    reply.assert_status(501);
    assert_eq!(reply.json()["error"], "invalid_request", "{reply}");
    let reply = RawConn::open(daemon.addr()).request(
        b"PUT /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    reply.assert_status(405);
}

/// The methods an `Allow` header names, sorted.
fn allowed(reply: &Reply) -> Vec<String> {
    let mut methods: Vec<String> = reply
        .header("allow")
        .unwrap_or_default()
        .split(',')
        .map(|m| m.trim().to_owned())
        .filter(|m| !m.is_empty())
        .collect();
    methods.sort();
    methods
}

/// The SPEC's "wrong method → 405 with `Allow`", at every endpoint besides the token
/// endpoint's own: the read-only documents name `GET` and `HEAD` (each answers `HEAD` where
/// it answers `GET`), the two that check tokens name `POST`.
#[test]
fn a_wrong_method_is_405_with_the_methods_allowed() {
    let daemon = Daemon::with_client(&service_client());
    let reads = ["GET", "HEAD"];
    for path in [
        "/.well-known/jwks.json",
        "/.well-known/oauth-authorization-server",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        let reply = daemon.post_raw(path, None, Auth::None, b"");
        reply.assert_status(405);
        assert_eq!(allowed(&reply), reads, "`Allow` for POST {path}:\n{reply}");
    }
    for path in ["/verify_token", "/oauth/introspect"] {
        let reply = daemon.get(path);
        reply.assert_status(405);
        assert_eq!(
            allowed(&reply),
            ["POST"],
            "`Allow` for GET {path}:\n{reply}"
        );
    }
}

#[test]
fn health_and_readiness_are_200() {
    let daemon = Daemon::with_client(&service_client());
    daemon.get("/healthz").assert_status(200);
    daemon.get("/readyz").assert_status(200);
}

#[test]
fn metrics_are_prometheus_text() {
    let daemon = Daemon::with_client(&service_client());
    let reply = daemon.get("/metrics");
    reply.assert_status(200);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{reply}"
    );
}

/// A daemon, its client, and a token for `API` only.
fn daemon_and_token() -> (Daemon, TestClient, String) {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let token = daemon.access_token(&client, &[("audience", API), ("scope", "runs:read")]);
    (daemon, client, token)
}

fn verify(daemon: &Daemon, token: &str, audience: &str) -> Reply {
    daemon.post_json(
        "/verify_token",
        &json!({"access_token": token, "audience": audience}),
    )
}

#[track_caller]
fn assert_invalid_token(reply: &Reply) {
    reply.assert_status(400);
    assert_eq!(reply.json()["error"], "invalid_token", "{reply}");
}

#[test]
fn verify_token_returns_the_claims() {
    let (daemon, client, token) = daemon_and_token();
    let reply = verify(&daemon, &token, API);
    reply.assert_status(200);
    let claims = reply.json();
    assert_eq!(claims["sub"], client.id.as_str(), "{reply}");
    assert_eq!(claims["iss"], ISSUER, "{reply}");
    assert_eq!(claims, jwt::decode(&token).claims, "{reply}");
}

#[test]
fn verify_token_refuses_another_audience() {
    let (daemon, _, token) = daemon_and_token();
    assert_invalid_token(&verify(&daemon, &token, OTHER_API));
}

#[test]
fn verify_token_refuses_tampered_claims() {
    let (daemon, _, token) = daemon_and_token();
    let jws = jwt::decode(&token);
    let mut claims = jws.claims.clone();
    claims["sub"] = json!("someone-else");
    claims["client_id"] = json!("someone-else");
    let header = jws.signing_input.split('.').next().expect("a header part");
    let forged = format!(
        "{header}.{}.{}",
        jwt::b64url(claims.to_string()),
        jwt::b64url(&jws.signature)
    );
    assert_invalid_token(&verify(&daemon, &forged, API));
}

#[test]
fn verify_token_refuses_a_tampered_signature() {
    let (daemon, _, token) = daemon_and_token();
    let jws = jwt::decode(&token);
    let mut signature = jws.signature.clone();
    let last = signature.last_mut().expect("a non-empty signature");
    *last ^= 0x01;
    let forged = format!("{}.{}", jws.signing_input, jwt::b64url(&signature));
    assert_invalid_token(&verify(&daemon, &forged, API));
}

#[test]
fn verify_token_refuses_garbage() {
    let (daemon, _, _) = daemon_and_token();
    for garbage in ["", "garbage", "a.b.c", "..", "eyJhbGciOiJSUzUxMiJ9.e30."] {
        assert_invalid_token(&verify(&daemon, garbage, API));
    }
}

/// The README's `/verify_token` answer for anything but a valid token: 400 and exactly
/// `{"error":"invalid_token"}`.
#[track_caller]
fn assert_exactly_invalid_token(reply: &Reply) {
    reply.assert_status(400);
    assert_eq!(reply.json(), json!({"error": "invalid_token"}), "{reply}");
}

/// A request that names no audience is not one that skips the audience check: a token for
/// `API` alone is refused without `audience`, with `audience: null` as without it.
#[test]
fn verify_token_without_an_audience_does_not_accept_any_audience() {
    let (daemon, _, token) = daemon_and_token();
    for request in [
        json!({"access_token": token}),
        json!({"access_token": token, "audience": null}),
    ] {
        assert_exactly_invalid_token(&daemon.post_json("/verify_token", &request));
    }
    // The same token with its audience named is good, so the refusals were the audience's.
    verify(&daemon, &token, API).assert_status(200);
}

/// `/verify_token` takes JSON: a body that is not (a form, text, cut-off JSON, no body at
/// all) or JSON of another shape is answered as an invalid token, not with another error.
#[test]
fn verify_token_refuses_a_body_that_is_not_its_json() {
    let (daemon, _, token) = daemon_and_token();
    let form = format!("access_token={token}&audience={}", http::form_encode(API));
    let cut_off = format!("{{\"access_token\": \"{token}\", \"audience\": ");
    let cases: [(Option<&str>, &[u8]); 7] = [
        (Some("application/x-www-form-urlencoded"), form.as_bytes()),
        (Some("application/json"), b"not json"),
        (Some("application/json"), cut_off.as_bytes()),
        (Some("application/json"), b""),
        (Some("application/json"), b"[]"),
        (Some("application/json"), b"\"a string\""),
        (None, b"\xff\xfe"),
    ];
    for (content_type, body) in cases {
        assert_exactly_invalid_token(&daemon.post_raw(
            "/verify_token",
            content_type,
            Auth::None,
            body,
        ));
    }
}

/// RFC 8725 §3.1: a token that names `alg: none` is never accepted.
#[test]
fn verify_token_refuses_alg_none() {
    let (daemon, _, token) = daemon_and_token();
    let jws = jwt::decode(&token);
    let header = json!({"alg": "none", "typ": "at+jwt", "kid": jws.header["kid"]});
    let claims_part = jws.signing_input.split('.').nth(1).expect("a claims part");
    let unsigned = format!("{}.{claims_part}.", jwt::b64url(header.to_string()));
    assert_invalid_token(&verify(&daemon, &unsigned, API));
}

/// RFC 8725 §2.1: the RS→HS confusion, an HS256 token whose HMAC key is the public key.
#[test]
fn verify_token_refuses_hs256_signed_with_the_public_key() {
    let (daemon, _, token) = daemon_and_token();
    let jws = jwt::decode(&token);
    let kid = jws.header["kid"].as_str().expect("a kid").to_owned();
    let jwks = daemon.jwks();
    let jwk = jwt::find_key(&jwks, &kid);
    let pem = jwt::rsa_public_pem(jwk);
    let secrets: [Vec<u8>; 4] = [
        pem.clone().into_bytes(),
        pem.trim_end().as_bytes().to_vec(),
        jwk.to_string().into_bytes(),
        jwt::b64url_decode(jwk["n"].as_str().expect("n")).expect("base64url n"),
    ];
    let header = json!({"alg": "HS256", "typ": "at+jwt", "kid": kid});
    let claims_part = jws.signing_input.split('.').nth(1).expect("a claims part");
    let signing_input = format!("{}.{claims_part}", jwt::b64url(header.to_string()));
    for secret in secrets {
        let mut mac = Hmac::<Sha256>::new_from_slice(&secret).expect("HMAC takes any key");
        mac.update(signing_input.as_bytes());
        let forged = format!(
            "{signing_input}.{}",
            jwt::b64url(mac.finalize().into_bytes())
        );
        assert_invalid_token(&verify(&daemon, &forged, API));
    }
}

/// A well-formed token with the same issuer, but signed by another daemon's key.
#[test]
fn verify_token_refuses_a_token_signed_by_another_key() {
    let (daemon, client, _) = daemon_and_token();
    let stranger = Daemon::with_client(&client);
    let foreign = stranger.access_token(&client, &[("audience", API)]);
    assert_invalid_token(&verify(&daemon, &foreign, API));
}

fn introspect(daemon: &Daemon, auth: Auth<'_>, token: &str) -> Reply {
    daemon.post_form("/oauth/introspect", auth, &[("token", token)])
}

#[test]
fn introspection_reports_an_active_token() {
    let (daemon, client, token) = daemon_and_token();
    let claims = jwt::decode(&token).claims;
    for auth in [
        Auth::Basic(&client.id, &client.secret),
        Auth::Post(&client.id, &client.secret),
    ] {
        let reply = introspect(&daemon, auth, &token);
        reply.assert_status(200);
        let body = reply.json();
        assert_eq!(body["active"], true, "{reply}");
        assert_eq!(body["client_id"], client.id.as_str(), "{reply}");
        assert_eq!(body["scope"], "runs:read", "{reply}");
        assert_eq!(body["exp"], claims["exp"], "{reply}");
    }
}

/// RFC 7662 §2.2: an inactive token is `{"active": false}` and nothing more.
#[test]
fn introspection_reports_bad_tokens_inactive() {
    let (daemon, client, token) = daemon_and_token();
    let jws = jwt::decode(&token);
    let mut signature = jws.signature.clone();
    signature[0] ^= 0x01;
    let tampered = format!("{}.{}", jws.signing_input, jwt::b64url(&signature));
    for bad in ["garbage", tampered.as_str()] {
        let reply = introspect(&daemon, Auth::Basic(&client.id, &client.secret), bad);
        reply.assert_status(200);
        assert_eq!(reply.json(), json!({"active": false}), "{reply}");
    }
}

/// The daemon judges its own tokens by its own clock: no leeway (a library default allows a
/// minute), and from its `exp` second on a token is expired (RFC 7519 §4.1.4), for
/// introspection (RFC 7662 §2.2) and `/verify_token` alike.
#[test]
fn a_token_is_inactive_from_its_exp_second_on() {
    let client = service_client().token_ttl("1s");
    let daemon = Daemon::with_client(&client);
    let token = daemon.access_token(&client, &[("audience", API)]);
    let exp = jwt::decode(&token).claims["exp"]
        .as_i64()
        .expect("an `exp`");
    // By a clock the daemon shares: asked at or after `exp`, the answer must be no; answered
    // before it, yes.
    let judged = |ask: &dyn Fn() -> bool| {
        let asked = now();
        let active = ask();
        let answered = now();
        if answered < exp {
            assert!(active, "answered at {answered}, exp {exp}: inactive");
        }
        if asked >= exp {
            assert!(!active, "asked at {asked}, exp {exp}: active");
        }
        asked >= exp
    };
    let introspected = || {
        let reply = introspect(&daemon, Auth::Basic(&client.id, &client.secret), &token);
        let body = reply.json();
        assert!(
            body == json!({"active": false}) || body["active"] == true,
            "{reply}"
        );
        body["active"] == true
    };
    let verified = || {
        let reply = verify(&daemon, &token, API);
        if reply.status != 200 {
            assert_invalid_token(&reply);
        }
        reply.status == 200
    };
    // Each asked until it has been asked after `exp`.
    while !judged(&introspected) {}
    while !judged(&verified) {}
}

#[test]
fn introspection_needs_an_authenticated_client() {
    let (daemon, client, token) = daemon_and_token();
    for auth in [Auth::None, Auth::Basic(&client.id, "not-the-secret")] {
        let reply = introspect(&daemon, auth, &token);
        reply.assert_status(401);
        assert_eq!(reply.json()["error"], "invalid_client", "{reply}");
        assert!(
            reply.json().get("active").is_none(),
            "an unauthenticated caller learns nothing about the token:\n{reply}"
        );
    }
}
