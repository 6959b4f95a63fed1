//! Keys on disk: `key_dir` holds one PKCS#8 PEM file per key (`KID.pem`, mode 0600),
//! `manifest.json` with each key's state, and `.lock`, which serialises writers.
//!
//! A key file is always written before the manifest that names it, and removed only after
//! a manifest that no longer names it, so a crash at any point leaves a manifest whose keys
//! all exist (at worst beside an unreferenced file, removed by the next writer).
//!
//! The lock is `flock(2)` on `.lock`: several daemons sharing the directory take turns, and
//! a holder that dies releases it with its last descriptor, so no stale lock can outlive a
//! crash. (flock is not reliable on some network file systems; share a key directory over
//! a local or a Kubernetes volume, or give each daemon its own.)

use std::{
    fs::{self, File, OpenOptions},
    io::{ErrorKind, Read as _},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tokendealer_shared::admin::KeyState;

use super::{KeyError, SigningAlg, SigningKey};
use crate::fsio;

const MANIFEST: &str = "manifest.json";
const LOCK: &str = ".lock";
const MANIFEST_VERSION: u32 = 1;
const PEM_TAG: &str = "PRIVATE KEY";

/// Every daemon sharing a key directory adopts a change made in it within this many
/// seconds: its watch of the directory brings the change within a second (a write from
/// another host, which raises no event here, at the watch's look every 5 s), and key upkeep
/// reads the manifest again at least this often should the watch fail.
pub const ADOPTED_WITHIN: i64 = 30;

/// How much longer than `jwks_max_age` a next key waits before it signs. A verifier that
/// fetched the JWKS from a daemon that had not adopted the key yet caches a JWKS without it
/// until `jwks_max_age` after that fetch; five seconds more for the reading and for the
/// daemons' clocks.
pub const PUBLICATION_MARGIN: i64 = ADOPTED_WITHIN + 5;

/// One key's record in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredKey {
    pub kid: String,
    pub alg: SigningAlg,
    pub state: KeyState,
    /// Unix seconds; for a next key, when it was published.
    pub created: i64,
    pub activated: Option<i64>,
    /// For a retiring key: when it leaves the JWKS.
    pub retire_at: Option<i64>,
    /// For the active key: the longest token lifetime (seconds) in force while it signed,
    /// as far as known. Its retiring window covers that, even when lifetimes have been
    /// shortened since or the daemon restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longest_ttl: Option<i64>,
}

impl StoredKey {
    /// A freshly generated key, published as next.
    pub fn next(key: &SigningKey, now: i64) -> Self {
        Self {
            kid: key.kid().to_owned(),
            alg: key.alg(),
            state: KeyState::Next,
            created: now,
            activated: None,
            retire_at: None,
            longest_ttl: None,
        }
    }

    /// Whether the key is still published at `now`.
    pub fn published_at(&self, now: i64) -> bool {
        self.state != KeyState::Retiring || self.retire_at.is_some_and(|t| t > now)
    }
}

/// The manifest: every key and its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    version: u32,
    pub keys: Vec<StoredKey>,
    /// The JWKS `max-age` (seconds) last served from this directory's keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_max_age: Option<i64>,
    /// After `max-age` was shortened: until when responses served under the longer one may
    /// still sit in verifiers' caches. No next key signs before then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_until: Option<i64>,
}

/// Why a rotation was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotationRefused {
    #[error(
        "the next key {kid} was published at {published}; it may sign from {possible}, {jwks_max_age} (jwks_max_age) and {PUBLICATION_MARGIN}s later, when every daemon sharing the key directory publishes it and every verifier's cached JWKS holds it; rotate then, or pass --now"
    )]
    TooEarly {
        kid: String,
        published: String,
        possible: String,
        possible_at: i64,
        jwks_max_age: String,
    },
    #[error("there is no next key to promote")]
    NoNext,
}

/// A Unix time as RFC 3339, as admins read it.
pub(super) fn time(unix: i64) -> String {
    jiff::Timestamp::from_second(unix).map_or_else(|_| unix.to_string(), |t| t.to_string())
}

impl Manifest {
    pub fn new(keys: Vec<StoredKey>) -> Self {
        Self {
            version: MANIFEST_VERSION,
            keys,
            jwks_max_age: None,
            cached_until: None,
        }
    }

    pub fn active(&self) -> Option<&StoredKey> {
        self.keys.iter().find(|k| k.state == KeyState::Active)
    }

    pub fn next(&self) -> Option<&StoredKey> {
        self.keys.iter().find(|k| k.state == KeyState::Next)
    }

    /// When the next key may sign: `jwks_max_age` and [`PUBLICATION_MARGIN`] after it was
    /// made, and not before responses cached under a longer `max-age` have expired.
    pub fn next_may_sign_at(&self, jwks_max_age: i64) -> Option<i64> {
        self.next().map(|k| self.may_sign_at(k, jwks_max_age))
    }

    fn may_sign_at(&self, next: &StoredKey, jwks_max_age: i64) -> i64 {
        let published = next
            .created
            .saturating_add(PUBLICATION_MARGIN)
            .saturating_add(jwks_max_age);
        self.cached_until
            .map_or(published, |until| published.max(until))
    }

    /// Records that the JWKS is served with `max_age` from `now`. Responses served under a
    /// longer one stay in caches until `now` plus that: the next key waits for them.
    /// Returns whether the manifest changed.
    ///
    /// `served_here` is what the caller served until now: with several daemons sharing the
    /// directory, the manifest's record is what the first of them to change wrote, while the
    /// others went on serving the longer one until their own reload.
    pub fn serve_max_age(&mut self, now: i64, max_age: i64, served_here: i64) -> bool {
        let before = (self.jwks_max_age, self.cached_until);
        let longest = self
            .jwks_max_age
            .map_or(served_here, |m| m.max(served_here));
        if let Some(longer) = Some(longest).filter(|&old| old > max_age) {
            let until = now.saturating_add(longer);
            self.cached_until = Some(self.cached_until.map_or(until, |u| u.max(until)));
        }
        self.jwks_max_age = Some(max_age);
        (self.jwks_max_age, self.cached_until) != before
    }

    /// Records that tokens may be issued with lifetimes up to `ttl` (seconds) by the active
    /// key. Returns whether the manifest changed.
    pub fn note_ttl(&mut self, ttl: i64) -> bool {
        match self.keys.iter_mut().find(|k| k.state == KeyState::Active) {
            Some(active) if active.longest_ttl.is_none_or(|t| t < ttl) => {
                active.longest_ttl = Some(ttl);
                true
            }
            _ => false,
        }
    }

    /// The longest lifetime the active key's tokens may have: `ttl` or a longer one in
    /// force earlier.
    pub fn active_ttl(&self, ttl: i64) -> i64 {
        self.active()
            .and_then(|a| a.longest_ttl)
            .map_or(ttl, |t| t.max(ttl))
    }

    /// Checks that a rotation may happen at `now`.
    pub fn check_rotation(
        &self,
        now: i64,
        jwks_max_age: i64,
        force: bool,
    ) -> Result<(), RotationRefused> {
        let next = self.next().ok_or(RotationRefused::NoNext)?;
        let possible_at = self.may_sign_at(next, jwks_max_age);
        if !force && now < possible_at {
            return Err(RotationRefused::TooEarly {
                kid: next.kid.clone(),
                published: time(next.created),
                possible: time(possible_at),
                possible_at,
                jwks_max_age: tokendealer_shared::duration::format(std::time::Duration::from_secs(
                    u64::try_from(jwks_max_age).unwrap_or(0),
                )),
            });
        }
        Ok(())
    }

    /// next → active, active → retiring until `retire_at`, `new_next` → next.
    pub fn rotate(&mut self, now: i64, retire_at: i64, new_next: StoredKey) {
        for key in &mut self.keys {
            match key.state {
                KeyState::Active => {
                    key.state = KeyState::Retiring;
                    key.retire_at = Some(retire_at);
                }
                KeyState::Next => {
                    key.state = KeyState::Active;
                    key.activated = Some(now);
                }
                KeyState::Retiring => {}
            }
        }
        self.keys.push(new_next);
    }

    /// Drops `kid` at once. An active key is replaced by the next one (already published),
    /// and a revoked next key by `new_next`. Returns the removed record.
    pub fn revoke(
        &mut self,
        kid: &str,
        now: i64,
        new_next: impl FnOnce() -> Option<StoredKey>,
    ) -> Option<StoredKey> {
        let index = self.keys.iter().position(|k| k.kid == kid)?;
        let removed = self.keys.remove(index);
        if let (KeyState::Active, Some(next)) = (
            removed.state,
            self.keys.iter_mut().find(|k| k.state == KeyState::Next),
        ) {
            next.state = KeyState::Active;
            next.activated = Some(now);
        }
        if removed.state != KeyState::Retiring && self.next().is_none() {
            self.keys.extend(new_next());
        }
        Some(removed)
    }

    /// Removes retiring keys whose time has passed, and a `cached_until` that has; returns
    /// whether anything was.
    pub fn prune(&mut self, now: i64) -> bool {
        let before = self.keys.len();
        self.keys.retain(|k| k.published_at(now));
        let outlived = self.cached_until.is_some_and(|until| until <= now);
        if outlived {
            self.cached_until = None;
        }
        self.keys.len() != before || outlived
    }
}

/// Why the key directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error("cannot use key directory {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("private key {} is readable by group or others (mode {mode:04o}); run `chmod 600 {}`", path.display(), path.display())]
    Permissions { path: PathBuf, mode: u32 },
    #[error("key manifest {} is corrupt ({reason}); restore it from a backup or move the key directory aside to start with new keys", path.display())]
    CorruptManifest { path: PathBuf, reason: String },
    #[error("key file {} cannot be used: {reason}; restore it from a backup", path.display())]
    BadKeyFile { path: PathBuf, reason: String },
    #[error("key directory {} holds {keys} key files but no manifest.json: starting afresh would replace the keys verifiers know and delete their files; restore manifest.json from a backup, or move the key files aside to start with new keys", path.display())]
    NoManifest { path: PathBuf, keys: usize },
    #[error("key manifest {} names no usable active key", path.display())]
    NoActiveKey { path: PathBuf },
    #[error("{} {problem}: whoever can write there can make the daemon sign with a key of theirs; {fix}", path.display())]
    Exposed {
        path: PathBuf,
        problem: String,
        fix: String,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Refuses a key directory or manifest that others may write: they could put a key of
/// theirs in, and the daemon would sign with it. Its group may (a volume shared through a
/// group, as Kubernetes' fsGroup makes it); key files must be private altogether (see
/// [`KeyStoreError::Permissions`]).
fn refuse_exposed(path: &Path, meta: &fs::Metadata, what: &str) -> Result<(), KeyStoreError> {
    let mode = meta.mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Err(KeyStoreError::Exposed {
            path: path.to_owned(),
            problem: format!("({what}) is writable by others (mode {mode:04o})"),
            fix: format!("run `chmod o-w {}`", path.display()),
        });
    }
    Ok(())
}

/// The key directory.
#[derive(Debug, Clone)]
pub struct KeyStore {
    dir: PathBuf,
}

/// Held while writing; dropping it releases the lock.
#[derive(Debug)]
pub struct WriteLock {
    _file: File,
}

impl KeyStore {
    /// Opens `dir`, creating it (mode 0700) when missing.
    pub fn open(dir: &Path) -> Result<Self, KeyStoreError> {
        let io = |source| KeyStoreError::Io {
            path: dir.to_owned(),
            source,
        };
        if !dir.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
            // The new directory's entry lives in its parent: without this a power loss could
            // forget the directory, and with it the first key and tokens it signed. A parent
            // that cannot be synced is a storage fault to report, as for every write
            // (`fsio`), not a reason to refuse to start.
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            if let Err(e) = File::open(parent).and_then(|d| d.sync_all()) {
                tracing::error!(dir = %parent.display(), error = %e, "the new key directory's parent could not be synced: a power loss could forget it; check the disk");
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `dir` as it is: nothing is created (see [`KeyManager::check`](super::KeyManager::check)).
    pub fn existing(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> KeyStoreError + use<> {
        let path = path.to_owned();
        move |source| KeyStoreError::Io { path, source }
    }

    fn manifest_path(&self) -> PathBuf {
        self.dir.join(MANIFEST)
    }

    fn key_path(&self, kid: &str) -> PathBuf {
        self.dir.join(format!("{kid}.pem"))
    }

    /// Takes the writers' lock, waiting for another daemon that holds it.
    pub fn lock(&self) -> Result<WriteLock, KeyStoreError> {
        let path = self.dir.join(LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(self.io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                // Told, so that a daemon stuck behind one that hangs holding it can be seen.
                tracing::info!(path = %path.display(), "waiting for the key directory's lock, which another process holds");
                file.lock().map_err(self.io(&path))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(self.io(&path)(e)),
        }
        Ok(WriteLock { _file: file })
    }

    /// The manifest, or `None` when there is none yet.
    pub fn read_manifest(&self) -> Result<Option<Manifest>, KeyStoreError> {
        match fs::metadata(&self.dir) {
            Ok(meta) => refuse_exposed(&self.dir, &meta, "the key directory")?,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(&self.dir)(e)),
        }
        let path = self.manifest_path();
        let mut file = match fsio::open_regular(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(&path)(e)),
        };
        let meta = file.metadata().map_err(self.io(&path))?;
        refuse_exposed(&path, &meta, "the key manifest")?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(self.io(&path))?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| KeyStoreError::CorruptManifest {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if manifest.version != MANIFEST_VERSION {
            return Err(KeyStoreError::CorruptManifest {
                path,
                reason: format!("version {} is not {MANIFEST_VERSION}", manifest.version),
            });
        }
        Ok(Some(manifest))
    }

    /// Reads one key's private key file, checking its mode and that it holds that key.
    pub fn read_key(&self, meta: &StoredKey) -> Result<SigningKey, KeyStoreError> {
        let path = self.key_path(&meta.kid);
        let mut file = fsio::open_regular(&path).map_err(self.io(&path))?;
        let file_meta = file.metadata().map_err(self.io(&path))?;
        let mode = file_meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyStoreError::Permissions { path, mode });
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(self.io(&path))?;
        let bad = |reason: String| KeyStoreError::BadKeyFile {
            path: path.clone(),
            reason,
        };
        // The pem crate's own words ("malformedframing") tell an admin nothing.
        let pem = pem::parse(&text)
            .map_err(|_| bad("it is not a PEM block (damaged or cut short)".to_owned()))?;
        if pem.tag() != PEM_TAG {
            return Err(bad(format!(
                "expected a `{PEM_TAG}` PEM block, found `{}`",
                pem.tag()
            )));
        }
        let key =
            SigningKey::from_pkcs8(meta.alg, pem.contents()).map_err(|e| bad(e.to_string()))?;
        if key.kid() != meta.kid {
            return Err(bad(format!(
                "it holds key {} rather than {}",
                key.kid(),
                meta.kid
            )));
        }
        Ok(key)
    }

    /// Writes a private key file (0600). Call before writing a manifest that names it.
    pub fn write_key(&self, kid: &str, der: &[u8]) -> Result<(), KeyStoreError> {
        let path = self.key_path(kid);
        let text = pem::encode(&pem::Pem::new(PEM_TAG, der.to_vec()));
        fsio::write_atomic(&path, text.as_bytes(), 0o600).map_err(self.io(&path))
    }

    pub fn write_manifest(&self, manifest: &Manifest) -> Result<(), KeyStoreError> {
        let path = self.manifest_path();
        let mut bytes = serde_json::to_vec_pretty(manifest).expect("manifest serialises");
        bytes.push(b'\n');
        fsio::write_atomic(&path, &bytes, 0o600).map_err(self.io(&path))
    }

    /// Removes key files the manifest no longer names, and temp files of interrupted writes.
    /// Call after writing that manifest, with the lock held.
    ///
    /// Only files this store writes are touched: a key directory shared with other files
    /// (TLS certificates, a backup of a key) keeps them.
    /// How many key files (`KID.pem`) the directory holds.
    pub fn key_files(&self) -> usize {
        fs::read_dir(&self.dir).map_or(0, |entries| {
            entries
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|name| name.strip_suffix(".pem"))
                        .is_some_and(is_kid)
                })
                .count()
        })
    }

    pub fn remove_unreferenced(&self, manifest: &Manifest) {
        fsio::remove_stale_temp_files(&self.dir, |name| {
            name == MANIFEST || name.strip_suffix(".pem").is_some_and(is_kid)
        });
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(kid) = name.strip_suffix(".pem").filter(|kid| is_kid(kid)) else {
                continue;
            };
            if !manifest.keys.iter().any(|k| k.kid == kid) {
                match fs::remove_file(entry.path()) {
                    Ok(()) => {
                        tracing::info!(kid, "removed the key file of a key that left the manifest");
                    }
                    Err(e) => {
                        tracing::warn!(kid, error = %e, "cannot remove an unreferenced key file");
                    }
                }
            }
        }
    }
}

/// Whether `name` has the shape of our key ids: an RFC 7638 SHA-256 thumbprint, 43
/// characters of base64url.
fn is_kid(name: &str) -> bool {
    name.len() == 43
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str, state: KeyState, created: i64) -> StoredKey {
        StoredKey {
            kid: kid.into(),
            alg: SigningAlg::ES256,
            state,
            created,
            activated: (state == KeyState::Active).then_some(created),
            retire_at: None,
            longest_ttl: None,
        }
    }

    #[test]
    fn a_shortened_max_age_holds_the_next_key_until_longer_cached_responses_expire() {
        let mut m = Manifest::new(vec![
            key("a", KeyState::Active, 0),
            key("n", KeyState::Next, 0),
        ]);
        assert!(m.serve_max_age(0, 900, 900), "first recorded");
        assert!(!m.serve_max_age(10, 900, 900), "unchanged");
        // Shortened to a minute at t=100: responses from before may be cached until 1000.
        assert!(m.serve_max_age(100, 60, 900));
        assert_eq!(m.next_may_sign_at(60), Some(1000));
        assert!(m.check_rotation(999, 60, false).is_err());
        assert!(m.check_rotation(1000, 60, false).is_ok());
        // Lengthened again: nothing older is cached longer than it says.
        assert!(m.serve_max_age(200, 900, 60));
        assert_eq!(m.next_may_sign_at(900), Some(1000));
        // Once outlived, the bound goes.
        assert!(m.prune(1000));
        assert_eq!(m.cached_until, None);
    }

    /// Daemons sharing the directory reload one after another: one that served the longer
    /// max-age until its own reload extends the bound, though the manifest already holds the
    /// shorter one.
    #[test]
    fn a_daemon_reloaded_later_extends_the_bound_from_what_it_served() {
        let mut m = Manifest::new(vec![
            key("a", KeyState::Active, 0),
            key("n", KeyState::Next, 0),
        ]);
        m.serve_max_age(0, 600, 600);
        // The first daemon shortens to a minute at t=100; the second, at t=500.
        assert!(m.serve_max_age(100, 60, 600));
        assert_eq!(m.cached_until, Some(700));
        assert!(m.serve_max_age(500, 60, 600));
        assert_eq!(m.cached_until, Some(1100));
        // A restart, whose previous max-age is the manifest's: nothing to extend.
        assert!(!m.serve_max_age(900, 60, 60));
    }

    #[test]
    fn only_our_own_files_are_removed_from_the_key_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path()).unwrap();
        let kid = "A".repeat(43);
        for name in ["tls-cert.pem", "backup-of-oldkey.pem", "notes.txt"] {
            fs::write(dir.path().join(name), "theirs").unwrap();
        }
        fs::write(dir.path().join(format!("{kid}.pem")), "ours").unwrap();
        let theirs_in_flight = dir
            .path()
            .join(format!(".tls-cert.pem{}1.0", fsio::TEMP_MARKER));
        let ours_left = dir
            .path()
            .join(format!(".manifest.json{}1.0", fsio::TEMP_MARKER));
        fs::write(&theirs_in_flight, "x").unwrap();
        fs::write(&ours_left, "x").unwrap();
        store.remove_unreferenced(&Manifest::new(vec![]));
        assert!(!dir.path().join(format!("{kid}.pem")).exists());
        assert!(!ours_left.exists());
        for name in ["tls-cert.pem", "backup-of-oldkey.pem", "notes.txt"] {
            assert!(dir.path().join(name).exists(), "{name} was removed");
        }
        assert!(theirs_in_flight.exists());
    }

    #[test]
    fn the_active_key_remembers_its_longest_token_lifetime() {
        let mut m = Manifest::new(vec![
            key("a", KeyState::Active, 0),
            key("n", KeyState::Next, 0),
        ]);
        assert_eq!(m.active_ttl(3600), 3600, "nothing recorded");
        assert!(m.note_ttl(30 * 86_400));
        assert!(!m.note_ttl(3600), "a shorter lifetime does not lower it");
        assert_eq!(m.active_ttl(3600), 30 * 86_400);
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(
            serde_json::from_str::<Manifest>(&text).unwrap(),
            m,
            "kept on disk"
        );
    }

    #[test]
    fn rotation_waits_for_the_next_key_to_age() {
        let m = Manifest::new(vec![
            key("a", KeyState::Active, 0),
            key("n", KeyState::Next, 1000),
        ]);
        let due = 1000 + 900 + PUBLICATION_MARGIN;
        let err = m.check_rotation(due - 1, 900, false).unwrap_err();
        let RotationRefused::TooEarly { possible_at, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(*possible_at, due);
        assert!(err.to_string().contains("--now"), "{err}");
        assert!(
            m.check_rotation(1900, 900, false).is_err(),
            "jwks_max_age alone is not enough: other daemons may not have published the key yet"
        );
        assert!(m.check_rotation(due, 900, false).is_ok());
        assert!(
            m.check_rotation(1000, 900, true).is_ok(),
            "--now skips the wait"
        );
    }

    #[test]
    fn rotation_moves_every_state_and_retiring_keys_leave_at_their_time() {
        let mut m = Manifest::new(vec![
            key("a", KeyState::Active, 0),
            key("n", KeyState::Next, 10),
        ]);
        m.rotate(2000, 5000, key("n2", KeyState::Next, 2000));
        let state = |m: &Manifest, kid: &str| m.keys.iter().find(|k| k.kid == kid).map(|k| k.state);
        assert_eq!(state(&m, "a"), Some(KeyState::Retiring));
        assert_eq!(state(&m, "n"), Some(KeyState::Active));
        assert_eq!(state(&m, "n2"), Some(KeyState::Next));
        assert_eq!(m.active().unwrap().activated, Some(2000));
        assert!(!m.prune(4999), "still published before its time");
        assert!(m.prune(5000));
        assert_eq!(state(&m, "a"), None);
    }

    #[test]
    fn revoking_the_active_key_promotes_next_and_makes_a_new_next() {
        let mut m = Manifest::new(vec![
            key("a", KeyState::Active, 0),
            key("n", KeyState::Next, 10),
            key("r", KeyState::Retiring, 0),
        ]);
        let removed = m
            .revoke("a", 50, || Some(key("n2", KeyState::Next, 50)))
            .unwrap();
        assert_eq!(removed.kid, "a");
        assert_eq!(m.active().unwrap().kid, "n");
        assert_eq!(m.next().unwrap().kid, "n2");
        assert!(
            m.revoke("r", 60, || panic!("no new key for a retiring one"))
                .is_some()
        );
        assert!(m.revoke("zz", 60, || None).is_none());
    }

    #[test]
    fn a_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path()).unwrap();
        let (k, der) =
            SigningKey::generate(SigningAlg::EdDSA, super::super::RsaBits::B2048).unwrap();
        store.write_key(k.kid(), &der).unwrap();
        let meta = StoredKey::next(&k, 0);
        assert!(store.read_key(&meta).is_ok());
        let path = store.key_path(k.kid());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = store.read_key(&meta).unwrap_err();
        assert!(
            matches!(err, KeyStoreError::Permissions { mode: 0o640, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn a_corrupt_key_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path()).unwrap();
        let (k, _) = SigningKey::generate(SigningAlg::EdDSA, super::super::RsaBits::B2048).unwrap();
        let path = store.key_path(k.kid());
        fsio::write_atomic(
            &path,
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            0o600,
        )
        .unwrap();
        let err = store.read_key(&StoredKey::next(&k, 0)).unwrap_err();
        assert!(matches!(err, KeyStoreError::BadKeyFile { .. }), "{err}");
    }

    /// A key directory or manifest others may write is refused: they could make the daemon
    /// sign with a key of theirs. Its group may.
    #[test]
    fn a_directory_or_manifest_others_may_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path()).unwrap();
        store
            .write_manifest(&Manifest::new(vec![key("a", KeyState::Active, 0)]))
            .unwrap();
        assert!(store.read_manifest().unwrap().is_some());

        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let err = store.read_manifest().unwrap_err();
        assert!(matches!(err, KeyStoreError::Exposed { .. }), "{err}");
        assert!(err.to_string().contains("chmod o-w"), "{err}");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o2770)).unwrap();
        assert!(
            store.read_manifest().unwrap().is_some(),
            "its group may write"
        );

        let manifest = dir.path().join(MANIFEST);
        fs::set_permissions(&manifest, fs::Permissions::from_mode(0o602)).unwrap();
        let err = store.read_manifest().unwrap_err();
        assert!(matches!(err, KeyStoreError::Exposed { .. }), "{err}");
        fs::set_permissions(&manifest, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(store.read_manifest().unwrap().is_some(), "readable is fine");
    }

    #[test]
    fn unreferenced_key_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path()).unwrap();
        let (orphan, kept) = ("o".repeat(43), "k".repeat(43));
        fs::write(dir.path().join(format!("{orphan}.pem")), "x").unwrap();
        fs::write(dir.path().join(format!("{kept}.pem")), "x").unwrap();
        store.remove_unreferenced(&Manifest::new(vec![key(&kept, KeyState::Active, 0)]));
        assert!(!dir.path().join(format!("{orphan}.pem")).exists());
        assert!(dir.path().join(format!("{kept}.pem")).exists());
    }
}
