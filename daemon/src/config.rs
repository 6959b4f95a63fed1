//! The daemon's configuration: a TOML file in which every key is optional.
//!
//! Read in two stages: `RawConfig` is the file as written (serde, unknown keys refused,
//! every value spanned so a bad one can be pointed at), [`Config`] the validated result.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

use crate::keys::{RsaBits, SigningAlg};
use tokendealer_shared::duration;

/// The default lifetime of an access token (the seed's 24 hours).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// The default JWKS `Cache-Control: max-age`, which is also how long a next key is
/// published before it may sign.
pub const DEFAULT_JWKS_MAX_AGE: Duration = Duration::from_secs(15 * 60);
pub use tokendealer_shared::clients_file::MAX_TOKEN_TTL;
/// The longest JWKS `max-age` accepted: a week.
pub const MAX_JWKS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_ADMIN_SOCKET: &str = "/run/tokendealer/admin.sock";
const DEFAULT_CLIENTS_FILE: &str = "/etc/tokendealer/clients.toml";
const DEFAULT_KEY_DIR: &str = "/var/lib/tokendealer/keys";
/// Well under a default `LimitNOFILE=` hard limit (524288), well over what one host sends.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest `read_timeout` and `idle_timeout`.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    issuer: Option<Spanned<String>>,
    listen: Option<Spanned<String>>,
    admin_socket: Option<PathBuf>,
    clients_file: Option<PathBuf>,
    key_dir: Option<PathBuf>,
    algorithm: Option<Spanned<String>>,
    token_ttl: Option<Spanned<String>>,
    jwks_max_age: Option<Spanned<String>>,
    rotate_every: Option<Spanned<String>>,
    rsa_bits: Option<Spanned<u32>>,
    default_audience: Option<Spanned<String>>,
    #[serde(default)]
    admin_uids: Vec<u32>,
    #[serde(default)]
    admin_gids: Vec<u32>,
    #[serde(default)]
    admin_groups: Vec<Spanned<String>>,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    tls_cert: Option<Spanned<PathBuf>>,
    tls_key: Option<Spanned<PathBuf>>,
    max_connections: Option<Spanned<u32>>,
    read_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    #[serde(default)]
    metrics_by_client: bool,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, if any.
    pub path: Option<PathBuf>,
    /// `None` means "derived from the bound HTTP address" (`http://ADDR`).
    pub issuer: Option<String>,
    pub listen: SocketAddr,
    pub admin_socket: PathBuf,
    pub clients_file: PathBuf,
    pub key_dir: PathBuf,
    pub algorithm: SigningAlg,
    pub token_ttl: Duration,
    pub jwks_max_age: Duration,
    pub rotate_every: Option<Duration>,
    pub rsa_bits: RsaBits,
    /// `None` means "the issuer".
    pub default_audience: Option<String>,
    /// Besides root and the daemon's own uid, who may use the admin socket.
    pub admin_uids: Vec<u32>,
    /// Groups whose members may use the admin socket: `admin_gids` and the gids of the
    /// `admin_groups` names, resolved when the config is read.
    pub admin_gids: Vec<u32>,
    /// The `admin_groups` names and the gid each resolved to (`None`: not found at a
    /// reload, see [`Config::load_for_reload`]).
    pub admin_groups: Vec<(String, Option<u32>)>,
    /// Peers whose `X-Forwarded-For` is believed when throttling.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Certificate chain and key (PEM) when the HTTP listener speaks TLS.
    pub tls: Option<TlsFiles>,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: u32,
    /// How long a client may take to send a request's headers, and its body.
    pub read_timeout: Duration,
    /// How long a kept-alive connection may sit with no request before it is closed.
    pub idle_timeout: Duration,
    /// Whether `/metrics` counts tokens per client, naming each client that got one.
    /// Off by default: the endpoint is unauthenticated, and client ids are not to be
    /// learned from outside (the token endpoint answers the same for unknown clients).
    pub metrics_by_client: bool,
}

/// What a name in `admin_groups` that cannot be looked up does to reading a config.
#[derive(Debug, Clone, Copy)]
enum Groups {
    /// Refuses it (a start, check-config).
    Required,
    /// Reads the rest, and says so apart (a reload).
    Apart,
}

/// Where the HTTP listener's certificate chain and private key are (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A config that cannot be used. Displayed as one sentence naming file and line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {}{}: {message}", path.display(), line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
}

impl Config {
    /// Reads and validates a config file. Relative paths in it are relative to its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::read(path, Groups::Required).map(|(config, _)| config)
    }

    /// [`Config::load`] for a reload: an `admin_groups` name that cannot be looked up (NSS
    /// briefly unreachable, a group deleted) does not hold back the rest of the config. It
    /// comes back apart, and the config's `admin_gids` are then incomplete: the caller keeps
    /// the access lists it had.
    pub fn load_for_reload(path: &Path) -> Result<(Self, Option<ConfigError>), ConfigError> {
        Self::read(path, Groups::Apart)
    }

    fn read(path: &Path, groups: Groups) -> Result<(Self, Option<ConfigError>), ConfigError> {
        // Named whole in errors, `status` and the log, which are read from elsewhere than
        // the directory the daemon was started in.
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse_with(&text, Some(&path), groups)
    }

    /// Validates config text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::parse_with(text, path, Groups::Required).map(|(config, _)| config)
    }

    fn parse_with(
        text: &str,
        path: Option<&Path>,
        groups: Groups,
    ) -> Result<(Self, Option<ConfigError>), ConfigError> {
        let shown = path.map_or_else(|| PathBuf::from("<config>"), Path::to_owned);
        let invalid =
            |span: Option<std::ops::Range<usize>>, message: String| ConfigError::Invalid {
                path: shown.clone(),
                line: span.map(|s| line_of(text, s.start)),
                message,
            };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| invalid(e.span(), toml_message(text, &e)))?;
        let base = path
            .and_then(Path::parent)
            .map(Path::to_owned)
            .unwrap_or_default();
        let resolve = |p: Option<PathBuf>, default: &str| {
            let p = p.unwrap_or_else(|| PathBuf::from(default));
            if p.is_relative() { base.join(p) } else { p }
        };
        let dur = |v: &Spanned<String>, key: &str| {
            duration::parse(v.get_ref())
                .map_err(|e| invalid(Some(v.span()), format!("`{key}`: {e}")))
        };

        let issuer = raw
            .issuer
            .map(|v| {
                check_issuer(v.get_ref())
                    .map_err(|m| invalid(Some(v.span()), m))
                    .map(|()| v.into_inner())
            })
            .transpose()?;
        let listen = match raw.listen {
            None => DEFAULT_LISTEN.parse().expect("valid default"),
            Some(v) => v.get_ref().parse().map_err(|_| {
                invalid(
                    Some(v.span()),
                    format!(
                        "`listen` = \"{}\" is not an address like \"127.0.0.1:8080\"",
                        v.get_ref()
                    ),
                )
            })?,
        };
        let algorithm = match raw.algorithm {
            None => SigningAlg::RS512,
            Some(v) => v
                .get_ref()
                .parse()
                .map_err(|m| invalid(Some(v.span()), m))?,
        };
        let token_ttl = raw
            .token_ttl
            .map(|v| {
                let d = dur(&v, "token_ttl")?;
                tokendealer_shared::clients_file::check_token_ttl(d).map_err(|m| {
                    invalid(
                        Some(v.span()),
                        format!("`token_ttl` = \"{}\" {m}", v.get_ref()),
                    )
                })?;
                Ok(d)
            })
            .transpose()?
            .unwrap_or(DEFAULT_TOKEN_TTL);
        let jwks_max_age = raw
            .jwks_max_age
            .map(|v| {
                let d = dur(&v, "jwks_max_age")?;
                // A typo of "15d" for "15m" would hold every rotation back for weeks.
                if d > MAX_JWKS_MAX_AGE {
                    return Err(invalid(
                        Some(v.span()),
                        format!(
                            "`jwks_max_age` = \"{}\" is over a week: a next key waits that long before it signs, and verifiers keep a JWKS that long; give at most 7d",
                            v.get_ref()
                        ),
                    ));
                }
                Ok(d)
            })
            .transpose()?
            .unwrap_or(DEFAULT_JWKS_MAX_AGE);
        let rotate_every = match raw.rotate_every {
            Some(v) if v.get_ref() != "off" => {
                let every = dur(&v, "rotate_every")?;
                // A next key may sign only once verifiers' caches hold it.
                if every < jwks_max_age {
                    return Err(invalid(
                        Some(v.span()),
                        format!(
                            "`rotate_every` ({}) is shorter than `jwks_max_age` ({}), the least time between rotations",
                            duration::format(every),
                            duration::format(jwks_max_age)
                        ),
                    ));
                }
                Some(every)
            }
            _ => None,
        };
        let rsa_bits = match raw.rsa_bits {
            None => RsaBits::B2048,
            Some(v) => RsaBits::try_from(*v.get_ref()).map_err(|m| invalid(Some(v.span()), m))?,
        };
        let default_audience = raw
            .default_audience
            .map(|v| {
                tokendealer_shared::clients_file::check_audience(v.get_ref())
                    .map_err(|m| invalid(Some(v.span()), format!("`default_audience`: {m}")))
                    .map(|()| v.into_inner())
            })
            .transpose()?;

        let mut admin_gids = raw.admin_gids;
        let mut admin_groups = Vec::new();
        let mut groups_unresolved = None;
        for name in &raw.admin_groups {
            let problem = match nix::unistd::Group::from_name(name.get_ref()) {
                Ok(Some(group)) => {
                    admin_gids.push(group.gid.as_raw());
                    admin_groups.push((name.get_ref().clone(), Some(group.gid.as_raw())));
                    continue;
                }
                Ok(None) => format!("`admin_groups`: there is no group \"{}\"", name.get_ref()),
                Err(e) => format!(
                    "`admin_groups`: cannot look up group \"{}\": {e}",
                    name.get_ref()
                ),
            };
            let problem = invalid(Some(name.span()), problem);
            match groups {
                Groups::Required => return Err(problem),
                Groups::Apart => {
                    admin_groups.push((name.get_ref().clone(), None));
                    groups_unresolved.get_or_insert(problem);
                }
            }
        }

        let trusted_proxies = raw
            .trusted_proxies
            .iter()
            .map(|v| {
                let text = v.get_ref();
                text.parse::<ipnet::IpNet>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map(canonical_net)
                    .map_err(|_| {
                        invalid(
                            Some(v.span()),
                            format!("`trusted_proxies` entry \"{text}\" is not an address or network like \"10.0.0.0/8\""),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let tls = match (raw.tls_cert, raw.tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let resolve = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
                Some(TlsFiles {
                    cert: resolve(cert.into_inner()),
                    key: resolve(key.into_inner()),
                })
            }
            (Some(v), None) | (None, Some(v)) => {
                return Err(invalid(
                    Some(v.span()),
                    "`tls_cert` and `tls_key` go together: set both for TLS, or neither for plain HTTP".into(),
                ));
            }
        };
        let max_connections = match raw.max_connections {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(v) if *v.get_ref() == 0 => {
                return Err(invalid(
                    Some(v.span()),
                    "`max_connections` must be at least 1".into(),
                ));
            }
            Some(v) => v.into_inner(),
        };
        let positive = |v: Option<Spanned<String>>, key: &str, default: Duration| {
            let Some(v) = v else { return Ok(default) };
            match dur(&v, key)? {
                d if d.is_zero() => Err(invalid(
                    Some(v.span()),
                    format!("`{key}` must be longer than zero"),
                )),
                // A connection's deadline is its last activity plus this: a limit of years
                // is a typo, and one past what a clock instant can hold would not be one.
                d if d > MAX_TIMEOUT => Err(invalid(
                    Some(v.span()),
                    format!(
                        "`{key}` = \"{}\" is over a day; give at most 1d",
                        v.get_ref()
                    ),
                )),
                d => Ok(d),
            }
        };
        let read_timeout = positive(raw.read_timeout, "read_timeout", DEFAULT_READ_TIMEOUT)?;
        let idle_timeout = positive(raw.idle_timeout, "idle_timeout", DEFAULT_IDLE_TIMEOUT)?;

        let config = Self {
            path: path.map(Path::to_owned),
            issuer,
            listen,
            admin_socket: resolve(raw.admin_socket, DEFAULT_ADMIN_SOCKET),
            clients_file: resolve(raw.clients_file, DEFAULT_CLIENTS_FILE),
            key_dir: resolve(raw.key_dir, DEFAULT_KEY_DIR),
            algorithm,
            token_ttl,
            jwks_max_age,
            rotate_every,
            rsa_bits,
            default_audience,
            admin_uids: raw.admin_uids,
            admin_gids,
            admin_groups,
            trusted_proxies,
            tls,
            max_connections,
            read_timeout,
            idle_timeout,
            metrics_by_client: raw.metrics_by_client,
        };
        Ok((config, groups_unresolved))
    }
}

/// `::ffff:a.b.c.d/n` (n ≥ 96) is the IPv4 network `a.b.c.d/(n − 96)`: peers of a
/// dual-stack listener are compared as IPv4 addresses, so the mapped form would match none.
fn canonical_net(net: ipnet::IpNet) -> ipnet::IpNet {
    match net {
        ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => v6
            .addr()
            .to_ipv4_mapped()
            .and_then(|v4| ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).ok())
            .map_or(net, ipnet::IpNet::V4),
        _ => net,
    }
}

/// RFC 8414 §2: an `http(s)` URL with no query or fragment.
fn check_issuer(issuer: &str) -> Result<(), String> {
    let rest = issuer
        .strip_prefix("https://")
        .or_else(|| issuer.strip_prefix("http://"));
    match rest {
        Some(host)
            if !host.is_empty()
                && !issuer.contains(['?', '#'])
                && !issuer.contains(char::is_whitespace) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "`issuer` = \"{issuer}\" must be an http or https URL without query or fragment"
        )),
    }
}

/// The keys whose values are not text: a bare value there is not missing its quotes.
const NOT_TEXT: &[&str] = &[
    "rsa_bits",
    "max_connections",
    "metrics_by_client",
    "admin_uids",
    "admin_gids",
];

/// The keys whose values are lists of text.
const TEXT_LISTS: &[&str] = &["admin_groups", "trusted_proxies"];

/// toml's message, with the key named and the form it takes said where toml speaks of Rust
/// types: "`rsa_bits`: invalid type: string \"2048\", expected u32" leaves an admin to work
/// out that the quotes are the problem.
fn toml_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    let Some(start) = e.span().map(|s| s.start) else {
        return message.to_owned();
    };
    let line_start = text
        .get(..start)
        .and_then(|t| t.rfind('\n'))
        .map_or(0, |i| i + 1);
    let line = text
        .get(line_start..)
        .and_then(|t| t.lines().next())
        .unwrap_or("");
    let Some((key, value)) = line.split_once('=') else {
        return message.to_owned();
    };
    let key = key.trim();
    if message.starts_with("duplicate key") {
        return format!("`{key}` is set twice; keep one");
    }
    let value = value.trim();
    let unquoted = !value.starts_with(['"', '\'', '[', '{']);
    // A bare value ends at its comment.
    let value = if unquoted {
        value.split('#').next().unwrap_or("").trim_end()
    } else {
        value
    };
    // Numbers written as text lose their quotes, inside a list too: `["1000"]` is `[1000]`.
    let numbers = || value.replace(['"', '\''], "");
    let hint = if message.starts_with("invalid type: string") {
        if message.ends_with("expected a sequence") {
            let items = if NOT_TEXT.contains(&key) {
                numbers()
            } else {
                value.to_owned()
            };
            format!("; a list is written in brackets: {key} = [{items}]")
        } else if message.ends_with("expected a boolean") {
            format!("; write {key} = true or {key} = false, without quotes")
        } else if message.contains("expected u") || message.contains("expected i") {
            format!(
                "; a number is written without quotes: {key} = {}",
                numbers()
            )
        } else {
            String::new()
        }
    } else if unquoted
        && !value.is_empty()
        && !NOT_TEXT.contains(&key)
        && (message.contains("must be quoted")
            || (value.contains([':', '/']) && message.starts_with("invalid")))
        && !message.starts_with("invalid type")
    {
        // A listen address, a duration or a path written bare is a syntax error whose words
        // ("invalid float") are about what toml tried to read it as.
        if TEXT_LISTS.contains(&key) {
            format!("; a list of text is written in brackets and quotes: {key} = [\"{value}\"]")
        } else {
            format!("; text is written in quotes: {key} = \"{value}\"")
        }
    } else {
        String::new()
    };
    if hint.is_empty() {
        message.to_owned()
    } else {
        format!("`{key}`: {message}{hint}")
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_ipv4_proxies_are_ipv4_networks() {
        let c = Config::parse(
            "trusted_proxies = [\"::ffff:10.0.0.5\", \"::ffff:10.1.0.0/112\", \"2001:db8::/32\"]\n",
            None,
        )
        .unwrap();
        let nets: Vec<String> = c.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["10.0.0.5/32", "10.1.0.0/16", "2001:db8::/32"]);
    }

    #[test]
    fn an_unknown_admin_group_is_refused_at_start_and_told_apart_at_a_reload() {
        let text = "admin_gids = [7]\nadmin_groups = [\"no-such-group-here\"]\n";
        assert!(Config::parse(text, None).is_err());
        let (config, unresolved) = Config::parse_with(text, None, Groups::Apart).unwrap();
        assert_eq!(config.admin_gids, [7]);
        let unresolved = unresolved.expect("the group's problem").to_string();
        assert!(unresolved.contains("no-such-group-here"), "{unresolved}");
    }

    #[test]
    fn empty_config_is_all_defaults() {
        let c = Config::parse("", None).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.algorithm, SigningAlg::RS512);
        assert_eq!(c.token_ttl, DEFAULT_TOKEN_TTL);
        assert_eq!(c.jwks_max_age, DEFAULT_JWKS_MAX_AGE);
        assert_eq!(c.rotate_every, None);
        assert_eq!(c.rsa_bits, RsaBits::B2048);
        assert_eq!(c.admin_socket, PathBuf::from(DEFAULT_ADMIN_SOCKET));
        assert!(c.issuer.is_none() && c.default_audience.is_none());
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let c =
            Config::parse("key_dir = \"keys\"", Some(Path::new("/etc/td/config.toml"))).unwrap();
        assert_eq!(c.key_dir, PathBuf::from("/etc/td/keys"));
    }

    #[test]
    fn errors_name_file_and_line() {
        let path = Path::new("/x/c.toml");
        for (text, line) in [
            ("issuer = \"http://a\"\nbogus = 1\n", 2),
            ("\n\nalgorithm = \"HS256\"\n", 3),
            ("token_ttl = \"soon\"\n", 1),
            ("listen = \"nowhere\"\n", 1),
            ("rsa_bits = 1024\n", 1),
            ("issuer = \"ftp://x\"\n", 1),
            ("issuer = [\n", 1),
            ("\ntrusted_proxies = [\"10.0.0.0/8\", \"nope\"]\n", 2),
            ("\ntls_cert = \"cert.pem\"\n", 2),
            ("max_connections = 0\n", 1),
            ("idle_timeout = \"0s\"\n", 1),
            ("idle_timeout = \"300000000000y\"\n", 1),
            ("\nread_timeout = \"25h\"\n", 2),
            ("jwks_max_age = \"1h\"\nrotate_every = \"30m\"\n", 2),
            ("\njwks_max_age = \"15d\"\n", 2),
            ("token_ttl = \"400d\"\n", 1),
            ("token_ttl = \"0s\"\n", 1),
        ] {
            let err = Config::parse(text, Some(path)).unwrap_err();
            let ConfigError::Invalid { line: Some(l), .. } = err else {
                panic!("{text}: {err}")
            };
            assert_eq!(l, line, "{text}: {err}");
            let msg = err.to_string();
            assert!(msg.starts_with("config file /x/c.toml line"), "{msg}");
            assert!(!msg.contains('\n'), "one sentence: {msg}");
        }
    }

    /// A value of the wrong form is told with its key and how to write it.
    #[test]
    fn a_value_of_the_wrong_form_says_how_to_write_it() {
        for (text, says) in [
            (
                "rsa_bits = \"2048\"\n",
                "line 1: `rsa_bits`: invalid type: string \"2048\", expected u32; a number is written without quotes: rsa_bits = 2048",
            ),
            (
                "\nlisten = 127.0.0.1:8080\n",
                "line 2: `listen`: invalid float, expected nothing; text is written in quotes: listen = \"127.0.0.1:8080\"",
            ),
            (
                "token_ttl = 15m # short\n",
                "`token_ttl`: string values must be quoted, expected literal string; text is written in quotes: token_ttl = \"15m\"",
            ),
            (
                "admin_groups = \"wheel\"\n",
                "`admin_groups`: invalid type: string \"wheel\", expected a sequence; a list is written in brackets: admin_groups = [\"wheel\"]",
            ),
            (
                "metrics_by_client = \"yes\"\n",
                "; write metrics_by_client = true or metrics_by_client = false, without quotes",
            ),
            (
                "admin_uids = [\"1000\"]\n",
                "a number is written without quotes: admin_uids = [1000]",
            ),
            (
                "rsa_bits = '2048'\n",
                "a number is written without quotes: rsa_bits = 2048",
            ),
            (
                "listen = \"127.0.0.1:1\"\nrsa_bits = 2048\nlisten = \"127.0.0.1:2\"\n",
                "line 3: `listen` is set twice; keep one",
            ),
            (
                "admin_gids = \"4242\"\n",
                "a list is written in brackets: admin_gids = [4242]",
            ),
            (
                "trusted_proxies = 10.0.0.0/8\n",
                "written in brackets and quotes: trusted_proxies = [\"10.0.0.0/8\"]",
            ),
            // A number's typo is not told to be quoted.
            (
                "rsa_bits = 2048x\n",
                "line 1: string values must be quoted, expected literal string",
            ),
        ] {
            let err = Config::parse(text, Some(Path::new("/x/c.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    /// Each problem is said with the value as written.
    #[test]
    fn duration_problems_say_what_is_wrong() {
        for (text, says) in [
            (
                "token_ttl = \"400d\"",
                "`token_ttl` = \"400d\" is over a year",
            ),
            ("token_ttl = \"0s\"", "`0s` is no time at all"),
            (
                "jwks_max_age = \"15d\"",
                "`jwks_max_age` = \"15d\" is over a week",
            ),
        ] {
            let err = Config::parse(text, None).unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn rotate_every_off_is_none() {
        assert_eq!(
            Config::parse("rotate_every = \"off\"", None)
                .unwrap()
                .rotate_every,
            None
        );
        assert_eq!(
            Config::parse("rotate_every = \"30d\"", None)
                .unwrap()
                .rotate_every,
            Some(Duration::from_secs(30 * 86_400))
        );
    }
}
