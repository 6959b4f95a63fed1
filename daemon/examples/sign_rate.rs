#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

//! The ceiling for token issuance: how many signatures per second the crypto backend
//! (aws-lc-rs) makes on its own, on one thread and on every core, with no HTTP, JSON or
//! base64 around it. `bench/run.sh` divides measured tokens/s by these.
//!
//! `cargo run --release --example sign_rate -- [SECONDS]`

use std::{
    thread,
    time::{Duration, Instant},
};

use aws_lc_rs::{
    rand::SystemRandom,
    rsa::KeySize,
    signature::{self, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair},
};

/// A message the size of a typical access token's signing input.
const MESSAGE: [u8; 420] = [b'x'; 420];

fn signer(alg: &str) -> Box<dyn Fn() + Send + Sync> {
    let rng = SystemRandom::new();
    match alg {
        "ES256" => {
            let pkcs8 = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                .and_then(|k| k.to_pkcs8v1())
                .expect("key");
            let key = EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                pkcs8.as_ref(),
            )
            .expect("key");
            Box::new(move || {
                let _ = key.sign(&rng, &MESSAGE).expect("sign");
            })
        }
        "EdDSA" => {
            let key = Ed25519KeyPair::generate().expect("key");
            Box::new(move || {
                let _ = key.sign(&MESSAGE);
            })
        }
        _ => {
            let key = RsaKeyPair::generate(KeySize::Rsa2048).expect("key");
            let encoding: &'static signature::RsaSignatureEncoding = match alg {
                "RS256" => &signature::RSA_PKCS1_SHA256,
                _ => &signature::RSA_PKCS1_SHA512,
            };
            Box::new(move || {
                let mut sig = vec![0u8; key.public_modulus_len()];
                key.sign(encoding, &rng, &MESSAGE, &mut sig).expect("sign");
            })
        }
    }
}

fn rate(sign: &(dyn Fn() + Sync), threads: usize, seconds: Duration) -> f64 {
    let start = Instant::now();
    let total: u64 = thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut n = 0u64;
                    while start.elapsed() < seconds {
                        for _ in 0..16 {
                            sign();
                        }
                        n += 16;
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("worker")).sum()
    });
    total as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let seconds = Duration::from_secs(
        std::env::args()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(3),
    );
    let cores = thread::available_parallelism().map_or(1, usize::from);
    println!("alg\tone_thread_per_s\tall_cores_per_s\tcores");
    for alg in ["RS512", "RS256", "ES256", "EdDSA"] {
        let sign = signer(alg);
        let one = rate(sign.as_ref(), 1, seconds);
        let all = rate(sign.as_ref(), cores, seconds);
        println!("{alg}\t{one:.0}\t{all:.0}\t{cores}");
    }
}
