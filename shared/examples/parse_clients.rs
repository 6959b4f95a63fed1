#![allow(clippy::print_stdout, reason = "a measurement reports on stdout")]

//! Times parsing and validating a clients file: `cargo run --release -p tokendealer-shared
//! --example parse_clients -- FILE`.

fn main() {
    let path = std::env::args().nth(1).expect("usage: parse_clients FILE");
    let text = std::fs::read_to_string(&path).expect("readable file");
    for _ in 0..3 {
        let start = std::time::Instant::now();
        let clients = tokendealer_shared::clients_file::parse(&text).expect("valid file");
        println!(
            "{} clients parsed and validated in {:?}",
            clients.len(),
            start.elapsed()
        );
    }
}
