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
    io::{ErrorKind, Read as _, Seek as _},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::{ArcSwap, Guard};
use aws_lc_rs::rand::SecureRandom;
use tokendealer_shared::{
    admin::ReloadOutcome,
    clients_file::{self, ClientsFileError},
};

pub use edit::{Edit, EditError};
pub use registry::{Builder, Client, CutText, Digest, Registry, hash_secret};

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
    #[error("clients file {} is not loaded: it is writable by others (mode {mode:04o}), so anyone could add a client with a secret they know; run `chmod o-w {}`", path.display(), path.display())]
    Exposed { path: PathBuf, mode: u32 },
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
    #[error(
        "clients file {} is empty while clients are loaded; not editing it (save it again, or leave a comment in it to mean no clients)",
        path.display()
    )]
    Empty { path: PathBuf },
}

/// What to do about a failed write, for the errors an admin can fix.
fn write_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(28) => " (free space on its file system, then try again)",
        Some(30) => " (its file system is read-only; make it writable or edit the file elsewhere)",
        Some(13) => " (the daemon's user needs write access to the file's directory)",
        // rename(2) over a file of another user in a sticky directory, like the packaged
        // /etc/tokendealer (1770), after the file was replaced by root.
        Some(1) => {
            " (in a sticky directory the daemon replaces only a file its user owns: chown the file to it)"
        }
        _ => "",
    }
}

/// The clients file and the registry built from it.
#[derive(Debug)]
pub struct ClientsStore {
    path: PathBuf,
    current: ArcSwap<Registry>,
    /// The digest ([`CutText::digest`], [`Builder::digest`]) of the text `current` was built
    /// from, so that reloading what we ourselves just wrote (the watcher sees our rename) is
    /// recognised and skipped.
    applied: Mutex<Digest>,
    outcome: Mutex<ReloadOutcome>,
    /// One writer at a time; readers never take it.
    write_lock: Mutex<()>,
    /// Successful reloads that changed the registry.
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// Unix seconds of the last successful load.
    pub last_success: AtomicI64,
    /// The longest client `token_ttl` (seconds) of every registry served since start-up:
    /// tokens may be out with it even after the file shortened it.
    longest_ttl_served: AtomicU64,
}

/// The longest `token_ttl` among `registry`'s clients, in seconds.
fn longest_ttl(registry: &Registry) -> u64 {
    registry
        .iter()
        .filter_map(|c| c.token_ttl)
        .map(|t| t.as_secs())
        .max()
        .unwrap_or(0)
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl ClientsStore {
    /// Loads the file; at start-up a file that cannot be loaded is an error.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        // Left by a write killed halfway; a symlinked file is written where it points.
        let target = fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        for file in [path, target.as_path()] {
            if let (Some(dir), Some(name)) = (file.parent(), file.file_name()) {
                fsio::remove_stale_temp_files(dir, |temp_of| *temp_of == *name.to_string_lossy());
            }
        }
        let (registry, digest) =
            read(path, None, None)?.expect("a file is never the one applied before the first");
        let count = registry.len() as u64;
        let longest = longest_ttl(&registry);
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
            longest_ttl_served: AtomicU64::new(longest),
        })
    }

    /// The longest client `token_ttl` served since start-up, if any client had one.
    pub fn longest_ttl_served(&self) -> Option<Duration> {
        Some(self.longest_ttl_served.load(Ordering::Relaxed))
            .filter(|&secs| secs > 0)
            .map(Duration::from_secs)
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
        self.reload_telling().0
    }

    /// [`ClientsStore::reload`], also telling whether it swapped in clients read from a
    /// changed file (decided under the write lock: two reloads at once tell it once).
    pub fn reload_telling(&self) -> (ReloadOutcome, bool) {
        // Serialised with writes, so a reload never swaps in an older file over a newer write.
        let _writing = self.write_lock.lock().expect("write lock");
        let mut changed = false;
        let mut failure = None;
        let outcome = match self.load_if_changed() {
            Ok((count, swapped)) => {
                changed = swapped;
                self.last_success.store(now(), Ordering::Relaxed);
                ReloadOutcome::Ok {
                    at: now(),
                    clients: count,
                }
            }
            Err(e) => {
                failure = Some(e.to_string());
                let (line, reason) = match &e {
                    LoadError::Invalid { source, .. } => {
                        // The outcome carries the line apart; the reason need not repeat it.
                        let (line, text) = (source.line(), source.to_string());
                        let reason = line
                            .and_then(|l| text.strip_prefix(&format!("line {l}: ")))
                            .map_or_else(|| text.clone(), str::to_owned);
                        (line, reason)
                    }
                    LoadError::Read { source, .. } if source.kind() == ErrorKind::NotFound => {
                        (None, "the file is missing".to_owned())
                    }
                    LoadError::Read { source, .. } => (None, source.to_string()),
                    LoadError::Empty { .. } | LoadError::Exposed { .. } => (None, e.to_string()),
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
        // Counted and logged once it is the outcome `status` shows.
        if let Some(error) = failure {
            self.reload_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, "clients file not loaded; still serving the previous clients");
        }
        (outcome, changed)
    }

    /// Reads the file and, when it differs from what is loaded, swaps in its registry.
    /// Returns the number of clients now served, and whether they were swapped in.
    fn load_if_changed(&self) -> Result<(u64, bool), LoadError> {
        let started = Instant::now();
        let current = self.current.load_full();
        let applied = *self.applied.lock().expect("applied lock");
        // Our own writes come back through the watcher; recognising them spares indexing
        // every client of a large file again for nothing.
        let Some((registry, digest)) = read(&self.path, Some(&current), Some(applied))? else {
            tracing::debug!(file = %self.path.display(), "clients file unchanged");
            return Ok((current.len() as u64, false));
        };
        drop(current);
        let count = self.replace(registry, digest);
        self.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            clients = count,
            file = %self.path.display(),
            duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "clients file reloaded"
        );
        Ok((count, true))
    }

    /// Swaps in `registry`, read from text whose digest is `digest`. Returns the number of
    /// clients now served.
    fn replace(&self, registry: Registry, digest: Digest) -> u64 {
        let count = registry.len() as u64;
        self.longest_ttl_served
            .fetch_max(longest_ttl(&registry), Ordering::Relaxed);
        *self.applied.lock().expect("applied lock") = digest;
        let replaced = self.current.swap(Arc::new(registry));
        // Let go here, so that unless a request still holds it, the replaced registry is
        // dropped by this thread rather than on a request's path.
        drop(replaced);
        count
    }

    /// Applies `edit` to the file on disk, then to memory. A change made by hand since the
    /// file was last loaded is kept: the edit is applied to the file as it is now.
    pub fn edit(&self, edit: &Edit) -> Result<Edited, WriteError> {
        let _writing = self.write_lock.lock().expect("write lock");
        // A symlinked file (kept in git, or managed by configuration management) is written
        // where the link points: replacing the link with a file would cut it loose.
        let target = fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
        let read_now = || {
            fsio::read_regular(&target)
                .and_then(|bytes| {
                    String::from_utf8(bytes)
                        .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))
                })
                .map_err(|source| WriteError::Read {
                    path: self.path.clone(),
                    source,
                })
        };
        for _ in 0..WRITE_ATTEMPTS {
            let before = read_now()?;
            // Caught between a truncating save and its write, the file is empty; an edit of
            // it would write a file of this one change, dropping every other client.
            if before.is_empty() && !self.current.load().is_empty() {
                return Err(WriteError::Empty {
                    path: self.path.clone(),
                });
            }
            let after = edit::apply(&before, edit, jiff::Timestamp::now())?;
            // Done already (disabling a disabled client), in the file and in what is served:
            // nothing to write. A file that says so but is not what is served (a hand edit
            // not loaded yet, or refused) is written and loaded as any edit's.
            if after == before
                && *self.applied.lock().expect("applied lock") == CutText::new(&before).digest()
            {
                return Ok(Edited::Already);
            }
            // Someone may have saved the file while we edited it; the rename would then lose
            // their change. Checked just before the rename (the new file written and
            // synced), a chunk at a time (a second copy of a large file is not needed); if
            // it changed, re-read and re-apply.
            let written = fsio::write_atomic_if(&target, after.as_bytes(), 0o600, || {
                same_text(&target, before.as_bytes())
            })
            .map_err(|source| WriteError::Write {
                path: self.path.clone(),
                source,
            })?;
            if !written {
                tracing::info!(file = %self.path.display(), "clients file changed during a write; applying the change again");
                continue;
            }
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
            return Ok(Edited::Written);
        }
        Err(WriteError::Contended)
    }
}

/// What [`ClientsStore::edit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edited {
    Written,
    /// The file and the clients served already were as the edit would make them.
    Already,
}

/// Whether the file at `path` holds exactly `expected`, read a chunk at a time.
fn same_text(path: &Path, expected: &[u8]) -> std::io::Result<bool> {
    let mut file = fsio::open_regular(path)?;
    let mut chunk = vec![0; 64 * 1024];
    let mut rest = expected;
    loop {
        let n = match file.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(rest.is_empty());
        }
        let Some(head) = rest.get(..n) else {
            return Ok(false);
        };
        if head != &chunk[..n] {
            return Ok(false);
        }
        rest = &rest[n..];
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

/// Reads the clients file and builds its registry, sharing with `previous` what it can;
/// `None` when the file's digest is `applied`, the text `previous` was built from.
///
/// The file is read a piece at a time, and only the pieces `previous` does not have are
/// parsed; its whole text is read at once only when that fails (to say what is wrong with
/// it, or to read it the general way) or `previous` was not read in pieces.
fn read(
    path: &Path,
    previous: Option<&Registry>,
    applied: Option<Digest>,
) -> Result<Option<(Registry, Digest)>, LoadError> {
    let mut file = fsio::open_regular(path).map_err(read_error(path))?;
    refuse_exposed(path, &file)?;
    let loaded = read_open(path, &mut file, previous, applied);
    // Told when the file is loaded, not at every look at an unchanged one (the second read
    // at start-up, a reload with nothing changed).
    if !matches!(loaded, Ok(None)) {
        warn_if_readable(path, &file);
        warn_if_directory_exposed(path);
    }
    loaded
}

fn read_error(path: &Path) -> impl Fn(std::io::Error) -> LoadError + '_ {
    |source| LoadError::Read {
        path: path.to_owned(),
        source,
    }
}

/// [`read`] of the file opened at `path`.
fn read_open(
    path: &Path,
    file: &mut fs::File,
    previous: Option<&Registry>,
    applied: Option<Digest>,
) -> Result<Option<(Registry, Digest)>, LoadError> {
    let read_error = read_error(path);
    if previous.is_none_or(Registry::built_from_pieces) {
        let mut builder = Builder::new(previous);
        // Kept from one reload to the next, like the builder's own buffers.
        static READ_BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());
        let mut buf = std::mem::take(&mut *READ_BUFFER.lock().expect("read buffer lock"));
        let read = clients_file::read_in_pieces(file, &mut buf, |piece| builder.piece(piece));
        // A buffer grown for a piece far larger than usual is let go.
        if buf.capacity() <= 1 << 20 {
            *READ_BUFFER.lock().expect("read buffer lock") = buf;
        }
        read.map_err(&read_error)?;
        if builder.accepted() {
            let digest = builder.digest();
            if Some(digest) == applied {
                return Ok(None);
            }
            refuse_empty(path, builder.bytes(), previous)?;
            if let Some(registry) = builder.finish() {
                return Ok(Some((registry, digest)));
            }
        }
        // Read again from the same file: if it was replaced meanwhile, this is still the
        // version whose pieces were just read.
        file.rewind().map_err(&read_error)?;
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(&read_error)?;
    let cut = CutText::new(&text);
    let digest = cut.digest();
    if Some(digest) == applied {
        return Ok(None);
    }
    refuse_empty(path, text.len(), previous)?;
    let registry = Registry::load(&cut, previous).map_err(|source| LoadError::Invalid {
        path: path.to_owned(),
        source,
    })?;
    Ok(Some((registry, digest)))
}

/// An in-place save (`>`, `cp`) truncates before it writes; caught in between, the file is
/// empty and would drop every client. A file meant to hold no clients says so with at least
/// a comment.
fn refuse_empty(path: &Path, len: usize, previous: Option<&Registry>) -> Result<(), LoadError> {
    if len == 0 && previous.is_some_and(|p| !p.is_empty()) {
        return Err(LoadError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Refuses a clients file that others may write: whoever writes it decides who gets
/// tokens. Its group may (an admin group editing by hand).
fn refuse_exposed(path: &Path, file: &fs::File) -> Result<(), LoadError> {
    let mode = file
        .metadata()
        .map_err(read_error(path))?
        .permissions()
        .mode();
    if mode & 0o002 != 0 {
        return Err(LoadError::Exposed {
            path: path.to_owned(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// Warns of a clients file in a directory that others may write (they could put another
/// file in its place), unless the directory is sticky (they may not) or on a read-only
/// file system (nobody may: a Kubernetes ConfigMap's mount is 0777 and read-only). The
/// directory is the file's own, through symlinks.
fn warn_if_directory_exposed(path: &Path) {
    let Ok(real) = fs::canonicalize(path) else {
        return;
    };
    let Some(dir) = real.parent() else { return };
    let Ok(meta) = fs::metadata(dir) else { return };
    let mode = meta.permissions().mode();
    let read_only = rustix::fs::statvfs(dir)
        .is_ok_and(|fs| fs.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY));
    if mode & 0o002 != 0 && mode & 0o1000 == 0 && !read_only {
        tracing::warn!(
            file = %real.display(),
            dir = %dir.display(),
            mode = format!("{:04o}", mode & 0o7777),
            "the clients file is in a directory others may write: they could put a file of theirs in its place and decide who gets tokens; run `chmod o-w` on the directory"
        );
    }
}

fn warn_if_readable(path: &Path, file: &fs::File) {
    if let Ok(meta) = file.metadata() {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                mode = format!("{mode:04o}"),
                "the clients file is readable by group or others; it holds no secrets, but who may get tokens is still worth keeping private (chmod 600)"
            );
        }
    }
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

    /// An edit that changes nothing writes nothing; one whose result the file already holds
    /// but the served clients do not (a hand edit not loaded yet) is applied like any.
    #[test]
    fn an_edit_already_done_writes_nothing_unless_the_file_is_ahead() {
        let (_dir, store) = store("");
        store.edit(&add("a")).unwrap();
        let disable = Edit::SetDisabled {
            id: "a".into(),
            disabled: true,
        };
        assert_eq!(store.edit(&disable).unwrap(), Edited::Written);
        assert_eq!(store.edit(&disable).unwrap(), Edited::Already);

        // The file says enabled; what is served does not know yet.
        let text = fs::read_to_string(store.path()).unwrap();
        let enabled = text.replace("disabled = true\n", "");
        assert_ne!(enabled, text, "{text}");
        fs::write(store.path(), enabled).unwrap();
        let enable = Edit::SetDisabled {
            id: "a".into(),
            disabled: false,
        };
        assert_eq!(store.edit(&enable).unwrap(), Edited::Written);
        assert!(
            !store.load().get("a").unwrap().disabled,
            "the file's state served"
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
            matches!(outcome, ReloadOutcome::Failed { line: Some(2), .. }),
            "the hash's line: {outcome:?}"
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

    /// A file of `n` clients, large enough to be cut into several pieces.
    fn many(n: usize) -> String {
        let h = format_hash(&hash_secret("s"));
        (0..n)
            .map(|i| {
                format!("[clients.c{i:04}]\nsecret_hashes = [\"{h}\"]\nscopes = [\"read\"]\n\n")
            })
            .collect()
    }

    #[test]
    fn a_reload_reads_the_file_in_pieces_and_skips_it_unchanged() {
        let text = many(300);
        let (_dir, store) = store(&text);
        assert!(store.load().built_from_pieces());
        let first = store.load().get("c0000").map(std::ptr::from_ref).unwrap();
        assert!(matches!(
            store.reload(),
            ReloadOutcome::Ok { clients: 300, .. }
        ));
        assert_eq!(
            store.reloads.load(Ordering::Relaxed),
            0,
            "unchanged: not applied"
        );
        let mut appended = text.clone();
        appended.push_str(&many(301)[text.len()..]);
        fs::write(store.path(), &appended).unwrap();
        assert!(matches!(
            store.reload(),
            ReloadOutcome::Ok { clients: 301, .. }
        ));
        assert_eq!(store.reloads.load(Ordering::Relaxed), 1);
        let r = store.load();
        assert!(r.authenticate("c0300", "s", 0).is_some());
        assert!(
            std::ptr::eq(r.get("c0000").unwrap(), first),
            "the unchanged pieces are shared"
        );
    }

    #[test]
    fn a_piece_that_is_not_utf8_fails_as_the_whole_file_would() {
        let text = many(300);
        let (_dir, store) = store(&text);
        let mut bytes = text.into_bytes();
        let at = bytes.len() - 20;
        bytes[at] = 0xff;
        fs::write(store.path(), &bytes).unwrap();
        let ReloadOutcome::Failed { reason, .. } = store.reload() else {
            panic!("loaded a file that is not UTF-8")
        };
        assert!(reason.contains("UTF-8"), "{reason}");
        assert_eq!(store.load().len(), 300);
    }

    #[test]
    fn a_file_of_another_shape_is_read_whole_and_skipped_unchanged() {
        let h = format_hash(&hash_secret("s"));
        let text = format!("clients = {{ a = {{ secret_hashes = [\"{h}\"] }} }}\n");
        let (_dir, store) = store(&text);
        assert!(!store.load().built_from_pieces());
        assert!(matches!(
            store.reload(),
            ReloadOutcome::Ok { clients: 1, .. }
        ));
        assert_eq!(store.reloads.load(Ordering::Relaxed), 0);
        // Back to the usual shape: read in pieces from then on.
        fs::write(store.path(), many(300)).unwrap();
        assert!(matches!(
            store.reload(),
            ReloadOutcome::Ok { clients: 300, .. }
        ));
        assert!(store.load().built_from_pieces() && store.load().get("a").is_none());
    }
}
