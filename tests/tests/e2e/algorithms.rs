//! Each signing algorithm yields tokens that an independent library (PyJWT, through
//! `tests/verify_jwt.py`) verifies against the served JWKS.

use serde_json::json;
use tokendealer_tests::{Daemon, ISSUER, jwt};

use crate::{API, service_client};

/// Starts a daemon signing with `algorithm`, gets a token, and checks it end to end: the
/// header, the published JWK (type, curve, thumbprint kid), PyJWT's verdict, and the daemon's
/// own `/verify_token`.
#[track_caller]
fn pyjwt_verifies(algorithm: &str, kty: &str, crv: Option<&str>) {
    let client = service_client();
    let daemon = Daemon::builder()
        .algorithm(algorithm)
        .client(&client)
        .start();
    let token = daemon.access_token(&client, &[("audience", API)]);

    let jws = jwt::decode(&token);
    assert_eq!(jws.header["alg"], algorithm, "{}", jws.header);
    assert_eq!(jws.header["typ"], "at+jwt", "{}", jws.header);
    let kid = jws.header["kid"].as_str().expect("a kid");
    let jwks = daemon.jwks();
    let jwk = jwt::find_key(&jwks, kid);
    assert_eq!(jwk["alg"], algorithm, "{jwk}");
    assert_eq!(jwk["kty"], kty, "{jwk}");
    if let Some(crv) = crv {
        assert_eq!(jwk["crv"], crv, "{jwk}");
    }
    assert_eq!(
        kid,
        jwt::thumbprint(jwk),
        "the kid is the RFC 7638 thumbprint"
    );

    let claims = jwt::pyjwt_verify(&daemon.url("/.well-known/jwks.json"), &token, ISSUER, API);
    assert_eq!(claims["sub"], client.id.as_str(), "{claims}");
    assert_eq!(claims["client_id"], client.id.as_str(), "{claims}");
    assert_eq!(claims["aud"], API, "{claims}");

    daemon
        .post_json(
            "/verify_token",
            &json!({"access_token": token, "audience": API}),
        )
        .assert_status(200);
}

#[test]
fn rs256_tokens_verify_with_pyjwt() {
    pyjwt_verifies("RS256", "RSA", None);
}

#[test]
fn rs384_tokens_verify_with_pyjwt() {
    pyjwt_verifies("RS384", "RSA", None);
}

#[test]
fn rs512_tokens_verify_with_pyjwt() {
    pyjwt_verifies("RS512", "RSA", None);
}

#[test]
fn ps256_tokens_verify_with_pyjwt() {
    pyjwt_verifies("PS256", "RSA", None);
}

#[test]
fn es256_tokens_verify_with_pyjwt() {
    pyjwt_verifies("ES256", "EC", Some("P-256"));
}

#[test]
fn eddsa_tokens_verify_with_pyjwt() {
    pyjwt_verifies("EdDSA", "OKP", Some("Ed25519"));
}

/// The verifier is only proof if it can say no: a flipped signature bit and a wrong issuer
/// must both fail it.
#[test]
fn pyjwt_verifier_rejects_forgeries() {
    let client = service_client();
    let daemon = Daemon::builder().algorithm("ES256").client(&client).start();
    let token = daemon.access_token(&client, &[("audience", API)]);
    let jwks_url = daemon.url("/.well-known/jwks.json");
    let jws = jwt::decode(&token);
    let mut signature = jws.signature.clone();
    signature[0] ^= 0x01;
    let tampered = format!("{}.{}", jws.signing_input, jwt::b64url(&signature));
    for (token, issuer) in [
        (tampered.as_str(), ISSUER),
        (token.as_str(), "https://wrong-issuer.example"),
    ] {
        let output = jwt::pyjwt_verify_output(&jwks_url, token, issuer, API);
        assert_eq!(
            output.code(),
            Some(1),
            "the verifier accepted a forgery:\n{output}"
        );
    }
}

#[test]
fn rsa_bits_sets_the_modulus_size() {
    let client = service_client();
    let daemon = Daemon::builder()
        .algorithm("RS256")
        .config("rsa_bits = 3072")
        .client(&client)
        .start();
    let jwks = daemon.jwks();
    let n = jwks["keys"][0]["n"].as_str().expect("an RSA modulus");
    let bytes = jwt::b64url_decode(n).expect("a base64url modulus");
    assert_eq!(bytes.len(), 3072 / 8, "{jwks}");
}

/// The largest size allowed: every RSA key the JWKS publishes (the active and the next one)
/// has a 4096-bit modulus, and a token it signs verifies.
#[test]
fn rsa_bits_4096_publishes_512_byte_moduli() {
    let client = service_client();
    let daemon = Daemon::builder()
        .algorithm("RS256")
        .config("rsa_bits = 4096")
        .client(&client)
        .start();
    let jwks = daemon.jwks();
    let keys = jwks["keys"].as_array().expect("a `keys` array");
    assert_eq!(keys.len(), 2, "the active and the next key: {jwks}");
    for jwk in keys {
        assert_eq!(jwk["kty"], "RSA", "{jwk}");
        let n = jwk["n"].as_str().expect("an RSA modulus");
        let bytes = jwt::b64url_decode(n).expect("a base64url modulus");
        assert_eq!(bytes.len(), 4096 / 8, "{jwk}");
        assert!(bytes[0] != 0, "the modulus has no leading zero byte: {jwk}");
    }
    let token = daemon.access_token(&client, &[("audience", API)]);
    let claims = jwt::pyjwt_verify(&daemon.url("/.well-known/jwks.json"), &token, ISSUER, API);
    assert_eq!(claims["sub"], client.id.as_str(), "{claims}");
}
