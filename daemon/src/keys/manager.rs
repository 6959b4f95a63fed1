//! The key lifecycle: next → active → retiring → removed, shared by every daemon that uses
//! the same key directory.
//!
//! The manifest on disk is the truth. Every change takes the directory's write lock, re-reads
//! the manifest (another daemon may have changed it), writes key files and then the manifest,
//! and only then swaps the new keyring in. Daemons that did not make a change adopt it when
//! they see the manifest change. A keyring is always built from one manifest, and the key
//! that signs is always one of the keys it publishes.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use arc_swap::{ArcSwap, Guard};
use tokendealer_shared::admin::KeyState;

use super::{
    KeyEntry, Keyring, RsaBits, SigningAlg, SigningKey,
    store::{self, KeyStore, KeyStoreError, Manifest, RotationRefused, StoredKey},
};

/// Kept past the expiry of the last token a retiring key can have signed, for clocks of
/// verifiers that run a little behind ours.
pub const RETIRE_LEEWAY: Duration = Duration::from_secs(5 * 60);

/// What the key lifecycle is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySettings {
    pub alg: SigningAlg,
    pub bits: RsaBits,
    pub jwks_max_age: Duration,
    pub rotate_every: Option<Duration>,
}

/// Why a rotation or revocation was not made. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum KeyChangeError {
    #[error(transparent)]
    Refused(#[from] RotationRefused),
    #[error("there is no key {0}")]
    NoSuchKey(String),
    #[error(transparent)]
    Store(#[from] KeyStoreError),
}

/// The outcome of a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    pub active: String,
    /// The previous active key and when it leaves the JWKS.
    pub retiring: Option<(String, i64)>,
    pub next: String,
    pub next_may_sign_at: i64,
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The signing keys of a running daemon.
#[derive(Debug)]
pub struct KeyManager {
    store: KeyStore,
    current: ArcSwap<Keyring>,
    /// The manifest `current` was built from.
    manifest: Mutex<Manifest>,
    settings: Mutex<KeySettings>,
    /// Held through a change and through a refresh, from reading the disk to swapping in:
    /// a refresh that read the manifest before this daemon's own change wrote a newer one
    /// would otherwise swap the older one back in.
    changing: Mutex<()>,
    /// Rotations made by this daemon.
    pub rotations: AtomicU64,
}

impl KeyManager {
    /// Loads the key directory, creating the first active and next keys on first use, and
    /// making sure a next key of the configured algorithm is published. Blocking.
    pub fn open(store: KeyStore, settings: KeySettings) -> Result<Self, KeyStoreError> {
        let lock = store.lock()?;
        let now = now();
        let mut manifest = match store.read_manifest()? {
            Some(manifest) => manifest,
            // Key files without a manifest are a lost manifest (a slip of `rm`, a partial
            // restore), not a first start, which would delete them.
            None => {
                let keys = store.key_files();
                if keys > 0 {
                    return Err(KeyStoreError::NoManifest {
                        path: store.dir().to_owned(),
                        keys,
                    });
                }
                let (active, der) = SigningKey::generate(settings.alg, settings.bits)?;
                store.write_key(active.kid(), &der)?;
                let mut meta = StoredKey::next(&active, now);
                meta.state = KeyState::Active;
                meta.activated = Some(now);
                tracing::info!(kid = active.kid(), alg = %settings.alg, dir = %store.dir().display(), "generated the first signing key");
                Manifest::new(vec![meta])
            }
        };
        let max_age = secs(settings.jwks_max_age);
        // What this daemon served before its restart is not known here; the manifest's
        // record (the last value served from this directory) stands in for it.
        let changed = ensure_next(&store, &mut manifest, settings)?
            | manifest.serve_max_age(now, max_age, max_age)
            | manifest.prune(now);
        if changed {
            store.write_manifest(&manifest)?;
        }
        store.remove_unreferenced(&manifest);
        drop(lock);
        let keyring = build(&store, &manifest, None, now)?;
        if let Some(active) = manifest.active().filter(|a| a.alg != settings.alg) {
            tracing::warn!(active = %active.alg, configured = %settings.alg, "the active key's algorithm differs from `algorithm`; the change applies at the next key rotation");
        }
        Ok(Self {
            store,
            current: ArcSwap::from_pointee(keyring),
            manifest: Mutex::new(manifest),
            settings: Mutex::new(settings),
            changing: Mutex::new(()),
            rotations: AtomicU64::new(0),
        })
    }

    /// Checks, changing nothing, that a start would load the keys in `dir`: the keyring a
    /// start builds from its manifest, by the same rules. A directory or manifest not made
    /// yet is fine: the first start makes them.
    pub fn check(dir: &std::path::Path) -> Result<(), KeyStoreError> {
        let store = KeyStore::existing(dir);
        match store.read_manifest()? {
            Some(manifest) => build(&store, &manifest, None, now()).map(drop),
            None => match store.key_files() {
                0 => Ok(()),
                keys => Err(KeyStoreError::NoManifest {
                    path: dir.to_owned(),
                    keys,
                }),
            },
        }
    }

    /// The keys in force. Cheap and lock-free: the token endpoint calls it per request.
    pub fn load(&self) -> Guard<Arc<Keyring>> {
        self.current.load()
    }

    pub fn settings(&self) -> KeySettings {
        *self.settings.lock().expect("settings lock")
    }

    /// When the next key may sign.
    pub fn next_may_sign_at(&self) -> Option<i64> {
        let max_age = secs(self.settings().jwks_max_age);
        self.manifest
            .lock()
            .expect("manifest lock")
            .next_may_sign_at(max_age)
    }

    /// Swaps in the keyring of `manifest`, which is already on disk.
    fn adopt(&self, manifest: Manifest, now: i64) -> Result<(), KeyStoreError> {
        let keyring = build(&self.store, &manifest, Some(&self.current.load()), now)?;
        self.current.store(Arc::new(keyring));
        *self.manifest.lock().expect("manifest lock") = manifest;
        Ok(())
    }

    /// Makes a change under the directory's write lock, from the manifest as it is on disk.
    fn change<T>(
        &self,
        apply: impl FnOnce(&mut Manifest, i64) -> Result<T, KeyChangeError>,
    ) -> Result<T, KeyChangeError> {
        let _changing = self.changing.lock().expect("change lock");
        let _lock = self.store.lock()?;
        let now = now();
        let mut manifest = self
            .store
            .read_manifest()?
            .unwrap_or_else(|| self.manifest.lock().expect("manifest lock").clone());
        let result = apply(&mut manifest, now)?;
        manifest.prune(now);
        // Built before the manifest is written: a change whose keys cannot be loaded (a
        // damaged next key promoted to active) is refused with the disk untouched, rather
        // than written and then failed, which would leave a manifest no restart can use.
        let keyring = build(&self.store, &manifest, Some(&self.current.load()), now)?;
        self.store.write_manifest(&manifest)?;
        self.store.remove_unreferenced(&manifest);
        self.current.store(Arc::new(keyring));
        *self.manifest.lock().expect("manifest lock") = manifest;
        Ok(result)
    }

    /// `keys rotate`: next → active, active → retiring until the last token it can have
    /// signed (lifetime at most `longest_ttl`) has expired, and a new next key. Refused while
    /// the next key is younger than `jwks_max_age`, unless `force`. Blocking.
    pub fn rotate(&self, force: bool, longest_ttl: Duration) -> Result<Rotated, KeyChangeError> {
        let settings = self.settings();
        let max_age = secs(settings.jwks_max_age);
        let rotated = self.change(|manifest, now| {
            manifest.check_rotation(now, max_age, force)?;
            // The key to sign from now on must load from its file, as the next start loads
            // it: one damaged or deleted since it was made would sign from memory only, and
            // the next start would refuse.
            if let Some(next) = manifest.next() {
                self.store.read_key(next)?;
            }
            let retiring = manifest.active().map(|k| k.kid.clone());
            // Its tokens may have been issued under a longer lifetime than today's.
            let retire_at = now
                .saturating_add(manifest.active_ttl(secs(longest_ttl)))
                .saturating_add(secs(RETIRE_LEEWAY));
            // Generated under the lock but only after the check: a refused rotation costs nothing.
            let (next, der) =
                SigningKey::generate(settings.alg, settings.bits).map_err(KeyStoreError::from)?;
            self.store.write_key(next.kid(), &der)?;
            // Published from when the manifest naming it is written, after the generation
            // (seconds, for large RSA keys): the wait before it signs counts from then.
            let published = self::now();
            manifest.rotate(now, retire_at, StoredKey::next(&next, published));
            manifest.note_ttl(secs(longest_ttl));
            Ok(Rotated {
                active: manifest.active().map(|k| k.kid.clone()).unwrap_or_default(),
                retiring: retiring.map(|kid| (kid, retire_at)),
                next: next.kid().to_owned(),
                next_may_sign_at: manifest.next_may_sign_at(max_age).unwrap_or_else(|| {
                    published
                        .saturating_add(store::PUBLICATION_MARGIN)
                        .saturating_add(max_age)
                }),
            })
        })?;
        self.rotations.fetch_add(1, Relaxed);
        tracing::info!(
            active = %rotated.active,
            retiring = rotated.retiring.as_ref().map(|(kid, _)| kid.as_str()),
            retiring_until = rotated.retiring.as_ref().map(|&(_, at)| store::time(at)),
            next = %rotated.next,
            next_may_sign_at = store::time(rotated.next_may_sign_at),
            forced = force,
            "signing keys rotated"
        );
        Ok(rotated)
    }

    /// `keys revoke KID`: the key leaves the JWKS at once; tokens it signed stop verifying.
    /// Returns the revoked key's former state. Blocking.
    pub fn revoke(&self, kid: &str, longest_ttl: Duration) -> Result<KeyState, KeyChangeError> {
        let settings = self.settings();
        let max_age = secs(settings.jwks_max_age);
        let state = self.change(|manifest, now| {
            // A next key promoted before its wait is over may be missing from JWKS responses
            // verifiers still cache: revoking the key that signs cannot wait for them.
            let early = manifest
                .next_may_sign_at(max_age)
                .filter(|&at| at > now && manifest.active().is_some_and(|a| a.kid == kid));
            let mut generated = Ok(());
            let removed = manifest.revoke(kid, now, || {
                match SigningKey::generate(settings.alg, settings.bits) {
                    Ok((next, der)) => match self.store.write_key(next.kid(), &der) {
                        Ok(()) => Some(StoredKey::next(&next, self::now())),
                        Err(e) => {
                            generated = Err(e);
                            None
                        }
                    },
                    Err(e) => {
                        generated = Err(e.into());
                        None
                    }
                }
            });
            generated?;
            let state = removed
                .map(|k| k.state)
                .ok_or_else(|| KeyChangeError::NoSuchKey(kid.to_owned()))?;
            // The key that signs now may sign tokens as long-lived as any: its retiring
            // window must know that from its first token, not from the next upkeep.
            manifest.note_ttl(secs(longest_ttl));
            Ok((state, early))
        })?;
        let (state, early) = state;
        if let Some(at) = early {
            tracing::warn!(
                active = self.load().active_kid(),
                fully_published_at = store::time(at),
                "the key that signs now was published less than jwks_max_age (and the wait for other daemons sharing the key directory) ago: verifiers holding an older cached JWKS refuse its tokens until they fetch it again"
            );
        }
        tracing::warn!(
            kid,
            former_state = state.as_str(),
            "signing key revoked; tokens it signed no longer verify"
        );
        Ok(state)
    }

    /// The key directory.
    pub fn dir(&self) -> &std::path::Path {
        self.store.dir()
    }

    /// Adopts a manifest another daemon wrote. A manifest that cannot be used (corrupt, or
    /// naming an active key whose file is unreadable) is refused and the keys in force stay.
    ///
    /// Keys the refused manifest no longer names are dropped all the same (they were revoked,
    /// or retired, elsewhere): never published or trusted again here. If the key that signs
    /// is among them, nothing signs until a manifest can be adopted (the token endpoint
    /// answers 503): a revoked key must not go on signing because its successor cannot be
    /// read here (another uid, a damaged file). Every later look retries the adoption.
    pub fn refresh(&self) -> Result<bool, KeyStoreError> {
        let _changing = self.changing.lock().expect("change lock");
        let Some(manifest) = self.store.read_manifest()? else {
            return Ok(false);
        };
        if manifest == *self.manifest.lock().expect("manifest lock") {
            return Ok(false);
        }
        if let Err(e) = self.adopt(manifest.clone(), now()) {
            self.drop_unnamed(&manifest);
            return Err(e);
        }
        tracing::info!(
            active = self.load().active_kid(),
            "adopted a key change from the key directory"
        );
        Ok(true)
    }

    /// Drops from the keys in force those `manifest` does not name.
    fn drop_unnamed(&self, manifest: &Manifest) {
        let current = self.current.load();
        let named = |entry: &&KeyEntry| manifest.keys.iter().any(|k| k.kid == entry.meta.kid);
        if current.entries().iter().all(|e| named(&e)) {
            return;
        }
        let kept: Vec<KeyEntry> = current.entries().iter().filter(named).cloned().collect();
        let keyring = Keyring::publishing(kept);
        if keyring.active().is_none() {
            tracing::error!(
                revoked = current.active_kid(),
                "the signing key was revoked by another daemon and its successor cannot be loaded here: no tokens are issued until it can"
            );
        }
        let gone: Vec<&str> = current
            .entries()
            .iter()
            .filter(|e| !named(e))
            .map(|e| e.meta.kid.as_str())
            .collect();
        tracing::warn!(
            ?gone,
            "keys no longer in the key directory's manifest are no longer published"
        );
        self.current.store(Arc::new(keyring));
    }

    /// Periodic upkeep: retiring keys whose time has passed leave the JWKS (and the
    /// directory), and an automatic rotation is made when due; the rotation made, if one
    /// was. Blocking.
    pub fn maintain(&self, longest_ttl: Duration) -> Result<Option<Rotated>, KeyChangeError> {
        let now = now();
        let settings = self.settings();
        let (expired, rotation_due) = {
            let manifest = self.manifest.lock().expect("manifest lock");
            let expired = manifest.keys.iter().any(|k| !k.published_at(now))
                || manifest.cached_until.is_some_and(|until| until <= now);
            let rotation_due = settings.rotate_every.is_some_and(|every| {
                manifest.active().is_some_and(|a| {
                    a.activated.unwrap_or(a.created).saturating_add(secs(every)) <= now
                }) && manifest
                    .check_rotation(now, secs(settings.jwks_max_age), false)
                    .is_ok()
            });
            (expired, rotation_due)
        };
        let mut rotated = None;
        if rotation_due {
            // Another daemon may have rotated first; the rotation re-checks on disk.
            match self.rotate(false, longest_ttl) {
                Ok(r) => rotated = Some(r),
                Err(KeyChangeError::Refused(_)) => {}
                Err(e) => return Err(e),
            }
        } else if expired {
            self.change(|_, _| Ok(()))?;
        }
        self.note_longest_ttl(longest_ttl)?;
        Ok(rotated)
    }

    /// Keeps on disk that the active key may sign tokens living `longest_ttl`, when that is
    /// longer than recorded: a restart (or another daemon) rotating it later then still
    /// keeps it published until they expire. Blocking when it writes.
    pub fn note_longest_ttl(&self, longest_ttl: Duration) -> Result<(), KeyChangeError> {
        let ttl = secs(longest_ttl);
        let recorded = self
            .manifest
            .lock()
            .expect("manifest lock")
            .active()
            .and_then(|a| a.longest_ttl);
        if recorded.is_some_and(|r| r >= ttl) {
            return Ok(());
        }
        self.change(|manifest, _| {
            manifest.note_ttl(ttl);
            Ok(())
        })
    }

    /// Applies a changed `algorithm` or `rsa_bits` (config reload): the next key is replaced
    /// by one of the new kind, which signs from the rotation after next's wait. A changed
    /// `jwks_max_age` is served from now on; shortened, the next key still waits for the
    /// responses cached under the longer one. Blocking.
    pub fn reconfigure(&self, settings: KeySettings) -> Result<(), KeyChangeError> {
        let max_age = secs(settings.jwks_max_age);
        let (next_alg, served) = {
            let manifest = self.manifest.lock().expect("manifest lock");
            (manifest.next().map(|k| k.alg), manifest.jwks_max_age)
        };
        // What this daemon served until now: daemons sharing the directory reload one after
        // another, and the manifest holds what the first one wrote.
        let before = self.settings();
        let served_here = secs(before.jwks_max_age);
        if next_alg == Some(settings.alg)
            && (before.bits == settings.bits || !settings.alg.is_rsa())
            && served == Some(max_age)
            && served_here <= max_age
        {
            *self.settings.lock().expect("settings lock") = settings;
            return Ok(());
        }
        // The settings (and so the JWKS header) change only once the manifest says so: a
        // failed change leaves the old ones in force.
        self.change(|manifest, _| {
            ensure_next(&self.store, manifest, settings)?;
            // After the key generation, plus a second for the new header to be served:
            // until then the old max-age goes out.
            manifest.serve_max_age(now().saturating_add(1), max_age, served_here);
            Ok(())
        })?;
        *self.settings.lock().expect("settings lock") = settings;
        if next_alg != Some(settings.alg) {
            tracing::info!(alg = %settings.alg, "published a next key of the newly configured algorithm");
        }
        if served.is_some_and(|s| s > max_age) {
            tracing::info!(
                jwks_max_age = max_age,
                next_may_sign_at = ?self.next_may_sign_at(),
                "jwks_max_age shortened; the next key waits until responses cached under the longer one have expired"
            );
        }
        Ok(())
    }

    /// The earliest time upkeep has something to do: a retiring key leaves the JWKS, or an
    /// automatic rotation falls due (`rotate_every` after the active key began signing, and
    /// not before the next key may sign).
    pub fn next_due(&self) -> Option<i64> {
        let settings = self.settings();
        let manifest = self.manifest.lock().expect("manifest lock");
        let expiry = manifest
            .keys
            .iter()
            .filter(|k| k.state == KeyState::Retiring)
            .filter_map(|k| k.retire_at)
            .min();
        let rotation = settings.rotate_every.and_then(|every| {
            let active = manifest.active()?;
            let due = active
                .activated
                .unwrap_or(active.created)
                .saturating_add(secs(every));
            let may_sign = manifest.next_may_sign_at(secs(settings.jwks_max_age))?;
            Some(due.max(may_sign))
        });
        expiry.into_iter().chain(rotation).min()
    }
}

/// Makes sure `manifest` has a next key of the configured algorithm; returns whether it
/// changed (the new key file is written already).
fn ensure_next(
    store: &KeyStore,
    manifest: &mut Manifest,
    settings: KeySettings,
) -> Result<bool, KeyStoreError> {
    // A next key whose file is gone or damaged is replaced now, while it is still only
    // published: left in place, the next rotation would promote a key that cannot sign. (A
    // key with loose permissions stays, so that `build` refuses it loudly.) So is an RSA key
    // of another size than `rsa_bits` asks for.
    let fits = |key: &StoredKey| match store.read_key(key) {
        Ok(read) => read
            .rsa_bits()
            .is_none_or(|bits| bits == settings.bits.get()),
        Err(KeyStoreError::Permissions { .. }) => true,
        Err(e) => {
            tracing::warn!(kid = %key.kid, error = %e, "replacing a next key that cannot be read");
            false
        }
    };
    if manifest
        .next()
        .is_some_and(|k| k.alg == settings.alg && fits(k))
    {
        return Ok(false);
    }
    // A next key of another algorithm or size has never signed: replacing it affects no
    // token.
    manifest.keys.retain(|k| k.state != KeyState::Next);
    let (next, der) = SigningKey::generate(settings.alg, settings.bits)?;
    store.write_key(next.kid(), &der)?;
    // Published from when the manifest naming it is written, after the generation (seconds,
    // for large RSA keys): the wait before it signs counts from then.
    manifest.keys.push(StoredKey::next(&next, now()));
    tracing::info!(kid = next.kid(), alg = %settings.alg, "published a new next key");
    Ok(true)
}

/// The keyring of `manifest` at `now`: its published keys, reusing keys already loaded.
fn build(
    store: &KeyStore,
    manifest: &Manifest,
    loaded: Option<&Keyring>,
    now: i64,
) -> Result<Keyring, KeyStoreError> {
    let cache: HashMap<&str, &KeyEntry> = loaded
        .map(|k| {
            k.entries()
                .iter()
                .map(|e| (e.meta.kid.as_str(), e))
                .collect()
        })
        .unwrap_or_default();
    let mut entries = Vec::new();
    for meta in manifest.keys.iter().filter(|k| k.published_at(now)) {
        let key = match cache.get(meta.kid.as_str()) {
            Some(entry) if entry.meta.alg == meta.alg => Ok(entry.key.clone()),
            _ => store.read_key(meta).map(Arc::new),
        };
        match key {
            Ok(key) => entries.push(KeyEntry {
                key,
                meta: meta.clone(),
            }),
            Err(e @ KeyStoreError::Permissions { .. }) => return Err(e),
            Err(e) if meta.state == KeyState::Active => return Err(e),
            // Left out of the keyring: neither published nor ever used to sign.
            Err(e) => {
                tracing::warn!(kid = %meta.kid, state = meta.state.as_str(), error = %e, "leaving out a key that cannot be read");
            }
        }
    }
    Keyring::new(entries).ok_or_else(|| KeyStoreError::NoActiveKey {
        path: store.dir().join("manifest.json"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(alg: SigningAlg) -> KeySettings {
        KeySettings {
            alg,
            bits: RsaBits::B2048,
            jwks_max_age: Duration::from_secs(900),
            rotate_every: None,
        }
    }

    fn open(dir: &tempfile::TempDir, alg: SigningAlg) -> KeyManager {
        KeyManager::open(KeyStore::open(dir.path()).unwrap(), settings(alg)).unwrap()
    }

    fn kids(m: &KeyManager) -> Vec<(String, KeyState)> {
        m.load()
            .entries()
            .iter()
            .map(|e| (e.meta.kid.clone(), e.meta.state))
            .collect()
    }

    #[test]
    fn first_open_publishes_active_and_next_and_reopening_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let m = open(&dir, SigningAlg::EdDSA);
        let first = kids(&m);
        assert_eq!(
            first.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
            [KeyState::Active, KeyState::Next]
        );
        let again = open(&dir, SigningAlg::EdDSA);
        assert_eq!(kids(&again), first);
    }

    #[test]
    fn rotation_is_refused_early_and_forced_with_now() {
        let dir = tempfile::tempdir().unwrap();
        let m = open(&dir, SigningAlg::EdDSA);
        let before = kids(&m);
        let err = m.rotate(false, Duration::from_secs(3600)).unwrap_err();
        assert!(
            matches!(
                err,
                KeyChangeError::Refused(RotationRefused::TooEarly { .. })
            ),
            "{err}"
        );
        assert_eq!(kids(&m), before, "a refused rotation changes nothing");
        let rotated = m.rotate(true, Duration::from_secs(3600)).unwrap();
        assert_eq!(rotated.active, before[1].0, "next became active");
        assert_eq!(rotated.retiring.as_ref().unwrap().0, before[0].0);
        let after = kids(&m);
        assert_eq!(
            after.len(),
            3,
            "retiring, active and next are all published"
        );
        assert_eq!(m.load().active_kid(), rotated.active);
    }

    /// Key files without a manifest are a lost manifest, not a first start: the start is
    /// refused and the files stay.
    #[test]
    fn key_files_without_a_manifest_are_not_a_first_start() {
        let dir = tempfile::tempdir().unwrap();
        let before = kids(&open(&dir, SigningAlg::EdDSA));
        std::fs::remove_file(dir.path().join("manifest.json")).unwrap();
        let err = KeyManager::open(
            KeyStore::open(dir.path()).unwrap(),
            settings(SigningAlg::EdDSA),
        )
        .unwrap_err();
        assert!(
            matches!(err, KeyStoreError::NoManifest { keys: 2, .. }),
            "{err}"
        );
        for (kid, _) in before {
            assert!(dir.path().join(format!("{kid}.pem")).exists());
        }
    }

    /// A next key whose file was damaged or deleted since it was made is not promoted: it
    /// would sign from memory only, and the next start would refuse its file.
    #[test]
    fn a_next_key_whose_file_is_gone_is_not_promoted() {
        let dir = tempfile::tempdir().unwrap();
        let m = open(&dir, SigningAlg::EdDSA);
        let before = kids(&m);
        let next = &before[1].0;
        std::fs::remove_file(dir.path().join(format!("{next}.pem"))).unwrap();
        let err = m.rotate(true, Duration::from_secs(3600)).unwrap_err();
        assert!(matches!(err, KeyChangeError::Store(_)), "{err}");
        assert_eq!(kids(&m), before, "a refused rotation changes nothing");
        assert_eq!(m.load().active_kid(), before[0].0);
        // Revoked, it makes way for a new next key, which may be promoted.
        m.revoke(next, Duration::from_secs(3600)).unwrap();
        let rotated = m.rotate(true, Duration::from_secs(3600)).unwrap();
        assert_ne!(&rotated.active, next);
    }

    #[test]
    fn another_daemon_adopts_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(&dir, SigningAlg::ES256);
        let b = open(&dir, SigningAlg::ES256);
        let rotated = a.rotate(true, Duration::from_secs(60)).unwrap();
        assert!(b.refresh().unwrap());
        assert_eq!(b.load().active_kid(), rotated.active);
        assert_eq!(kids(&a), kids(&b));
        assert!(!b.refresh().unwrap(), "nothing new");
    }

    #[test]
    fn revoking_the_active_key_hands_signing_to_the_published_next() {
        let dir = tempfile::tempdir().unwrap();
        let m = open(&dir, SigningAlg::EdDSA);
        let before = kids(&m);
        let ttl = Duration::from_secs(7_200);
        assert_eq!(m.revoke(&before[0].0, ttl).unwrap(), KeyState::Active);
        assert_eq!(m.load().active_kid(), before[1].0);
        assert!(
            m.load().get(&before[0].0).is_none(),
            "gone from the JWKS at once"
        );
        assert!(!dir.path().join(format!("{}.pem", before[0].0)).exists());
        let manifest = m.store.read_manifest().unwrap().unwrap();
        assert_eq!(
            manifest.active().and_then(|a| a.longest_ttl),
            Some(7_200),
            "the key that signs now knows how long its tokens may live"
        );
        assert!(matches!(
            m.revoke("nope", ttl),
            Err(KeyChangeError::NoSuchKey(_))
        ));
    }

    /// A manifest written elsewhere that revokes the signing key, naming a successor this
    /// daemon cannot load: the revoked key is neither published nor used any more, and
    /// nothing signs until a manifest can be adopted.
    #[test]
    fn a_key_revoked_elsewhere_stops_signing_here_though_its_successor_cannot_be_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let m = open(&dir, SigningAlg::EdDSA);
        let revoked = m.load().active_kid().to_owned();
        let mut manifest = m.store.read_manifest().unwrap().unwrap();
        manifest.keys.retain(|k| k.kid != revoked);
        let unreadable = "u".repeat(43);
        manifest.keys.push(StoredKey {
            kid: unreadable.clone(),
            alg: SigningAlg::EdDSA,
            state: KeyState::Active,
            created: 0,
            activated: Some(0),
            retire_at: None,
            longest_ttl: None,
        });
        m.store.write_manifest(&manifest).unwrap();

        assert!(m.refresh().is_err(), "the successor cannot be loaded");
        let keyring = m.load();
        assert!(keyring.active().is_none(), "nothing signs");
        assert!(
            keyring.get(&revoked).is_none(),
            "the revoked key verifies nothing"
        );
        assert!(!String::from_utf8_lossy(&keyring.jwks()).contains(&revoked));
        assert!(m.refresh().is_err(), "looked at again, still refused");

        // Fixed on disk (here: the next key made active instead), signing resumes.
        manifest.keys.retain(|k| k.kid != unreadable);
        for key in &mut manifest.keys {
            key.state = KeyState::Active;
            key.activated = Some(0);
        }
        m.store.write_manifest(&manifest).unwrap();
        assert!(m.refresh().unwrap());
        assert!(m.load().active().is_some());
    }

    #[test]
    fn a_new_algorithm_replaces_the_next_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let m = open(&dir, SigningAlg::EdDSA);
        let active = m.load().active_kid().to_owned();
        m.reconfigure(settings(SigningAlg::ES256)).unwrap();
        let keyring = m.load();
        assert_eq!(keyring.active_kid(), active, "the active key keeps signing");
        let next = keyring
            .entries()
            .iter()
            .find(|e| e.meta.state == KeyState::Next)
            .unwrap();
        assert_eq!(next.meta.alg, SigningAlg::ES256);
    }

    /// Backdates every key in the manifest on disk by `secs`, as if time had passed.
    fn age(dir: &std::path::Path, secs: i64) {
        let store = KeyStore::open(dir).unwrap();
        let mut manifest = store.read_manifest().unwrap().unwrap();
        for key in &mut manifest.keys {
            key.created -= secs;
            key.activated = key.activated.map(|t| t - secs);
            key.retire_at = key.retire_at.map(|t| t - secs);
        }
        store.write_manifest(&manifest).unwrap();
    }

    #[test]
    fn upkeep_rotates_when_rotate_every_has_passed() {
        let dir = tempfile::tempdir().unwrap();
        let every = KeySettings {
            rotate_every: Some(Duration::from_secs(3600)),
            ..settings(SigningAlg::EdDSA)
        };
        let m = KeyManager::open(KeyStore::open(dir.path()).unwrap(), every).unwrap();
        let before = kids(&m);
        m.maintain(Duration::from_secs(60)).unwrap();
        assert_eq!(kids(&m), before, "not due yet");
        age(dir.path(), 3601);
        assert!(m.refresh().unwrap());
        m.maintain(Duration::from_secs(60)).unwrap();
        assert_eq!(
            m.load().active_kid(),
            before[1].0,
            "the next key was promoted"
        );
        assert_eq!(m.rotations.load(Relaxed), 1);
    }

    #[test]
    fn upkeep_drops_retiring_keys_whose_time_has_passed() {
        let dir = tempfile::tempdir().unwrap();
        let m = open(&dir, SigningAlg::EdDSA);
        let rotated = m.rotate(true, Duration::from_secs(60)).unwrap();
        let (retiring, _) = rotated.retiring.unwrap();
        m.maintain(Duration::from_secs(60)).unwrap();
        assert!(
            m.load().get(&retiring).is_some(),
            "still published before its time"
        );
        // Past the last token's expiry and the leeway.
        age(dir.path(), 60 + secs(RETIRE_LEEWAY) + 1);
        assert!(m.refresh().unwrap());
        assert!(
            m.load().get(&retiring).is_none(),
            "a keyring built after its time leaves it out"
        );
        m.maintain(Duration::from_secs(60)).unwrap();
        let on_disk = KeyStore::open(dir.path())
            .unwrap()
            .read_manifest()
            .unwrap()
            .unwrap();
        assert!(
            on_disk.keys.iter().all(|k| k.kid != retiring),
            "and upkeep removes it from the manifest"
        );
        assert!(!dir.path().join(format!("{retiring}.pem")).exists());
    }

    #[test]
    fn a_corrupt_manifest_from_elsewhere_is_not_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let m = open(&dir, SigningAlg::EdDSA);
        let before = kids(&m);
        std::fs::write(dir.path().join("manifest.json"), "{ not json").unwrap();
        assert!(m.refresh().is_err());
        assert_eq!(kids(&m), before);
    }
}
