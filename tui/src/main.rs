//! `tokendealer`: the admin tool for a running tokendealerd.

mod cli;
mod client;
mod dashboard;
mod render;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return cli::fail(format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(cli::run(args))
}
