//! The scriptable subcommands. Human output is aligned text; `--json` prints one JSON
//! document. Errors are one sentence on stderr and exit 1; clap exits 2 on bad usage.

use std::{
    collections::BTreeMap,
    io::{self, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{CommandFactory, Parser, Subcommand};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokendealer_shared::{
    admin::{AdminError, ClientInfo, MAX_PAGE, ReloadOutcome, Request, Response},
    clients_file::check_client_id,
    frame::FrameError,
};

use crate::{
    client::{self, ClientError, Connection, Socket},
    render,
};

/// Administer a running tokendealerd over its admin socket.
#[derive(Debug, Parser)]
#[command(name = "tokendealer", version)]
pub struct Args {
    /// The daemon's admin socket [default: /run/tokendealer/admin.sock if it exists, else
    /// ./tokendealer-data/admin.sock].
    /// Also from $TOKENDEALER_SOCKET (an empty value counts as unset).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the daemon's version, listen address, clients file, keys and latest changes.
    Status,
    /// List and change the clients allowed to get tokens.
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// List, rotate and revoke the signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Re-read the config's key settings, TLS certificate and key, admin access lists and
    /// the clients file now, as SIGHUP does; exits 1 when any part fails to load.
    Reload,
    /// Print a shell completion script, e.g. `tokendealer completions bash > /etc/bash_completion.d/tokendealer`.
    Completions {
        /// The shell to complete commands for.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `tokendealer man | man -l -`.
    Man,
}

#[derive(Debug, Subcommand)]
enum ClientsCommand {
    /// List every client.
    List,
    /// Register a client; its new secret is printed once.
    Add {
        /// The client id (it may begin with `-`).
        #[arg(allow_hyphen_values = true)]
        id: String,
        /// An audience it may ask for (repeatable; "*" allows any).
        #[arg(long = "audience", value_name = "A")]
        audiences: Vec<String>,
        /// A scope it may ask for (repeatable).
        #[arg(long = "scope", value_name = "S")]
        scopes: Vec<String>,
        /// Lifetime of its tokens, e.g. 1h [default: the daemon's token_ttl].
        #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
        ttl: Option<Duration>,
    },
    /// Give a client a new secret, printed once.
    RotateSecret {
        /// The client id (it may begin with `-`).
        #[arg(allow_hyphen_values = true)]
        id: String,
        /// How long the old secret keeps working; 0 stops it at once.
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_overlap)]
        keep_old: Duration,
    },
    /// Refuse tokens to a client, keeping its registration.
    Disable {
        /// The client id (it may begin with `-`).
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Let a disabled client get tokens again.
    Enable {
        /// The client id (it may begin with `-`).
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Delete a client.
    Remove {
        /// The client id (it may begin with `-`).
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Register clients from a JSON object of client ids to secrets; only hashes are kept.
    Import {
        /// The seed, e.g. `{"svc": "SECRET"}`; an id already registered refuses it all.
        file: PathBuf,
        /// Accept secrets shorter than 32 characters (fewer than 128 bits of hex).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// List the published keys and their states.
    List,
    /// Promote the next key to active; the active one retires once its tokens expire.
    Rotate {
        /// Rotate before the next key may sign (published for jwks_max_age and 35 s):
        /// verifiers whose cached JWKS predates it will reject new tokens until they refetch.
        #[arg(long)]
        now: bool,
    },
    /// Drop a compromised key from the JWKS at once; tokens it signed stop verifying.
    Revoke {
        /// The key's id, as `keys list` shows it; a thumbprint may begin with `-`.
        #[arg(allow_hyphen_values = true)]
        kid: String,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    tokendealer_shared::duration::parse(s).map_err(|e| e.to_string())
}

/// A token lifetime: whole seconds, as the clients file keeps it (`1500ms` would be cut to
/// a second without a word), within the bounds the daemon enforces, so that a value it
/// would refuse is bad usage here (exit 2) like any other.
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let ttl = parse_duration(s)?;
    if ttl.subsec_nanos() != 0 {
        return Err(format!(
            "`{s}` is not a whole number of seconds; token lifetimes count whole seconds"
        ));
    }
    tokendealer_shared::clients_file::check_token_ttl(ttl)
        .map_err(|problem| format!("`{s}` {problem}"))?;
    Ok(ttl)
}

/// How long an old secret keeps working: any zero (`0`, `0s`) stops it at once, and no
/// more than a year, the longest the daemon keeps one.
fn parse_overlap(s: &str) -> Result<Duration, String> {
    use tokendealer_shared::duration::{self, DurationError};
    let overlap = match duration::parse(s) {
        Ok(overlap) => overlap,
        Err(DurationError::Zero { .. }) => return Ok(Duration::ZERO),
        Err(_) if s.trim() == "0" => return Ok(Duration::ZERO),
        Err(e) => return Err(e.to_string()),
    };
    if overlap > tokendealer_shared::clients_file::MAX_TOKEN_TTL {
        return Err(format!(
            "`{s}` is over a year; an old secret is kept at most a year"
        ));
    }
    Ok(overlap)
}

/// The shortest secret `import` takes without `--force`: 32 hex characters are 128 bits.
const MIN_SECRET_LEN: usize = 32;

/// Prints one sentence to stderr and returns exit code 1.
pub fn fail(message: impl std::fmt::Display) -> ExitCode {
    let _ = writeln!(io::stderr(), "tokendealer: {message}");
    ExitCode::FAILURE
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Input(String),
    /// Already reported (a reload that failed); exit 1 without another message.
    #[error("the reload failed")]
    Reported,
}

pub async fn run(args: Args) -> ExitCode {
    let socket = client::discover(args.socket);
    let Some(command) = args.command else {
        return match crate::dashboard::run(socket.path).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(format!("the dashboard failed: {e}")),
        };
    };
    let out = Output { json: args.json };
    let seed = match &command {
        Command::Clients(ClientsCommand::Import { file, .. }) => Some(file.clone()),
        _ => None,
    };
    match execute(&socket, command, &out).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Reported) => ExitCode::FAILURE,
        Err(e) => fail(advise(e, seed.as_deref())),
    }
}

/// A refusal of the daemon, with what to do next in this tool's terms (the daemon's own
/// words serve its log and the dashboard too). `seed` is the file of an import.
fn advise(e: CliError, seed: Option<&Path>) -> CliError {
    let CliError::Client(ClientError::Refused(refusal)) = &e else {
        return e;
    };
    let advice = match (refusal, seed) {
        (AdminError::ClientExists(id), Some(seed)) => format!(
            "{refusal}, so nothing was imported (an import is all or none); take it out of {} and import again, or rotate its secret with `tokendealer clients rotate-secret {id}`",
            seed.display()
        ),
        (AdminError::ClientExists(id), None) => format!(
            "{refusal}; choose another id, or rotate its secret with `tokendealer clients rotate-secret {id}`"
        ),
        (AdminError::NoSuchClient(_), _) => {
            format!("{refusal}; `tokendealer clients list` shows the registered ones")
        }
        (AdminError::NoSuchKey(_), _) => {
            format!("{refusal}; `tokendealer keys list` shows the published ones")
        }
        _ => return e,
    };
    CliError::Input(advice)
}

/// Prints either the human text or the JSON document of a result.
struct Output {
    json: bool,
}

impl Output {
    /// Prints a result; a failure to is told as [`written`] says.
    fn print(
        &self,
        json: impl FnOnce() -> Value,
        text: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<(), CliError> {
        written(self.write(json, text), "the output")
    }

    /// Prints a result that holds a secret, which exists nowhere else: failing to print it
    /// is an error that says how to get another.
    fn print_secret(
        &self,
        id: &str,
        json: impl FnOnce() -> Value,
        text: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<(), CliError> {
        self.write(json, text).map_err(|e| {
            CliError::Input(format!(
                "the new secret of `{id}` could not be printed ({e}) and is stored nowhere; get another with `tokendealer clients rotate-secret {id} --keep-old 0`"
            ))
        })
    }

    fn write(
        &self,
        json: impl FnOnce() -> Value,
        text: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        // Buffered: stdout is line-buffered, and `clients list` of 100 000 clients is
        // millions of lines, each its own write(2) otherwise.
        let mut out = io::BufWriter::new(io::stdout().lock());
        if self.json {
            writeln!(out, "{:#}", json())
        } else {
            text(&mut out)
        }
        .and_then(|()| out.flush())
    }
}

/// Refuses, before anything is asked of the daemon, a command whose new secret would go to
/// /dev/null: it is stored nowhere else. A closed stdout (`>&-`) looks the same, as Rust's
/// runtime reopens a closed fd 0–2 on /dev/null, and there writes succeed.
fn refuse_to_lose_a_secret(id: &str) -> Result<(), CliError> {
    use std::os::{
        fd::AsFd,
        unix::fs::{FileTypeExt, MetadataExt},
    };
    let stdout = io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| std::fs::File::from(fd).metadata());
    let is_null = match (stdout, std::fs::metadata("/dev/null")) {
        (Ok(out), Ok(null)) => out.file_type().is_char_device() && out.rdev() == null.rdev(),
        _ => false,
    };
    if is_null {
        return Err(CliError::Input(format!(
            "the output goes to /dev/null (or is closed), where the new secret of `{id}` would be lost: it is stored nowhere else; send the output to a terminal, a file or a pipe"
        )));
    }
    Ok(())
}

/// The outcome of writing `what` to stdout: a closed pipe (`| head`) is not worth an error
/// message; any other failure (a full disk) is, and exit status 1.
fn written(result: io::Result<()>, what: &str) -> Result<(), CliError> {
    match result {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(CliError::Input(format!("cannot write {what}: {e}")))
        }
        _ => Ok(()),
    }
}

fn unexpected() -> CliError {
    ClientError::Unexpected.into()
}

async fn execute(socket: &Socket, command: Command, out: &Output) -> Result<(), CliError> {
    // Generated from the same definitions as the parser, so they never drift from it.
    match &command {
        Command::Completions { shell } => {
            // Into a buffer first: clap_complete panics on a failed write.
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Args::command(), "tokendealer", &mut script);
            let mut out = io::stdout().lock();
            return written(
                out.write_all(&script).and_then(|()| out.flush()),
                "the completion script",
            );
        }
        Command::Man => {
            let mut page = Vec::new();
            write_man(&mut page)?;
            let mut out = io::stdout().lock();
            return written(
                out.write_all(&page).and_then(|()| out.flush()),
                "the manual page",
            );
        }
        _ => {}
    }
    // Input that can be checked here is checked before the daemon is involved.
    let import = match &command {
        Command::Clients(ClientsCommand::Import { file, force }) => Some(read_seed(file, *force)?),
        _ => None,
    };
    let mut conn = Connection::open_found(socket).await?;
    match command {
        Command::Status => {
            let Response::Status(status) = conn.request(Request::Status).await? else {
                return Err(unexpected());
            };
            out.print(
                || render::status_json(&status),
                |w| render::write_status(w, &status),
            )?;
        }
        Command::Reload => {
            let Response::Reloaded(outcome) = conn.request(Request::Reload).await? else {
                return Err(unexpected());
            };
            out.print(
                || render::reload_json(&outcome),
                |w| writeln!(w, "{}", render::reload_text(&outcome)),
            )?;
            if let ReloadOutcome::Failed {
                file, line, reason, ..
            } = &outcome
            {
                let line = line.map(|l| format!(" line {l}")).unwrap_or_default();
                // A config or certificate reason names its file itself.
                let place = if reason.contains(file.as_str()) {
                    String::new()
                } else {
                    format!("{file}{line}: ")
                };
                let _ = writeln!(
                    io::stderr(),
                    "tokendealer: reload failed: {place}{reason}; the daemon keeps serving with what it had"
                );
                return Err(CliError::Reported);
            }
        }
        Command::Keys(KeysCommand::List) => {
            let Response::Keys(keys) = conn.request(Request::ListKeys).await? else {
                return Err(unexpected());
            };
            out.print(
                || Value::Array(keys.iter().map(render::key_json).collect()),
                |w| render::write_keys(w, &keys),
            )?;
        }
        Command::Keys(KeysCommand::Rotate { now }) => {
            let Response::KeyRotated {
                active,
                retiring,
                next,
                next_may_sign_at,
            } = conn.request(Request::RotateKey { now }).await?
            else {
                return Err(unexpected());
            };
            out.print(
                || {
                    json!({
                        "active": active,
                        "retiring": retiring.as_ref().map(|(kid, at)| json!({ "kid": kid, "retire_at": render::time(*at) })),
                        "next": next,
                        "next_may_sign_at": render::time(next_may_sign_at),
                    })
                },
                |w| {
                    writeln!(w, "key {active} now signs")?;
                    if let Some((kid, at)) = &retiring {
                        writeln!(
                            w,
                            "key {kid} is retiring: it stays in the JWKS until {}, when every token it signed has expired",
                            render::time(*at)
                        )?;
                    }
                    writeln!(
                        w,
                        "key {next} is published as next and may sign from {}",
                        render::time(next_may_sign_at)
                    )
                },
            )?;
        }
        Command::Keys(KeysCommand::Revoke { kid }) => {
            let Response::KeyRevoked {
                kid,
                former_state,
                active,
            } = conn.request(Request::RevokeKey { kid }).await?
            else {
                return Err(unexpected());
            };
            out.print(
                || json!({ "revoked": kid, "former_state": former_state.as_str(), "active": active }),
                |w| {
                    writeln!(
                        w,
                        "key {kid} ({}) is revoked and gone from the JWKS: tokens it signed no longer verify",
                        former_state.as_str()
                    )?;
                    writeln!(w, "key {active} signs")
                },
            )?;
        }
        Command::Clients(ClientsCommand::List) => {
            let clients = list_all(&mut conn).await?;
            out.print(
                || Value::Array(clients.iter().map(render::client_json).collect()),
                |w| render::write_clients(w, &clients),
            )?;
        }
        Command::Clients(ClientsCommand::Add {
            id,
            audiences,
            scopes,
            ttl,
        }) => {
            refuse_to_lose_a_secret(&id)?;
            let request = Request::AddClient {
                id,
                audiences,
                scopes,
                ttl_secs: ttl.map(|t| t.as_secs()),
            };
            let Response::ClientAdded { id, secret } = conn.request(request).await? else {
                return Err(unexpected());
            };
            out.print_secret(
                &id,
                || json!({ "id": id, "secret": secret }),
                |w| {
                    writeln!(
                        w,
                        "client `{id}` added; its secret is shown this once (only its hash is stored):"
                    )?;
                    writeln!(w, "{secret}")
                },
            )?;
        }
        Command::Clients(ClientsCommand::RotateSecret { id, keep_old }) => {
            refuse_to_lose_a_secret(&id)?;
            let request = Request::RotateSecret {
                id,
                keep_old_secs: tokendealer_shared::duration::secs_rounded_up(keep_old),
            };
            let Response::SecretRotated {
                id,
                secret,
                old_valid_until,
            } = conn.request(request).await?
            else {
                return Err(unexpected());
            };
            out.print_secret(
                &id,
                || json!({ "id": id, "secret": secret, "old_valid_until": old_valid_until.map(render::time) }),
                |w| {
                    writeln!(
                        w,
                        "client `{id}` has a new secret, shown this once (only its hash is stored):"
                    )?;
                    writeln!(w, "{secret}")?;
                    match old_valid_until {
                        Some(t) => writeln!(w, "the old secret keeps working until {}", render::time(t)),
                        None => writeln!(w, "the old secret no longer works"),
                    }
                },
            )?;
        }
        Command::Clients(ClientsCommand::Disable { id }) => {
            let request = Request::DisableClient { id: id.clone() };
            done(&mut conn, out, request, &id, "disabled").await?;
        }
        Command::Clients(ClientsCommand::Enable { id }) => {
            let request = Request::EnableClient { id: id.clone() };
            done(&mut conn, out, request, &id, "enabled").await?;
        }
        Command::Clients(ClientsCommand::Remove { id }) => {
            let request = Request::RemoveClient { id: id.clone() };
            done(&mut conn, out, request, &id, "removed").await?;
        }
        Command::Completions { .. } | Command::Man => unreachable!("handled above"),
        Command::Clients(ClientsCommand::Import { .. }) => {
            let clients = import.unwrap_or_default();
            let total = clients.len();
            let imported = conn.request(Request::ImportClients { clients }).await;
            let Response::Imported { count } = (match imported {
                // One request carries the import, so that it is all or none.
                Err(ClientError::Frame(FrameError::TooLarge(_))) => {
                    return Err(CliError::Input(format!(
                        "{total} clients are more than one import carries (1 MiB, about 20 000 clients); split the file and import the parts one by one (each is all or none)"
                    )));
                }
                other => other?,
            }) else {
                return Err(unexpected());
            };
            out.print(
                || json!({ "imported": count }),
                |w| {
                    writeln!(
                        w,
                        "imported {} (only their secrets' hashes are stored)",
                        tokendealer_shared::count(count, "client", "clients")
                    )
                },
            )?;
        }
    }
    Ok(())
}

/// The one manual page shipped, tokendealer(1). clap_mangen's own list of subcommands
/// names a page per subcommand (tokendealer-reload(1)…) that nobody ships: every command is
/// described here instead, with its arguments.
fn write_man(out: &mut Vec<u8>) -> Result<(), CliError> {
    const SUBCOMMANDS: &[u8] = b".SH SUBCOMMANDS\n";
    let mut cmd = Args::command();
    cmd.build();
    let mut page = Vec::new();
    written(
        clap_mangen::Man::new(cmd.clone()).render(&mut page),
        "the manual page",
    )?;
    // clap_mangen's SUBCOMMANDS section runs up to the next section (VERSION).
    let start = page
        .windows(SUBCOMMANDS.len())
        .position(|w| w == SUBCOMMANDS)
        .unwrap_or(page.len());
    let end = page[start..]
        .windows(5)
        .skip(1)
        .position(|w| w == b"\n.SH ")
        .map_or(page.len(), |i| start + i + 2);
    out.extend_from_slice(&page[..start]);
    out.extend_from_slice(b".SH COMMANDS\n");
    man_commands(out, &cmd);
    out.extend_from_slice(
        b".SH \"SEE ALSO\"\n\
          The README, which covers tokendealerd as well: /usr/share/doc/tokendealer/README.md\n",
    );
    out.extend_from_slice(&page[end..]);
    Ok(())
}

/// Every command that does something, as `.TP` entries: its words and arguments, what it
/// does, then each of its own arguments (not the global ones) indented.
fn man_commands(out: &mut Vec<u8>, parent: &clap::Command) {
    let own = |cmd: &clap::Command| -> Vec<clap::Arg> {
        cmd.get_arguments()
            .filter(|a| !a.is_global_set() && !a.is_hide_set())
            .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
            .cloned()
            .collect()
    };
    for cmd in parent.get_subcommands() {
        if cmd.is_hide_set() || cmd.get_name() == "help" {
            continue;
        }
        if cmd.has_subcommands() {
            man_commands(out, cmd);
            continue;
        }
        let name = cmd.get_bin_name().unwrap_or_else(|| cmd.get_name());
        let mut synopsis = format!("\\fB{}\\fR", roff_escape(name));
        let args = own(cmd);
        // Each argument as written: `ID`, `--force`, `--ttl DURATION`.
        let terms: Vec<String> = args
            .iter()
            .map(|arg| {
                let value = arg
                    .get_value_names()
                    .and_then(|names| names.first())
                    .map_or_else(|| arg.get_id().as_str().to_uppercase(), ToString::to_string);
                let value = format!("\\fI{}\\fR", roff_escape(&value));
                match arg.get_long() {
                    None => value,
                    Some(long) if !arg.get_action().takes_values() => {
                        format!("\\fB\\-\\-{}\\fR", roff_escape(long))
                    }
                    Some(long) => format!("\\fB\\-\\-{}\\fR {value}", roff_escape(long)),
                }
            })
            .collect();
        for (arg, term) in args.iter().zip(&terms) {
            synopsis.push(' ');
            if arg.get_long().is_none() {
                synopsis.push_str(term);
            } else {
                synopsis.push_str(&format!("[{term}]"));
            }
            if matches!(arg.get_action(), clap::ArgAction::Append) {
                synopsis.push_str("...");
            }
        }
        let _ = writeln!(out, ".TP\n{synopsis}");
        if let Some(about) = cmd.get_long_about().or_else(|| cmd.get_about()) {
            let _ = writeln!(out, "{}", roff_text(&about.to_string()));
        }
        if args.is_empty() {
            continue;
        }
        let _ = writeln!(out, ".RS");
        for (arg, term) in args.iter().zip(terms) {
            let mut help = arg
                .get_long_help()
                .or_else(|| arg.get_help())
                .map(ToString::to_string)
                .unwrap_or_default();
            let values: Vec<String> = arg
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| v.get_name().to_owned())
                .collect();
            if !values.is_empty() {
                help.push_str(&format!(" [possible values: {}]", values.join(", ")));
            }
            // A flag's default (`false`) says nothing.
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            if arg.get_action().takes_values() && !defaults.is_empty() {
                help.push_str(&format!(" [default: {}]", defaults.join(", ")));
            }
            let _ = writeln!(out, ".TP\n{term}\n{}", roff_text(help.trim()));
        }
        let _ = writeln!(out, ".RE");
    }
}

/// Text for a roff line: escapes, and no control character at its start.
fn roff_text(text: &str) -> String {
    text.lines()
        .map(|line| {
            let line = roff_escape(line.trim());
            if line.starts_with(['.', '\'']) {
                format!("\\&{line}")
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn roff_escape(text: &str) -> String {
    text.replace('\\', "\\e").replace('-', "\\-")
}

async fn done(
    conn: &mut Connection,
    out: &Output,
    request: Request,
    id: &str,
    what: &str,
) -> Result<(), CliError> {
    let Response::Done = conn.request(request).await? else {
        return Err(unexpected());
    };
    out.print(
        || json!({ "id": id, "ok": true }),
        |w| writeln!(w, "client `{id}` {what}"),
    )?;
    Ok(())
}

async fn list_all(conn: &mut Connection) -> Result<Vec<ClientInfo>, ClientError> {
    let mut all: Vec<ClientInfo> = Vec::new();
    loop {
        let after = all.last().map(|c| c.id.clone());
        let request = Request::ListClients {
            after,
            limit: MAX_PAGE,
        };
        let Response::Clients { clients, total } = conn.request(request).await? else {
            return Err(ClientError::Unexpected);
        };
        let last_page = clients.is_empty() || (all.len() + clients.len()) as u64 >= total;
        all.extend(clients);
        if last_page {
            return Ok(all);
        }
    }
}

/// Reads the seed's `{"client_id": "secret"}` file and hashes the secrets here, so that no
/// secret crosses the socket.
fn read_seed(file: &Path, force: bool) -> Result<Vec<(String, [u8; 32])>, CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Input(format!("cannot read {}: {e}", file.display())))?;
    let SeedEntries(entries) = serde_json::from_str(&text).map_err(|e| {
        CliError::Input(format!(
            "{} is not a JSON object of client ids to secret strings: {e}",
            file.display()
        ))
    })?;
    // A JSON object may name a key twice, and a map would keep the last silently: the client
    // would get a secret other than the one its owner was given for it.
    let mut seed = BTreeMap::new();
    for (id, secret) in entries {
        check_client_id(&id)
            .map_err(|e| CliError::Input(format!("{}: client `{id}`: {e}", file.display())))?;
        // No secret is weaker than none: `curl -u id:` would get a token.
        if secret.is_empty() {
            return Err(CliError::Input(format!(
                "{}: client `{id}` has an empty secret; give it one",
                file.display()
            )));
        }
        if seed.insert(id.clone(), secret).is_some() {
            return Err(CliError::Input(format!(
                "{}: client `{id}` is listed twice; keep one of its entries",
                file.display()
            )));
        }
    }
    if seed.is_empty() {
        return Err(CliError::Input(format!(
            "{} holds no clients",
            file.display()
        )));
    }
    let weak: Vec<&str> = seed
        .iter()
        .filter(|(_, secret)| secret.len() < MIN_SECRET_LEN)
        .map(|(id, _)| id.as_str())
        .collect();
    if !weak.is_empty() && !force {
        return Err(CliError::Input(format!(
            "the secrets of {} are shorter than {MIN_SECRET_LEN} characters (under 128 bits); give longer ones, or pass --force and rotate them after importing",
            weak.join(", ")
        )));
    }
    Ok(seed
        .into_iter()
        .map(|(id, secret)| (id, Sha256::digest(secret.as_bytes()).into()))
        .collect())
}

/// The seed's `{"client_id": "secret"}` object as written, every entry kept in order,
/// duplicates too (serde's maps keep the last of a duplicated key without a word).
struct SeedEntries(Vec<(String, String)>);

impl<'de> serde::Deserialize<'de> for SeedEntries {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;

        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = SeedEntries;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of client ids to secret strings")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(SeedEntries(entries))
            }
        }

        deserializer.deserialize_map(Entries)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn lifetimes_and_overlaps_are_taken_as_they_will_be_kept() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        let err = parse_ttl("1500ms").unwrap_err();
        assert!(err.contains("whole number of seconds"), "{err}");
        // The daemon's bounds, refused here as bad usage (exit 2) rather than by it (exit 1).
        let err = parse_ttl("400d").unwrap_err();
        assert!(err.contains("`400d` is over a year"), "{err}");
        assert_eq!(parse_ttl("366d"), Ok(Duration::from_secs(366 * 86_400)));
        assert!(parse_ttl("0s").is_err());
        for zero in ["0", "0s", "0h"] {
            assert_eq!(parse_overlap(zero), Ok(Duration::ZERO), "{zero}");
        }
        assert_eq!(parse_overlap("2h"), Ok(Duration::from_secs(7200)));
        let err = parse_overlap("10000d").unwrap_err();
        assert!(err.contains("over a year"), "{err}");
        assert!(parse_overlap("soon").is_err());
    }

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("tokendealer").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    // A key id is a base64url thumbprint and a client id may hold `-`: either can begin
    // with one and must still be taken as the value, with options on either side of it.
    #[test]
    fn ids_beginning_with_a_hyphen_are_values() {
        for args in [
            &["keys", "revoke", "-qZ1"][..],
            &["keys", "revoke", "--json", "-qZ1"],
            &["keys", "revoke", "-qZ1", "--json"],
        ] {
            let parsed = parse(args);
            assert!(
                matches!(&parsed.command, Some(Command::Keys(KeysCommand::Revoke { kid })) if kid == "-qZ1"),
                "{args:?}: {parsed:?}"
            );
            assert_eq!(parsed.json, args.contains(&"--json"), "{args:?}");
        }
        for args in [
            &["clients", "add", "-x", "--scope", "a"][..],
            &["clients", "add", "--scope", "a", "-x"],
        ] {
            let parsed = parse(args);
            assert!(
                matches!(&parsed.command, Some(Command::Clients(ClientsCommand::Add { id, scopes, .. }))
                    if id == "-x" && scopes == &["a"]),
                "{args:?}: {parsed:?}"
            );
        }
        let parsed = parse(&["clients", "disable", "-x", "--json"]);
        assert!(parsed.json);
        assert!(
            matches!(&parsed.command, Some(Command::Clients(ClientsCommand::Disable { id })) if id == "-x"),
            "{parsed:?}"
        );
    }
}
