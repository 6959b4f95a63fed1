//! Signing keys: the algorithms, one key's signer and public JWK, and the keyring that the
//! token endpoint reads.
//!
//! Tokens are signed here directly over aws-lc-rs with a key pair parsed once at load:
//! `jsonwebtoken::encode` re-parses the private key on every call, which costs more than
//! the signature itself. jsonwebtoken is still what verifies (`/verify_token`, introspection).

mod manager;
pub mod store;

use std::{collections::HashMap, fmt, str::FromStr, sync::Arc};

use aws_lc_rs::{
    digest,
    encoding::AsDer,
    rand::SystemRandom,
    rsa::KeySize,
    signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use bytes::Bytes;
use serde::Serialize;

pub use manager::{KeyChangeError, KeyManager, KeySettings, RETIRE_LEEWAY, Rotated};
pub use store::{KeyStore, KeyStoreError, RotationRefused, StoredKey};
use tokendealer_shared::admin::KeyState;

/// The JWS algorithms tokens can be signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SigningAlg {
    RS256,
    RS384,
    RS512,
    PS256,
    ES256,
    EdDSA,
}

impl SigningAlg {
    pub const ALL: [Self; 6] = [
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::PS256,
        Self::ES256,
        Self::EdDSA,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::ES256 => "ES256",
            Self::EdDSA => "EdDSA",
        }
    }

    /// The same algorithm as jsonwebtoken names it, for verification.
    pub fn jwt(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as A;
        match self {
            Self::RS256 => A::RS256,
            Self::RS384 => A::RS384,
            Self::RS512 => A::RS512,
            Self::PS256 => A::PS256,
            Self::ES256 => A::ES256,
            Self::EdDSA => A::EdDSA,
        }
    }

    /// Whether keys of this algorithm are RSA keys, whose size `rsa_bits` sets.
    pub fn is_rsa(self) -> bool {
        self.rsa_encoding().is_some()
    }

    fn rsa_encoding(self) -> Option<&'static signature::RsaSignatureEncoding> {
        match self {
            Self::RS256 => Some(&signature::RSA_PKCS1_SHA256),
            Self::RS384 => Some(&signature::RSA_PKCS1_SHA384),
            Self::RS512 => Some(&signature::RSA_PKCS1_SHA512),
            Self::PS256 => Some(&signature::RSA_PSS_SHA256),
            Self::ES256 | Self::EdDSA => None,
        }
    }
}

impl fmt::Display for SigningAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SigningAlg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "`algorithm` = \"{s}\" is not one of RS256, RS384, RS512, PS256, ES256, EdDSA"
                )
            })
    }
}

/// RSA modulus sizes offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsaBits {
    B2048,
    B3072,
    B4096,
}

impl RsaBits {
    pub fn get(self) -> u32 {
        match self {
            Self::B2048 => 2048,
            Self::B3072 => 3072,
            Self::B4096 => 4096,
        }
    }
}

impl TryFrom<u32> for RsaBits {
    type Error = String;

    fn try_from(bits: u32) -> Result<Self, String> {
        match bits {
            2048 => Ok(Self::B2048),
            3072 => Ok(Self::B3072),
            4096 => Ok(Self::B4096),
            _ => Err(format!(
                "`rsa_bits` = {bits} is not one of 2048, 3072, 4096"
            )),
        }
    }
}

enum Pair {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A key that can sign, with everything about it precomputed for the hot path.
pub struct SigningKey {
    kid: String,
    alg: SigningAlg,
    pair: Pair,
    /// `base64url({"alg","typ":"at+jwt","kid"})` followed by `.`: the fixed prefix of every token.
    header_prefix: String,
    jwk: serde_json::Value,
    decoding: jsonwebtoken::DecodingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Why a key could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key generation failed")]
    Generate,
    #[error("not a valid PKCS#8 {alg} private key: {reason}")]
    Rejected { alg: SigningAlg, reason: String },
}

impl SigningKey {
    /// Generates a new key; returns it with its PKCS#8 DER encoding for storage.
    pub fn generate(alg: SigningAlg, rsa_bits: RsaBits) -> Result<(Self, Vec<u8>), KeyError> {
        let der = match alg {
            SigningAlg::ES256 => {
                EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                    .and_then(|k| k.to_pkcs8v1())
                    .map_err(|_| KeyError::Generate)?
                    .as_ref()
                    .to_vec()
            }
            SigningAlg::EdDSA => Ed25519KeyPair::generate()
                .and_then(|k| k.to_pkcs8v1())
                .map_err(|_| KeyError::Generate)?
                .as_ref()
                .to_vec(),
            _ => {
                let size = match rsa_bits {
                    RsaBits::B2048 => KeySize::Rsa2048,
                    RsaBits::B3072 => KeySize::Rsa3072,
                    RsaBits::B4096 => KeySize::Rsa4096,
                };
                RsaKeyPair::generate(size)
                    .and_then(|k| k.as_der())
                    .map_err(|_| KeyError::Generate)?
                    .as_ref()
                    .to_vec()
            }
        };
        Ok((Self::from_pkcs8(alg, &der)?, der))
    }

    /// Loads a key from its PKCS#8 DER encoding.
    pub fn from_pkcs8(alg: SigningAlg, der: &[u8]) -> Result<Self, KeyError> {
        let rejected = |e: aws_lc_rs::error::KeyRejected| KeyError::Rejected {
            alg,
            reason: e.to_string(),
        };
        let (pair, jwk_members) = match alg {
            SigningAlg::ES256 => {
                let k = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(rejected)?;
                // An uncompressed P-256 point: 0x04 || x (32 bytes) || y (32 bytes).
                let point = k.public_key().as_ref();
                let (x, y) = point[1..].split_at(32);
                let members = vec![
                    ("crv", "P-256".to_owned()),
                    ("kty", "EC".to_owned()),
                    ("x", B64.encode(x)),
                    ("y", B64.encode(y)),
                ];
                (Pair::Ec(k), members)
            }
            SigningAlg::EdDSA => {
                let k = Ed25519KeyPair::from_pkcs8(der).map_err(rejected)?;
                let members = vec![
                    ("crv", "Ed25519".to_owned()),
                    ("kty", "OKP".to_owned()),
                    ("x", B64.encode(k.public_key().as_ref())),
                ];
                (Pair::Ed(k), members)
            }
            _ => {
                let k = RsaKeyPair::from_pkcs8(der).map_err(rejected)?;
                let public = k.public_key();
                let members = vec![
                    (
                        "e",
                        B64.encode(public.exponent().big_endian_without_leading_zero()),
                    ),
                    ("kty", "RSA".to_owned()),
                    (
                        "n",
                        B64.encode(public.modulus().big_endian_without_leading_zero()),
                    ),
                ];
                (Pair::Rsa(k), members)
            }
        };
        let kid = thumbprint(&jwk_members);
        let mut jwk = serde_json::Map::new();
        for (name, value) in &jwk_members {
            jwk.insert((*name).to_owned(), value.clone().into());
        }
        jwk.insert("kid".into(), kid.clone().into());
        jwk.insert("alg".into(), alg.as_str().into());
        jwk.insert("use".into(), "sig".into());
        let jwk = serde_json::Value::Object(jwk);
        let parsed: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(jwk.clone()).expect("a JWK we built ourselves parses");
        let decoding =
            jsonwebtoken::DecodingKey::from_jwk(&parsed).map_err(|e| KeyError::Rejected {
                alg,
                reason: e.to_string(),
            })?;
        let header = serde_json::json!({ "alg": alg.as_str(), "typ": "at+jwt", "kid": kid });
        let header_prefix = format!("{}.", B64.encode(header.to_string()));
        Ok(Self {
            kid,
            alg,
            pair,
            header_prefix,
            jwk,
            decoding,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> SigningAlg {
        self.alg
    }

    /// The modulus size of an RSA key; `None` for others.
    pub fn rsa_bits(&self) -> Option<u32> {
        match &self.pair {
            Pair::Rsa(k) => u32::try_from(k.public_modulus_len() * 8).ok(),
            Pair::Ec(_) | Pair::Ed(_) => None,
        }
    }

    /// The public key for verification of this key's tokens.
    pub fn decoding_key(&self) -> &jsonwebtoken::DecodingKey {
        &self.decoding
    }

    /// Signs `claims` as a compact JWS with this key's header.
    pub fn sign<T: Serialize>(&self, claims: &T) -> String {
        let payload = serde_json::to_vec(claims).expect("claims serialise");
        // Sized once for header, payload and a signature of up to 4096-bit RSA (683
        // characters), so that it never grows.
        let mut jws = String::with_capacity(
            self.header_prefix.len() + payload.len().div_ceil(3) * 4 + 1 + 700,
        );
        jws.push_str(&self.header_prefix);
        B64.encode_string(&payload, &mut jws);
        self.append_signature(&mut jws);
        jws
    }

    /// Signs the JWS signing input that `jws` holds, then appends `.` and the signature.
    fn append_signature(&self, jws: &mut String) {
        let mut signature = [0u8; MAX_SIGNATURE];
        let len = self.raw_sign(jws.as_bytes(), &mut signature);
        jws.push('.');
        B64.encode_string(&signature[..len], jws);
    }

    /// The signature alone, written to `out`; returns its length. The crypto backend's
    /// work: `bench/instructions.sh` counts this function's instructions as signing, so it
    /// stays a function of its own.
    #[inline(never)]
    fn raw_sign(&self, message: &[u8], out: &mut [u8; MAX_SIGNATURE]) -> usize {
        // The rng arguments are ignored by aws-lc-rs (it draws its own randomness), but the
        // ring-compatible signatures ask for one.
        let rng = SystemRandom::new();
        let signature = match &self.pair {
            Pair::Rsa(k) => {
                let encoding = self
                    .alg
                    .rsa_encoding()
                    .expect("RSA key has an RSA algorithm");
                let out = out
                    .get_mut(..k.public_modulus_len())
                    .expect("aws-lc-rs takes RSA keys of at most 8192 bits");
                k.sign(encoding, &rng, message, out)
                    .expect("RSA signing with a validated key does not fail");
                return out.len();
            }
            Pair::Ec(k) => k
                .sign(&rng, message)
                .expect("ECDSA signing with a validated key does not fail"),
            Pair::Ed(k) => k.sign(message),
        };
        let signature = signature.as_ref();
        out[..signature.len()].copy_from_slice(signature);
        signature.len()
    }
}

/// The longest signature: RSA with an 8192-bit modulus, the largest aws-lc-rs takes.
const MAX_SIGNATURE: usize = 1024;

/// RFC 7638: SHA-256 over the required members, lexicographically ordered, no whitespace.
fn thumbprint(sorted_members: &[(&str, String)]) -> String {
    let body = sorted_members
        .iter()
        .map(|(name, value)| format!("\"{name}\":\"{value}\""))
        .collect::<Vec<_>>()
        .join(",");
    B64.encode(digest::digest(
        &digest::SHA256,
        format!("{{{body}}}").as_bytes(),
    ))
}

/// A key with its place in the rotation.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub key: Arc<SigningKey>,
    pub meta: StoredKey,
}

/// The keys in force: the one that signs and every one that verifies. Immutable; a change
/// builds a new keyring and swaps it in whole.
#[derive(Debug)]
pub struct Keyring {
    /// `None` only when the key that signed was revoked elsewhere and its successor cannot
    /// be loaded here: nothing signs until it can.
    active: Option<Arc<SigningKey>>,
    entries: Vec<KeyEntry>,
    by_kid: HashMap<String, Arc<SigningKey>>,
    jwks: Bytes,
}

impl Keyring {
    /// Builds a keyring; `entries` must hold exactly one active key.
    pub fn new(entries: Vec<KeyEntry>) -> Option<Self> {
        entries
            .iter()
            .any(|e| e.meta.state == KeyState::Active)
            .then(|| Self::publishing(entries))
    }

    /// A keyring of `entries` whose active key, if any, signs; with none, it only publishes
    /// and verifies.
    pub fn publishing(entries: Vec<KeyEntry>) -> Self {
        let active = entries
            .iter()
            .find(|e| e.meta.state == KeyState::Active)
            .map(|e| e.key.clone());
        let by_kid = entries
            .iter()
            .map(|e| (e.key.kid.clone(), e.key.clone()))
            .collect();
        let keys: Vec<_> = entries.iter().map(|e| &e.key.jwk).collect();
        let jwks = Bytes::from(
            serde_json::to_vec(&serde_json::json!({ "keys": keys })).expect("JWKS serialises"),
        );
        Self {
            active,
            entries,
            by_kid,
            jwks,
        }
    }

    /// The key that signs new tokens, always published in [`Self::jwks`]; `None` while no
    /// key may sign (see [`KeyManager::refresh`]).
    pub fn active(&self) -> Option<&SigningKey> {
        self.active.as_deref()
    }

    /// The signing key's id, or a word for its absence, for logs and status lines.
    pub fn active_kid(&self) -> &str {
        self.active().map_or("(none)", SigningKey::kid)
    }

    /// A published key by `kid`.
    pub fn get(&self, kid: &str) -> Option<&SigningKey> {
        self.by_kid.get(kid).map(Arc::as_ref)
    }

    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }

    /// The serialised RFC 7517 JWK set.
    pub fn jwks(&self) -> Bytes {
        self.jwks.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_example_thumbprint() {
        // The example key of RFC 7638 §3.1.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let members = vec![
            ("e", "AQAB".to_owned()),
            ("kty", "RSA".to_owned()),
            ("n", n.to_owned()),
        ];
        assert_eq!(
            thumbprint(&members),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn every_algorithm_signs_what_jsonwebtoken_verifies() {
        for alg in SigningAlg::ALL {
            let (key, der) = SigningKey::generate(alg, RsaBits::B2048).unwrap();
            let again = SigningKey::from_pkcs8(alg, &der).unwrap();
            assert_eq!(
                key.kid(),
                again.kid(),
                "{alg}: kid is stable across reloads"
            );
            let exp = jsonwebtoken::get_current_timestamp() + 60;
            let token = key.sign(&serde_json::json!({ "sub": "x", "exp": exp }));
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.typ.as_deref(), Some("at+jwt"));
            assert_eq!(header.kid.as_deref(), Some(key.kid()));
            let mut validation = jsonwebtoken::Validation::new(alg.jwt());
            validation.validate_aud = false;
            let data =
                jsonwebtoken::decode::<serde_json::Value>(&token, key.decoding_key(), &validation)
                    .unwrap_or_else(|e| panic!("{alg}: {e}"));
            assert_eq!(data.claims["sub"], "x");
        }
    }

    #[test]
    fn a_key_of_one_algorithm_is_refused_as_another() {
        let (_, der) = SigningKey::generate(SigningAlg::ES256, RsaBits::B2048).unwrap();
        assert!(SigningKey::from_pkcs8(SigningAlg::RS256, &der).is_err());
        assert!(SigningKey::from_pkcs8(SigningAlg::EdDSA, &der).is_err());
    }
}
