//! Changes to the clients file's text that keep the admin's comments and layout (toml_edit).
//!
//! Pure functions from text to text: no I/O, no clock, no randomness. The caller reads the
//! file, applies an [`Edit`] and writes the result.

use std::time::Duration;

use jiff::Timestamp;
use tokendealer_shared::clients_file::{
    self, ClientsFileError, check_audience, check_client_id, check_scope_token, format_hash,
};
use toml_edit::{Array, DocumentMut, InlineTable, Item, Table, TableLike, Value};

/// One change to the clients file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    Add {
        id: String,
        audiences: Vec<String>,
        scopes: Vec<String>,
        ttl: Option<Duration>,
        secret_hash: [u8; 32],
    },
    SetDisabled {
        id: String,
        disabled: bool,
    },
    Remove {
        id: String,
    },
    /// The new secret becomes current; the old current one stays valid until `keep_old_until`
    /// (or stops at once when `None`).
    RotateSecret {
        id: String,
        new_hash: [u8; 32],
        keep_old_until: Option<Timestamp>,
    },
    /// Adds every client (all or none), with the seed's any-audience behaviour.
    Import {
        clients: Vec<(String, [u8; 32])>,
    },
}

/// Why an edit was refused. The file is left as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("client `{0}` already exists")]
    Exists(String),
    #[error("there is no client `{0}`")]
    NoSuchClient(String),
    #[error("{0}")]
    Invalid(String),
    #[error(
        "the clients file is not valid ({0}); fix it before changing clients through the daemon"
    )]
    FileInvalid(ClientsFileError),
}

/// Applies `edit` to `text` at `now`. Expired secret hashes of every client are dropped on
/// the way, since the file is being rewritten anyway.
///
/// A file of the usual shape (`[clients.ID]` tables only) is edited a table at a time: only
/// the tables the edit changes are read into a document and written out again, which gives
/// the same text as `apply_whole` without holding a document of the whole file. Every
/// other file goes through `apply_whole`.
pub fn apply(text: &str, edit: &Edit, now: Timestamp) -> Result<String, EditError> {
    if let Edit::Import { clients } = edit {
        check_import(clients)?;
    }
    match apply_to_tables(text, edit, now)? {
        Some(out) => Ok(out),
        None => apply_whole(text, edit, now),
    }
}

/// An import is all or none, and means what it lists: at least one client, none twice (the
/// tool checks this too; the protocol is open to other tools).
fn check_import(clients: &[(String, [u8; 32])]) -> Result<(), EditError> {
    if clients.is_empty() {
        return Err(EditError::Invalid("the import lists no client".into()));
    }
    let mut ids: Vec<&str> = clients.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    match ids.windows(2).find(|w| w[0] == w[1]) {
        Some(twice) => Err(EditError::Invalid(format!(
            "client `{}` is listed twice in the import",
            twice[0]
        ))),
        None => Ok(()),
    }
}

/// What stays of a removed table's prefix (the blank and comment lines above its header):
/// everything down to its last blank line. Comments right above a header are the table's
/// and go with it; a block set apart by a blank line (the file's opening comments, a note on
/// the clients that follow) is not. The prefix's last, unfinished line is the header's own
/// indentation.
fn kept_of_prefix(prefix: &str) -> &str {
    let mut kept = 0;
    let mut at = 0;
    for line in prefix.split_inclusive('\n') {
        at += line.len();
        if line.ends_with('\n') && line.trim().is_empty() {
            kept = at;
        }
    }
    &prefix[..kept]
}

/// `text` without its first line when that is blank: what follows a kept prefix, which ends
/// with a blank line of its own, so that a removal leaves one blank line where it was, not
/// two.
fn without_leading_blank_line(text: &str) -> &str {
    match text.split_inclusive('\n').next() {
        Some(line) if line.ends_with('\n') && line.trim().is_empty() => &text[line.len()..],
        _ => text,
    }
}

/// Appends `piece`, without its leading blank line if it is the first text after a removed
/// table's kept comments (`after_kept`, cleared by a piece that is not empty).
fn push_after(out: &mut String, piece: &str, after_kept: &mut bool) {
    if piece.is_empty() {
        return;
    }
    if std::mem::take(after_kept) {
        out.push_str(without_leading_blank_line(piece));
    } else {
        out.push_str(piece);
    }
}

/// [`apply`] on a document of the whole file: the reference for every file, and the way
/// for files not of the usual shape.
fn apply_whole(text: &str, edit: &Edit, now: Timestamp) -> Result<String, EditError> {
    clients_file::parse(text).map_err(EditError::FileInvalid)?;
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| EditError::Invalid(e.to_string()))?;
    // In a file without tables, comments are the document's trailing text, which would end
    // up below the first client; they move to the top of it instead.
    let mut moved_comments = None;
    if doc.get("clients").is_none() {
        moved_comments = doc
            .trailing()
            .as_str()
            .filter(|t| !t.trim().is_empty())
            .map(str::to_owned);
        doc.set_trailing("");
        let mut table = Table::new();
        // No bare `[clients]` header: each client is written as `[clients.ID]`.
        table.set_implicit(true);
        doc.insert("clients", Item::Table(table));
    }
    let inline = doc["clients"].is_inline_table();
    let clients = doc["clients"]
        .as_table_like_mut()
        .ok_or_else(|| EditError::Invalid("`clients` is not a table".into()))?;

    // A removed table's detached comments (`kept_of_prefix`) move to the table after it,
    // or below the last one.
    let mut kept = None;
    if let Edit::Remove { id } = edit
        && let Some(table) = clients.get(id).and_then(Item::as_table)
    {
        let prefix = table
            .decor()
            .prefix()
            .and_then(|p| p.as_str())
            .unwrap_or("");
        let detached = kept_of_prefix(prefix);
        if !detached.is_empty() {
            kept = Some((table.position(), detached.to_owned()));
        }
    }

    edit_clients(clients, inline, edit)?;

    let mut kept_below = None;
    if let Some((position, detached)) = kept {
        let next = clients
            .iter_mut()
            .filter_map(|(_, item)| item.as_table_mut())
            .filter(|t| t.position() > position)
            .min_by_key(|t| t.position());
        match next {
            Some(next) => {
                let prefix = next.decor().prefix().and_then(|p| p.as_str()).unwrap_or("");
                let joined = format!("{detached}{}", without_leading_blank_line(prefix));
                next.decor_mut().set_prefix(joined);
            }
            None => kept_below = Some(detached),
        }
    }

    if let (Some(comments), Some(first)) = (
        moved_comments,
        clients
            .iter_mut()
            .next()
            .and_then(|(_, item)| item.as_table_mut()),
    ) {
        first.decor_mut().set_prefix(comments);
    }
    drop_expired(clients, now);
    if let Some(detached) = kept_below {
        let trailing = doc.trailing().as_str().unwrap_or("").to_owned();
        doc.set_trailing(format!(
            "{detached}{}",
            without_leading_blank_line(&trailing)
        ));
    }
    let mut out = doc.to_string();
    // toml_edit writes every line break as `\n`; a file written with `\r\n` (on Windows,
    // or by an editor set so) keeps them, or every edit would show as a change of every line.
    if text.find('\n').is_some_and(|at| text[..at].ends_with('\r')) {
        out = out.replace("\r\n", "\n").replace('\n', "\r\n");
    }
    // The edit itself was validated; this guards the invariant that we never write a file
    // we would refuse to load.
    clients_file::parse(&out)
        .map_err(|e| EditError::Invalid(format!("the edit would make the file invalid: {e}")))?;
    Ok(out)
}

/// The edit itself, on the `clients` table of a document.
fn edit_clients(clients: &mut dyn TableLike, inline: bool, edit: &Edit) -> Result<(), EditError> {
    match edit {
        Edit::Add {
            id,
            audiences,
            scopes,
            ttl,
            secret_hash,
        } => {
            check_new_client(clients, id)?;
            for audience in audiences {
                check_audience(audience).map_err(EditError::Invalid)?;
            }
            for scope in scopes {
                check_scope_token(scope).map_err(EditError::Invalid)?;
            }
            let mut table = Table::new();
            table.insert("secret_hashes", strings([format_hash(secret_hash)]));
            table.insert("audiences", strings(audiences.iter().cloned()));
            table.insert("scopes", strings(scopes.iter().cloned()));
            if let Some(ttl) = ttl {
                table.insert(
                    "token_ttl",
                    toml_edit::value(tokendealer_shared::duration::format(*ttl)),
                );
            }
            insert_client(clients, inline, id, table);
        }
        Edit::SetDisabled { id, disabled } => {
            let client = client_mut(clients, id)?;
            if *disabled || client.contains_key("disabled") {
                set_value(client, "disabled", Value::from(*disabled));
            }
        }
        Edit::Remove { id } => {
            clients
                .remove(id)
                .ok_or_else(|| EditError::NoSuchClient(id.clone()))?;
        }
        Edit::RotateSecret {
            id,
            new_hash,
            keep_old_until,
        } => {
            let client = client_mut(clients, id)?;
            let kept = match keep_old_until {
                Some(until) => old_secret_kept(client, id, *until)?,
                None => None,
            };
            let mut hashes = Array::new();
            hashes.push(format_hash(new_hash));
            if let Some((hash, until)) = kept {
                let mut old = InlineTable::new();
                old.insert("hash", hash.into());
                old.insert("expires", toml_datetime(until).into());
                hashes.push(old);
            }
            set_value(client, "secret_hashes", Value::Array(hashes));
        }
        Edit::Import { clients: imported } => {
            for (id, _) in imported {
                check_new_client(clients, id)?;
            }
            for (id, hash) in imported {
                let mut table = Table::new();
                table.insert("secret_hashes", strings([format_hash(hash)]));
                table.insert("audiences", strings(["*".to_owned()]));
                insert_client(clients, inline, id, table);
            }
        }
    }
    Ok(())
}

/// [`apply`] a table at a time, for a file of the usual shape; `None` for any other file,
/// or when the result cannot be shown to be what [`apply_whole`] would write.
///
/// toml_edit keeps the blank and comment lines above a table header as the header's prefix,
/// and those below a file's last table as the document's trailing text. So the file is a
/// run of segments, one per table (its prefix, header and key/value lines), and the
/// trailing text; a document writes each table's segment as it would write a document of
/// that segment alone. The segments of the tables the edit changes (the client edited,
/// clients with expired secret hashes, the last table for an addition, since new tables go
/// below it) are written through such one-table documents; a removed table's segment is
/// dropped; every other segment is kept as it is.
fn apply_to_tables(text: &str, edit: &Edit, now: Timestamp) -> Result<Option<String>, EditError> {
    // toml_edit writes every line break as `\n`: such a file is rewritten whole.
    if text.contains('\r') {
        return Ok(None);
    }
    // Of each client, only what is needed here is kept: an 18 MB file holds 100 000.
    let Some(mut tables) = clients_file::read_tables(text, |spec, range| Segment {
        expired: spec
            .secrets
            .iter()
            .any(|s| s.expires.is_some_and(|e| e <= now)),
        id: spec.id.into_boxed_str(),
        start: range.start,
        header: range.start,
        end: range.end,
    }) else {
        // Another shape, or not valid: `apply_whole` reads it, or says what is wrong.
        return Ok(None);
    };
    if tables.is_empty() {
        return Ok(None);
    }
    // A document keeps one layout for the `clients` of all headers: the file is edited
    // whole unless every header has the same.
    if tables
        .iter()
        .any(|t| !text[t.start..].starts_with("[clients."))
    {
        return Ok(None);
    }
    // Each segment starts where the table before it ends.
    let mut previous_end = 0;
    for table in &mut tables {
        if table.start < previous_end {
            return Ok(None);
        }
        table.start = previous_end;
        previous_end = table.end;
    }
    let trailing = previous_end..text.len();
    let mut by_id: Vec<usize> = (0..tables.len()).collect();
    by_id.sort_unstable_by(|&a, &b| tables[a].id.cmp(&tables[b].id));
    if by_id.windows(2).any(|w| tables[w[0]].id == tables[w[1]].id) {
        // A duplicate: `apply_whole` says where.
        return Ok(None);
    }
    let find = |id: &str| {
        by_id
            .binary_search_by(|&i| (*tables[i].id).cmp(id))
            .ok()
            .map(|found| by_id[found])
    };

    // The segments changed, by their position in `tables`.
    let mut target: Option<usize> = None;
    let mut removed: Option<usize> = None;
    let mut added: Vec<&str> = Vec::new();
    match edit {
        Edit::Add { id, .. } => {
            check_id(id)?;
            if find(id).is_some() {
                return Err(EditError::Exists(id.clone()));
            }
            target = Some(tables.len() - 1);
            added.push(id);
        }
        Edit::Import { clients: imported } => {
            for (id, _) in imported {
                check_id(id)?;
                if find(id).is_some() {
                    return Err(EditError::Exists(id.clone()));
                }
            }
            target = Some(tables.len() - 1);
            added.extend(imported.iter().map(|(id, _)| id.as_str()));
        }
        Edit::SetDisabled { id, .. } | Edit::RotateSecret { id, .. } => {
            target = Some(find(id).ok_or_else(|| EditError::NoSuchClient(id.clone()))?);
        }
        Edit::Remove { id } => {
            removed = Some(find(id).ok_or_else(|| EditError::NoSuchClient(id.clone()))?);
        }
    }
    let mut rewrite: Vec<usize> = tables
        .iter()
        .enumerate()
        .filter(|(_, t)| t.expired)
        .map(|(at, _)| at)
        .collect();
    rewrite.extend(target);
    // A last line without a line break gets one when written.
    if !text[..trailing.start].ends_with('\n') {
        rewrite.push(tables.len() - 1);
    }
    rewrite.sort_unstable();
    rewrite.dedup();
    rewrite.retain(|&p| Some(p) != removed);

    let mut written = Vec::with_capacity(rewrite.len());
    for &at in &rewrite {
        let segment = &text[tables[at].start..tables[at].end];
        let mut doc: DocumentMut = match segment.parse() {
            Ok(doc) => doc,
            Err(_) => return Ok(None),
        };
        let Some(clients) = doc.get_mut("clients").and_then(Item::as_table_like_mut) else {
            return Ok(None);
        };
        if Some(at) == target {
            edit_clients(clients, false, edit)?;
        }
        drop_expired(clients, now);
        let out = doc.to_string();
        // The segment must read alone as its clients, and end where the next may start.
        let mut expected: Vec<&str> = vec![&tables[at].id];
        if Some(at) == target {
            expected.extend(added.iter().copied());
        }
        expected.sort_unstable();
        expected.dedup();
        match clients_file::read_tables(&out, |spec, _| spec.id) {
            Some(mut read) if out.ends_with('\n') => {
                read.sort_unstable();
                if read != expected {
                    return Ok(None);
                }
            }
            _ => return Ok(None),
        }
        written.push((at, out));
    }

    let grown: usize = written.iter().map(|(_, out)| out.len()).sum();
    let mut out = String::with_capacity(text.len() + grown);
    let mut from = 0;
    let mut written = written.into_iter().peekable();
    // After a removed table's kept comments, the text that follows loses a leading blank line.
    let mut after_kept = false;
    for (at, table) in tables.iter().enumerate() {
        if Some(at) == removed {
            push_after(&mut out, &text[from..table.start], &mut after_kept);
            let detached = kept_of_prefix(&text[table.start..table.header]);
            out.push_str(detached);
            after_kept = !detached.is_empty();
            from = table.end;
        } else if written.peek().is_some_and(|(w, _)| *w == at) {
            let (_, segment) = written.next().expect("peeked");
            push_after(&mut out, &text[from..table.start], &mut after_kept);
            push_after(&mut out, &segment, &mut after_kept);
            from = table.end;
        }
    }
    push_after(&mut out, &text[from..], &mut after_kept);
    Ok(Some(out))
}

/// A client's table in a file of the usual shape, and what [`apply_to_tables`] needs of it.
struct Segment {
    id: Box<str>,
    /// Where its segment starts and ends: the blank and comment lines above its header, up
    /// to the line break after its last value.
    start: usize,
    /// Where its header starts.
    header: usize,
    end: usize,
    /// Whether it holds a secret hash expired by now.
    expired: bool,
}

/// A new client's id, named in the refusal: an import names many.
fn check_id(id: &str) -> Result<(), EditError> {
    check_client_id(id).map_err(|e| {
        EditError::Invalid(format!(
            "client `{}`: {e}",
            tokendealer_shared::printable(id)
        ))
    })
}

fn check_new_client(clients: &dyn TableLike, id: &str) -> Result<(), EditError> {
    check_id(id)?;
    if clients.contains_key(id) {
        return Err(EditError::Exists(id.to_owned()));
    }
    Ok(())
}

fn client_mut<'a>(
    clients: &'a mut dyn TableLike,
    id: &str,
) -> Result<&'a mut dyn TableLike, EditError> {
    clients
        .get_mut(id)
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| EditError::NoSuchClient(id.to_owned()))
}

fn insert_client(clients: &mut dyn TableLike, inline: bool, id: &str, table: Table) {
    // A hand-written file may hold its clients as inline tables; new clients follow suit.
    let inline = inline
        || clients
            .iter()
            .next()
            .is_some_and(|(_, item)| item.is_inline_table());
    if inline {
        clients.insert(
            id,
            Item::Value(Value::InlineTable(table.into_inline_table())),
        );
    } else {
        clients.insert(id, Item::Table(table));
    }
}

/// The secret a rotation keeps working until `until`, and until when: the client's current
/// one; with none (only an old secret left from an earlier rotation), that one, for no
/// longer than it had. A client with two current secrets (a hand-made overlap) cannot keep
/// both, and which one its callers still use is not ours to guess.
fn old_secret_kept(
    client: &dyn TableLike,
    id: &str,
    until: Timestamp,
) -> Result<Option<(String, Timestamp)>, EditError> {
    let entries = client
        .get("secret_hashes")
        .and_then(Item::as_array)
        .map(|a| a.iter().collect::<Vec<_>>())
        .unwrap_or_default();
    let current: Vec<&str> = entries.iter().filter_map(|v| v.as_str()).collect();
    match current.as_slice() {
        [one] => Ok(Some(((*one).to_owned(), until))),
        [] => Ok(entries
            .iter()
            .filter_map(|v| {
                let table = v.as_inline_table()?;
                let hash = table.get("hash")?.as_str()?;
                Some((hash.to_owned(), expiry(v)?))
            })
            .max_by_key(|&(_, expires)| expires)
            .map(|(hash, expires)| (hash, expires.min(until)))),
        more => Err(EditError::Invalid(format!(
            "client `{id}` has {} secrets without an expiry, and a rotation keeps one old secret: \
             remove the one no longer in use from the file (or give it an `expires`) and rotate \
             again, or rotate keeping no old secret to end all of them now",
            more.len()
        ))),
    }
}

/// When an old secret's entry stops working.
fn expiry(entry: &Value) -> Option<Timestamp> {
    entry
        .as_inline_table()?
        .get("expires")?
        .as_datetime()?
        .to_string()
        .parse()
        .ok()
}

/// Sets `key` of `table` to `value`. An entry already there keeps its comments: those on the
/// lines above it belong to its key, which stays, and the one after it to its value, whose
/// decoration moves to the new value.
fn set_value(table: &mut dyn TableLike, key: &str, mut value: Value) {
    match table.get_mut(key) {
        Some(Item::Value(old)) => {
            *value.decor_mut() = old.decor().clone();
            *old = value;
        }
        _ => {
            table.insert(key, Item::Value(value));
        }
    }
}

fn strings(values: impl IntoIterator<Item = String>) -> Item {
    Item::Value(Value::Array(values.into_iter().collect()))
}

fn toml_datetime(at: Timestamp) -> toml_edit::Datetime {
    // Whole seconds, UTC: `2026-11-28T10:00:00Z`, rounded up: an overlap asked for is never
    // cut short.
    let second = at.as_second() + i64::from(at.subsec_nanosecond() > 0);
    let whole = Timestamp::from_second(second).unwrap_or(Timestamp::MAX);
    whole
        .to_string()
        .parse()
        .expect("RFC 3339 is a TOML datetime")
}

fn drop_expired(clients: &mut dyn TableLike, now: Timestamp) {
    for (_, client) in clients.iter_mut() {
        let Some(hashes) = client
            .as_table_like_mut()
            .and_then(|c| c.get_mut("secret_hashes"))
            .and_then(Item::as_array_mut)
        else {
            continue;
        };
        let live = |v: &Value| expiry(v).is_none_or(|e| e > now);
        // A client whose every secret has expired keeps them: it is locked out either way,
        // and an empty list would make the file invalid, refusing every other edit.
        if hashes.iter().any(live) {
            hashes.retain(live);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: [u8; 32] = [1; 32];
    const H2: [u8; 32] = [2; 32];

    fn now() -> Timestamp {
        "2026-11-27T12:00:00Z".parse().unwrap()
    }

    fn add(id: &str) -> Edit {
        Edit::Add {
            id: id.into(),
            audiences: vec!["https://a".into()],
            scopes: vec!["read".into()],
            ttl: Some(Duration::from_secs(3600)),
            secret_hash: H1,
        }
    }

    #[test]
    fn add_to_an_empty_file_and_keep_comments() {
        let text = "# who may get tokens\n";
        let out = apply(text, &add("svc"), now()).unwrap();
        assert!(out.starts_with("# who may get tokens\n"), "{out}");
        assert!(out.contains("[clients.svc]"), "{out}");
        assert!(!out.contains("[clients]\n"), "{out}");
        let clients = clients_file::parse(&out).unwrap();
        assert_eq!(clients[0].id, "svc");
        assert_eq!(clients[0].token_ttl, Some(Duration::from_secs(3600)));
        assert_eq!(clients[0].secrets[0].digest, H1);
    }

    #[test]
    fn comments_and_other_clients_survive_every_edit() {
        let text = format!(
            "# top\n[clients.a] # the first\nsecret_hashes = [\"{}\"] # current\n\n# b is next\n[clients.b]\nsecret_hashes = [\"{}\"]\n",
            format_hash(&H1),
            format_hash(&H2)
        );
        let rotated = apply(
            &text,
            &Edit::RotateSecret {
                id: "b".into(),
                new_hash: H1,
                keep_old_until: Some("2026-11-28T12:00:00Z".parse().unwrap()),
            },
            now(),
        )
        .unwrap();
        assert!(
            rotated.contains("# top\n")
                && rotated.contains("# the first")
                && rotated.contains("# current")
        );
        assert!(rotated.contains("# b is next"), "{rotated}");
        let b = &clients_file::parse(&rotated).unwrap()[1];
        assert_eq!(b.secrets.len(), 2);
        assert_eq!(b.secrets[0].digest, H1);
        assert_eq!(b.secrets[1].digest, H2);
        assert_eq!(
            b.secrets[1].expires,
            Some("2026-11-28T12:00:00Z".parse().unwrap())
        );

        let disabled = apply(
            &rotated,
            &Edit::SetDisabled {
                id: "a".into(),
                disabled: true,
            },
            now(),
        )
        .unwrap();
        assert!(clients_file::parse(&disabled).unwrap()[0].disabled);
        let enabled = apply(
            &disabled,
            &Edit::SetDisabled {
                id: "a".into(),
                disabled: false,
            },
            now(),
        )
        .unwrap();
        assert!(!clients_file::parse(&enabled).unwrap()[0].disabled);
        let removed = apply(&enabled, &Edit::Remove { id: "a".into() }, now()).unwrap();
        let left = clients_file::parse(&removed).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id, "b");
    }

    fn rotate(id: &str, keep_old_until: Option<&str>) -> Edit {
        Edit::RotateSecret {
            id: id.into(),
            new_hash: [9; 32],
            keep_old_until: keep_old_until.map(|t| t.parse().unwrap()),
        }
    }

    #[test]
    fn comments_on_the_changed_values_survive() {
        let text = format!(
            "[clients.a]\n# current secret (rotated 2026-01)\nsecret_hashes = [\"{}\"]  # trailing note\ndisabled = false # explicitly enabled\n",
            format_hash(&H1)
        );
        let out = apply(&text, &rotate("a", Some("2026-11-28T12:00:00Z")), now()).unwrap();
        let out = apply(
            &out,
            &Edit::SetDisabled {
                id: "a".into(),
                disabled: true,
            },
            now(),
        )
        .unwrap();
        assert!(
            out.contains("# current secret (rotated 2026-01)\nsecret_hashes = ["),
            "{out}"
        );
        assert!(out.contains("]  # trailing note\n"), "{out}");
        assert!(
            out.contains("disabled = true # explicitly enabled\n"),
            "{out}"
        );
        assert_eq!(
            apply_whole(&text, &rotate("a", None), now())
                .unwrap()
                .matches('#')
                .count(),
            3
        );
    }

    #[test]
    fn a_rotation_keeps_the_secret_that_still_works() {
        // Only an old secret left: it is kept, for no longer than it had.
        let text = format!(
            "[clients.a]\nsecret_hashes = [{{ hash = \"{}\", expires = 2026-11-27T13:00:00Z }}]\n",
            format_hash(&H1)
        );
        for (until, kept) in [
            ("2026-11-27T12:30:00Z", "2026-11-27T12:30:00Z"),
            ("2026-11-28T12:00:00Z", "2026-11-27T13:00:00Z"),
        ] {
            let out = apply(&text, &rotate("a", Some(until)), now()).unwrap();
            let a = &clients_file::parse(&out).unwrap()[0];
            assert_eq!(a.secrets[0].digest, [9; 32]);
            assert_eq!(a.secrets[1].digest, H1);
            assert_eq!(a.secrets[1].expires, Some(kept.parse().unwrap()));
        }

        // Two current secrets: which one is still in use cannot be told, so an overlap is
        // refused (one of them would stop at once), and a rotation without one ends both.
        let text = format!(
            "[clients.a]\nsecret_hashes = [\"{}\", \"{}\"]\n",
            format_hash(&H1),
            format_hash(&H2)
        );
        let refused = apply(&text, &rotate("a", Some("2026-11-28T12:00:00Z")), now());
        assert!(
            matches!(&refused, Err(EditError::Invalid(m)) if m.contains("2 secrets without an expiry")),
            "{refused:?}"
        );
        let out = apply(&text, &rotate("a", None), now()).unwrap();
        assert_eq!(clients_file::parse(&out).unwrap()[0].secrets.len(), 1);
    }

    #[test]
    fn an_overlap_is_rounded_up_to_the_second() {
        let text = format!("[clients.a]\nsecret_hashes = [\"{}\"]\n", format_hash(&H1));
        let out = apply(&text, &rotate("a", Some("2026-11-27T12:00:04.300Z")), now()).unwrap();
        assert_eq!(
            clients_file::parse(&out).unwrap()[0].secrets[1].expires,
            Some("2026-11-27T12:00:05Z".parse().unwrap())
        );
    }

    #[test]
    fn a_file_with_crlf_line_breaks_keeps_them() {
        let text = format!(
            "# ours\r\n[clients.a]\r\nsecret_hashes = [\"{}\"]\r\n\r\n[clients.b]\r\nsecret_hashes = [\"{}\"]\r\n",
            format_hash(&H1),
            format_hash(&H2)
        );
        for edit in [
            rotate("a", Some("2026-11-28T12:00:00Z")),
            Edit::Remove { id: "b".into() },
            add("c"),
        ] {
            let out = apply(&text, &edit, now()).unwrap();
            assert_eq!(
                out.matches('\n').count(),
                out.matches("\r\n").count(),
                "{out:?}"
            );
            assert!(out.starts_with("# ours\r\n[clients.a]\r\n"), "{out:?}");
        }
    }

    #[test]
    fn rotation_without_overlap_keeps_one_secret_and_expired_ones_are_dropped() {
        let text = format!(
            "[clients.a]\nsecret_hashes = [\"{}\", {{ hash = \"{}\", expires = 2026-11-27T11:00:00Z }}]\n",
            format_hash(&H1),
            format_hash(&H2)
        );
        // Any write drops the expired hash.
        let out = apply(&text, &add("b"), now()).unwrap();
        assert_eq!(clients_file::parse(&out).unwrap()[0].secrets.len(), 1);
        let out = apply(
            &text,
            &Edit::RotateSecret {
                id: "a".into(),
                new_hash: H2,
                keep_old_until: None,
            },
            now(),
        )
        .unwrap();
        let a = &clients_file::parse(&out).unwrap()[0];
        assert_eq!(a.secrets.len(), 1);
        assert_eq!(a.secrets[0].digest, H2);
    }

    #[test]
    fn refusals_leave_nothing_changed() {
        let text = apply("", &add("a"), now()).unwrap();
        assert_eq!(
            apply(&text, &add("a"), now()),
            Err(EditError::Exists("a".into()))
        );
        assert_eq!(
            apply(&text, &Edit::Remove { id: "zz".into() }, now()),
            Err(EditError::NoSuchClient("zz".into()))
        );
        assert!(matches!(
            apply(&text, &add("bad id"), now()),
            Err(EditError::Invalid(_))
        ));
        assert!(matches!(
            apply("[clients.x]\n", &add("b"), now()),
            Err(EditError::FileInvalid(_))
        ));
        let import = Edit::Import {
            clients: vec![("new".into(), H2), ("a".into(), H2)],
        };
        assert_eq!(
            apply(&text, &import, now()),
            Err(EditError::Exists("a".into()))
        );
    }

    #[test]
    fn import_allows_any_audience_like_the_seed() {
        let out = apply(
            "",
            &Edit::Import {
                clients: vec![("x".into(), H1), ("y".into(), H2)],
            },
            now(),
        )
        .unwrap();
        let clients = clients_file::parse(&out).unwrap();
        assert_eq!(clients.len(), 2);
        assert_eq!(clients[1].audiences, ["*"]);
    }

    #[test]
    fn inline_clients_stay_inline() {
        let text = format!(
            "clients = {{ a = {{ secret_hashes = [\"{}\"] }} }}\n",
            format_hash(&H1)
        );
        let out = apply(&text, &add("b"), now()).unwrap();
        assert_eq!(clients_file::parse(&out).unwrap().len(), 2, "{out}");
        let out = apply("clients = {}\n", &add("b"), now()).unwrap();
        assert_eq!(clients_file::parse(&out).unwrap().len(), 1, "{out}");
    }

    /// A small deterministic generator (xorshift), so that the test needs no crate.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            usize::try_from(self.0 % n as u64).expect("below n")
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }

        fn odds(&mut self, one_in: usize) -> bool {
            self.below(one_in) == 0
        }
    }

    /// Blank and comment lines, as may stand between lines of the file.
    fn filler(rng: &mut Rng) -> String {
        let mut out = String::new();
        for _ in 0..rng.below(4) {
            out.push_str(rng.pick(&[
                "\n",
                "# a comment\n",
                "  \t\n",
                "   # indented [clients.x]\n",
                "#\n",
            ]));
        }
        out
    }

    fn hash(rng: &mut Rng) -> String {
        let digest = [u8::try_from(rng.below(256)).unwrap(); 32];
        format!("\"{}\"", format_hash(&digest))
    }

    /// A file of the usual shape with `n` clients, laid out in every way people write it.
    fn plain_file(rng: &mut Rng, ids: &[String]) -> String {
        let mut out = filler(rng);
        for id in ids {
            let header = match if id.contains('.') { 0 } else { rng.below(20) } {
                0..=3 => format!("[clients.\"{id}\"]"),
                // A file with this is edited whole.
                4 => format!("[ clients . {id} ]"),
                5..=7 => format!("[clients. {id}\t]"),
                8..=9 => format!("[clients.'{id}']"),
                _ => format!("[clients.{id}]"),
            };
            out.push_str(rng.pick(&["", "", "  "]));
            out.push_str(&header);
            out.push_str(rng.pick(&["", "", " # the header", "  "]));
            out.push('\n');
            let mut lines = Vec::new();
            let mut secrets = vec![hash(rng)];
            if rng.odds(3) {
                let expires = rng.pick(&[
                    "2026-11-27T11:00:00Z",
                    "2026-11-27T12:00:00Z",
                    "2026-11-28T10:00:00Z",
                    "2026-11-27T13:00:00+02:00",
                ]);
                let old = hash(rng);
                secrets.push(format!("{{ hash = {old}, expires = {expires} }}"));
            }
            lines.push(match rng.below(3) {
                0 => format!("secret_hashes = [{}]", secrets.join(", ")),
                1 => format!("secret_hashes=[ {} , ]", secrets.join(" ,")),
                _ => format!(
                    "secret_hashes = [\n  {}, # current\n  # old\n]",
                    secrets.join(",\n  ")
                ),
            });
            if rng.odds(2) {
                lines.push(
                    rng.pick(&[
                        "audiences = [\"https://a.example\"]",
                        "audiences     = ['*']   # any",
                        "audiences = []",
                        "audiences = [\n\"https://b\",\n\n]",
                        // Lines inside a value that look like comments.
                        "audiences = [\"\"\"\n#x\"\"\", '''\n#y''']",
                    ])
                    .to_owned(),
                );
            }
            if rng.odds(2) {
                lines.push(
                    rng.pick(&[
                        "scopes = [\"read\", \"write\"]",
                        "scopes = [ ]",
                        "scopes=['x:y']",
                    ])
                    .to_owned(),
                );
            }
            if rng.odds(3) {
                lines.push(
                    rng.pick(&["token_ttl = \"1h\"", "token_ttl = '30m' # short"])
                        .to_owned(),
                );
            }
            if rng.odds(3) {
                lines.push(
                    rng.pick(&["disabled = true", "disabled = false", "disabled=false  "])
                        .to_owned(),
                );
            }
            // Any order of fields, secret hashes first or not.
            let swap = rng.below(lines.len());
            lines.swap(0, swap);
            for line in lines {
                if rng.odds(3) {
                    out.push_str(&filler(rng));
                }
                out.push_str(rng.pick(&["", "", "  ", "\t"]));
                out.push_str(&line);
                out.push_str(rng.pick(&["", "", "", " # note"]));
                out.push('\n');
            }
            out.push_str(&filler(rng));
        }
        match rng.below(4) {
            // No line break at the end.
            0 => {
                let trimmed = out.trim_end_matches(['\n', ' ', '\t']).len();
                out.truncate(trimmed);
            }
            1 => out.push_str("# the end"),
            _ => {}
        }
        out
    }

    fn edits(rng: &mut Rng, ids: &[String]) -> Vec<Edit> {
        let some = |rng: &mut Rng| ids[rng.below(ids.len())].clone();
        let first = ids[0].clone();
        let last = ids[ids.len() - 1].clone();
        let until = Some("2026-11-29T00:00:00Z".parse().unwrap());
        let mut edits = Vec::new();
        for id in [some(rng), first, last, "nobody".to_owned()] {
            edits.extend([
                Edit::SetDisabled {
                    id: id.clone(),
                    disabled: true,
                },
                Edit::SetDisabled {
                    id: id.clone(),
                    disabled: false,
                },
                Edit::Remove { id: id.clone() },
                Edit::RotateSecret {
                    id: id.clone(),
                    new_hash: H2,
                    keep_old_until: until,
                },
                Edit::RotateSecret {
                    id: id.clone(),
                    new_hash: H1,
                    keep_old_until: None,
                },
                Edit::Add {
                    id: id.clone(),
                    audiences: vec![],
                    scopes: vec!["read".into()],
                    ttl: None,
                    secret_hash: H1,
                },
            ]);
        }
        edits.extend([
            add("new-one"),
            add("bad id"),
            Edit::Add {
                id: "new-two".into(),
                audiences: vec!["bad audience".into()],
                scopes: vec![],
                ttl: None,
                secret_hash: H1,
            },
            Edit::Import {
                clients: vec![("n1".into(), H1), ("n2".into(), H2)],
            },
            Edit::Import {
                clients: vec![("n1".into(), H1), (some(rng), H2)],
            },
        ]);
        edits
    }

    #[test]
    fn a_removal_keeps_the_comments_set_apart_from_the_table() {
        let h = format_hash(&H1);
        let file = format!(
            "# Managed by ops.\n# Owner: team-x\n\n[clients.first]\nsecret_hashes = [\"{h}\"]\n\n# Billing's services\n\n# the invoicer\n[clients.second]\nsecret_hashes = [\"{h}\"]\n\n# last\n[clients.third]\nsecret_hashes = [\"{h}\"]\n\n# end of file\n"
        );
        let remove = |id: &str| Edit::Remove { id: id.into() };
        for (id, expected) in [
            (
                "first",
                format!(
                    "# Managed by ops.\n# Owner: team-x\n\n# Billing's services\n\n# the invoicer\n[clients.second]\nsecret_hashes = [\"{h}\"]\n\n# last\n[clients.third]\nsecret_hashes = [\"{h}\"]\n\n# end of file\n"
                ),
            ),
            (
                "second",
                format!(
                    "# Managed by ops.\n# Owner: team-x\n\n[clients.first]\nsecret_hashes = [\"{h}\"]\n\n# Billing's services\n\n# last\n[clients.third]\nsecret_hashes = [\"{h}\"]\n\n# end of file\n"
                ),
            ),
            (
                "third",
                format!(
                    "# Managed by ops.\n# Owner: team-x\n\n[clients.first]\nsecret_hashes = [\"{h}\"]\n\n# Billing's services\n\n# the invoicer\n[clients.second]\nsecret_hashes = [\"{h}\"]\n\n# end of file\n"
                ),
            ),
        ] {
            assert_eq!(apply(&file, &remove(id), now()).unwrap(), expected, "{id}");
            assert_eq!(
                apply_whole(&file, &remove(id), now()).unwrap(),
                expected,
                "{id}"
            );
        }
    }

    #[test]
    fn an_import_lists_each_client_once() {
        let twice = Edit::Import {
            clients: vec![("n1".into(), H1), ("n2".into(), H2), ("n1".into(), H2)],
        };
        let err = apply("", &twice, now()).unwrap_err();
        assert_eq!(
            err,
            EditError::Invalid("client `n1` is listed twice in the import".into())
        );
        let none = Edit::Import { clients: vec![] };
        assert!(apply("", &none, now()).is_err());
    }

    #[test]
    fn table_at_a_time_writes_what_the_whole_document_writes() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let pool = ["a", "b-1", "svc.2", "Z_9", "c", "d", "e", "f"];
        let mut fast = 0;
        for _ in 0..100 {
            let n = 1 + rng.below(pool.len());
            let mut ids: Vec<String> = pool.iter().map(|&id| id.to_owned()).collect();
            for i in (1..ids.len()).rev() {
                ids.swap(i, rng.below(i + 1));
            }
            ids.truncate(n);
            let text = plain_file(&mut rng, &ids);
            assert!(
                clients_file::read_tables(&text, |_, _| ()).is_some(),
                "not of the usual shape:\n{text}"
            );
            for edit in edits(&mut rng, &ids) {
                let whole = apply_whole(&text, &edit, now());
                let by_table = apply_to_tables(&text, &edit, now());
                match (&whole, by_table) {
                    (Ok(whole), Ok(Some(by_table))) => {
                        fast += 1;
                        assert_eq!(
                            &by_table, whole,
                            "{edit:?} on\n{text}\n---- by table:\n{by_table}\n---- whole:\n{whole}"
                        );
                    }
                    (Err(whole), Err(by_table)) => assert_eq!(whole, &by_table, "{edit:?}"),
                    (_, Ok(None)) => assert!(text.contains("[ clients"), "{edit:?} on\n{text}"),
                    (whole, by_table) => {
                        panic!("{edit:?} on\n{text}\nwhole: {whole:?}\nby table: {by_table:?}")
                    }
                }
                assert_eq!(apply(&text, &edit, now()), whole);
            }
        }
        assert!(fast > 800, "{fast}");
    }

    #[test]
    fn other_files_are_edited_whole() {
        let hash = format_hash(&H1);
        for text in [
            format!("[clients.a]\r\nsecret_hashes = [\"{hash}\"]\r\n"),
            format!("[clients]\na = {{ secret_hashes = [\"{hash}\"] }}\n"),
            "# only a comment\n".to_owned(),
        ] {
            assert_eq!(apply_to_tables(&text, &add("b"), now()), Ok(None), "{text}");
            let out = apply(&text, &add("b"), now()).unwrap();
            assert_eq!(out, apply_whole(&text, &add("b"), now()).unwrap());
        }
    }
}
