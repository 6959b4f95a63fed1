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
pub fn apply(text: &str, edit: &Edit, now: Timestamp) -> Result<String, EditError> {
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
                client.insert("disabled", toml_edit::value(*disabled));
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
            let current = client
                .get("secret_hashes")
                .and_then(Item::as_array)
                .and_then(|a| a.iter().find_map(Value::as_str))
                .map(str::to_owned);
            let mut hashes = Array::new();
            hashes.push(format_hash(new_hash));
            if let (Some(current), Some(until)) = (current, keep_old_until) {
                let mut old = InlineTable::new();
                old.insert("hash", current.into());
                old.insert("expires", toml_datetime(*until).into());
                hashes.push(old);
            }
            client.insert("secret_hashes", Item::Value(Value::Array(hashes)));
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
    let out = doc.to_string();
    // The edit itself was validated; this guards the invariant that we never write a file
    // we would refuse to load.
    clients_file::parse(&out)
        .map_err(|e| EditError::Invalid(format!("the edit would make the file invalid: {e}")))?;
    Ok(out)
}

fn check_new_client(clients: &dyn TableLike, id: &str) -> Result<(), EditError> {
    check_client_id(id).map_err(EditError::Invalid)?;
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

fn strings(values: impl IntoIterator<Item = String>) -> Item {
    Item::Value(Value::Array(values.into_iter().collect()))
}

fn toml_datetime(at: Timestamp) -> toml_edit::Datetime {
    // Whole seconds, UTC: `2026-11-28T10:00:00Z`.
    let whole = Timestamp::from_second(at.as_second()).expect("in range");
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
        hashes.retain(|v| {
            let expires = v
                .as_inline_table()
                .and_then(|t| t.get("expires"))
                .and_then(Value::as_datetime)
                .and_then(|d| d.to_string().parse::<Timestamp>().ok());
            expires.is_none_or(|e| e > now)
        });
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
}
