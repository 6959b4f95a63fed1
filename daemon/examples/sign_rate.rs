#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark reports on stdout, and a wrong argument on stderr"
)]

//! The ceiling for token issuance: how many signatures per second the crypto backend
//! (aws-lc-rs) makes on its own, on one thread and on every core, with no HTTP, JSON or
//! base64 around it. `bench/run.sh` divides measured tokens/s by these.
//!
//! `cargo run --release --example sign_rate -- [SECONDS [ALG…]]` (default: every algorithm)

use std::{
    thread,
    time::{Duration, Instant},
};

#[path = "limits/signer.rs"]
mod limits;

use limits::signer;

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
    let mut algs: Vec<String> = std::env::args().skip(2).collect();
    if algs.is_empty() {
        algs = ["RS512", "RS256", "ES256", "EdDSA"]
            .map(String::from)
            .to_vec();
    }
    let cores = thread::available_parallelism().map_or(1, usize::from);
    println!("alg\tone_thread_per_s\tall_cores_per_s\tcores");
    for alg in &algs {
        let Some(sign) = signer(alg) else {
            eprintln!("sign_rate: unknown algorithm {alg} (RS512, RS256, ES256 or EdDSA)");
            std::process::exit(2);
        };
        let one = rate(sign.as_ref(), 1, seconds);
        let all = rate(sign.as_ref(), cores, seconds);
        println!("{alg}\t{one:.0}\t{all:.0}\t{cores}");
    }
}
