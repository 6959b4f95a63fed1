//! Clients: the registry the token endpoint reads, the file it comes from, and the writes
//! and reloads that keep the two in step.
//!
//! The file is the source of truth. Memory never runs ahead of it: a write reaches the disk
//! (fsync, rename, directory fsync) before the new registry is swapped in and acknowledged,
//! and a file that cannot be loaded leaves the previous registry serving.

pub mod edit;
mod registry;

use std::{
    fs,
    io::ErrorKind,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Instant,
};

use arc_swap::{ArcSwap, Guard};
use aws_lc_rs::rand::SecureRandom;
use tokendealer_shared::{admin::ReloadOutcome, clients_file::ClientsFileError};

pub use edit::{Edit, EditError};
pub use registry::{Client, CutText, Registry, hash_secret};

use crate::fsio;

/// How many times a write re-reads and re-applies when the file changes under it.
const WRITE_ATTEMPTS: usize = 3;

/// Why the clients file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read clients file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("clients file {} {source}", path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: ClientsFileError,
    },
    #[error("clients file {} is empty (caught mid-save?); the previous clients stay — to really have no clients, leave a comment line in it", path.display())]
    Empty { path: PathBuf },
}

/// Why a change to the clients was not made. In every case the file and the registry are
/// exactly as they were.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Edit(#[from] EditError),
    #[error("cannot read clients file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write clients file {}: {source}; it is unchanged{}", path.display(), write_hint(source))]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the clients file kept changing while it was being written; try again")]
    Contended,
}

/// What to do about a failed write, for the errors an admin can fix.
fn write_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(28) => " (free space on its file system, then try again)",
        Some(30) => " (its file system is read-only; make it writable or edit the file elsewhere)",
        Some(13 | 1) => " (the daemon's user needs write access to the file's directory)",
        _ => "",
    }
}

/// The clients file and the registry built from it.
#[derive(Debug)]
pub struct ClientsStore {
    path: PathBuf,
    current: ArcSwap<Registry>,
    /// The digest ([`CutText::digest`]) of the text `current` was built from, so that
    /// reloading what we ourselves just wrote (the watcher sees our rename) is recognised and
    /// skipped.
    applied: Mutex<[u8; 32]>,
    outcome: Mutex<ReloadOutcome>,
    /// One writer at a time; readers never take it.
    write_lock: Mutex<()>,
    /// Successful reloads that changed the registry.
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// Unix seconds of the last successful load.
    pub last_success: AtomicI64,
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl ClientsStore {
    /// Loads the file; at start-up a file that cannot be loaded is an error.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        if let Some(dir) = path.parent() {
            fsio::remove_stale_temp_files(dir);
        }
        let text = read_text(path)?;
        let cut = CutText::new(&text);
        let registry = load(path, &cut, None)?;
        let digest = cut.digest();
        let count = registry.len() as u64;
        Ok(Self {
            path: path.to_owned(),
            current: ArcSwap::from_pointee(registry),
            applied: Mutex::new(digest),
            outcome: Mutex::new(ReloadOutcome::Ok {
                at: now(),
                clients: count,
            }),
            write_lock: Mutex::new(()),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            last_success: AtomicI64::new(now()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current registry. Cheap and lock-free: the token endpoint calls it per request.
    pub fn load(&self) -> Guard<Arc<Registry>> {
        self.current.load()
    }

    /// The outcome of the last load attempt.
    pub fn last_reload(&self) -> ReloadOutcome {
        self.outcome.lock().expect("outcome lock").clone()
    }

    /// Re-reads the file and swaps in its registry; a file that fails keeps the previous
    /// registry serving and the failure is kept as the last reload outcome.
    pub fn reload(&self) -> ReloadOutcome {
        // Serialised with writes, so a reload never swaps in an older file over a newer write.
        let _writing = self.write_lock.lock().expect("write lock");
        let outcome = match self.load_if_changed() {
            Ok(count) => {
                self.last_success.store(now(), Ordering::Relaxed);
                ReloadOutcome::Ok {
                    at: now(),
                    clients: count,
                }
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "clients file not loaded; still serving the previous clients");
                let (line, reason) = match &e {
                    LoadError::Invalid { source, .. } => (source.line(), source.to_string()),
                    LoadError::Read { source, .. } if source.kind() == ErrorKind::NotFound => {
                        (None, "the file is missing".to_owned())
                    }
                    LoadError::Read { source, .. } => (None, source.to_string()),
                    LoadError::Empty { .. } => (None, e.to_string()),
                };
                ReloadOutcome::Failed {
                    at: now(),
                    file: self.path.display().to_string(),
                    line,
                    reason,
                }
            }
        };
        *self.outcome.lock().expect("outcome lock") = outcome.clone();
        outcome
    }

    /// Reads the file and, when it differs from what is loaded, swaps in its registry.
    /// Returns the number of clients now served.
    fn load_if_changed(&self) -> Result<u64, LoadError> {
        let started = Instant::now();
        let text = read_text(&self.path)?;
        let cut = CutText::new(&text);
        let digest = cut.digest();
        // Our own writes come back through the watcher; recognising them here spares
        // indexing every client of a large file again for nothing.
        if *self.applied.lock().expect("applied lock") == digest {
            tracing::debug!(file = %self.path.display(), "clients file unchanged");
            return Ok(self.current.load().len() as u64);
        }
        // An in-place save (`>`, `cp`) truncates before it writes; caught in between, the
        // file is empty and would drop every client. A file meant to hold no clients says
        // so with at least a comment.
        if text.is_empty() && !self.current.load().is_empty() {
            return Err(LoadError::Empty {
                path: self.path.clone(),
            });
        }
        let registry = load(&self.path, &cut, Some(&self.current.load()))?;
        let count = self.replace(registry, digest);
        self.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            clients = count,
            file = %self.path.display(),
            duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "clients file reloaded"
        );
        Ok(count)
    }

    /// Swaps in `registry`, read from text whose digest is `digest`. Returns the number of
    /// clients now served.
    fn replace(&self, registry: Registry, digest: [u8; 32]) -> u64 {
        let count = registry.len() as u64;
        *self.applied.lock().expect("applied lock") = digest;
        self.current.store(Arc::new(registry));
        count
    }

    /// Applies `edit` to the file on disk, then to memory. A change made by hand since the
    /// file was last loaded is kept: the edit is applied to the file as it is now.
    pub fn edit(&self, edit: &Edit) -> Result<(), WriteError> {
        let _writing = self.write_lock.lock().expect("write lock");
        let read_now = || {
            fs::read_to_string(&self.path).map_err(|source| WriteError::Read {
                path: self.path.clone(),
                source,
            })
        };
        for _ in 0..WRITE_ATTEMPTS {
            let before = read_now()?;
            let after = edit::apply(&before, edit, jiff::Timestamp::now())?;
            // Someone may have saved the file while we edited it; the rename would then lose
            // their change. Re-read and re-apply instead.
            if read_now()? != before {
                tracing::info!(file = %self.path.display(), "clients file changed during a write; applying the change again");
                continue;
            }
            fsio::write_atomic(&self.path, after.as_bytes(), 0o600).map_err(|source| {
                WriteError::Write {
                    path: self.path.clone(),
                    source,
                }
            })?;
            // Of a large file's two versions, only the new one is needed from here on.
            drop(before);
            let cut = CutText::new(&after);
            let registry = Registry::load(&cut, Some(&self.current.load()))
                .expect("edit::apply only returns loadable text");
            let count = self.replace(registry, cut.digest());
            self.last_success.store(now(), Ordering::Relaxed);
            *self.outcome.lock().expect("outcome lock") = ReloadOutcome::Ok {
                at: now(),
                clients: count,
            };
            return Ok(());
        }
        Err(WriteError::Contended)
    }
}

/// A new client secret: 192 random bits (at least 128 are required) as hex (URL- and shell-safe, no encoding needed).
pub fn new_secret() -> String {
    let mut bytes = [0u8; 24];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("system randomness is available");
    hex::encode(bytes)
}

fn read_text(path: &Path) -> Result<String, LoadError> {
    let text = fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                mode = format!("{mode:04o}"),
                "the clients file is readable by group or others; it holds no secrets, but who may get tokens is still worth keeping private (chmod 600)"
            );
        }
    }
    Ok(text)
}

fn load(
    path: &Path,
    text: &CutText<'_>,
    previous: Option<&Registry>,
) -> Result<Registry, LoadError> {
    Registry::load(text, previous).map_err(|source| LoadError::Invalid {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokendealer_shared::clients_file::format_hash;

    fn store(text: &str) -> (tempfile::TempDir, ClientsStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clients.toml");
        fs::write(&path, text).unwrap();
        let store = ClientsStore::open(&path).unwrap();
        (dir, store)
    }

    fn add(id: &str) -> Edit {
        Edit::Add {
            id: id.into(),
            audiences: vec![],
            scopes: vec![],
            ttl: None,
            secret_hash: hash_secret("s"),
        }
    }

    #[test]
    fn edits_reach_disk_then_memory() {
        let (_dir, store) = store("");
        store.edit(&add("a")).unwrap();
        assert!(store.load().authenticate("a", "s", 0).is_some());
        let on_disk = fs::read_to_string(store.path()).unwrap();
        assert!(on_disk.contains(&format_hash(&hash_secret("s"))));
        assert_eq!(
            fs::metadata(store.path()).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_hand_edit_is_kept_by_the_next_write() {
        let (_dir, store) = store("");
        let hand = format!(
            "# by hand\n[clients.h]\nsecret_hashes = [\"{}\"]\n",
            format_hash(&hash_secret("x"))
        );
        fs::write(store.path(), hand).unwrap();
        store.edit(&add("a")).unwrap();
        let r = store.load();
        assert!(r.get("h").is_some() && r.get("a").is_some());
        assert!(
            fs::read_to_string(store.path())
                .unwrap()
                .starts_with("# by hand")
        );
    }

    #[test]
    fn a_bad_file_keeps_the_previous_registry() {
        let (_dir, store) = store("");
        store.edit(&add("a")).unwrap();
        fs::write(
            store.path(),
            "[clients.a]\nsecret_hashes = [\"sha256:nope\"]\n",
        )
        .unwrap();
        let outcome = store.reload();
        assert!(
            matches!(outcome, ReloadOutcome::Failed { line: Some(1), .. }),
            "{outcome:?}"
        );
        assert!(store.load().get("a").is_some());
        assert_eq!(store.reload_failures.load(Ordering::Relaxed), 1);
        fs::remove_file(store.path()).unwrap();
        let ReloadOutcome::Failed { reason, .. } = store.reload() else {
            panic!()
        };
        assert_eq!(reason, "the file is missing");
        assert!(store.load().get("a").is_some());
    }
}
