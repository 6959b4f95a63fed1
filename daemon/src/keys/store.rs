//! Keys on disk: `key_dir` holds one PKCS#8 PEM file per key (`KID.pem`, mode 0600) and
//! `manifest.json`, which records each key's state. A key file is always written before the
//! manifest that names it, so a crash in between leaves at worst an unreferenced file.

use std::{
    fs,
    io::ErrorKind,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use tokendealer_shared::admin::KeyState;

use super::{KeyEntry, KeyError, RsaBits, SigningAlg, SigningKey};
use crate::fsio;

const MANIFEST: &str = "manifest.json";
const MANIFEST_VERSION: u32 = 1;
const PEM_TAG: &str = "PRIVATE KEY";

/// One key's record in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredKey {
    pub kid: String,
    pub alg: SigningAlg,
    pub state: KeyState,
    /// Unix seconds.
    pub created: i64,
    pub activated: Option<i64>,
    pub retire_at: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    version: u32,
    keys: Vec<StoredKey>,
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
    #[error("key file {} cannot be used: {reason}", path.display())]
    BadKeyFile { path: PathBuf, reason: String },
    #[error("key manifest {} names no usable active key", path.display())]
    NoActiveKey { path: PathBuf },
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The key directory.
#[derive(Debug, Clone)]
pub struct KeyStore {
    dir: PathBuf,
}

impl KeyStore {
    /// Opens `dir`, creating it (mode 0700) when missing.
    pub fn open(dir: &Path) -> Result<Self, KeyStoreError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| KeyStoreError::Io {
                path: dir.to_owned(),
                source,
            })?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn manifest_path(&self) -> PathBuf {
        self.dir.join(MANIFEST)
    }

    fn key_path(&self, kid: &str) -> PathBuf {
        self.dir.join(format!("{kid}.pem"))
    }

    /// Loads every key in the manifest; on first use generates an active key of `alg`.
    ///
    /// A key other than the active one that cannot be read is left out with a warning, so the
    /// daemon keeps serving: it cannot publish that key, and it never signs with it.
    pub fn load_or_init(
        &self,
        alg: SigningAlg,
        bits: RsaBits,
    ) -> Result<Vec<KeyEntry>, KeyStoreError> {
        fsio::remove_stale_temp_files(&self.dir);
        let manifest_path = self.manifest_path();
        let manifest = match fs::read(&manifest_path) {
            Ok(bytes) => serde_json::from_slice::<Manifest>(&bytes).map_err(|e| {
                KeyStoreError::CorruptManifest {
                    path: manifest_path.clone(),
                    reason: e.to_string(),
                }
            })?,
            Err(e) if e.kind() == ErrorKind::NotFound => return self.init(alg, bits),
            Err(source) => {
                return Err(KeyStoreError::Io {
                    path: manifest_path,
                    source,
                });
            }
        };
        if manifest.version != MANIFEST_VERSION {
            return Err(KeyStoreError::CorruptManifest {
                path: manifest_path,
                reason: format!("version {} is not {MANIFEST_VERSION}", manifest.version),
            });
        }
        let mut entries = Vec::with_capacity(manifest.keys.len());
        for meta in manifest.keys {
            match self.read_key(&meta) {
                Ok(key) => entries.push(KeyEntry {
                    key: Arc::new(key),
                    meta,
                }),
                // Permissions are a refusal to start whatever the key's state.
                Err(e @ KeyStoreError::Permissions { .. }) => return Err(e),
                Err(e) if meta.state == KeyState::Active => return Err(e),
                Err(e) => {
                    tracing::warn!(kid = %meta.kid, state = meta.state.as_str(), error = %e, "leaving out a key that cannot be read");
                }
            }
        }
        if !entries.iter().any(|e| e.meta.state == KeyState::Active) {
            return Err(KeyStoreError::NoActiveKey {
                path: manifest_path,
            });
        }
        Ok(entries)
    }

    fn init(&self, alg: SigningAlg, bits: RsaBits) -> Result<Vec<KeyEntry>, KeyStoreError> {
        let (key, der) = SigningKey::generate(alg, bits)?;
        let now = jiff::Timestamp::now().as_second();
        let meta = StoredKey {
            kid: key.kid().to_owned(),
            alg,
            state: KeyState::Active,
            created: now,
            activated: Some(now),
            retire_at: None,
        };
        self.write_key(key.kid(), &der)?;
        self.write_manifest(std::slice::from_ref(&meta))?;
        tracing::info!(kid = %meta.kid, alg = %alg, dir = %self.dir.display(), "generated a new signing key");
        Ok(vec![KeyEntry {
            key: Arc::new(key),
            meta,
        }])
    }

    fn read_key(&self, meta: &StoredKey) -> Result<SigningKey, KeyStoreError> {
        let path = self.key_path(&meta.kid);
        let io = |source| KeyStoreError::Io {
            path: path.clone(),
            source,
        };
        let mode = fs::metadata(&path).map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyStoreError::Permissions { path, mode });
        }
        let text = fs::read_to_string(&path).map_err(io)?;
        let bad = |reason: String| KeyStoreError::BadKeyFile {
            path: path.clone(),
            reason,
        };
        let pem = pem::parse(&text).map_err(|e| bad(e.to_string()))?;
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

    fn write_key(&self, kid: &str, der: &[u8]) -> Result<(), KeyStoreError> {
        let path = self.key_path(kid);
        let text = pem::encode(&pem::Pem::new(PEM_TAG, der.to_vec()));
        fsio::write_atomic(&path, text.as_bytes(), 0o600)
            .map_err(|source| KeyStoreError::Io { path, source })
    }

    fn write_manifest(&self, keys: &[StoredKey]) -> Result<(), KeyStoreError> {
        let path = self.manifest_path();
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            keys: keys.to_vec(),
        };
        let mut bytes = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        bytes.push(b'\n');
        fsio::write_atomic(&path, &bytes, 0o600)
            .map_err(|source| KeyStoreError::Io { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_use_generates_and_second_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(&dir.path().join("keys")).unwrap();
        let first = store
            .load_or_init(SigningAlg::ES256, RsaBits::B2048)
            .unwrap();
        assert_eq!(first.len(), 1);
        let kid = first[0].key.kid().to_owned();
        let path = store.key_path(&kid);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = store
            .load_or_init(SigningAlg::ES256, RsaBits::B2048)
            .unwrap();
        assert_eq!(again[0].key.kid(), kid);
        assert_eq!(again[0].meta, first[0].meta);
    }

    #[test]
    fn a_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path()).unwrap();
        let keys = store
            .load_or_init(SigningAlg::EdDSA, RsaBits::B2048)
            .unwrap();
        let path = store.key_path(keys[0].key.kid());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = store
            .load_or_init(SigningAlg::EdDSA, RsaBits::B2048)
            .unwrap_err();
        assert!(
            matches!(err, KeyStoreError::Permissions { mode: 0o640, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn a_corrupt_active_key_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path()).unwrap();
        let keys = store
            .load_or_init(SigningAlg::EdDSA, RsaBits::B2048)
            .unwrap();
        let path = store.key_path(keys[0].key.kid());
        fsio::write_atomic(
            &path,
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            0o600,
        )
        .unwrap();
        let err = store
            .load_or_init(SigningAlg::EdDSA, RsaBits::B2048)
            .unwrap_err();
        assert!(matches!(err, KeyStoreError::BadKeyFile { .. }), "{err}");
    }
}
