//! Durable file replacement: nothing acknowledged is lost, nothing is ever half-written.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

/// Marks the daemon's own temporary files, so that watchers skip them and start-up removes
/// the ones a crash left behind.
pub const TEMP_MARKER: &str = ".tokendealer-tmp.";

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Whether `name` is one of our temporary files.
pub fn is_temp_file(name: &str) -> bool {
    name.starts_with('.') && name.contains(TEMP_MARKER)
}

/// Opens `path` for reading if it is a regular file. Opened without waiting (`O_NONBLOCK`),
/// so that a FIFO put there fails here rather than block the reader for good, holding
/// whatever lock it holds; a FIFO, a device or a directory is refused.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits().cast_signed())
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is not a regular file",
        ));
    }
    Ok(file)
}

/// Reads a whole regular file, as [`open_regular`] opens it.
pub fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut open_regular(path)?, &mut bytes)?;
    Ok(bytes)
}

/// Replaces `path` with `contents`: a new file beside it (`O_EXCL`, `mode`), fsync, rename
/// over, fsync of the directory. Readers see the old file or the new one, never a mix, and
/// once this returns the new one survives a crash. On error the old file is untouched.
///
/// Once the rename is done the new file is what everyone reads, so a failure of the last
/// step, the directory's fsync, cannot be reported as "unchanged": the write counts as done
/// and the failure is logged as the storage fault it is (a retried fsync would prove
/// nothing, as Linux reports a writeback error once).
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_if(path, contents, mode, || Ok(true)).map(drop)
}

/// [`write_atomic`], with `still` asked just before the rename, when the new file is
/// written and synced: on `false` the new file is dropped, `path` is left as it is, and
/// `Ok(false)` returned. A writer that read `path` to make `contents` checks here that it
/// has not changed since, in the smallest window it can.
pub fn write_atomic_if(
    path: &Path,
    contents: &[u8],
    mode: u32,
    still: impl FnOnce() -> io::Result<bool>,
) -> io::Result<bool> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?
        .to_string_lossy();
    let temp = dir.join(format!(
        ".{name}{TEMP_MARKER}{}.{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    replace_via(&temp, path, dir, contents, mode, still)
}

/// [`write_atomic_if`] through the temporary file `temp`.
fn replace_via(
    temp: &Path,
    path: &Path,
    dir: &Path,
    contents: &[u8],
    mode: u32,
    still: impl FnOnce() -> io::Result<bool>,
) -> io::Result<bool> {
    let create = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(temp)
    };
    let result = (|| {
        let mut file = match create() {
            // This process never made a file of this name (pid and counter are unique in
            // it): an earlier process with the same pid (PID 1 in a container) left it when
            // killed mid-write. Refusing would refuse at every start.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                fs::remove_file(temp)?;
                create()?
            }
            created => created?,
        };
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        if !still()? {
            return Ok(false);
        }
        fs::rename(temp, path)?;
        // The rename lives in the directory; without this fsync a crash can forget it.
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            tracing::error!(
                file = %path.display(),
                error = %e,
                "the file was replaced, but its directory could not be synced: the change is in effect, yet a power loss could undo it; check the disk"
            );
        }
        Ok(true)
    })();
    if !matches!(result, Ok(true)) {
        let _ = fs::remove_file(temp);
    }
    result
}

/// Removes temporary files that a crash left in `dir` on the way to a file whose name
/// `ours` accepts: a directory shared with other writers (another daemon's keys beside the
/// clients file) keeps theirs, which may be in the middle of a write. Best effort: failures
/// are logged.
pub fn remove_stale_temp_files(dir: &Path, ours: impl Fn(&str) -> bool) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let target = name
            .strip_prefix('.')
            .and_then(|rest| rest.split_once(TEMP_MARKER))
            .map(|(target, _)| target);
        if is_temp_file(&name) && target.is_some_and(&ours) {
            match fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(file = %entry.path().display(), "removed a temporary file left by an interrupted write");
                }
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove a stale temporary file");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A FIFO or a directory where a file should be is refused at once, not waited on.
    #[test]
    fn only_a_regular_file_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        for path in [fifo.as_path(), dir.path()] {
            let err = open_regular(path).unwrap_err();
            assert_eq!(
                err.kind(),
                io::ErrorKind::InvalidInput,
                "{}",
                path.display()
            );
        }
        let file = dir.path().join("f");
        fs::write(&file, "x").unwrap();
        assert_eq!(read_regular(&file).unwrap(), b"x");
    }

    #[test]
    fn replaces_with_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        fs::write(&path, "old").unwrap();
        write_atomic(&path, b"new", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_temp_file_left_under_the_same_name_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        let temp = dir.path().join(format!(".manifest.json{TEMP_MARKER}1.0"));
        fs::write(&temp, "left by a process killed mid-write").unwrap();
        assert!(replace_via(&temp, &path, dir.path(), b"new", 0o600, || Ok(true)).unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        assert!(!temp.exists());
    }

    #[test]
    fn a_write_whose_source_changed_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        fs::write(&path, "old").unwrap();
        assert!(!write_atomic_if(&path, b"new", 0o600, || Ok(false)).unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn failure_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        // Renaming a file over a non-empty directory fails.
        let path = dir.path().join("d");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), "x").unwrap();
        assert!(write_atomic(&path, b"new", 0o600).is_err());
        assert!(path.is_dir());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file removed"
        );
    }

    #[test]
    fn stale_temp_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join(format!(".clients.toml{TEMP_MARKER}1.0"));
        let another = dir.path().join(format!(".manifest.json{TEMP_MARKER}1.0"));
        fs::write(&stale, "x").unwrap();
        fs::write(&another, "x").unwrap();
        fs::write(dir.path().join("clients.toml"), "y").unwrap();
        remove_stale_temp_files(dir.path(), |name| name == "clients.toml");
        assert!(!stale.exists());
        assert!(another.exists(), "another file's temporary file stays");
        assert!(dir.path().join("clients.toml").exists());
    }
}
