//! Properties of `POST /oauth/token` against one real daemon, over generated input:
//!
//! * no body, `Authorization` header or content type makes it answer 5xx; every answer is a
//!   row of the SPEC's table with a well-formed RFC 6749 §5.2 error body;
//! * `client_secret_basic` and `client_secret_post` are one authentication (RFC 6749
//!   §2.3.1): for any id and secret, both give the same status, tokens with the same claims,
//!   and byte-identical error bodies.
//!
//! The daemon trusts `127.0.0.1` as a proxy and every request names an `X-Forwarded-For`
//! address of its own, so the per-address throttle never answers in place of the endpoint.

use std::{
    cell::RefCell,
    io::Write as _,
    net::Ipv4Addr,
    os::unix::net::UnixStream,
    sync::atomic::{AtomicU32, Ordering::Relaxed},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use proptest::{
    collection::vec,
    option,
    prelude::{Just, ProptestConfig, Strategy, TestCaseError, any, prop_oneof, proptest},
    prop_assert, prop_assert_eq,
    sample::select,
};
use serde_json::Value;
use tokendealer_shared::{
    admin::{Request as AdminRequest, Response as AdminResponse},
    clients_file::parse_hash,
};
use tokendealer_tests::{
    Daemon, Reply, TestClient, admin_wire,
    http::{self, Request},
    jwt, secret_hash,
};

const TOKEN: &str = "/oauth/token";
const FORM: &str = "application/x-www-form-urlencoded";
const AUDIENCE: &str = "https://api.example";

/// What the endpoint may answer a POST with (SPEC, "Errors").
const DOCUMENTED: [u16; 5] = [200, 400, 401, 413, 429];

/// A failure is shrunk against the live daemon; this bounds how long that may take.
const MAX_SHRINK_ITERS: u32 = 256;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        max_shrink_iters: MAX_SHRINK_ITERS,
        ..ProptestConfig::default()
    }
}

/// An address in 10.0.0.0/8 that no earlier request of this daemon used.
fn fresh_address() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    Ipv4Addr::from(0x0a00_0000 | (NEXT.fetch_add(1, Relaxed) & 0x00ff_ffff))
}

/// A number no earlier case used, to keep generated client ids apart.
fn serial() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    NEXT.fetch_add(1, Relaxed)
}

/// `POST /oauth/token` with a form body and these headers, from an address of its own.
#[track_caller]
fn post(daemon: &Daemon, authorization: Option<String>, body: &str) -> Reply {
    let mut headers = vec![
        ("x-forwarded-for", fresh_address().to_string()),
        ("content-type", FORM.to_owned()),
    ];
    headers.extend(authorization.map(|a| ("authorization", a)));
    daemon.request(Request {
        method: "POST",
        url: daemon.url(TOKEN),
        headers,
        body: Some(body.as_bytes().to_vec()),
    })
}

/// `POST /oauth/token` written byte for byte, from an address of its own: an HTTP library
/// would refuse header values that are not ASCII, which a server must still cope with.
#[track_caller]
fn post_bytes(
    daemon: &Daemon,
    content_type: Option<&[u8]>,
    authorization: Option<&[u8]>,
    body: &[u8],
) -> RawReply {
    let mut request = format!(
        "POST {TOKEN} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
         X-Forwarded-For: {}\r\nContent-Length: {}\r\n",
        daemon.addr(),
        fresh_address(),
        body.len()
    )
    .into_bytes();
    for (name, value) in [
        ("Content-Type", content_type),
        ("Authorization", authorization),
    ] {
        if let Some(value) = value {
            request.extend_from_slice(format!("{name}: ").as_bytes());
            request.extend_from_slice(value);
            request.extend_from_slice(b"\r\n");
        }
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body);
    // Not `http::raw_exchange`: it half-closes after writing, and hyper's default then may
    // drop the connection unanswered, which is not what this property is about.
    let mut stream = http::connect(daemon.addr());
    stream
        .write_all(&request)
        .unwrap_or_else(|e| panic!("writing a raw request failed: {e}"));
    let response = http::read_to_close(&mut stream);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or((response.as_str(), ""));
    RawReply {
        status: http::raw_status(&response),
        head: head.to_owned(),
        body: body.to_owned(),
        request: String::from_utf8_lossy(&request).into_owned(),
    }
}

/// A response read off the socket, and the request that got it.
struct RawReply {
    status: u16,
    head: String,
    body: String,
    request: String,
}

impl std::fmt::Display for RawReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "request:\n{}\nresponse:\n{}\n\n{}",
            self.request, self.head, self.body
        )
    }
}

/// Whether `reply` is an RFC 6749 §5.2 error: a JSON body with an `error` string (and a
/// string `error_description`, if any) that no cache may keep.
fn is_oauth_error(reply: &RawReply) -> bool {
    let Ok(json) = serde_json::from_str::<Value>(&reply.body) else {
        return false;
    };
    let no_store = reply.head.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("cache-control")
                && value.split(',').any(|d| d.trim() == "no-store")
        })
    });
    json["error"].is_string()
        && json.get("error_description").is_none_or(Value::is_string)
        && no_store
}

#[test]
fn token_endpoint_properties() {
    let known = TestClient::new("known.client")
        .audiences(&[AUDIENCE])
        .scopes(&["read", "write"]);
    let daemon = Daemon::builder()
        // The algorithm is not under test, and ES256 signs fastest.
        .algorithm("ES256")
        .config("trusted_proxies = [\"127.0.0.1/32\"]")
        .client(&known)
        .start();
    any_input_gets_a_documented_answer(&daemon, &known);
    basic_and_post_are_one_authentication(&daemon);
}

// --- never 5xx ---

/// A header value as HTTP allows it (RFC 9110 §5.5): visible ASCII, spaces, tabs and
/// `obs-text` bytes, which need not be UTF-8.
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![0x20_u8..0x7f, Just(b'\t'), 0x80_u8..=0xff];
    vec(byte, 0..40)
}

fn content_type() -> impl Strategy<Value = Option<Vec<u8>>> {
    let media_types = select(vec![
        FORM,
        "Application/X-WWW-Form-Urlencoded",
        "application/json",
        "text/plain",
        "multipart/form-data",
        "",
    ]);
    prop_oneof![
        Just(None),
        Just(Some(FORM.into())),
        header_bytes().prop_map(Some),
        (media_types, header_bytes()).prop_map(|(media_type, params)| {
            Some([media_type.as_bytes(), b";", &params].concat())
        }),
    ]
}

fn authorization(known: &TestClient) -> impl Strategy<Value = Option<Vec<u8>>> {
    let right = http::basic_header(&known.id, &known.secret).into_bytes();
    let scheme = |scheme: &'static str| {
        header_bytes().prop_map(move |rest| Some([scheme.as_bytes(), &rest].concat()))
    };
    prop_oneof![
        Just(None),
        Just(Some(right)),
        header_bytes().prop_map(Some),
        scheme("Basic "),
        scheme("Bearer "),
        vec(any::<u8>(), 0..48)
            .prop_map(|raw| Some(format!("Basic {}", STANDARD.encode(raw)).into_bytes())),
        // Not form-encoded first: `%`, `+` and `:` reach the decoder raw.
        (any::<String>(), any::<String>()).prop_map(|(id, secret)| {
            Some(format!("Basic {}", STANDARD.encode(format!("{id}:{secret}"))).into_bytes())
        }),
    ]
}

/// Bodies near the form the endpoint reads, with names it knows and values that are right,
/// wrong, raw (unencoded `%`, `&`, `=`) or properly encoded arbitrary text.
fn form_like(known: &TestClient) -> impl Strategy<Value = Vec<u8>> {
    let names = select(vec![
        "grant_type",
        "client_id",
        "client_secret",
        "scope",
        "audience",
        "resource",
        "",
        "x",
    ]);
    let values = prop_oneof![
        select(vec![
            "client_credentials".to_owned(),
            known.id.clone(),
            http::form_encode(&known.secret),
            "read write".to_owned(),
            AUDIENCE.to_owned(),
            String::new(),
        ]),
        "[ -~]{0,20}",
        any::<String>().prop_map(|s| http::form_encode(&s)),
    ];
    let pair = (names, option::of(values)).prop_map(|(name, value)| match value {
        Some(value) => format!("{name}={value}"),
        None => name.to_owned(),
    });
    vec(pair, 0..6).prop_map(|pairs| pairs.join("&").into_bytes())
}

fn body(known: &TestClient) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![vec(any::<u8>(), 0..256), form_like(known)]
}

fn any_input_gets_a_documented_answer(daemon: &Daemon, known: &TestClient) {
    proptest!(config(200), |(
        content_type in content_type(),
        authorization in authorization(known),
        body in body(known),
    )| {
        let reply = post_bytes(daemon, content_type.as_deref(), authorization.as_deref(), &body);
        prop_assert!(reply.status < 500, "a server error:\n{reply}");
        prop_assert!(DOCUMENTED.contains(&reply.status), "an undocumented status:\n{reply}");
        if reply.status == 200 {
            let json: Value = serde_json::from_str(&reply.body).unwrap_or_default();
            prop_assert!(json["access_token"].is_string(), "no token:\n{reply}");
        } else {
            prop_assert!(is_oauth_error(&reply), "not an RFC 6749 §5.2 error:\n{reply}");
        }
    });
}

// --- Basic ≡ post ---

/// A client id as the clients file allows it.
fn client_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,40}"
}

/// A non-empty secret, rich in what form encoding must escape.
fn secret() -> impl Strategy<Value = String> {
    let special = select(vec![':', '%', '+', '&', '=', ' ', '#', '/', '?', 'é', '😀']);
    vec(prop_oneof![any::<char>(), special], 1..32).prop_map(String::from_iter)
}

/// Which credentials the two requests present.
#[derive(Debug, Clone)]
enum Presented {
    Registered,
    WrongSecret(String),
    /// An id the clients file could not hold (it has a `#`) and any secret.
    UnknownId(String, String),
}

fn presented() -> impl Strategy<Value = Presented> {
    prop_oneof![
        Just(Presented::Registered),
        secret().prop_map(Presented::WrongSecret),
        (any::<String>(), secret()).prop_map(|(id, secret)| Presented::UnknownId(id, secret)),
    ]
}

/// Registers `id` with `secret` the way `tokendealer clients import` does: by hash.
#[track_caller]
fn register(admin: &mut UnixStream, id: &str, secret: &str) {
    let hash = parse_hash(&secret_hash(secret)).expect("a well-formed hash");
    let response = admin_wire::request(
        admin,
        AdminRequest::ImportClients {
            clients: vec![(id.to_owned(), hash)],
        },
    );
    assert_eq!(
        response,
        AdminResponse::Imported { count: 1 },
        "importing `{id}`"
    );
}

/// A token response and its claims without what differs between any two tokens.
fn stable_parts(reply: &Reply) -> (Value, Value, Option<i64>) {
    let mut body = reply.json();
    let token = body["access_token"].take();
    let mut claims = jwt::decode(token.as_str().expect("an access_token string")).claims;
    let lifetime = claims["exp"]
        .as_i64()
        .zip(claims["iat"].as_i64())
        .map(|(exp, iat)| exp - iat);
    let object = claims.as_object_mut().expect("the claims are an object");
    for volatile in ["jti", "iat", "nbf", "exp"] {
        object.remove(volatile);
    }
    (body, claims, lifetime)
}

/// One generated case: a client registered with `secret`, and the credentials presented.
#[derive(Debug, Clone)]
struct Case {
    id: String,
    secret: String,
    presented: Presented,
    audience: Option<String>,
    scope: Option<String>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        client_id(),
        secret(),
        presented(),
        option::of(prop_oneof!["https://[a-z]{1,8}\\.example", any::<String>()]),
        option::of("[a-z:]{1,8}"),
    )
        .prop_map(|(id, secret, presented, audience, scope)| Case {
            id,
            secret,
            presented,
            audience,
            scope,
        })
}

fn basic_and_post_are_one_authentication(daemon: &Daemon) {
    // proptest runs cases through an `Fn`; the one connection is lent to each in turn.
    let admin = RefCell::new(admin_wire::open(daemon.admin_socket()));
    proptest!(config(100), |(case in case())| {
        same_answer_both_ways(daemon, &mut admin.borrow_mut(), &case)?;
    });
}

fn same_answer_both_ways(
    daemon: &Daemon,
    admin: &mut UnixStream,
    case: &Case,
) -> Result<(), TestCaseError> {
    let id = format!("{}-{}", case.id, serial());
    register(admin, &id, &case.secret);
    let (as_id, as_secret) = match &case.presented {
        Presented::Registered => (id, case.secret.clone()),
        Presented::WrongSecret(wrong) if *wrong == case.secret => (id, format!("{wrong}!")),
        Presented::WrongSecret(wrong) => (id, wrong.clone()),
        Presented::UnknownId(unknown, secret) => {
            (format!("{unknown}#{}", serial()), secret.clone())
        }
    };
    let mut params = vec![("grant_type", "client_credentials")];
    if let Some(audience) = &case.audience {
        params.push(("audience", audience.as_str()));
    }
    if let Some(scope) = &case.scope {
        params.push(("scope", scope.as_str()));
    }
    let basic = post(
        daemon,
        Some(http::basic_header(&as_id, &as_secret)),
        &http::form_body(&params),
    );
    params.extend([
        ("client_id", as_id.as_str()),
        ("client_secret", as_secret.as_str()),
    ]);
    let in_body = post(daemon, None, &http::form_body(&params));

    let both = format!("Basic:\n{basic}\npost:\n{in_body}");
    prop_assert_eq!(basic.status, in_body.status, "{}", both);
    match &case.presented {
        // Nothing else can go wrong: both ways must succeed, or the property says nothing.
        Presented::Registered if case.audience.is_none() && case.scope.is_none() => {
            prop_assert_eq!(basic.status, 200, "{}", both);
        }
        Presented::WrongSecret(_) | Presented::UnknownId(..) => {
            prop_assert_eq!(basic.status, 401, "{}", both);
        }
        Presented::Registered => {}
    }
    if basic.status == 200 {
        prop_assert_eq!(stable_parts(&basic), stable_parts(&in_body), "{}", both);
    } else {
        prop_assert_eq!(&basic.body, &in_body.body, "{}", both);
    }
    Ok(())
}
