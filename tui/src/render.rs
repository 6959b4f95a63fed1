//! How admin results look: aligned text for people, one JSON document for scripts.

use std::{
    io::{self, Write},
    time::Duration,
};

use serde_json::{Value, json};
use tokendealer_shared::admin::{
    Change, ChangeKind, ClientInfo, KeyInfo, KeyState, ReloadOutcome, Status,
};

/// RFC 3339 in UTC, or the raw number if it is out of range.
pub fn time(unix: i64) -> String {
    jiff::Timestamp::from_second(unix).map_or_else(|_| unix.to_string(), |t| t.to_string())
}

/// The algorithm that signs, and the next key's when a new one was configured: it signs
/// from the next rotation.
pub fn algorithm_text(s: &Status) -> String {
    match s.keys.iter().find(|k| k.state == KeyState::Next) {
        Some(next) if next.alg != s.algorithm => {
            format!("{} ({} from the next rotation)", s.algorithm, next.alg)
        }
        _ => s.algorithm.clone(),
    }
}

fn ttl(secs: Option<u64>) -> Option<String> {
    secs.map(|s| tokendealer_shared::duration::format(Duration::from_secs(s)))
}

pub fn reload_json(outcome: &ReloadOutcome) -> Value {
    match outcome {
        ReloadOutcome::Ok { at, clients } => {
            json!({ "ok": true, "at": time(*at), "clients": clients })
        }
        ReloadOutcome::Failed {
            at,
            file,
            line,
            reason,
        } => json!({ "ok": false, "at": time(*at), "file": file, "line": line, "reason": reason }),
    }
}

pub fn reload_text(outcome: &ReloadOutcome) -> String {
    match outcome {
        ReloadOutcome::Ok { at, clients } => {
            format!(
                "ok at {} ({})",
                time(*at),
                tokendealer_shared::count(*clients, "client", "clients")
            )
        }
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
    }
}

pub fn key_json(k: &KeyInfo) -> Value {
    json!({
        "kid": k.kid,
        "alg": k.alg,
        "state": k.state.as_str(),
        "created": time(k.created),
        "activated": k.activated.map(time),
        "retire_at": k.retire_at.map(time),
        "may_sign_at": k.may_sign_at.map(time),
    })
}

pub fn client_json(c: &ClientInfo) -> Value {
    json!({
        "id": c.id,
        "audiences": c.audiences,
        "scopes": c.scopes,
        "token_ttl": ttl(c.ttl_secs),
        "disabled": c.disabled,
        "old_secret_until": c.old_secret_until.map(time),
        "issued": c.issued,
        "last_issued": c.last_issued.map(time),
    })
}

pub fn status_json(s: &Status) -> Value {
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
        "disabled": s.disabled,
        "rotating": s.rotating,
        "last_reload": reload_json(&s.last_reload),
        "keys": s.keys.iter().map(key_json).collect::<Vec<_>>(),
        "key_rotations": s.key_rotations,
        "secret_rotations": s.secret_rotations,
        "changes": s.changes.iter().map(change_json).collect::<Vec<_>>(),
    })
}

/// One change: its time, who asked for it (a uid, or null for the daemon and the file), a
/// kind a script can match on, the subject, and the sentence `status` prints.
pub fn change_json(c: &Change) -> Value {
    let mut value = json!({
        "at": time(c.at),
        "by": c.by,
        "text": c.what.to_string(),
    });
    let (kind, subject) = match &c.what {
        ChangeKind::ClientAdded { id } => ("client_added", json!({ "client": id })),
        ChangeKind::ClientRemoved { id } => ("client_removed", json!({ "client": id })),
        ChangeKind::ClientDisabled { id } => ("client_disabled", json!({ "client": id })),
        ChangeKind::ClientEnabled { id } => ("client_enabled", json!({ "client": id })),
        ChangeKind::SecretRotated {
            id,
            old_valid_until,
        } => (
            "secret_rotated",
            json!({ "client": id, "old_valid_until": old_valid_until.map(time) }),
        ),
        ChangeKind::ClientsImported { count } => ("clients_imported", json!({ "count": count })),
        ChangeKind::ClientsFileLoaded { clients } => {
            ("clients_file_loaded", json!({ "clients": clients }))
        }
        ChangeKind::KeyRotated { active } => ("key_rotated", json!({ "active": active })),
        ChangeKind::KeyRevoked { kid } => ("key_revoked", json!({ "kid": kid })),
    };
    value["kind"] = json!(kind);
    if let (Some(value), Value::Object(subject)) = (value.as_object_mut(), subject) {
        value.extend(subject);
    }
    value
}

/// Who made a change, for a person: the uid that asked, or where it came from.
pub fn change_by(c: &Change) -> String {
    match (c.by, &c.what) {
        (Some(uid), _) => format!("uid {uid}"),
        (None, ChangeKind::ClientsFileLoaded { .. }) => "the file".to_owned(),
        (None, _) => "the daemon".to_owned(),
    }
}

/// The changes listed after the keys in `status`.
const CHANGES_SHOWN: usize = 10;

pub fn write_status(out: &mut dyn Write, s: &Status) -> io::Result<()> {
    let uptime = tokendealer_shared::duration::format(Duration::from_secs(s.uptime_secs.max(1)));
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
        (
            "clients",
            format!(
                "{} from {} ({} disabled, {} with an old secret still working)",
                s.clients, s.clients_file, s.disabled, s.rotating
            ),
        ),
        ("last reload", reload_text(&s.last_reload)),
        ("algorithm", algorithm_text(s)),
        (
            "rotations",
            format!(
                "{} of the signing key, {} of secrets, since start",
                s.key_rotations, s.secret_rotations
            ),
        ),
    ];
    for (name, value) in rows {
        writeln!(out, "{name:<12} {value}")?;
    }
    writeln!(out)?;
    write_keys(out, &s.keys)?;
    if !s.changes.is_empty() {
        writeln!(out)?;
        let rows: Vec<[String; 3]> = s
            .changes
            .iter()
            .take(CHANGES_SHOWN)
            .map(|c| [time(c.at), c.what.to_string(), change_by(c)])
            .collect();
        write_table(out, &["CHANGED", "WHAT", "BY"], &rows)?;
    }
    Ok(())
}

pub fn write_keys(out: &mut dyn Write, keys: &[KeyInfo]) -> io::Result<()> {
    let rows: Vec<[String; 6]> = keys
        .iter()
        .map(|k| {
            // One column for the time that matters in each state.
            let when = match (k.may_sign_at, k.retire_at) {
                (Some(at), _) => format!("may sign from {}", time(at)),
                (_, Some(at)) => format!("leaves JWKS at {}", time(at)),
                _ => "-".to_owned(),
            };
            [
                k.kid.clone(),
                k.alg.clone(),
                k.state.as_str().to_owned(),
                time(k.created),
                k.activated.map_or_else(|| "-".into(), time),
                when,
            ]
        })
        .collect();
    write_table(
        out,
        &["KID", "ALG", "STATE", "CREATED", "ACTIVATED", "NEXT EVENT"],
        &rows,
    )
}

pub fn write_clients(out: &mut dyn Write, clients: &[ClientInfo]) -> io::Result<()> {
    let list = |items: &[String]| {
        if items.is_empty() {
            "-".to_owned()
        } else {
            items.join(",")
        }
    };
    let rows: Vec<[String; 7]> = clients
        .iter()
        .map(|c| {
            let state = match (c.disabled, c.old_secret_until) {
                (true, _) => "disabled".to_owned(),
                (false, Some(until)) => format!("rotating (old secret until {})", time(until)),
                (false, None) => "enabled".to_owned(),
            };
            [
                c.id.clone(),
                state,
                list(&c.audiences),
                list(&c.scopes),
                ttl(c.ttl_secs).unwrap_or_else(|| "default".into()),
                c.issued.to_string(),
                c.last_issued.map_or_else(|| "-".into(), time),
            ]
        })
        .collect();
    write_table(
        out,
        &[
            "ID",
            "STATE",
            "AUDIENCES",
            "SCOPES",
            "TTL",
            "ISSUED",
            "LAST ISSUED",
        ],
        &rows,
    )
}

/// Writes rows under a header, each column as wide as its widest cell.
fn write_table<const N: usize>(
    out: &mut dyn Write,
    header: &[&str; N],
    rows: &[[String; N]],
) -> io::Result<()> {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        cells
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(&mut header.iter().copied()))?;
    for row in rows {
        writeln!(out, "{}", line(&mut row.iter().map(String::as_str)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_is_counted_in_the_singular() {
        let ok = |clients| ReloadOutcome::Ok { at: 0, clients };
        assert!(
            reload_text(&ok(1)).ends_with("(1 client)"),
            "{}",
            reload_text(&ok(1))
        );
        assert!(reload_text(&ok(0)).ends_with("(0 clients)"));
        assert!(reload_text(&ok(2)).ends_with("(2 clients)"));
        assert_eq!(
            ChangeKind::ClientsImported { count: 1 }.to_string(),
            "1 client imported"
        );
        assert_eq!(
            ChangeKind::ClientsImported { count: 3 }.to_string(),
            "3 clients imported"
        );
        assert_eq!(
            ChangeKind::ClientsFileLoaded { clients: 1 }.to_string(),
            "clients file changed on disk: 1 client"
        );
    }

    #[test]
    fn tables_align() {
        let mut out = Vec::new();
        write_table(
            &mut out,
            &["A", "BB"],
            &[["long".into(), "x".into()], ["s".into(), "yy".into()]],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A     BB\nlong  x\ns     yy\n"
        );
    }
}
