//! Looking inside tokens without trusting them, RFC 7638 thumbprints, and the independent
//! PyJWT verifier.

use std::{path::PathBuf, process::Command, sync::OnceLock};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::process::{self, Output};

/// A compact JWS split into its parts. Nothing here is verified.
#[derive(Debug, Clone)]
pub struct Jws {
    pub header: Value,
    pub claims: Value,
    /// `base64url(header) "." base64url(claims)`, the bytes the signature covers.
    pub signing_input: String,
    pub signature: Vec<u8>,
}

/// Splits and decodes a compact JWS; fails the test if it is not one.
#[track_caller]
pub fn decode(token: &str) -> Jws {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        panic!("not a compact JWS (three dot-separated parts): {token}")
    };
    let json = |part: &str, what: &str| -> Value {
        let bytes = b64url_decode(part)
            .unwrap_or_else(|e| panic!("the {what} is not base64url ({e}): {token}"));
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("the {what} is not JSON ({e}): {token}"))
    };
    Jws {
        header: json(header, "header"),
        claims: json(claims, "claims"),
        signing_input: format!("{header}.{claims}"),
        signature: b64url_decode(signature)
            .unwrap_or_else(|e| panic!("the signature is not base64url ({e}): {token}")),
    }
}

/// base64url without padding.
pub fn b64url(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding.
pub fn b64url_decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(text)
}

/// The RFC 7638 thumbprint of a public JWK: SHA-256 over the required members, in
/// lexicographic order, without whitespace, base64url-encoded.
#[track_caller]
pub fn thumbprint(jwk: &Value) -> String {
    let member = |name: &str| -> String {
        let value = jwk[name]
            .as_str()
            .unwrap_or_else(|| panic!("the JWK lacks the string member `{name}`: {jwk}"));
        serde_json::to_string(value).expect("a string serialises")
    };
    let kty = jwk["kty"].as_str().unwrap_or_default();
    // RFC 7638 §3.2 (RSA, EC) and RFC 8037 §2 (OKP).
    let canonical = match kty {
        "RSA" => format!(
            r#"{{"e":{},"kty":{},"n":{}}}"#,
            member("e"),
            member("kty"),
            member("n")
        ),
        "EC" => format!(
            r#"{{"crv":{},"kty":{},"x":{},"y":{}}}"#,
            member("crv"),
            member("kty"),
            member("x"),
            member("y")
        ),
        "OKP" => format!(
            r#"{{"crv":{},"kty":{},"x":{}}}"#,
            member("crv"),
            member("kty"),
            member("x")
        ),
        other => panic!("no thumbprint rule for kty `{other}`: {jwk}"),
    };
    b64url(Sha256::digest(canonical.as_bytes()))
}

/// The JWK with this `kid` in a JWKS document.
#[track_caller]
pub fn find_key<'a>(jwks: &'a Value, kid: &str) -> &'a Value {
    jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid))
        .unwrap_or_else(|| panic!("no key with kid `{kid}` in the JWKS: {jwks}"))
}

/// `tests/verify_jwt.py`.
pub fn verifier_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("verify_jwt.py")
}

/// Runs the PyJWT verifier and returns what it did, success or not.
#[track_caller]
pub fn pyjwt_verify_output(jwks_url: &str, token: &str, issuer: &str, audience: &str) -> Output {
    require_pyjwt();
    let mut cmd = Command::new("python3");
    cmd.arg(verifier_script())
        .args([jwks_url, token, issuer, audience])
        // The JWKS is on loopback; a proxy from the environment must not get in the way.
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY");
    process::run(cmd)
}

/// Verifies `token` with PyJWT against the JWKS at `jwks_url`, requiring `issuer` and
/// `audience`; returns the verified claims or fails the test with the verifier's message.
#[track_caller]
pub fn pyjwt_verify(jwks_url: &str, token: &str, issuer: &str, audience: &str) -> Value {
    let output = pyjwt_verify_output(jwks_url, token, issuer, audience);
    output.assert_success();
    serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("the verifier's stdout is not JSON ({e}):\n{output}"))
}

/// Fails (never skips) when PyJWT with its crypto extra is missing: these tests are the proof
/// that a standard library verifies our tokens.
#[track_caller]
fn require_pyjwt() {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    let check = CHECK.get_or_init(|| {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", "import jwt, cryptography"]);
        let output = match cmd.output() {
            Ok(output) => output,
            Err(e) => return Err(format!("python3 could not be run ({e})")),
        };
        if output.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
        }
    });
    if let Err(why) = check {
        panic!(
            "PyJWT with its crypto extra is required to verify tokens independently: install \
             it with `pip install \"pyjwt[crypto]\"` ({why})"
        );
    }
}

/// The PEM `PUBLIC KEY` (SubjectPublicKeyInfo) of an RSA JWK: the bytes an attacker would use
/// as an HMAC secret in the RS256→HS256 confusion attack.
#[track_caller]
pub fn rsa_public_pem(jwk: &Value) -> String {
    let component = |name: &str| {
        jwk[name]
            .as_str()
            .and_then(|v| b64url_decode(v).ok())
            .unwrap_or_else(|| panic!("the RSA JWK lacks a base64url `{name}`: {jwk}"))
    };
    let rsa_public_key = der(
        0x30,
        &[der_uint(&component("n")), der_uint(&component("e"))].concat(),
    );
    // AlgorithmIdentifier { rsaEncryption (1.2.840.113549.1.1.1), NULL }.
    let algorithm = der(
        0x30,
        &[
            &[
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
            ][..],
            &[0x05, 0x00],
        ]
        .concat(),
    );
    let bit_string = der(0x03, &[&[0u8][..], &rsa_public_key].concat());
    let spki = der(0x30, &[algorithm, bit_string].concat());
    let body = base64::engine::general_purpose::STANDARD.encode(spki);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

/// A DER TLV.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(u8::try_from(len).expect("checked above"));
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | u8::try_from(bytes.len()).expect("a length fits in 127 bytes"));
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// A DER INTEGER from unsigned big-endian bytes.
fn der_uint(bytes: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|&b| b == 0).collect();
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|&b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend(trimmed);
    der(0x02, &content)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// RFC 7638 §3.1.
    #[test]
    fn thumbprint_of_the_rfc_example() {
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            thumbprint(&jwk),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    /// The expected PEM is what Python's `cryptography` writes for the same key.
    #[test]
    fn rsa_public_pem_matches_openssl() {
        let jwk = json!({
            "kty": "RSA",
            "n": "pC0qCHRV9XOiwUl_W1rpNHg2uTqY0kQXwo_yo0G0XjWE5qgqLCUo9jiU2td4Qke3PXdo_GxEbbXfuUA-7h5rar1pzQ3Gd5mysOaPhEVfKehRhaMB7SrXke7X7ui2aMaWysGfCaadl9z6VrybCOb82l991jmqcP3yar_Cw3vjR0s",
            "e": "AQAB"
        });
        assert_eq!(
            rsa_public_pem(&jwk),
            "-----BEGIN PUBLIC KEY-----\n\
             MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQCkLSoIdFX1c6LBSX9bWuk0eDa5\n\
             OpjSRBfCj/KjQbReNYTmqCosJSj2OJTa13hCR7c9d2j8bERttd+5QD7uHmtqvWnN\n\
             DcZ3mbKw5o+ERV8p6FGFowHtKteR7tfu6LZoxpbKwZ8Jpp2X3PpWvJsI5vzaX33W\n\
             Oapw/fJqv8LDe+NHSwIDAQAB\n\
             -----END PUBLIC KEY-----\n"
        );
    }

    #[test]
    fn decode_splits_a_compact_jws() {
        let token = format!(
            "{}.{}.{}",
            b64url(r#"{"alg":"ES256"}"#),
            b64url(r#"{"sub":"a"}"#),
            b64url([1u8, 2, 3])
        );
        let jws = decode(&token);
        assert_eq!(jws.header["alg"], "ES256");
        assert_eq!(jws.claims["sub"], "a");
        assert_eq!(jws.signature, [1, 2, 3]);
    }
}
