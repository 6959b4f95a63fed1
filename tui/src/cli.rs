//! The scriptable subcommands. Human output is aligned text; `--json` prints one JSON
//! document. Errors are one sentence on stderr and exit 1; clap exits 2 on bad usage.

use std::{
    io::{self, Write},
    path::PathBuf,
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use tokendealer_shared::admin::{ReloadOutcome, Request, Response, Status};

use crate::client::{self, ClientError, Connection};

/// Administer a running tokendealerd over its admin socket.
#[derive(Debug, Parser)]
#[command(name = "tokendealer", version, about)]
pub struct Args {
    /// The daemon's admin socket [default: /run/tokendealer/admin.sock if it exists, else
    /// ./tokendealer-data/admin.sock].
    #[arg(long, global = true, env = "TOKENDEALER_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the daemon's version, addresses, clients file and keys.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Prints one sentence to stderr and returns exit code 1.
pub fn fail(message: impl std::fmt::Display) -> ExitCode {
    let _ = writeln!(io::stderr(), "tokendealer: {message}");
    ExitCode::FAILURE
}

pub async fn run(args: Args) -> ExitCode {
    let socket = client::discover(args.socket);
    // Until the dashboard exists, the bare command shows the same overview as `status`.
    let command = args.command.unwrap_or(Command::Status { json: false });
    let result = match command {
        Command::Status { json } => status(&socket, json).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

async fn status(socket: &std::path::Path, as_json: bool) -> Result<(), ClientError> {
    let mut conn = Connection::open(socket).await?;
    let Response::Status(status) = conn.request(Request::Status).await? else {
        return Err(ClientError::Unexpected);
    };
    let mut out = io::stdout().lock();
    let written = if as_json {
        writeln!(out, "{:#}", status_json(&status))
    } else {
        write_status(&mut out, &status)
    };
    // A closed pipe (`| head`) is not worth an error message.
    let _ = written;
    Ok(())
}

fn time(unix: i64) -> String {
    jiff::Timestamp::from_second(unix).map_or_else(|_| unix.to_string(), |t| t.to_string())
}

fn status_json(s: &Status) -> Value {
    let last_reload = match &s.last_reload {
        ReloadOutcome::Ok { at, clients } => {
            json!({ "ok": true, "at": time(*at), "clients": clients })
        }
        ReloadOutcome::Failed {
            at,
            file,
            line,
            reason,
        } => json!({ "ok": false, "at": time(*at), "file": file, "line": line, "reason": reason }),
    };
    json!({
        "version": s.version,
        "pid": s.pid,
        "uptime_secs": s.uptime_secs,
        "config_path": s.config_path,
        "listen": s.listen,
        "issuer": s.issuer,
        "algorithm": s.algorithm,
        "clients_file": s.clients_file,
        "clients": s.clients,
        "last_reload": last_reload,
        "keys": s.keys.iter().map(|k| json!({
            "kid": k.kid,
            "alg": k.alg,
            "state": k.state.as_str(),
            "created": time(k.created),
            "activated": k.activated.map(time),
            "retire_at": k.retire_at.map(time),
        })).collect::<Vec<_>>(),
    })
}

fn write_status(out: &mut impl Write, s: &Status) -> io::Result<()> {
    let uptime =
        tokendealer_shared::duration::format(std::time::Duration::from_secs(s.uptime_secs.max(1)));
    let last_reload = match &s.last_reload {
        ReloadOutcome::Ok { at, clients } => format!("ok at {} ({clients} clients)", time(*at)),
        ReloadOutcome::Failed {
            at,
            file,
            line,
            reason,
        } => format!(
            "FAILED at {}: {file}{}: {reason}",
            time(*at),
            line.map(|l| format!(" line {l}")).unwrap_or_default()
        ),
    };
    let rows = [
        (
            "daemon",
            format!("tokendealerd {} (pid {}), up {uptime}", s.version, s.pid),
        ),
        ("listen", s.listen.clone()),
        ("issuer", s.issuer.clone()),
        (
            "config",
            s.config_path
                .clone()
                .unwrap_or_else(|| "(local mode defaults)".into()),
        ),
        ("clients", format!("{} from {}", s.clients, s.clients_file)),
        ("last reload", last_reload),
        ("algorithm", s.algorithm.clone()),
    ];
    for (name, value) in rows {
        writeln!(out, "{name:<12} {value}")?;
    }
    writeln!(out)?;
    let header = ["KID", "ALG", "STATE", "CREATED", "ACTIVATED", "RETIRES"];
    let table: Vec<[String; 6]> = s
        .keys
        .iter()
        .map(|k| {
            [
                k.kid.clone(),
                k.alg.clone(),
                k.state.as_str().to_owned(),
                time(k.created),
                k.activated.map_or_else(|| "-".into(), time),
                k.retire_at.map_or_else(|| "-".into(), time),
            ]
        })
        .collect();
    write_table(out, &header, &table)
}

/// Writes rows under a header, each column as wide as its widest cell.
fn write_table<const N: usize>(
    out: &mut impl Write,
    header: &[&str; N],
    rows: &[[String; N]],
) -> io::Result<()> {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}
