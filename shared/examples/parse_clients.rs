#![allow(clippy::print_stdout, reason = "a measurement reports on stdout")]

//! Times parsing and validating a clients file: `cargo run --release -p tokendealer-shared
//! --example parse_clients -- FILE [ROUNDS]`.
//!
//! Wall time is what a reload waits for; CPU time (all threads, from `/proc/self/stat`) is
//! what it takes away from the token endpoint on a busy machine.

use std::time::{Duration, Instant};

// The daemon's allocator, so the figures are the daemon's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// User plus system time of this process so far, in clock ticks of 10 ms.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields 14 and 15 (utime, stime), counted after the parenthesised command name.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: parse_clients FILE [ROUNDS]");
    let rounds: u32 = args
        .next()
        .map_or(5, |r| r.parse().expect("ROUNDS is a number"));
    let text = std::fs::read_to_string(&path).expect("readable file");
    let mut best = Duration::MAX;
    for _ in 0..rounds {
        let (start, ticks) = (Instant::now(), cpu_ticks());
        let clients = tokendealer_shared::clients_file::parse(&text).expect("valid file");
        let (wall, cpu) = (start.elapsed(), (cpu_ticks() - ticks) * 10);
        best = best.min(wall);
        println!(
            "{} clients parsed and validated in {wall:.1?} (CPU {cpu} ms)",
            clients.len()
        );
    }
    println!("best of {rounds}: {best:.1?}");
}
