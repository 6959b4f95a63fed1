//! Follows edits of a file as they happen: the clients file, and the key manifest that
//! several daemons share.
//!
//! The parent directory is watched, not the file: editors and `mv` replace the file (a new
//! inode the old watch would never see), vim writes a backup and renames, and a Kubernetes
//! volume swaps its `..data` symlink. Events are filtered by name, debounced, and each burst
//! becomes one reload of the whole file; reloads of a large file are spaced out (see
//! `RELOAD_SHARE`).
//!
//! What inotify cannot follow is caught by a look every 5 s (`POLL`): the file's identity and
//! times (through a symlink, so an edit of a target in another directory counts), and the
//! directory's own: a directory replaced (`mv dir.new dir`) is watched again.

use std::{
    ffi::OsStr,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify::{
    EventKind, RecursiveMode,
    event::{AccessKind, AccessMode},
};
use notify_debouncer_full::{DebounceEventResult, DebouncedEvent, new_debouncer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::fsio;

/// Quiet time after the last event of a burst before reloading. Short enough that an edit
/// is live well within a second, long enough that a save's several events make one reload.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Reloads are spaced so that, however often the file is saved, they take no more than one
/// part in `RELOAD_SHARE` of a core: a reload that took `d` is followed by the next no
/// sooner than `RELOAD_SHARE * d` after it began. A small file is reloaded at once as
/// before; with 100 000 clients (a reload of about 10 ms after a one-line save), saves
/// every 200 ms are followed about every 400 ms, and each save is still live well within
/// a second.
const RELOAD_SHARE: u32 = 40;

/// The longest a save waits for the spacing above, whatever the last reload took.
const MAX_PAUSE: Duration = Duration::from_millis(400);

/// How often the file and its directory are looked at for what inotify missed.
const POLL: Duration = Duration::from_secs(5);

/// While the watched directory is missing after it went, how often, and for how long, its
/// successor is looked for before falling back to [`POLL`].
const REWATCH_SOON: Duration = Duration::from_millis(100);
const REWATCH_SOON_FOR: Duration = Duration::from_secs(10);

/// What tells one version of a file (or directory) from another without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    /// Following symlinks; `None` when there is nothing there (or it cannot be read).
    fn of(path: &Path) -> Option<Self> {
        fs::metadata(path).ok().map(|m| Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    /// The same directory: a change of its entries (its times) is not a replacement.
    fn same_inode(a: Option<Self>, b: Option<Self>) -> bool {
        a.map(|s| (s.dev, s.ino)) == b.map(|s| (s.dev, s.ino))
    }
}

/// How long after the start of a reload that took `took` the next may start.
fn pause_after(took: Duration) -> Duration {
    took.saturating_mul(RELOAD_SHARE).min(MAX_PAUSE)
}

/// The running watch; dropping it stops watching.
pub struct Watch {
    _stop: tokio_util::sync::DropGuard,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

/// Starts watching `path`; `reload` runs on the blocking pool after each burst of events
/// that may have changed it, until `stop` fires.
pub fn start(
    path: &Path,
    reload: impl Fn() + Send + Sync + 'static,
    stop: &CancellationToken,
) -> notify::Result<Watch> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(OsStr::to_owned).unwrap_or_default();
    // Capacity one: a pending reload already covers every event that arrives before it runs.
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let polled = tx.clone();
    // The directory itself removed or moved: its watch is gone with it, and a new directory
    // in its place (even one given the same inode number) must be watched afresh.
    let (gone_tx, mut gone) = mpsc::channel::<()>(1);
    // A new directory gets a new watcher, not the old one watching again: the old one's
    // bookkeeping of the removed watch can outlive the new watch of the same path.
    let watched_dir = dir.clone();
    let watch_dir = move || -> notify::Result<_> {
        let (tx, gone_tx, watched) = (tx.clone(), gone_tx.clone(), watched_dir.clone());
        let name = name.clone();
        let mut debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| {
            match result {
                Ok(events) => {
                    if events.iter().any(|e| relevant(e, &name)) {
                        let _ = tx.try_send(());
                    }
                    // No reload here: the directory may not be back yet (a reload would
                    // count a failure for a missing file); the new watch brings one.
                    if events.iter().any(|e| dir_gone(e, &watched)) {
                        let _ = gone_tx.try_send(());
                    }
                }
                Err(errors) => {
                    for e in errors {
                        tracing::warn!(error = %e, "file watch error");
                    }
                    // After an error (e.g. an inotify queue overflow) events may have been lost.
                    let _ = tx.try_send(());
                }
            }
        })?;
        debouncer.watch(&watched_dir, RecursiveMode::NonRecursive)?;
        Ok(debouncer)
    };
    let mut watching = watch_dir()?;
    tracing::debug!(dir = %dir.display(), file = %path.display(), "watching");

    let reload = Arc::new(reload);
    let path = path.to_owned();
    // Dropping the returned `Watch` stops the task, and with it the watcher it owns.
    let stop = stop.child_token();
    let guard = stop.clone().drop_guard();
    tokio::spawn(async move {
        let mut next = tokio::time::Instant::now();
        let mut file_seen = Stamp::of(&path);
        let mut dir_seen = Stamp::of(&dir);
        let mut rewatch = false;
        // After the directory went, look for its successor often for a while: a `mv` or a
        // `mkdir` puts it back within moments, and edits in it should not wait for POLL.
        let mut soon_until = tokio::time::Instant::now();
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = gone.recv() => {
                    rewatch = true;
                    soon_until = tokio::time::Instant::now() + REWATCH_SOON_FOR;
                    poll.reset_immediately();
                }
                _ = poll.tick() => {
                    // On the blocking pool: a hung file system must not stall a worker.
                    let (d, p) = (dir.clone(), path.clone());
                    let Ok((dir_now, file_now)) =
                        tokio::task::spawn_blocking(move || (Stamp::of(&d), Stamp::of(&p))).await
                    else {
                        continue;
                    };
                    if rewatch || !Stamp::same_inode(dir_now, dir_seen) {
                        // The watch followed the old directory's inode away (or it went).
                        match watch_dir() {
                            Ok(new) => {
                                tracing::info!(dir = %dir.display(), "directory replaced; watching the new one");
                                drop(std::mem::replace(&mut watching, new));
                                dir_seen = dir_now;
                                rewatch = false;
                                // Whatever was saved before the new watch was in place.
                                let _ = polled.try_send(());
                            }
                            Err(e) => {
                                tracing::debug!(dir = %dir.display(), error = %e, "cannot watch the directory yet");
                                if tokio::time::Instant::now() < soon_until {
                                    poll.reset_after(REWATCH_SOON);
                                }
                            }
                        }
                    }
                    if file_now != file_seen {
                        let _ = polled.try_send(());
                    }
                }
                event = rx.recv() => {
                    if event.is_none() { break }
                    // Events that come meanwhile wait in the channel: one reload covers them.
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep_until(next) => {}
                    }
                    // An event queued during the pause is covered by the reload about to
                    // read the file; one arriving from here on is kept for the next.
                    let _ = rx.try_recv();
                    let started = tokio::time::Instant::now();
                    let (reload, p) = (reload.clone(), path.clone());
                    // The stamp is taken before the read, so a save during it is seen by the
                    // next look.
                    if let Ok(stamp) = tokio::task::spawn_blocking(move || {
                        let stamp = Stamp::of(&p);
                        reload();
                        stamp
                    })
                    .await
                    {
                        file_seen = stamp;
                    }
                    next = started + pause_after(started.elapsed());
                }
            }
        }
    });
    Ok(Watch { _stop: guard })
}

/// Whether an event says the watched directory itself was removed or moved away.
fn dir_gone(event: &DebouncedEvent, dir: &Path) -> bool {
    matches!(
        event.kind,
        EventKind::Remove(_) | EventKind::Modify(notify::event::ModifyKind::Name(_))
    ) && event.paths.iter().any(|p| p == dir)
}

/// Whether an event may have changed what the clients file's path resolves to.
fn relevant(event: &DebouncedEvent, name: &OsStr) -> bool {
    // The kernel's queue overflowed: anything may have happened.
    if event.need_rescan() {
        return true;
    }
    if let EventKind::Access(kind) = event.kind {
        // Opening or reading changes nothing; closing after a write does.
        if !matches!(kind, AccessKind::Close(AccessMode::Write)) {
            return false;
        }
    }
    event.paths.iter().any(|p| names_target(p, name))
}

fn names_target(path: &Path, name: &OsStr) -> bool {
    let Some(file) = path.file_name() else {
        return false;
    };
    let file = file.to_string_lossy();
    if fsio::is_temp_file(&file) {
        return false;
    }
    // `..data` and `..2026_…` are how a Kubernetes volume swaps its contents.
    path.file_name() == Some(name) || file.starts_with("..")
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind, RenameMode};
    use std::time::Instant;

    fn event(kind: EventKind, path: &str) -> DebouncedEvent {
        DebouncedEvent::new(
            notify::Event::new(kind).add_path(path.into()),
            Instant::now(),
        )
    }

    #[test]
    fn reloads_are_spaced_by_what_they_cost() {
        assert_eq!(
            pause_after(Duration::from_micros(500)),
            Duration::from_millis(20)
        );
        assert_eq!(
            pause_after(Duration::from_millis(8)),
            Duration::from_millis(320)
        );
        assert_eq!(pause_after(Duration::from_millis(200)), MAX_PAUSE);
    }

    #[test]
    fn filters_by_name_and_kind() {
        let name = OsStr::new("clients.toml");
        let modify = EventKind::Modify(ModifyKind::Any);
        assert!(relevant(&event(modify, "/etc/td/clients.toml"), name));
        assert!(relevant(
            &event(
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                "/etc/td/..data"
            ),
            name
        ));
        assert!(relevant(
            &event(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                "/etc/td/clients.toml"
            ),
            name
        ));
        assert!(!relevant(
            &event(
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                "/etc/td/clients.toml"
            ),
            name
        ));
        assert!(!relevant(
            &event(EventKind::Create(CreateKind::File), "/etc/td/config.toml"),
            name
        ));
        let temp = format!("/etc/td/.clients.toml{}1.0", fsio::TEMP_MARKER);
        assert!(!relevant(&event(modify, &temp), name));
    }

    #[test]
    fn an_overflowed_queue_is_relevant() {
        // notify reports an inotify overflow as an event with no path and the rescan flag.
        let overflow = DebouncedEvent::new(
            notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan),
            Instant::now(),
        );
        assert!(relevant(&overflow, OsStr::new("clients.toml")));
    }
}
