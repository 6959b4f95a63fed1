//! The latest changes to clients and signing keys, newest first, for `tokendealer status`
//! and the dashboard's feed; and how many keys and secrets were rotated since start.

use std::{
    collections::VecDeque,
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use tokendealer_shared::admin::{Change, ChangeKind, MAX_CHANGES};

#[derive(Debug, Default)]
pub struct Changes {
    recent: Mutex<VecDeque<Change>>,
    /// The signing key last seen: a rotation is told once, whoever noticed it first.
    active: Mutex<Option<String>>,
    key_rotations: AtomicU64,
    secret_rotations: AtomicU64,
}

/// A log line is consistent whatever panicked while holding it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Changes {
    /// Starting with `active` as the signing key.
    pub fn new(active: Option<&str>) -> Self {
        Self {
            active: Mutex::new(active.map(str::to_owned)),
            ..Self::default()
        }
    }

    /// Notes a change made now; `by` is the admin's uid, if one asked for it.
    pub fn record(&self, by: Option<u32>, what: ChangeKind) {
        match &what {
            ChangeKind::SecretRotated { .. } => {
                self.secret_rotations.fetch_add(1, Relaxed);
            }
            ChangeKind::KeyRotated { .. } => {
                self.key_rotations.fetch_add(1, Relaxed);
            }
            _ => {}
        }
        let mut recent = lock(&self.recent);
        recent.push_front(Change {
            at: jiff::Timestamp::now().as_second(),
            by,
            what,
        });
        recent.truncate(MAX_CHANGES);
        // Once it is there to be seen (the admin actions have their own lines at info).
        if let Some(change) = recent.front() {
            tracing::debug!(change = %change.what, by = ?change.by, "change noted");
        }
    }

    /// Notes the key signing now, `active()`: a rotation if it is another than the last
    /// seen. Called after every key change, by whichever path made or noticed it (an admin's
    /// rotation, the schedule, another daemon's change adopted), so that each is told once.
    /// `active` is read under the lock: a path that read the keys before another's change
    /// and noted after it would otherwise log a rotation back to the old key.
    pub fn note_active_key(&self, active: impl FnOnce() -> Option<String>, by: Option<u32>) {
        let mut last = lock(&self.active);
        if let Some(active) = active()
            && last.as_deref() != Some(active.as_str())
        {
            *last = Some(active.clone());
            self.record(by, ChangeKind::KeyRotated { active });
        }
    }

    /// A revocation, and the key that signs after it (`active()`, read under the lock),
    /// which is no rotation of its own.
    pub fn note_revoked(
        &self,
        kid: String,
        active: impl FnOnce() -> Option<String>,
        by: Option<u32>,
    ) {
        let mut last = lock(&self.active);
        *last = active();
        self.record(by, ChangeKind::KeyRevoked { kid });
    }

    /// The latest changes, newest first.
    pub fn recent(&self) -> Vec<Change> {
        lock(&self.recent).iter().cloned().collect()
    }

    pub fn key_rotations(&self) -> u64 {
        self.key_rotations.load(Relaxed)
    }

    pub fn secret_rotations(&self) -> u64 {
        self.secret_rotations.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_is_told_once_whoever_notices_it() {
        let key = |kid: &str| {
            let kid = kid.to_owned();
            move || Some(kid)
        };
        let changes = Changes::new(Some("k1"));
        changes.note_active_key(key("k1"), None);
        assert!(changes.recent().is_empty(), "the start's key is no change");
        changes.note_active_key(key("k2"), Some(0));
        changes.note_active_key(key("k2"), None);
        let recent = changes.recent();
        assert_eq!(recent.len(), 1, "{recent:?}");
        assert_eq!(recent[0].by, Some(0));
        assert_eq!(changes.key_rotations(), 1);

        changes.note_revoked("k2".into(), key("k3"), Some(0));
        changes.note_active_key(key("k3"), None);
        assert_eq!(
            changes.key_rotations(),
            1,
            "the revocation's successor is no rotation"
        );
        assert!(matches!(
            changes.recent()[0].what,
            ChangeKind::KeyRevoked { .. }
        ));
    }

    #[test]
    fn only_the_latest_are_kept_newest_first() {
        let changes = Changes::new(None);
        for i in 0..MAX_CHANGES + 5 {
            changes.record(None, ChangeKind::ClientAdded { id: i.to_string() });
        }
        let recent = changes.recent();
        assert_eq!(recent.len(), MAX_CHANGES);
        let newest = (MAX_CHANGES + 4).to_string();
        assert_eq!(recent[0].what, ChangeKind::ClientAdded { id: newest });
    }
}
