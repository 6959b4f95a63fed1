//! `tokendealerd`: arguments → logging → config → load → bind → run.

use std::{
    io::{IsTerminal, Write},
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
};

use clap::{Parser, Subcommand, ValueEnum};
use tokendealer_daemon::{Listeners, config::Config, local};

// Token issuance allocates a little per request on every worker thread; mimalloc's
// thread-local free lists keep that off the shared heap locks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sysexits.h EX_CONFIG: the configuration (or data it names) is unusable.
const EX_CONFIG: u8 = 78;

/// The tokendealer OAuth 2.0 client-credentials token service.
///
/// With no --config, runs in local mode from ./tokendealer-data/ (made on first start).
#[derive(Debug, Parser)]
// `name`: the binary's, not the package's (`tokendealer-daemon`), for `--version` and usage.
#[command(name = "tokendealerd", version, about)]
struct Cli {
    /// Run from this TOML config file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen on this address instead of the config's `listen`.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a config file and what it names (the clients file, the TLS certificate and
    /// key, the signing keys when they exist) as a start would, and exit: 0 when usable, 78
    /// with the problem otherwise.
    CheckConfig {
        /// The config file (else --config); not needed with --clients.
        file: Option<PathBuf>,
        /// Also (or only) validate this clients file.
        #[arg(long, value_name = "FILE")]
        clients: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// journald's native fields under systemd (JOURNAL_STREAM set), else text.
    Auto,
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held until exit: dropping it flushes the log lines still queued.
    let _log_guard = init_logging(cli.log_format);
    match cli.command {
        Some(Command::CheckConfig { file, clients }) => {
            let file = file.or(cli.config);
            if file.is_none() && clients.is_none() {
                return fail(
                    2,
                    "check-config needs a config file: `tokendealerd check-config FILE` (or --config FILE)",
                );
            }
            check_config(file.as_deref(), clients.as_deref())
        }
        None => serve(cli.config, cli.listen),
    }
}

fn init_logging(format: LogFormat) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt};
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOKENDEALER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Under systemd, stderr is connected to the journal and JOURNAL_STREAM says so; native
    // fields then beat text lines. Without the journal socket, fall back to text.
    if matches!(format, LogFormat::Auto)
        && std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(journald) = tracing_journald::layer()
    {
        // syslog's meaning of the levels: a token issued is information (6), not a notice (5)
        // worth an admin's attention, which is tracing-journald's default for INFO.
        // Our field names (client, kid, jti, listen…) clash with none of journald's own, so
        // they go unprefixed: `journalctl CLIENT=svc` rather than `F_CLIENT=svc`.
        let journald = journald.with_field_prefix(None);
        let journald = journald.with_priority_mappings(tracing_journald::PriorityMappings {
            info: tracing_journald::Priority::Informational,
            debug: tracing_journald::Priority::Debug,
            ..tracing_journald::PriorityMappings::new()
        });
        tracing_subscriber::registry()
            .with(filter)
            .with(journald)
            .init();
        return None;
    }
    // Colour only for a person at a terminal, and never when NO_COLOR is set.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    // A line per issued token: written from a thread of its own, so that request workers
    // never wait on stderr. Not lossy: under overload they wait rather than drop the record.
    // The writer thread drains every queued line and then flushes, so the buffer turns a
    // burst into one write(2) while a lone line still goes out at once.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Auto | LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Some(guard)
}

/// One sentence on stderr, then the exit code.
fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "tokendealerd: {message}");
    ExitCode::from(code)
}

fn check_config(file: Option<&std::path::Path>, clients: Option<&std::path::Path>) -> ExitCode {
    let mut clients = clients.map(std::path::Path::to_owned);
    if let Some(file) = file {
        match Config::load(file) {
            Ok(config) => {
                // What a start would load, and refuse with 78: the certificate and its key,
                // the signing keys already made (a first start makes them, so none is fine).
                if let Some(files) = &config.tls
                    && let Err(e) = tokendealer_daemon::http::tls::Tls::load(files)
                {
                    return fail(EX_CONFIG, e);
                }
                if let Err(e) = tokendealer_daemon::keys::KeyManager::check(&config.key_dir) {
                    return fail(EX_CONFIG, e);
                }
                let _ = writeln!(std::io::stdout(), "{}: ok", file.display());
                // A warning, as at start: systemd may pass a socket that `listen` does not name.
                if config.issuer.is_none() && config.listen.ip().is_unspecified() {
                    let _ = writeln!(
                        std::io::stderr(),
                        "tokendealerd: warning: {}",
                        tokendealer_daemon::WILDCARD_WITHOUT_ISSUER
                    );
                }
                if clients.is_none() {
                    clients = Some(config.clients_file);
                }
            }
            Err(e) => return fail(EX_CONFIG, e),
        }
    }
    if let Some(path) = clients {
        let checked = std::fs::read_to_string(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => format!(
                    "clients file {} does not exist; create it (a file holding only a comment means no clients)",
                    path.display()
                ),
                _ => format!("cannot read clients file {}: {e}", path.display()),
            })
            .and_then(|text| {
                tokendealer_shared::clients_file::parse(&text)
                    .map_err(|e| format!("clients file {} {e}", path.display()))
            });
        match checked {
            Ok(specs) => {
                let _ = writeln!(
                    std::io::stdout(),
                    "{}: ok ({})",
                    path.display(),
                    tokendealer_shared::count(specs.len() as u64, "client", "clients")
                );
            }
            Err(e) => return fail(EX_CONFIG, e),
        }
    }
    ExitCode::SUCCESS
}

fn serve(config_path: Option<PathBuf>, listen: Option<SocketAddr>) -> ExitCode {
    let (mut config, local_setup) = match config_path {
        Some(path) => match Config::load(&path) {
            Ok(config) => (config, None),
            Err(e) => return fail(EX_CONFIG, e),
        },
        None => match local::setup(std::path::Path::new(".")) {
            Ok(setup) => (setup.config.clone(), Some(setup)),
            Err(e) => return fail(EX_CONFIG, e),
        },
    };
    if let Some(listen) = listen {
        config.listen = listen;
    }
    // The demo secret made by this start is shown only by the banner. A start that fails
    // before it (the port is taken, say) removes the clients file holding its hash, so that
    // the next start makes and shows a new one rather than leaving a client nobody can use.
    let local_setup = local_setup.as_ref();
    let unshown = |code: ExitCode| {
        if let Some(setup) = local_setup.filter(|s| s.new_secret.is_some()) {
            match std::fs::remove_file(&setup.config.clients_file) {
                Ok(()) => tracing::info!(
                    file = %setup.config.clients_file.display(),
                    "removed the new demo client, whose secret was never shown; the next start makes another"
                ),
                Err(e) => tracing::warn!(
                    file = %setup.config.clients_file.display(),
                    error = %e,
                    "cannot remove the new demo client, whose secret was never shown; delete the file before the next start"
                ),
            }
        }
        code
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return unshown(fail(1, format!("cannot start the async runtime: {e}"))),
    };
    let code = runtime.block_on(async move {
        let signals = match tokendealer_daemon::Signals::install() {
            Ok(signals) => signals,
            Err(e) => return unshown(fail(1, format!("cannot install signal handlers: {e}"))),
        };
        tokendealer_daemon::systemd::starting();
        let loaded = match tokendealer_daemon::load(config.clone()).await {
            Ok(loaded) => loaded,
            Err(e) if e.is_config() => return unshown(fail(EX_CONFIG, e)),
            Err(e) => return unshown(fail(1, e)),
        };
        let listeners = match Listeners::from_env_or_bind(&config) {
            Ok(listeners) => listeners,
            Err(e) => return unshown(fail(1, e)),
        };
        if let Some(setup) = local_setup {
            let addr = listeners.http.local_addr().unwrap_or(config.listen);
            if let Err(e) = local::print_banner(setup, addr, &config.admin_socket) {
                // The banner is the only place a new demo secret is shown.
                if setup.new_secret.is_some() {
                    return unshown(fail(
                        1,
                        format!("cannot print the new demo client's secret ({e}); run again with stdout open"),
                    ));
                }
                tracing::warn!(error = %e, "cannot print the local-mode banner");
            }
        }
        match tokendealer_daemon::run(loaded, listeners, signals).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(1, e),
        }
    });
    // Dropping the runtime would wait for every blocking task, and a reload stuck on a hung
    // file system would keep a stopped daemon from exiting. Whatever is left gets a moment.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}
