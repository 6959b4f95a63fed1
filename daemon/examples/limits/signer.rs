//! The crypto backend (aws-lc-rs) on its own: a key pair of each algorithm generated and
//! parsed once, signing a message the size of a typical access token's signing input. Shared
//! by the `sign_rate` and `bare_hyper` examples, the limits `bench/run.sh` measures against.

use std::sync::Arc;

use aws_lc_rs::{
    rand::SystemRandom,
    rsa::KeySize,
    signature::{self, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair},
};

/// A message the size of a typical access token's signing input.
pub const MESSAGE: [u8; 420] = [b'x'; 420];

/// One signature of [`MESSAGE`] per call.
pub type Sign = Arc<dyn Fn() + Send + Sync>;

/// A signer for `alg` (RS512, RS256, ES256 or EdDSA), or `None` for any other name.
pub fn signer(alg: &str) -> Option<Sign> {
    let rng = SystemRandom::new();
    Some(match alg {
        "ES256" => {
            let pkcs8 = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                .and_then(|k| k.to_pkcs8v1())
                .expect("key");
            let key = EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                pkcs8.as_ref(),
            )
            .expect("key");
            Arc::new(move || {
                std::hint::black_box(key.sign(&rng, &MESSAGE).expect("sign"));
            })
        }
        "EdDSA" => {
            let key = Ed25519KeyPair::generate().expect("key");
            Arc::new(move || {
                std::hint::black_box(key.sign(&MESSAGE));
            })
        }
        "RS256" | "RS512" => {
            let key = RsaKeyPair::generate(KeySize::Rsa2048).expect("key");
            let encoding: &'static signature::RsaSignatureEncoding = if alg == "RS256" {
                &signature::RSA_PKCS1_SHA256
            } else {
                &signature::RSA_PKCS1_SHA512
            };
            Arc::new(move || {
                let mut sig = vec![0u8; key.public_modulus_len()];
                key.sign(encoding, &rng, &MESSAGE, &mut sig).expect("sign");
                std::hint::black_box(sig);
            })
        }
        _ => return None,
    })
}
