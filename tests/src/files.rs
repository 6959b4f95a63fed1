//! The ways people and tools change a file, and places to keep one: the editing styles the
//! clients-file watcher must follow, a Kubernetes-style volume, and a tiny tmpfs to run out
//! of space on.

use std::{
    fs::{self, File, OpenOptions},
    io::{ErrorKind, Write},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::{Daemon, TestClient, clients::toml_string};

/// Marks the daemon's own temporary files (`.clients.toml.tokendealer-tmp.PID.N`).
pub const DAEMON_TEMP_MARKER: &str = ".tokendealer-tmp.";

static EDIT_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Waits until `done` holds, looking again each time something in `dir` changes (inotify:
/// a file created, written, renamed), not at intervals; after `timeout` fails the test with
/// `what` (what it waited for).
#[track_caller]
pub fn wait_in(dir: &Path, what: &str, timeout: Duration, done: impl Fn() -> bool) {
    use notify::{RecursiveMode, Watcher as _};
    let (tx, changes) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |_| {
        let _ = tx.send(());
    })
    .unwrap_or_else(|e| panic!("watching {} failed: {e}", dir.display()));
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .unwrap_or_else(|e| panic!("watching {} failed: {e}", dir.display()));
    // Checked after the watch is in place, so no change between the two is missed.
    let deadline = Instant::now() + timeout;
    while !done() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero() && changes.recv_timeout(left).is_ok(),
            "{what} did not happen within {timeout:?} (in {})",
            dir.display()
        );
    }
}

/// The text of a clients file holding these clients.
pub fn clients_text<'a>(clients: impl IntoIterator<Item = &'a TestClient>) -> String {
    clients
        .into_iter()
        .map(|c| format!("{}\n", c.to_toml()))
        .collect()
}

/// Points the daemon's `config.toml` (as the builder wrote it) at another clients file.
/// Takes effect at the next start.
#[track_caller]
pub fn use_clients_file(daemon: &Daemon, clients_file: &Path) {
    let config_path = daemon.config_path();
    let config = fs::read_to_string(&config_path)
        .unwrap_or_else(|e| panic!("reading {} failed: {e}", config_path.display()));
    let line = format!(
        "clients_file = {}",
        toml_string(clients_file.to_str().expect("temporary paths are UTF-8"))
    );
    let mut replaced = false;
    let text: String = config
        .lines()
        .map(|l| {
            if l.starts_with("clients_file") {
                replaced = true;
                format!("{line}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert!(replaced, "no `clients_file` line in {config}");
    daemon.write_file("config.toml", &text);
}

/// A new file `path` (which must not exist) with `contents` and mode 0600. Not fsynced: what
/// a watcher sees does not depend on it, and a hundred saves must fit in a second.
#[track_caller]
fn create_new(path: &Path, contents: &[u8]) {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("creating {} failed: {e}", path.display()));
    file.write_all(contents)
        .unwrap_or_else(|e| panic!("writing {} failed: {e}", path.display()));
}

/// Like `mv new clients.toml`: a new file beside `path`, renamed over it.
#[track_caller]
pub fn write_by_rename(path: &Path, contents: &[u8]) {
    let name = path
        .file_name()
        .expect("a file path")
        .to_string_lossy()
        .into_owned();
    let staged = path.with_file_name(format!(
        ".{name}.edit-{}-{}",
        std::process::id(),
        EDIT_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    create_new(&staged, contents);
    fs::rename(&staged, path).unwrap_or_else(|e| {
        panic!(
            "renaming {} over {} failed: {e}",
            staged.display(),
            path.display()
        )
    });
}

/// Like `cat new > clients.toml` or `cp new clients.toml`: the same inode, truncated and
/// written.
#[track_caller]
pub fn write_in_place(path: &Path, contents: &[u8]) {
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {} for writing failed: {e}", path.display()));
    file.write_all(contents)
        .unwrap_or_else(|e| panic!("writing {} failed: {e}", path.display()));
}

/// What vim does on `:w` with its default `backupcopy=auto` for a plain file: probe that the
/// directory is writable (`4913`), rename the original to `clients.toml~`, write a new
/// `clients.toml`, delete the backup.
#[track_caller]
pub fn write_like_vim(path: &Path, contents: &[u8]) {
    let probe = path.with_file_name("4913");
    create_new(&probe, b"");
    fs::remove_file(&probe).expect("removing vim's probe file");
    let mut backup = path.as_os_str().to_owned();
    backup.push("~");
    let backup = PathBuf::from(backup);
    fs::rename(path, &backup)
        .unwrap_or_else(|e| panic!("renaming {} to its backup failed: {e}", path.display()));
    create_new(path, contents);
    fs::remove_file(&backup)
        .unwrap_or_else(|e| panic!("removing {} failed: {e}", backup.display()));
}

/// `rm clients.toml`, then a new one.
#[track_caller]
pub fn delete_and_recreate(path: &Path, contents: &[u8]) {
    fs::remove_file(path).unwrap_or_else(|e| panic!("removing {} failed: {e}", path.display()));
    create_new(path, contents);
}

/// Sets a file's permission bits.
#[track_caller]
pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {} failed: {e}", path.display()));
}

/// The daemon's temporary files (`*.tokendealer-tmp.*`) in `dir`.
#[track_caller]
pub fn daemon_temp_files(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {} failed: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(DAEMON_TEMP_MARKER))
        })
        .collect()
}

/// A directory laid out as Kubernetes mounts a ConfigMap or Secret volume:
///
/// ```text
/// clients.toml -> ..data/clients.toml
/// ..data -> ..2026_01_01_a
/// ..2026_01_01_a/clients.toml
/// ```
///
/// An update writes a new timestamped directory, points `..data_tmp` at it, renames
/// `..data_tmp` over `..data` (one atomic switch) and removes the old directory.
#[derive(Debug)]
pub struct KubeVolume {
    dir: PathBuf,
    generation: u8,
}

impl KubeVolume {
    /// Lays out the volume in `dir` (created if needed) with a first `clients.toml`.
    #[track_caller]
    pub fn create(dir: &Path, contents: &[u8]) -> Self {
        fs::create_dir_all(dir).expect("creating the volume directory");
        let volume = Self {
            dir: dir.to_owned(),
            generation: 0,
        };
        let data_dir = volume.data_dir_name();
        fs::create_dir(dir.join(&data_dir)).expect("creating the first data directory");
        create_new(&dir.join(&data_dir).join("clients.toml"), contents);
        symlink(&data_dir, dir.join("..data")).expect("linking ..data");
        symlink("..data/clients.toml", dir.join("clients.toml")).expect("linking clients.toml");
        volume
    }

    /// The path the daemon is configured with: the user-visible symlink.
    pub fn clients_file(&self) -> PathBuf {
        self.dir.join("clients.toml")
    }

    fn data_dir_name(&self) -> String {
        format!("..2026_01_01_{}", char::from(b'a' + self.generation))
    }

    /// Publishes new contents the way the kubelet does.
    #[track_caller]
    pub fn update(&mut self, contents: &[u8]) {
        assert!(self.generation < 25, "out of generation names");
        let old = self.dir.join(self.data_dir_name());
        self.generation += 1;
        let data_dir = self.data_dir_name();
        fs::create_dir(self.dir.join(&data_dir)).expect("creating the next data directory");
        create_new(&self.dir.join(&data_dir).join("clients.toml"), contents);
        let staged = self.dir.join("..data_tmp");
        symlink(&data_dir, &staged).expect("linking ..data_tmp");
        fs::rename(&staged, self.dir.join("..data")).expect("renaming ..data_tmp over ..data");
        fs::remove_dir_all(&old).expect("removing the previous data directory");
    }
}

/// A tmpfs of a given size mounted on a fresh temporary directory; unmounted on drop.
///
/// Needs root (the end-to-end tests run as root in CI); failing to mount fails the test,
/// since skipping would hide that the out-of-space path went untested.
#[derive(Debug)]
pub struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `"64k"`).
    #[track_caller]
    pub fn mount(size: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tokendealer-e2e-tmpfs-")
            .tempdir()
            .expect("a temporary directory for the mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0700"))
            .arg("tmpfs")
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("could not run `mount` ({e}); this test needs util-linux"));
        assert!(
            output.status.success(),
            "`mount -t tmpfs -o size={size} tmpfs {}` failed ({}): {}\nthis test needs root \
             (or CAP_SYS_ADMIN) to mount a tiny tmpfs; run the end-to-end tests as root, as CI does",
            dir.path().display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut cmd = Command::new("umount");
            if lazy {
                cmd.arg("-l");
            }
            cmd.arg(self.dir.path())
                .output()
                .is_ok_and(|o| o.status.success())
        };
        // A process still using the mount makes a plain umount fail; detach it then, so no
        // mount outlives the test.
        let unmounted = umount(false) || umount(true);
        if !unmounted && !std::thread::panicking() {
            panic!(
                "unmounting the tmpfs at {} failed",
                self.dir.path().display()
            );
        }
    }
}

/// Writes `path` until the filesystem is full (`ENOSPC`), down to the last byte; returns how
/// many bytes it took.
#[track_caller]
pub fn fill_filesystem(path: &Path) -> u64 {
    /// Far more than any filesystem these tests fill; guards against filling a real disk.
    const LIMIT: u64 = 64 << 20;
    let mut file = File::create(path)
        .unwrap_or_else(|e| panic!("creating the filler {} failed: {e}", path.display()));
    let mut written = 0u64;
    for chunk in [4096usize, 1] {
        let block = vec![0u8; chunk];
        loop {
            assert!(
                written < LIMIT,
                "wrote {written} bytes to {} without running out of space",
                path.display()
            );
            match file.write(&block) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == ErrorKind::StorageFull => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("filling {} failed: {e}", path.display()),
            }
        }
    }
    written
}
