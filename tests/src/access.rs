//! Who may use the admin socket, for tests that try it as another uid: [`NOBODY`], and a
//! socket file any uid can reach, so that the daemon's peer check is the only gate.

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
};

use crate::Daemon;

/// `nobody`: a uid that is neither root nor the daemon's.
pub const NOBODY: u32 = 65_534;

/// The uid this test runs as (the owner of `/proc/self`), as the daemon finds its own.
pub fn own_uid() -> u32 {
    fs::metadata("/proc/self").expect("/proc/self").uid()
}

/// Opens the socket file to every uid and makes the directories above it traversable, so
/// that the daemon itself, not the file's mode, decides who may use it. Tests that act as
/// [`NOBODY`] do so through `setpriv`, which needs root.
#[track_caller]
pub fn open_socket_to_everyone(daemon: &Daemon) {
    assert_eq!(
        own_uid(),
        0,
        "this test acts as uid {NOBODY} through setpriv, which needs root"
    );
    let mut dir = daemon.admin_socket().parent();
    while let Some(d) = dir {
        let mode = fs::metadata(d).expect("a directory's metadata").mode();
        if mode & 0o001 == 0 {
            fs::set_permissions(d, fs::Permissions::from_mode((mode & 0o7777) | 0o755))
                .unwrap_or_else(|e| panic!("making {} traversable: {e}", d.display()));
        }
        dir = d.parent();
    }
    fs::set_permissions(daemon.admin_socket(), fs::Permissions::from_mode(0o666))
        .expect("opening the admin socket to everyone");
}
