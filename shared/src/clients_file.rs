//! The clients file (`clients.toml`): who may get tokens.
//!
//! ```toml
//! [clients.strava]
//! secret_hashes = ["sha256:9f86d08…"]     # hex SHA-256 of each valid secret
//! audiences     = ["https://data.runnerly.example"]
//! scopes        = ["runs:read", "runs:write"]
//! token_ttl     = "1h"                    # optional
//! disabled      = false                   # optional
//! ```
//!
//! During a secret rotation the old hash is an inline table with its expiry:
//! `{ hash = "sha256:…", expires = 2026-11-28T10:00:00Z }`.
//!
//! Reading happens in two stages: [`RawClientsFile`] is the file as written (serde, unknown
//! keys refused), [`parse`] turns it into validated [`ClientSpec`]s or says which line is
//! wrong and why.
//!
//! A file of the usual shape (`[clients.ID]` tables holding the known fields) skips the
//! document tree and serde: it is read straight from the TOML parser's events, in pieces
//! and on all cores, several times faster. Every other file, and every file with an error
//! other than a failed validation, goes through `toml` and serde as described above, so both
//! ways accept the same files and report the same errors (a test compares them on generated
//! files). [`pieces`] and [`read_pieces`] let the daemon read again, on a reload, only the
//! pieces of the file that changed, and [`read_in_pieces`] cuts a file into the same pieces
//! as it is read, so that the daemon never needs all of a large file's text at once.

#[cfg(test)]
mod equivalence;
mod events;

use std::{collections::BTreeMap, io, ops::Range, time::Duration};

use serde::{Deserialize, Serialize};

use crate::duration;

/// A client holds its current secret and at most one being rotated out.
pub const MAX_SECRETS: usize = 2;

/// The longest token lifetime accepted anywhere (config, clients file, admin tool): a year.
/// A retiring signing key stays published as long as the longest lifetime it signed with, so
/// a typo of "1000y" would otherwise pin a key to the JWKS for good.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// A token lifetime: at least a second (`exp` counts whole seconds, so less would issue
/// tokens expired on arrival), at most [`MAX_TOKEN_TTL`]. The problem comes without the
/// value, for the caller to put it as the user wrote it: "`token_ttl` = \"400d\" is over
/// a year…".
pub fn check_token_ttl(ttl: Duration) -> Result<(), String> {
    if ttl < Duration::from_secs(1) {
        return Err(
            "is under a second, and a token's `exp` counts whole seconds; give at least 1s".into(),
        );
    }
    if ttl > MAX_TOKEN_TTL {
        return Err("is over a year; issue shorter-lived tokens".into());
    }
    Ok(())
}

/// The longest client id accepted.
pub const MAX_CLIENT_ID_LEN: usize = 128;

const HASH_PREFIX: &str = "sha256:";

/// The file as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientsFile {
    #[serde(default)]
    pub clients: BTreeMap<String, toml::Spanned<RawClient>>,
}

/// One `[clients.ID]` table as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub secret_hashes: Vec<RawSecretHash>,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ttl: Option<String>,
    #[serde(default)]
    pub disabled: bool,
}

/// A secret hash: a plain string, or an inline table with an expiry while it is rotated out.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RawSecretHash {
    Current(String),
    Expiring(RawExpiringHash),
}

/// What an entry of `secret_hashes` may be, for error messages.
const SECRET_HASH_FORMS: &str = "a hash string \"sha256:…\", or an old secret's table { hash = \"sha256:…\", expires = 2026-11-28T10:00:00Z }";

// By hand rather than `#[serde(untagged)]`, whose only error is "did not match any variant
// of untagged enum RawSecretHash": a mistyped `expire` is told as such.
impl<'de> Deserialize<'de> for RawSecretHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{self, MapAccess, SeqAccess, Visitor};

        struct Entry;

        impl<'de> Visitor<'de> for Entry {
            type Value = RawSecretHash;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(SECRET_HASH_FORMS)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawSecretHash::Current(v.to_owned()))
            }

            // `[hash, expires]`: a struct's fields in order, which the derived form read too.
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let wrong = || de::Error::custom(format!("expected {SECRET_HASH_FORMS}"));
                let hash = seq.next_element()?.ok_or_else(wrong)?;
                let expires = seq.next_element()?.ok_or_else(wrong)?;
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(wrong());
                }
                Ok(RawSecretHash::Expiring(RawExpiringHash { hash, expires }))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let (mut hash, mut expires) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        // How the `toml` crate hands over a bare date-time.
                        "$__toml_private_datetime" => {
                            return Err(de::Error::custom(format!(
                                "a date-time is no secret hash; write {SECRET_HASH_FORMS}"
                            )));
                        }
                        "hash" if hash.is_none() => hash = Some(map.next_value()?),
                        "expires" if expires.is_none() => expires = Some(map.next_value()?),
                        "hash" | "expires" => {
                            return Err(de::Error::custom(format!(
                                "`{key}` is given twice in an old secret's table"
                            )));
                        }
                        other => {
                            return Err(de::Error::custom(format!(
                                "unknown key `{other}` in an old secret's table; write {SECRET_HASH_FORMS}"
                            )));
                        }
                    }
                }
                match (hash, expires) {
                    (Some(hash), Some(expires)) => {
                        Ok(RawSecretHash::Expiring(RawExpiringHash { hash, expires }))
                    }
                    (None, _) => Err(de::Error::custom(format!(
                        "an old secret's table has no `hash`; write {SECRET_HASH_FORMS}"
                    ))),
                    (Some(_), None) => Err(de::Error::custom(
                        "an old secret's table has no `expires`; give the instant it stops working, e.g. expires = 2026-11-28T10:00:00Z, or make it a plain hash string if it should not",
                    )),
                }
            }
        }

        deserializer.deserialize_any(Entry)
    }
}

/// `{ hash = "sha256:…", expires = 2026-11-28T10:00:00Z }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExpiringHash {
    pub hash: String,
    pub expires: toml::value::Datetime,
}

/// A validated client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSpec {
    pub id: String,
    pub secrets: Vec<SecretHash>,
    /// The audience allow-list; `"*"` allows any.
    pub audiences: Vec<String>,
    /// The scope allow-list.
    pub scopes: Vec<String>,
    pub token_ttl: Option<Duration>,
    pub disabled: bool,
}

/// The SHA-256 digest of one valid secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretHash {
    pub digest: [u8; 32],
    /// After this instant the secret no longer authenticates.
    pub expires: Option<jiff::Timestamp>,
}

impl std::fmt::Debug for SecretHash {
    // The digest is not a secret, but there is no reason to spread it through logs either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretHash")
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// Why a clients file was refused. `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientsFileError {
    #[error("{}{}", line_prefix(*line), crate::printable(message))]
    Syntax { line: Option<u32>, message: String },
    #[error("{}client `{}`: {}", line_prefix(*line), crate::printable(client), crate::printable(problem))]
    Invalid {
        client: String,
        line: Option<u32>,
        problem: String,
    },
}

impl ClientsFileError {
    /// The line the problem is on, when known.
    pub fn line(&self) -> Option<u32> {
        match self {
            Self::Syntax { line, .. } | Self::Invalid { line, .. } => *line,
        }
    }
}

fn line_prefix(line: Option<u32>) -> String {
    line.map(|l| format!("line {l}: ")).unwrap_or_default()
}

fn line_of(text: &str, offset: usize) -> u32 {
    let upto = text.get(..offset.min(text.len())).unwrap_or(text);
    u32::try_from(upto.bytes().filter(|&b| b == b'\n').count() + 1).unwrap_or(u32::MAX)
}

/// Parses and validates a whole clients file.
pub fn parse(text: &str) -> Result<Vec<ClientSpec>, ClientsFileError> {
    events::parse(text).unwrap_or_else(|| parse_with_serde(text))
}

/// The clients of a file of the usual shape (`[clients.ID]` tables holding the known
/// fields), each with the byte range of its table — from its header's `[` to the end of the
/// line of its last value, past its line break when there is one — made into a `T` by
/// `each` on the thread that read it (so that a caller keeps only what it needs of a large
/// file), in the file's order. `None` unless the file has that shape and every client
/// validates; an id may be in two tables (which [`parse`] refuses).
pub fn read_tables<T: Send>(
    text: &str,
    each: impl Fn(ClientSpec, Range<usize>) -> T + Sync,
) -> Option<Vec<T>> {
    events::read_tables(text, each)
}

/// Cuts a clients file into pieces that can be read apart from each other: byte ranges
/// covering `text`, each after the first starting with a table header at the start of a
/// line. Where the file is cut depends only on the header line there, so an edit changes the
/// pieces it touches and leaves the others as they were, byte for byte.
pub fn pieces(text: &str) -> Vec<Range<usize>> {
    events::pieces(text, events::CUT)
}

/// The clients in each of `pieces` (some or all of the ranges [`pieces`] gave for `text`),
/// in the file's order, read on all cores.
///
/// `None` unless every piece has the usual shape and all its clients validate; [`parse`] of
/// the whole text then reads it the general way or says what is wrong. Given all the pieces,
/// an answer with no id in two pieces holds exactly the clients [`parse`] gives. What a
/// piece holds depends on nothing but its text, so clients read from a piece stay right for
/// any later text that has the same piece.
pub fn read_pieces(text: &str, pieces: &[Range<usize>]) -> Option<Vec<Vec<ClientSpec>>> {
    events::read_valid(text, pieces)
}

/// [`read_pieces`], the clients of each piece turned into a `T` by `make` (given the piece's
/// index in `pieces`) on the thread that read them, so that what is kept is made while
/// the clients are at hand, on all cores.
///
/// `text` may also be some pieces of a file put together: `ends_file` then says whether
/// the last of them is the file's last piece, the one piece that may end other than on a
/// newline.
pub fn read_pieces_with<T: Send>(
    text: &str,
    pieces: &[Range<usize>],
    ends_file: bool,
    make: impl Fn(usize, Vec<ClientSpec>) -> T + Sync,
) -> Option<Vec<T>> {
    events::read_valid_with(text, pieces, ends_file, make)
}

/// Reads a clients file from `reader` to its end, handing `each` the pieces [`pieces`] would
/// cut its text into, one by one and in order, while holding no more of the text than one
/// piece and a chunk of 256 KiB. Stops early, without an error, when `each` returns `false`.
/// Returns how many bytes were read.
///
/// The text is read into `buf`, whatever it holds, which grows as needed: a caller that
/// reads many files can keep it from one to the next.
///
/// The pieces are bytes, not yet checked to be UTF-8: a file that is not may be cut into
/// pieces that are not either (though never inside a character that is well formed).
pub fn read_in_pieces(
    reader: &mut impl io::Read,
    buf: &mut Vec<u8>,
    mut each: impl FnMut(&[u8]) -> bool,
) -> io::Result<usize> {
    events::read_in_pieces(reader, events::CUT, events::CHUNK, buf, &mut each)
}

/// The general path: any TOML, read into [`RawClientsFile`] by serde.
fn parse_with_serde(text: &str) -> Result<Vec<ClientSpec>, ClientsFileError> {
    let raw: RawClientsFile = toml::from_str(text).map_err(|e| ClientsFileError::Syntax {
        line: e.span().map(|s| line_of(text, s.start)),
        message: syntax_message(text, &e),
    })?;
    raw.clients
        .into_iter()
        .map(|(id, spanned)| {
            // The line is counted only for an error: counting it for every client would make
            // loading quadratic in the file's size.
            let start = spanned.span().start;
            validate(id, spanned.into_inner()).map_err(|refused| refused.into_error(text, start))
        })
        .collect()
}

/// toml's message, with the key named when it is a duplicate: toml says only "duplicate
/// key", which in a file of hundreds of clients leaves the admin to find which one.
fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    let key = e
        .span()
        .filter(|_| message == "duplicate key")
        .and_then(|span| text.get(span.clone()).map(|key| (span.start, key)));
    let Some((start, key)) = key else {
        return message.to_owned();
    };
    // A second `[clients.ID]` header: the key is on a line that starts a table, after
    // `clients.`; right after the `[`, it is the `[clients]` table itself.
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let before_key = text[line_start..start].trim();
    if before_key == "[" {
        format!("duplicate table `[{key}]`: write it once")
    } else if before_key.starts_with('[') {
        let id = key.trim_matches(['"', '\'']);
        format!("duplicate client `{id}`: each client has one `[clients.ID]` table")
    } else {
        format!("duplicate key `{key}`")
    }
}

/// A client that does not validate: its id, the field at fault (none for the id itself),
/// and why.
struct Refused {
    id: String,
    field: Option<&'static str>,
    problem: String,
}

impl Refused {
    /// The error for a client whose table starts at byte `table_at` of `text`: on the line of
    /// the field at fault when it can be found, else on the table's header line.
    fn into_error(self, text: &str, table_at: usize) -> ClientsFileError {
        let at = self
            .field
            .and_then(|field| field_offset(text, table_at, field))
            .unwrap_or(table_at);
        ClientsFileError::Invalid {
            client: self.id,
            line: Some(line_of(text, at)),
            problem: self.problem,
        }
    }
}

/// Where `field = …` starts among the lines of the table whose header starts at `table_at`,
/// before the next header. Only on the error path, and only a table's own lines: a value
/// written across lines so that one starts with `[` stops the search, and the header's line
/// is given instead.
fn field_offset(text: &str, table_at: usize, field: &str) -> Option<usize> {
    let mut lines = text.get(table_at..)?.split_inclusive('\n');
    let mut offset = table_at + lines.next()?.len();
    for line in lines {
        let key = line.trim_start();
        if key.starts_with('[') {
            return None;
        }
        if key
            .strip_prefix(field)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return Some(offset + line.len() - key.len());
        }
        offset += line.len();
    }
    None
}

/// Validates one client; a problem comes back with the id and the field, for the error to
/// name and point at.
fn validate(id: String, raw: RawClient) -> Result<ClientSpec, Refused> {
    match validate_fields(&id, raw) {
        Ok(spec) => Ok(ClientSpec { id, ..spec }),
        Err((field, problem)) => Err(Refused { id, field, problem }),
    }
}

/// Everything of a client but its id, which is left empty.
fn validate_fields(id: &str, raw: RawClient) -> Result<ClientSpec, (Option<&'static str>, String)> {
    let at = |field: &'static str| move |problem: String| (Some(field), problem);
    check_client_id(id).map_err(|problem| (None, problem))?;
    if raw.secret_hashes.is_empty() {
        return Err(at("secret_hashes")(
            "`secret_hashes` is empty; give the client at least one secret hash".into(),
        ));
    }
    if raw.secret_hashes.len() > MAX_SECRETS {
        return Err(at("secret_hashes")(format!(
            "`secret_hashes` has {} entries; a client holds at most {MAX_SECRETS} (the current secret and one being rotated out)",
            raw.secret_hashes.len()
        )));
    }
    let secrets = raw
        .secret_hashes
        .iter()
        .map(|h| match h {
            RawSecretHash::Current(hash) => Ok(SecretHash {
                digest: parse_hash(hash)?,
                expires: None,
            }),
            RawSecretHash::Expiring(e) => Ok(SecretHash {
                digest: parse_hash(&e.hash)?,
                expires: Some(parse_datetime(&e.expires)?),
            }),
        })
        .collect::<Result<Vec<_>, String>>()
        .map_err(at("secret_hashes"))?;
    for audience in &raw.audiences {
        check_audience(audience).map_err(at("audiences"))?;
    }
    for scope in &raw.scopes {
        check_scope_token(scope).map_err(at("scopes"))?;
    }
    let token_ttl = raw
        .token_ttl
        .as_deref()
        .map(|t| {
            let d = duration::parse(t).map_err(|e| format!("`token_ttl`: {e}"))?;
            check_token_ttl(d).map_err(|e| format!("`token_ttl` = \"{t}\" {e}"))?;
            Ok::<_, String>(d)
        })
        .transpose()
        .map_err(at("token_ttl"))?;
    Ok(ClientSpec {
        id: String::new(),
        secrets,
        audiences: raw.audiences,
        scopes: raw.scopes,
        token_ttl,
        disabled: raw.disabled,
    })
}

/// A client id: 1 to 128 characters of `A-Z a-z 0-9 . _ -`.
pub fn check_client_id(id: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if id.is_empty() || id.len() > MAX_CLIENT_ID_LEN || !id.chars().all(ok_char) {
        return Err(format!(
            "the id must be 1 to {MAX_CLIENT_ID_LEN} characters of letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

/// A scope token as RFC 6749 §3.3 defines it: printable ASCII without space, `"` or `\`.
pub fn check_scope_token(scope: &str) -> Result<(), String> {
    let ok_char = |b: u8| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b);
    if scope.is_empty() || !scope.bytes().all(ok_char) {
        return Err(format!(
            "scope `{}` is not a valid scope token (printable ASCII without spaces, quotes or backslashes)",
            crate::printable(scope)
        ));
    }
    Ok(())
}

/// An audience: `"*"`, or a non-empty value without whitespace, control characters or
/// invisible ones (zero-width, bidirectional overrides): an audience is compared byte for
/// byte, and one that reads like another in `clients list` would mislead whoever checks it.
pub fn check_audience(audience: &str) -> Result<(), String> {
    if audience.is_empty()
        || audience
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || crate::is_invisible(c))
    {
        return Err(format!(
            "audience `{}` must be non-empty and hold no spaces, control or invisible characters",
            crate::printable(audience)
        ));
    }
    Ok(())
}

/// Parses `sha256:` followed by 64 hex digits.
pub fn parse_hash(hash: &str) -> Result<[u8; 32], String> {
    let bad = || {
        format!(
            "secret hash `{}` is not `{HASH_PREFIX}` followed by 64 hex digits",
            crate::printable(hash)
        )
    };
    let hex = hash.strip_prefix(HASH_PREFIX).ok_or_else(bad)?;
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex, &mut digest).map_err(|_| bad())?;
    Ok(digest)
}

/// Formats a digest the way the file holds it.
pub fn format_hash(digest: &[u8; 32]) -> String {
    format!("{HASH_PREFIX}{}", hex::encode(digest))
}

fn parse_datetime(dt: &toml::value::Datetime) -> Result<jiff::Timestamp, String> {
    if dt.date.is_none() || dt.time.is_none() || dt.offset.is_none() {
        return Err(format!(
            "expiry `{dt}` needs a date, a time and an offset, e.g. 2026-11-28T10:00:00Z"
        ));
    }
    dt.to_string()
        .parse()
        .map_err(|e| format!("expiry `{dt}` is not a valid instant: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    /// What a file holds goes to logs and terminals in its errors: control characters are
    /// shown escaped, never sent raw; an invisible character makes an audience refused.
    #[test]
    fn errors_show_control_characters_escaped() {
        let text =
            format!("[clients.a]\nsecret_hashes = [\"{HASH}\"]\naudiences = [\"\\u001b[2Jx\"]\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(!err.contains('\u{1b}'), "{err:?}");
        assert!(err.contains("\\u{1b}[2Jx"), "{err}");
        assert!(check_audience("https://api.example\u{202e}").is_err());
        assert!(check_audience("https://api.example/é").is_ok());
    }

    #[test]
    fn parses_the_documented_example() {
        let text = format!(
            r#"
# our services
[clients.strava]
secret_hashes = ["{HASH}", {{ hash = "{HASH}", expires = 2026-11-28T10:00:00Z }}]
audiences     = ["https://data.runnerly.example"]
scopes        = ["runs:read", "runs:write"]
token_ttl     = "1h"
disabled      = false

[clients.other]
secret_hashes = ["{HASH}"]
"#
        );
        let clients = parse(&text).unwrap();
        assert_eq!(clients.len(), 2);
        let other = &clients[0];
        assert_eq!(other.id, "other");
        assert!(other.audiences.is_empty() && other.scopes.is_empty() && !other.disabled);
        let strava = &clients[1];
        assert_eq!(strava.token_ttl, Some(Duration::from_secs(3600)));
        assert_eq!(strava.secrets[0].expires, None);
        assert_eq!(
            strava.secrets[1].expires,
            Some("2026-11-28T10:00:00Z".parse().unwrap())
        );
    }

    #[test]
    fn empty_file_is_no_clients() {
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn unknown_key_names_the_line() {
        let text = format!("[clients.a]\nsecret_hashes = [\"{HASH}\"]\nscope = []\n");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.line(), Some(3), "{err}");
        assert!(err.to_string().contains("scope"), "{err}");
    }

    #[test]
    fn duplicate_id_is_refused() {
        let text = format!(
            "[clients.a]\nsecret_hashes = [\"{HASH}\"]\n[clients.a]\nsecret_hashes = [\"{HASH}\"]\n"
        );
        let err = parse(&text).unwrap_err();
        assert_eq!(err.line(), Some(3), "{err}");
        assert_eq!(
            err.to_string(),
            "line 3: duplicate client `a`: each client has one `[clients.ID]` table"
        );
        let text = format!("[clients.a]\nsecret_hashes = [\"{HASH}\"]\nscopes = []\nscopes = []\n");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.to_string(), "line 4: duplicate key `scopes`");
        let text = format!(
            "[clients]\na = {{ secret_hashes = [\"{HASH}\"] }}\n[clients]\nb = {{ secret_hashes = [\"{HASH}\"] }}\n"
        );
        let err = parse(&text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 3: duplicate table `[clients]`: write it once"
        );
    }

    #[test]
    fn malformed_hash_names_client_and_line() {
        let text = format!(
            "[clients.a]\nsecret_hashes = [\"{HASH}\"]\n\n[clients.b]\nsecret_hashes = [\"sha256:abc\"]\n"
        );
        let err = parse(&text).unwrap_err();
        let ClientsFileError::Invalid { client, line, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(client, "b");
        assert_eq!(*line, Some(5), "the value's line: {err}");
    }

    #[test]
    fn a_bad_value_is_told_on_its_own_line() {
        let table = format!(
            "[clients.a] # a comment\n# scopes = [\"a b\"]\nsecret_hashes = [\n  \"{HASH}\",\n]\n\n  audiences = [\"x\"]\nscopes=[\"a b\"]\n"
        );
        let err = parse(&format!(
            "[clients.0]\nsecret_hashes = [\"{HASH}\"]\n{table}"
        ))
        .unwrap_err();
        assert_eq!(err.line(), Some(10), "{err}");
        // Not in this table's lines (a default, or written inline): the header's line.
        let text =
            format!("[clients]\na = {{ secret_hashes = [\"{HASH}\"], scopes = [\"a b\"] }}\n");
        assert_eq!(parse(&text).unwrap_err().line(), Some(2));
        let text = format!(
            "[clients.a]\nsecret_hashes = [\"{HASH}\"]\n[clients.b]\nscopes = [\"a b\"]\nsecret_hashes = []\n"
        );
        assert_eq!(parse(&text).unwrap_err().line(), Some(5));
    }

    #[test]
    fn refuses_bad_values() {
        for body in [
            "secret_hashes = []".to_owned(),
            format!("secret_hashes = [\"{HASH}\", \"{HASH}\", \"{HASH}\"]"),
            format!("secret_hashes = [\"{HASH}\"]\nscopes = [\"a b\"]"),
            format!("secret_hashes = [\"{HASH}\"]\naudiences = [\"\"]"),
            format!("secret_hashes = [\"{HASH}\"]\ntoken_ttl = \"soon\""),
            format!("secret_hashes = [{{ hash = \"{HASH}\", expires = 2026-11-28 }}]"),
            // A token's `exp` counts seconds; and a key stays published as long as the
            // longest lifetime it signed with.
            format!("secret_hashes = [\"{HASH}\"]\ntoken_ttl = \"500ms\""),
            format!("secret_hashes = [\"{HASH}\"]\ntoken_ttl = \"1000y\""),
        ] {
            let text = format!("[clients.a]\n{body}\n");
            assert!(parse(&text).is_err(), "accepted: {text}");
        }
        let text = format!("[clients.a]\nsecret_hashes = [\"{HASH}\"]\ntoken_ttl = \"366d\"\n");
        assert!(parse(&text).is_ok());
        let text = format!("[clients.\"has space\"]\nsecret_hashes = [\"{HASH}\"]\n");
        assert!(parse(&text).is_err());
    }

    #[test]
    fn a_mistyped_old_secret_is_told_as_such() {
        for (entry, says) in [
            (
                format!("{{ hash = \"{HASH}\", expire = 2026-11-28T10:00:00Z }}"),
                "unknown key `expire`",
            ),
            (format!("{{ hash = \"{HASH}\" }}"), "has no `expires`"),
            (
                "{ expires = 2026-11-28T10:00:00Z }".to_owned(),
                "has no `hash`",
            ),
            ("3".to_owned(), "a hash string"),
            (
                "2026-11-28T10:00:00Z".to_owned(),
                "a date-time is no secret hash",
            ),
        ] {
            let text = format!("[clients.a]\nsecret_hashes = [\"{HASH}\", {entry}]\n");
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.starts_with("line 2: ") && err.contains(says),
                "{entry}: {err}"
            );
            assert!(!err.contains("untagged"), "{err}");
        }
    }

    /// The old secret's table written as an array of its two fields, in order, loads as it
    /// always has.
    #[test]
    fn an_old_secret_as_an_array_of_hash_and_expiry_loads() {
        let text = format!(
            "[clients.a]\nsecret_hashes = [\"{HASH}\", [\"{HASH}\", 2026-11-28T10:00:00Z]]\n"
        );
        let clients = parse(&text).unwrap();
        assert_eq!(
            clients[0].secrets[1].expires,
            Some("2026-11-28T10:00:00Z".parse().unwrap())
        );
    }

    #[test]
    fn hash_round_trip() {
        let digest = parse_hash(HASH).unwrap();
        assert_eq!(format_hash(&digest), HASH);
    }
}
