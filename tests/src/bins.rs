//! Where the binaries under test are.
//!
//! Cargo sets `CARGO_BIN_EXE_<name>` only for a package's own binaries, and `tokendealerd` and
//! `tokendealer` belong to other workspace members. They land in `target/<profile>/`, and this
//! test executable in `target/<profile>/deps/`, so we look one directory up (ripgrep does the
//! same when the variable is absent).

use std::path::PathBuf;

/// The daemon.
pub fn tokendealerd() -> PathBuf {
    find("tokendealerd")
}

/// The admin tool.
pub fn tokendealer() -> PathBuf {
    find("tokendealer")
}

fn find(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the running test executable");
    let mut dir = exe
        .parent()
        .expect("the test executable lives in a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "`{name}` is not at {}: run `cargo build --workspace --bins` first (the end-to-end tests \
         run the real binaries, which cargo does not build for this package)",
        path.display()
    );
    path
}
