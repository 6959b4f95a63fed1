//! Local mode: `tokendealerd` with no `--config` keeps everything in `./tokendealer-data/`,
//! made on first start and reused after, so a newcomer needs no setup at all.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use tokendealer_shared::clients_file::format_hash;

use crate::{
    clients::{self, hash_secret},
    config::Config,
    fsio,
};

/// The data directory, relative to the working directory.
pub const DATA_DIR: &str = "tokendealer-data";
/// The client made on first start.
pub const DEMO_CLIENT: &str = "demo";

const LOCAL_CONFIG: &str = r#"# tokendealerd local mode: made on first start, read on every start after.
# Every key is optional; README.md lists them all. Relative paths are relative to this file.
listen       = "127.0.0.1:8080"
admin_socket = "admin.sock"
clients_file = "clients.toml"
key_dir      = "keys"
"#;

/// What local mode set up.
#[derive(Debug)]
pub struct LocalSetup {
    pub dir: PathBuf,
    pub config: Config,
    /// The demo client's secret, when it was made by this start (it is shown once).
    pub new_secret: Option<String>,
}

/// Why local mode could not set up its directory.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot set up {}: {source}; run from a directory you can write to, or pass --config FILE", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// Makes (first start) or reuses (later starts) the local data directory under `base`.
pub fn setup(base: &Path) -> Result<LocalSetup, LocalError> {
    let dir = std::path::absolute(base.join(DATA_DIR)).map_err(|source| LocalError::Io {
        path: base.join(DATA_DIR),
        source,
    })?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| LocalError::Io { path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io(&dir))?;
    let config_path = dir.join("config.toml");
    if !config_path.exists() {
        fsio::write_atomic(&config_path, LOCAL_CONFIG.as_bytes(), 0o600)
            .map_err(io(&config_path))?;
    }
    let config = Config::load(&config_path)?;
    let new_secret = if config.clients_file.exists() {
        None
    } else {
        let secret = clients::new_secret();
        let text = format!(
            "# Who may get tokens. Only SHA-256 hashes of secrets are kept here, never a secret.\n\
             # The daemon loads it again as soon as it is saved.\n\
             \n\
             [clients.{DEMO_CLIENT}]\n\
             secret_hashes = [\"{}\"]\n\
             audiences     = [\"*\"]\n\
             scopes        = [\"demo:read\", \"demo:write\"]\n",
            format_hash(&hash_secret(&secret))
        );
        fsio::write_atomic(&config.clients_file, text.as_bytes(), 0o600)
            .map_err(io(&config.clients_file))?;
        Some(secret)
    };
    Ok(LocalSetup {
        dir,
        config,
        new_secret,
    })
}

/// Tells the newcomer what was made and how to use it, once the port is known.
pub fn print_banner(
    setup: &LocalSetup,
    listen: std::net::SocketAddr,
    admin_socket: &Path,
) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "tokendealerd local mode: data in {}",
        setup.dir.display()
    )?;
    let credentials = match &setup.new_secret {
        Some(secret) => {
            writeln!(
                out,
                "created client `{DEMO_CLIENT}`; its secret is shown this once (only its hash is stored):"
            )?;
            writeln!(out, "  {secret}")?;
            format!("{DEMO_CLIENT}:{secret}")
        }
        None => {
            writeln!(
                out,
                "clients are in {}",
                setup.config.clients_file.display()
            )?;
            "CLIENT_ID:SECRET".to_owned()
        }
    };
    writeln!(out, "get a token:")?;
    writeln!(
        out,
        "  curl -s -u {credentials} -d grant_type=client_credentials http://{listen}/oauth/token"
    )?;
    let tool = format!(
        "{} --socket {}",
        admin_tool().display(),
        admin_socket.display()
    );
    if setup.new_secret.is_none() {
        // The secret was shown by the first start only; whoever lost it gets a new one.
        writeln!(
            out,
            "lost the secret of `{DEMO_CLIENT}`? this prints a new one:"
        )?;
        writeln!(out, "  {tool} clients rotate-secret {DEMO_CLIENT}")?;
    }
    writeln!(
        out,
        "open the dashboard (add `status` for a one-shot summary):"
    )?;
    writeln!(out, "  {tool}")?;
    out.flush()
}

/// How to run the admin tool from here: `tokendealer` when it is on `PATH`, else the one
/// built beside this binary (after `cargo run`, `target/release/tokendealer`), whose path
/// pastes where the bare name would be "command not found".
fn admin_tool() -> PathBuf {
    const NAME: &str = "tokendealer";
    let on_path = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| is_program(&dir.join(NAME))));
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(NAME)))
        .filter(|tool| is_program(tool));
    match beside {
        Some(tool) if !on_path => tool,
        _ => PathBuf::from(NAME),
    }
}

fn is_program(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_setup_makes_a_client_and_the_second_reuses_it() {
        let base = tempfile::tempdir().unwrap();
        let first = setup(base.path()).unwrap();
        let secret = first.new_secret.clone().unwrap();
        assert!(secret.len() >= 32, "at least 128 bits of hex");
        let text = fs::read_to_string(&first.config.clients_file).unwrap();
        assert!(!text.contains(&secret), "no plaintext secret on disk");
        assert!(text.contains(&format_hash(&hash_secret(&secret))));
        let second = setup(base.path()).unwrap();
        assert!(second.new_secret.is_none());
        assert_eq!(
            fs::read_to_string(&second.config.clients_file).unwrap(),
            text
        );
    }
}
