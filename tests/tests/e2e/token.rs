//! `POST /oauth/token`: RFC 6749 §4.4 client credentials, the SPEC's error table, and the
//! decided edge cases (limits, methods, content types, query strings, duplicates).

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokendealer_tests::{
    Auth, Daemon, ISSUER, Reply, TestClient,
    conn::{self, RawConn},
    http::{self, Request},
    jwt,
};

use crate::{API, OTHER_API, now, scope_set, service_client};

const TOKEN: &str = "/oauth/token";
const FORM: &str = "application/x-www-form-urlencoded";
const BASIC_CHALLENGE: &str = r#"Basic realm="tokendealer""#;
const GRANT: (&str, &str) = ("grant_type", "client_credentials");

/// The claims of the token in a 200 reply.
#[track_caller]
fn claims_of(reply: &Reply) -> Value {
    reply.assert_status(200);
    let token = reply.json()["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no `access_token`:\n{reply}"))
        .to_owned();
    jwt::decode(&token).claims
}

/// An `aud` claim as a sorted list, whether the token carries a string or an array.
#[track_caller]
fn audiences(aud: &Value) -> Vec<String> {
    let mut list: Vec<String> = match aud {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|a| a.as_str().expect("`aud` array of strings").to_owned())
            .collect(),
        other => panic!("`aud` is neither a string nor an array: {other}"),
    };
    list.sort();
    list
}

#[test]
fn basic_auth_issues_an_rfc9068_access_token() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let before = now();
    let reply = daemon.token_request(Auth::Basic(&client.id, &client.secret), &[]);
    reply.assert_status(200).assert_no_store();
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{reply}"
    );
    let body = reply.json();
    assert_eq!(body["token_type"], "Bearer", "{reply}");
    assert_eq!(
        body["expires_in"], 86_400,
        "the default token_ttl is 24h:\n{reply}"
    );
    assert!(
        body.get("refresh_token").is_none(),
        "RFC 6749 §4.4.3: no refresh token:\n{reply}"
    );
    let scope = body["scope"].as_str().unwrap_or_default();
    assert_eq!(
        scope_set(scope),
        ["admin", "runs:read", "runs:write"],
        "{reply}"
    );

    let jws = jwt::decode(body["access_token"].as_str().expect("access_token"));
    assert_eq!(
        jws.header["alg"], "RS512",
        "the default algorithm: {}",
        jws.header
    );
    assert_eq!(jws.header["typ"], "at+jwt", "{}", jws.header);
    assert!(
        jws.header["kid"].as_str().is_some_and(|k| !k.is_empty()),
        "{}",
        jws.header
    );
    let claims = &jws.claims;
    assert_eq!(claims["iss"], ISSUER, "{claims}");
    assert_eq!(claims["sub"], client.id.as_str(), "{claims}");
    assert_eq!(claims["client_id"], client.id.as_str(), "{claims}");
    assert_eq!(audiences(&claims["aud"]), [API, OTHER_API], "{claims}");
    let iat = claims["iat"].as_i64().expect("numeric iat");
    assert!(
        (before - 5..=now() + 5).contains(&iat),
        "iat {iat} is not now: {claims}"
    );
    let nbf = claims["nbf"].as_i64().expect("numeric nbf");
    assert!(nbf <= iat, "nbf after iat: {claims}");
    assert_eq!(claims["exp"].as_i64(), Some(iat + 86_400), "{claims}");
    assert!(
        claims["jti"].as_str().is_some_and(|j| !j.is_empty()),
        "{claims}"
    );
    assert_eq!(claims["scope"].as_str(), Some(scope), "{claims}");
}

#[test]
fn client_secret_post_issues_a_token() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let reply = daemon.token_request(Auth::Post(&client.id, &client.secret), &[]);
    reply.assert_status(200).assert_no_store();
    assert_eq!(claims_of(&reply)["client_id"], client.id.as_str());
}

/// RFC 6749 §2.3.1: id and secret are form-urlencoded before they are joined by `:` and
/// base64-encoded, so a secret may hold `:`, `%`, `+`, spaces and non-ASCII.
#[test]
fn basic_credentials_are_form_urlencoded() {
    let client = service_client().secret("p:a%2Bs+s w&o=rd/é:");
    let daemon = Daemon::with_client(&client);
    let reply = daemon.token_request(Auth::Basic(&client.id, &client.secret), &[]);
    assert_eq!(claims_of(&reply)["sub"], client.id.as_str());
}

#[test]
fn post_credentials_with_special_characters() {
    let client = service_client().secret("p:a%2Bs+s w&o=rd/é:");
    let daemon = Daemon::with_client(&client);
    let reply = daemon.token_request(Auth::Post(&client.id, &client.secret), &[]);
    assert_eq!(claims_of(&reply)["sub"], client.id.as_str());
}

#[test]
fn no_credentials_is_invalid_client_with_a_basic_challenge() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    daemon
        .token_request(Auth::None, &[])
        .assert_oauth_error(401, "invalid_client")
        .assert_header("www-authenticate", BASIC_CHALLENGE);
}

/// The three ways to fail authentication must be indistinguishable, so the endpoint does not
/// tell which client ids exist or which are disabled.
#[test]
fn basic_failures_are_identical_and_carry_the_challenge() {
    let client = service_client();
    let disabled = TestClient::new("disabled-client").disabled();
    let daemon = Daemon::builder().client(&client).client(&disabled).start();
    let replies = [
        daemon.token_request(Auth::Basic("no-such-client", &client.secret), &[]),
        daemon.token_request(Auth::Basic(&client.id, "not-the-secret"), &[]),
        daemon.token_request(Auth::Basic(&disabled.id, &disabled.secret), &[]),
    ];
    for reply in &replies {
        reply
            .assert_oauth_error(401, "invalid_client")
            .assert_header("www-authenticate", BASIC_CHALLENGE);
        assert_eq!(
            reply.body, replies[0].body,
            "failure bodies differ:\n{reply}\n---\n{}",
            replies[0]
        );
    }
}

#[test]
fn post_failures_are_identical_without_a_challenge() {
    let client = service_client();
    let disabled = TestClient::new("disabled-client").disabled();
    let daemon = Daemon::builder().client(&client).client(&disabled).start();
    let replies = [
        daemon.token_request(Auth::Post("no-such-client", &client.secret), &[]),
        daemon.token_request(Auth::Post(&client.id, "not-the-secret"), &[]),
        daemon.token_request(Auth::Post(&disabled.id, &disabled.secret), &[]),
    ];
    for reply in &replies {
        reply.assert_oauth_error(401, "invalid_client");
        assert_eq!(
            reply.header("www-authenticate"),
            None,
            "client_secret_post failures carry no Basic challenge:\n{reply}"
        );
        assert_eq!(
            reply.body, replies[0].body,
            "failure bodies differ:\n{reply}\n---\n{}",
            replies[0]
        );
    }
}

/// An empty secret is no secret: a client whose entry holds the hash of "" (a seed imported
/// with an empty secret, a hash made by hand) gets no token with it, by either method.
#[test]
fn an_empty_secret_never_authenticates() {
    let client = service_client().secret("");
    let daemon = Daemon::with_client(&client);
    daemon
        .token_request(Auth::Basic(&client.id, ""), &[])
        .assert_oauth_error(401, "invalid_client")
        .assert_header("www-authenticate", BASIC_CHALLENGE);
    daemon
        .token_request(Auth::Post(&client.id, ""), &[])
        .assert_oauth_error(401, "invalid_client");
}

#[test]
fn missing_grant_type_is_invalid_request() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let auth = Auth::Basic(&client.id, &client.secret);
    daemon
        .post_form(TOKEN, auth, &[("scope", "runs:read")])
        .assert_oauth_error(400, "invalid_request");
    // An empty value counts as absent.
    daemon
        .post_form(TOKEN, auth, &[("grant_type", "")])
        .assert_oauth_error(400, "invalid_request");
}

#[test]
fn other_grant_types_are_unsupported() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    for grant in ["password", "authorization_code", "refresh_token"] {
        daemon
            .post_form(
                TOKEN,
                Auth::Basic(&client.id, &client.secret),
                &[("grant_type", grant)],
            )
            .assert_oauth_error(400, "unsupported_grant_type");
    }
}

#[test]
fn basic_and_post_together_is_invalid_request() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let basic = Auth::Basic(&client.id, &client.secret);
    daemon
        .token_request(basic, &[("client_secret", &client.secret)])
        .assert_oauth_error(400, "invalid_request");
    daemon
        .token_request(
            basic,
            &[("client_id", &client.id), ("client_secret", &client.secret)],
        )
        .assert_oauth_error(400, "invalid_request");
}

#[test]
fn malformed_basic_header_is_invalid_request() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let no_colon = format!("Basic {}", base64_std(&client.id));
    for header in ["Basic %%%not-base64%%%", "Basic", no_colon.as_str()] {
        daemon
            .token_request(Auth::Header(header), &[])
            .assert_oauth_error(400, "invalid_request");
    }
}

/// The SPEC's "malformed body" row: a percent escape that is not one, bytes that are not
/// UTF-8, and a parameter without a name are each refused as a whole, from a client whose
/// credentials are right, alone or after a valid `grant_type`.
#[test]
fn malformed_bodies_are_invalid_request() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let basic = Auth::Basic(&client.id, &client.secret);
    let bodies: [&[u8]; 6] = [
        b"%zz",
        b"\xff",
        b"&&&=",
        b"grant_type=client_credentials&scope=%zz",
        b"grant_type=client_credentials&scope=runs:read\xff",
        b"grant_type=client_credentials&&&=",
    ];
    for body in bodies {
        daemon
            .post_raw(TOKEN, Some(FORM), basic, body)
            .assert_oauth_error(400, "invalid_request");
    }
    // Refusing them cost the client nothing.
    daemon.access_token(&client, &[]);
}

fn base64_std(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[test]
fn duplicated_parameters_are_invalid_request() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let basic = Auth::Basic(&client.id, &client.secret);
    let cases: [&[(&str, &str)]; 4] = [
        &[GRANT, GRANT],
        &[GRANT, ("scope", "runs:read"), ("scope", "runs:write")],
        &[GRANT, ("audience", API), ("audience", OTHER_API)],
        &[GRANT, ("grant_type", "password")],
    ];
    for pairs in cases {
        daemon
            .post_form(TOKEN, basic, pairs)
            .assert_oauth_error(400, "invalid_request");
    }
    let post = [
        GRANT,
        ("client_id", client.id.as_str()),
        ("client_id", client.id.as_str()),
        ("client_secret", client.secret.as_str()),
    ];
    daemon
        .post_form(TOKEN, Auth::None, &post)
        .assert_oauth_error(400, "invalid_request");
}

#[test]
fn audience_selects_one_audience_as_a_string() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let basic = Auth::Basic(&client.id, &client.secret);
    let claims = claims_of(&daemon.token_request(basic, &[("audience", API)]));
    assert_eq!(claims["aud"], API, "one audience is a string: {claims}");
}

#[test]
fn resource_selects_an_audience() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let basic = Auth::Basic(&client.id, &client.secret);
    let claims = claims_of(&daemon.token_request(basic, &[("resource", OTHER_API)]));
    assert_eq!(claims["aud"], OTHER_API, "{claims}");
}

/// RFC 8707 §2: `resource` may be given several times; several audiences are an array.
#[test]
fn resource_may_repeat() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let basic = Auth::Basic(&client.id, &client.secret);
    let claims =
        claims_of(&daemon.token_request(basic, &[("resource", API), ("resource", OTHER_API)]));
    assert!(
        claims["aud"].is_array(),
        "several audiences are an array: {claims}"
    );
    assert_eq!(audiences(&claims["aud"]), [API, OTHER_API], "{claims}");
}

#[test]
fn audience_and_resource_are_united() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let basic = Auth::Basic(&client.id, &client.secret);
    let claims =
        claims_of(&daemon.token_request(basic, &[("audience", API), ("resource", OTHER_API)]));
    assert_eq!(audiences(&claims["aud"]), [API, OTHER_API], "{claims}");
}

#[test]
fn no_audience_requested_gives_the_allow_list() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let basic = Auth::Basic(&client.id, &client.secret);
    let claims = claims_of(&daemon.token_request(basic, &[]));
    assert!(claims["aud"].is_array(), "{claims}");
    assert_eq!(audiences(&claims["aud"]), [API, OTHER_API], "{claims}");
    // An empty value counts as absent.
    let claims = claims_of(&daemon.token_request(basic, &[("audience", ""), ("resource", "")]));
    assert_eq!(audiences(&claims["aud"]), [API, OTHER_API], "{claims}");
}

#[test]
fn a_single_allowed_audience_is_a_string() {
    let client = TestClient::new("one-audience").audiences(&[API]);
    let daemon = Daemon::with_client(&client);
    let claims = claims_of(&daemon.token_request(Auth::Basic(&client.id, &client.secret), &[]));
    assert_eq!(claims["aud"], API, "{claims}");
}

/// RFC 9068 §3 and the SPEC: with nothing requested and no concrete allow-list entry, `aud`
/// is `default_audience`, which defaults to the issuer.
#[test]
fn wildcard_client_gets_the_issuer_as_default_audience() {
    let client = TestClient::new("wildcard").audiences(&["*"]);
    let daemon = Daemon::with_client(&client);
    let claims = claims_of(&daemon.token_request(Auth::Basic(&client.id, &client.secret), &[]));
    assert_eq!(claims["aud"], ISSUER, "{claims}");
}

/// `"*"` is a permission, not an audience: with nothing requested it is left out of `aud`.
#[test]
fn wildcard_is_left_out_of_the_default_audience() {
    let client = TestClient::new("wildcard-and-one").audiences(&["*", API]);
    let daemon = Daemon::with_client(&client);
    let claims = claims_of(&daemon.token_request(Auth::Basic(&client.id, &client.secret), &[]));
    assert_eq!(claims["aud"], API, "{claims}");
}

#[test]
fn configured_default_audience_is_used() {
    let wildcard = TestClient::new("wildcard").audiences(&["*"]);
    let no_audiences = TestClient::new("no-audiences");
    let daemon = Daemon::builder()
        .config(r#"default_audience = "https://default.example""#)
        .client(&wildcard)
        .client(&no_audiences)
        .start();
    for client in [&wildcard, &no_audiences] {
        let claims = claims_of(&daemon.token_request(Auth::Basic(&client.id, &client.secret), &[]));
        assert_eq!(claims["aud"], "https://default.example", "{claims}");
    }
}

#[test]
fn wildcard_allows_any_absolute_resource() {
    let client = TestClient::new("wildcard").audiences(&["*"]);
    let daemon = Daemon::with_client(&client);
    let basic = Auth::Basic(&client.id, &client.secret);
    let claims =
        claims_of(&daemon.token_request(basic, &[("resource", "https://anything.example/api")]));
    assert_eq!(claims["aud"], "https://anything.example/api", "{claims}");
}

/// `"*"` in the allow-list allows any audience; asked for, it names none, and a token for
/// "*" would be taken by any service that looked for that string.
#[test]
fn wildcard_is_no_audience_to_ask_for() {
    let client = TestClient::new("wildcard").audiences(&["*"]);
    let daemon = Daemon::with_client(&client);
    let basic = Auth::Basic(&client.id, &client.secret);
    for param in ["audience", "resource"] {
        daemon
            .token_request(basic, &[(param, "*")])
            .assert_oauth_error(400, "invalid_target");
    }
}

#[test]
fn audience_outside_the_allow_list_is_invalid_target() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let basic = Auth::Basic(&client.id, &client.secret);
    for param in ["audience", "resource"] {
        daemon
            .token_request(basic, &[(param, "https://elsewhere.example")])
            .assert_oauth_error(400, "invalid_target");
    }
    // One allowed and one not is still refused as a whole.
    daemon
        .token_request(
            basic,
            &[("resource", API), ("resource", "https://elsewhere.example")],
        )
        .assert_oauth_error(400, "invalid_target");
}

/// RFC 8707 §2: a resource is an absolute URI without a fragment, even for a wildcard client.
#[test]
fn resource_must_be_an_absolute_uri_without_fragment() {
    let client = TestClient::new("wildcard").audiences(&["*"]);
    let daemon = Daemon::with_client(&client);
    let basic = Auth::Basic(&client.id, &client.secret);
    for resource in [
        "relative/path",
        "/absolute-path-only",
        "https://api.example/#fragment",
    ] {
        daemon
            .token_request(basic, &[("resource", resource)])
            .assert_oauth_error(400, "invalid_target");
    }
}

#[test]
fn requested_scope_subset_is_granted_exactly() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let basic = Auth::Basic(&client.id, &client.secret);
    let reply = daemon.token_request(basic, &[("scope", "runs:read admin")]);
    let claims = claims_of(&reply);
    let granted = reply.json()["scope"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(scope_set(&granted), ["admin", "runs:read"], "{reply}");
    assert_eq!(
        scope_set(claims["scope"].as_str().unwrap_or_default()),
        ["admin", "runs:read"],
        "{claims}"
    );
}

#[test]
fn absent_or_empty_scope_grants_the_whole_allow_list() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let basic = Auth::Basic(&client.id, &client.secret);
    for params in [&[][..], &[("scope", "")][..]] {
        let reply = daemon.token_request(basic, params);
        reply.assert_status(200);
        let scope = reply.json()["scope"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(
            scope_set(&scope),
            ["admin", "runs:read", "runs:write"],
            "{reply}"
        );
    }
}

#[test]
fn scope_outside_the_allow_list_is_invalid_scope() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let basic = Auth::Basic(&client.id, &client.secret);
    for scope in ["runs:delete", "runs:read runs:delete"] {
        daemon
            .token_request(basic, &[("scope", scope)])
            .assert_oauth_error(400, "invalid_scope");
    }
}

#[test]
fn client_without_scopes_gets_no_scope_member() {
    let client = TestClient::new("scopeless").audiences(&[API]);
    let daemon = Daemon::with_client(&client);
    let basic = Auth::Basic(&client.id, &client.secret);
    let reply = daemon.token_request(basic, &[]);
    let claims = claims_of(&reply);
    assert!(reply.json().get("scope").is_none(), "{reply}");
    assert!(
        claims.get("scope").is_none(),
        "no scope claim when empty: {claims}"
    );
    daemon
        .token_request(basic, &[("scope", "runs:read")])
        .assert_oauth_error(400, "invalid_scope");
}

#[test]
fn client_token_ttl_sets_the_lifetime() {
    let client = service_client().token_ttl("1h");
    let daemon = Daemon::builder()
        .config(r#"token_ttl = "2h""#)
        .client(&client)
        .start();
    let reply = daemon.token_request(Auth::Basic(&client.id, &client.secret), &[]);
    let claims = claims_of(&reply);
    assert_eq!(reply.json()["expires_in"], 3600, "{reply}");
    let iat = claims["iat"].as_i64().expect("iat");
    assert_eq!(claims["exp"].as_i64(), Some(iat + 3600), "{claims}");
}

#[test]
fn config_token_ttl_is_the_default_lifetime() {
    let client = service_client();
    let daemon = Daemon::builder()
        .config(r#"token_ttl = "2h""#)
        .client(&client)
        .start();
    let reply = daemon.token_request(Auth::Basic(&client.id, &client.secret), &[]);
    let claims = claims_of(&reply);
    assert_eq!(reply.json()["expires_in"], 7200, "{reply}");
    let iat = claims["iat"].as_i64().expect("iat");
    assert_eq!(claims["exp"].as_i64(), Some(iat + 7200), "{claims}");
}

#[test]
fn every_token_has_a_unique_jti() {
    const TOKENS: usize = 25;
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let jtis: HashSet<String> = (0..TOKENS)
        .map(|_| {
            let token = daemon.access_token(&client, &[]);
            jwt::decode(&token).claims["jti"]
                .as_str()
                .expect("a jti string")
                .to_owned()
        })
        .collect();
    assert_eq!(jtis.len(), TOKENS, "repeated jti among {jtis:?}");
}

/// RFC 6749 §3.2: unrecognised parameters are ignored; a body under the 16 KiB limit is read.
#[test]
fn unknown_parameters_are_ignored() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let padding = "x".repeat(15 * 1024);
    daemon
        .token_request(
            Auth::Basic(&client.id, &client.secret),
            &[("unknown", "value"), ("padding", &padding)],
        )
        .assert_status(200);
}

#[test]
fn body_over_16_kib_is_413() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let padding = "x".repeat(17 * 1024);
    daemon
        .token_request(
            Auth::Basic(&client.id, &client.secret),
            &[("padding", &padding)],
        )
        .assert_status(413);
}

/// Without a `Content-Length` the limit must hold while the body streams in.
#[test]
fn chunked_body_over_16_kib_is_413() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let mut request = format!(
        "POST {TOKEN} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Type: {FORM}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        daemon.addr(),
        http::basic_header(&client.id, &client.secret),
    );
    let first = "grant_type=client_credentials&padding=";
    request.push_str(&format!("{:x}\r\n{first}\r\n", first.len()));
    let chunk = "x".repeat(4096);
    for _ in 0..5 {
        request.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    request.push_str("0\r\n\r\n");
    let response = http::raw_exchange(daemon.addr(), request.as_bytes());
    assert_eq!(http::raw_status(&response), 413, "{response}");
}

#[test]
fn get_is_405_with_allow_post() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let reply = daemon.get(TOKEN);
    reply.assert_status(405);
    let allow = reply.header("allow").unwrap_or_default();
    assert!(
        allow.split(',').map(str::trim).any(|m| m == "POST"),
        "`Allow` must name POST:\n{reply}"
    );
}

#[test]
fn non_form_content_type_is_invalid_request() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let basic = Auth::Basic(&client.id, &client.secret);
    let json_body = json!({"grant_type": "client_credentials"}).to_string();
    daemon
        .post_raw(TOKEN, Some("application/json"), basic, json_body.as_bytes())
        .assert_oauth_error(400, "invalid_request");
    daemon
        .post_raw(
            TOKEN,
            Some("text/plain"),
            basic,
            b"grant_type=client_credentials",
        )
        .assert_oauth_error(400, "invalid_request");
}

/// A request refused on its head alone (here its content type; a 429 or a query string
/// likewise) is answered without reading its body. Sent with its head, as clients do, the
/// body is dropped and the connection serves the next request. Still on its way when the
/// answer goes, it cannot be told from the next request: RFC 9112 §9.6, a server about to
/// close says `Connection: close`, or a client reusing the connection (a pool) meets a
/// closed one.
#[test]
fn an_early_refusal_keeps_the_connection_or_says_it_closes() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let body = http::form_body(&[GRANT]);
    let head = format!(
        "POST {TOKEN} HTTP/1.1\r\nHost: tokendealer.test\r\nContent-Type: text/plain\r\n\
         Authorization: {}\r\nContent-Length: {}\r\n\r\n",
        http::basic_header(&client.id, &client.secret),
        body.len()
    );
    let closes = |reply: &Reply| {
        reply
            .header("connection")
            .is_some_and(|c| c.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    };
    let next = conn::post_form(
        TOKEN,
        Some(&http::basic_header(&client.id, &client.secret)),
        &body,
        true,
    );

    // The body with its head: the connection goes on.
    let mut conn = RawConn::open(daemon.addr());
    let refused = conn.request(format!("{head}{body}").as_bytes());
    refused.assert_oauth_error(400, "invalid_request");
    assert!(!closes(&refused), "the whole request arrived:\n{refused}");
    conn.request(&next).assert_status(200);

    // The head alone: the answer says the connection ends.
    let mut conn = RawConn::open(daemon.addr());
    let refused = conn.request(head.as_bytes());
    refused.assert_oauth_error(400, "invalid_request");
    assert!(closes(&refused), "the body is still to come:\n{refused}");
}

/// Content-Type is a single field: given twice, which one counts depends on who reads it.
/// And the body is read as UTF-8, so another charset would be misread.
#[test]
fn two_content_types_or_another_charset_are_invalid_request() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let basic = http::basic_header(&client.id, &client.secret);
    for content_types in [
        &[FORM, "text/plain"][..],
        &["text/plain", FORM],
        &["application/x-www-form-urlencoded; charset=ISO-8859-1"],
    ] {
        let mut headers: Vec<(&str, String)> = content_types
            .iter()
            .map(|t| ("content-type", (*t).to_owned()))
            .collect();
        headers.push(("authorization", basic.clone()));
        daemon
            .request(Request {
                method: "POST",
                url: daemon.url(TOKEN),
                headers,
                body: Some(b"grant_type=client_credentials".to_vec()),
            })
            .assert_oauth_error(400, "invalid_request");
    }
}

#[test]
fn form_content_type_with_charset_is_accepted() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    daemon
        .post_raw(
            TOKEN,
            Some("application/x-www-form-urlencoded; charset=UTF-8"),
            Auth::Basic(&client.id, &client.secret),
            b"grant_type=client_credentials",
        )
        .assert_status(200);
}

/// Credentials in the query string would land in access logs; no query parameter is taken.
#[test]
fn query_string_parameters_are_refused() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let credentials = format!(
        "client_id={}&client_secret={}",
        http::form_encode(&client.id),
        http::form_encode(&client.secret)
    );
    let post = |query: &str, auth: Auth<'_>| {
        let mut headers = vec![("content-type", FORM.to_owned())];
        headers.extend(auth.header().map(|h| ("authorization", h)));
        daemon.request(Request {
            method: "POST",
            url: daemon.url(&format!("{TOKEN}?{query}")),
            headers,
            body: Some(b"grant_type=client_credentials".to_vec()),
        })
    };
    post(&credentials, Auth::None).assert_oauth_error(400, "invalid_request");
    post("scope=runs%3Aread", Auth::Basic(&client.id, &client.secret))
        .assert_oauth_error(400, "invalid_request");
}

/// The SPEC's 429 row: after repeated failures the endpoint throttles, and says when to retry.
#[test]
fn repeated_failures_are_throttled_with_retry_after() {
    const ATTEMPTS: usize = 200;
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let wrong = Auth::Basic(&client.id, "not-the-secret");
    let throttled = (0..ATTEMPTS)
        .map(|_| daemon.token_request(wrong, &[]))
        .find(|reply| reply.status != 401)
        .unwrap_or_else(|| panic!("{ATTEMPTS} failed logins in a row were never throttled"));
    throttled.assert_status(429);
    let retry_after = throttled.header("retry-after").unwrap_or_default();
    assert!(
        retry_after.parse::<u64>().is_ok_and(|s| s > 0),
        "`Retry-After` must be a positive number of seconds:\n{throttled}"
    );
}

/// Sends wrong secrets for `id` until one is answered 429 (the address or, with
/// `forwarded_for`, the forwarded source is blocked), and returns that answer.
#[track_caller]
fn fail_until_blocked(daemon: &Daemon, id: &str, forwarded_for: Option<&str>) -> Reply {
    const ATTEMPTS: usize = 200;
    let mut headers = vec![
        ("content-type", FORM.to_owned()),
        ("authorization", http::basic_header(id, "not-the-secret")),
    ];
    headers.extend(forwarded_for.map(|ip| ("x-forwarded-for", ip.to_owned())));
    let blocked = (0..ATTEMPTS).find_map(|_| {
        let reply = daemon.request(Request {
            method: "POST",
            url: daemon.url(TOKEN),
            headers: headers.clone(),
            body: Some(http::form_body(&[GRANT]).into_bytes()),
        });
        match reply.status {
            401 => None,
            429 => Some(reply),
            _ => panic!("a wrong secret got neither 401 nor 429:\n{reply}"),
        }
    });
    blocked.unwrap_or_else(|| panic!("{ATTEMPTS} failed logins were never throttled"))
}

/// `Retry-After` of a 429, in whole seconds.
#[track_caller]
fn retry_after(reply: &Reply) -> Duration {
    reply.assert_status(429);
    let seconds = reply
        .header("retry-after")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("`Retry-After` is not a number of seconds:\n{reply}"));
    Duration::from_secs(seconds)
}

/// A block lifts when `Retry-After` says: the right secret from the blocked address is
/// refused with 429 until then (never checked, so never a 401), and gets its token about
/// that many seconds after the block, neither a second sooner nor long after.
#[test]
fn a_blocked_address_gets_a_token_again_when_retry_after_has_passed() {
    /// How late past `Retry-After` a busy machine may serve the first token and still pass.
    const LATE: Duration = Duration::from_secs(5);
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let blocked = fail_until_blocked(&daemon, "someone", None);
    let blocked_at = Instant::now();
    let wait = retry_after(&blocked);
    assert!(!wait.is_zero(), "`Retry-After: 0`:\n{blocked}");
    // Each try on a connection of its own that ends with its answer.
    let right = conn::post_form(
        TOKEN,
        Some(&http::basic_header(&client.id, &client.secret)),
        &http::form_body(&[GRANT]),
        false,
    );
    let deadline = blocked_at + wait + LATE;
    let (served_at, served) = loop {
        let reply = RawConn::open(daemon.addr()).request(&right);
        let at = Instant::now();
        match reply.status {
            200 => break (at, reply),
            429 => {}
            _ => {
                panic!("the right secret from a blocked address got neither 429 nor 200:\n{reply}")
            }
        }
        assert!(
            at < deadline,
            "the block of `Retry-After: {}` was still in force {:?} after it began:\n{reply}",
            wait.as_secs(),
            at - blocked_at
        );
    };
    served.assert_status(200).assert_no_store();
    let after = served_at - blocked_at;
    assert!(
        after + Duration::from_secs(1) >= wait,
        "a token came {after:?} after a 429 with `Retry-After: {}`: the block lifted early",
        wait.as_secs()
    );
}

/// Without `trusted_proxies`, `X-Forwarded-For` is the caller's word and not believed: an
/// attacker naming a new address in each request is still the one TCP peer, blocked after
/// the address burst (20 failures), and so is its right secret under yet another name.
#[test]
fn forwarded_addresses_from_an_untrusted_peer_are_one_address() {
    /// Failures an address may make before it is throttled (`daemon/src/throttle.rs`).
    const ADDRESS_BURST: usize = 20;
    /// Failures past the burst that a refill during the run may allow.
    const REFILLED: usize = 2;
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let wrong =
        |forwarded_for: &str| token_as_via(&daemon, "someone", "not-the-secret", forwarded_for);
    let mut first_429 = None;
    for attempt in 1..=ADDRESS_BURST + 1 + REFILLED {
        let reply = wrong(&format!("203.0.113.{attempt}"));
        match reply.status {
            401 => {}
            429 => {
                first_429 = Some(attempt);
                break;
            }
            _ => panic!("a wrong secret got neither 401 nor 429:\n{reply}"),
        }
    }
    let first_429 = first_429.unwrap_or_else(|| {
        panic!(
            "{} failures, each naming another X-Forwarded-For, were never throttled: the \
             untrusted header was believed",
            ADDRESS_BURST + 1 + REFILLED
        )
    });
    assert!(
        first_429 > ADDRESS_BURST,
        "throttled at failure {first_429}, within the burst of {ADDRESS_BURST}"
    );
    // With the header believed, a fresh forwarded address would be a fresh caller.
    let reply = token_via(&daemon, &client, "198.51.100.7");
    assert!(!retry_after(&reply).is_zero(), "{reply}");
}

/// `POST /oauth/token` with the right secret, from `forwarded_for` through the proxy.
#[track_caller]
fn token_via(daemon: &Daemon, client: &TestClient, forwarded_for: &str) -> Reply {
    token_as_via(daemon, &client.id, &client.secret, forwarded_for)
}

/// `POST /oauth/token` as `id` with `secret`, saying it comes from `forwarded_for`.
#[track_caller]
fn token_as_via(daemon: &Daemon, id: &str, secret: &str, forwarded_for: &str) -> Reply {
    daemon.request(Request {
        method: "POST",
        url: daemon.url(TOKEN),
        headers: vec![
            ("content-type", FORM.to_owned()),
            ("authorization", http::basic_header(id, secret)),
            ("x-forwarded-for", forwarded_for.to_owned()),
        ],
        body: Some(http::form_body(&[GRANT]).into_bytes()),
    })
}

#[test]
fn a_request_let_in_before_its_address_was_blocked_is_refused_when_its_body_comes() {
    // Many requests sent at once, bodies held back until the address is blocked, must not
    // all get their guess tried: the address is checked again just before the secret.
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let body = http::form_body(&[GRANT]);
    let head = format!(
        "POST {TOKEN} HTTP/1.1\r\nHost: x\r\nContent-Type: {FORM}\r\nAuthorization: {}\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        http::basic_header(&client.id, &client.secret),
        body.len()
    );
    let mut held = RawConn::open(daemon.addr());
    // `100 Continue` comes when the daemon waits for the body: the head was let in.
    held.request(head.as_bytes()).assert_status(100);

    fail_until_blocked(&daemon, "someone", None);
    held.send(body.as_bytes());
    let reply = held.read_response(body.as_bytes());
    reply.assert_status(429);
    assert!(reply.header("retry-after").is_some(), "{reply}");
}

#[test]
fn ipv4_callers_of_a_dual_stack_listener_are_ipv4_addresses() {
    // On `[::]`, IPv4 peers arrive as `::ffff:a.b.c.d`: still the trusted IPv4 proxy, whose
    // forwarded addresses are each throttled alone.
    let client = service_client();
    let mut daemon = Daemon::builder()
        .config("trusted_proxies = [\"127.0.0.1/32\"]")
        .client(&client)
        .write();
    let config = daemon.config_path();
    daemon.set_args(vec![
        "--config".into(),
        config.into(),
        "--listen".into(),
        "[::]:0".into(),
    ]);
    daemon.start();
    assert!(daemon.addr().is_ipv6(), "listening on {}", daemon.addr());
    let ipv4 = std::net::SocketAddr::from(([127, 0, 0, 1], daemon.addr().port()));
    let url = |path: &str| format!("http://{ipv4}{path}");
    let post = |forwarded_for: &str, secret: &str| {
        daemon.request(Request {
            method: "POST",
            url: url(TOKEN),
            headers: vec![
                ("content-type", FORM.to_owned()),
                ("authorization", http::basic_header(&client.id, secret)),
                ("x-forwarded-for", forwarded_for.to_owned()),
            ],
            body: Some(http::form_body(&[GRANT]).into_bytes()),
        })
    };
    let blocked = (0..200).any(|_| post("203.0.113.1", "not-the-secret").status == 429);
    assert!(blocked, "the attacker behind the proxy was never throttled");
    post("203.0.113.1", &client.secret).assert_status(429);
    // Another caller behind the same proxy is not the attacker.
    post("203.0.113.2", &client.secret).assert_status(200);
}

#[test]
fn an_ipv6_source_is_throttled_by_its_64() {
    // A fresh address from the same /64 gets no fresh budget; the next /64 is another host.
    let client = service_client();
    let daemon = Daemon::builder()
        .config("trusted_proxies = [\"127.0.0.1/32\"]")
        .client(&client)
        .start();
    fail_until_blocked(&daemon, "someone", Some("2001:db8:0:1::1"));
    token_via(&daemon, &client, "2001:db8:0:1:ffff:ffff:ffff:fffe").assert_status(429);
    token_via(&daemon, &client, "2001:db8:0:2::1").assert_status(200);
}

#[test]
fn a_form_of_too_many_parameters_is_refused() {
    let client = service_client();
    let daemon = Daemon::with_client(&client);
    let many: Vec<(String, String)> = (0..65).map(|i| (format!("p{i}"), "v".into())).collect();
    let mut params: Vec<(&str, &str)> =
        many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let reply = daemon.token_request(Auth::Basic(&client.id, &client.secret), &params);
    reply.assert_oauth_error(400, "invalid_request");
    // Unknown parameters are ignored (RFC 6749 §3.2) up to the limit.
    params.truncate(60);
    daemon
        .token_request(Auth::Basic(&client.id, &client.secret), &params)
        .assert_status(200);
}
