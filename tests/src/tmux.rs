//! A full-screen program used the way a person uses it: run in a terminal of tmux, keys typed
//! with `send-keys`, the screen read back with `capture-pane`.
//!
//! Each [`Tmux`] starts a tmux server of its own on a socket in its own temporary directory
//! (`-S`) and without any configuration file (`-f /dev/null`), so tests run in parallel and
//! nobody's `~/.tmux.conf` changes what they see. The server is killed on drop.
//!
//! tmux cannot block until a pane shows some text, so [`Tmux::wait_until`] captures the pane
//! again and again until it does or [`SCREEN_TIMEOUT`] passes; each capture is a round trip to
//! the tmux server, and the failure message shows the last screen captured.

use std::{
    ffi::{OsStr, OsString},
    io::ErrorKind,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::process::{self, Output};

/// How long a screen may take to show what a test waits for. The dashboard redraws at
/// least once a second and retries a lost daemon every second.
pub const SCREEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The one session of each server; it holds one window with one pane.
const SESSION: &str = "e2e";

/// A program running in a detached tmux session of a private tmux server.
pub struct Tmux {
    dir: TempDir,
    /// The program's command line, for failure messages.
    command: String,
}

impl Tmux {
    /// Starts `cmd` (its program, arguments, environment variables and working directory)
    /// alone in a detached session of `width` × `height` cells. The pane stays after the
    /// program exits (`remain-on-exit`), so that [`Tmux::wait_for_exit`] can read its status.
    ///
    /// Fails the test at once when tmux is not installed.
    #[track_caller]
    pub fn start(width: u16, height: u16, cmd: &Command) -> Self {
        if let Err(e) = Command::new("tmux").arg("-V").stdin(Stdio::null()).output() {
            if e.kind() == ErrorKind::NotFound {
                panic!(
                    "tmux is not installed: the dashboard tests run the real dashboard in a tmux \
                     terminal (install the `tmux` package)"
                );
            }
            panic!("could not run `tmux -V`: {e}");
        }
        let dir = tempfile::Builder::new()
            .prefix("tokendealer-tmux-")
            .tempdir()
            .expect("a temporary directory");
        let tmux = Self {
            dir,
            command: process::describe(cmd),
        };

        // One command list, so `remain-on-exit` is set before the program can possibly exit.
        let mut args: Vec<OsString> = [
            "start-server",
            ";",
            "set-option",
            "-g",
            "remain-on-exit",
            "on",
            ";",
            "new-session",
            "-d",
            "-s",
            SESSION,
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
        ]
        .map(OsString::from)
        .into();
        if let Some(cwd) = cmd.get_current_dir() {
            args.extend(["-c".into(), cwd.into()]);
        }
        for (name, value) in cmd.get_envs() {
            let value = value.unwrap_or_else(|| {
                panic!(
                    "tmux cannot remove `{}` from a pane's environment",
                    name.display()
                )
            });
            let mut pair = name.to_owned();
            pair.push("=");
            pair.push(value);
            args.extend(["-e".into(), pair]);
        }
        // Several words after `--` are run as they are, without a shell in between.
        args.push("--".into());
        args.push(cmd.get_program().to_owned());
        args.extend(cmd.get_args().map(OsStr::to_owned));
        tmux.run(&args);
        tmux
    }

    /// The tmux server's socket.
    fn socket(&self) -> PathBuf {
        self.dir.path().join("tmux.sock")
    }

    fn command(&self, args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.arg("-S")
            .arg(self.socket())
            .arg("-f")
            .arg("/dev/null")
            .args(args);
        cmd
    }

    /// Runs one tmux command against this server; fails the test unless it succeeds.
    #[track_caller]
    fn run(&self, args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> Output {
        let output = process::run(self.command(args));
        assert!(
            output.status.success(),
            "tmux failed (the pane runs `{}`):\n{output}",
            self.command
        );
        output
    }

    /// Presses keys by their tmux names (`Enter`, `Tab`, `q`, `!`…), in order.
    #[track_caller]
    pub fn send_keys(&self, keys: &[&str]) {
        self.run(["send-keys", "-t", SESSION].iter().chain(keys));
    }

    /// Types `text` character by character, no key names interpreted.
    #[track_caller]
    pub fn type_text(&self, text: &str) {
        self.run(["send-keys", "-t", SESSION, "-l", text]);
    }

    /// The pane's visible screen as text, one line per row.
    #[track_caller]
    pub fn screen(&self) -> String {
        self.run(["capture-pane", "-p", "-t", SESSION]).stdout
    }

    /// A tmux format (`#{alternate_on}`, `#{cursor_flag}`…) expanded for the pane.
    #[track_caller]
    pub fn pane_format(&self, format: &str) -> String {
        let output = self.run(["display-message", "-p", "-t", SESSION, format]);
        output.stdout.trim_end_matches('\n').to_owned()
    }

    /// Captures the screen until `done` accepts it and returns that screen; after
    /// [`SCREEN_TIMEOUT`] fails the test with `what` (what the test waited for) and the last
    /// screen.
    #[track_caller]
    pub fn wait_until(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + SCREEN_TIMEOUT;
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the screen did not show {what} within {SCREEN_TIMEOUT:?}; the pane runs `{}`; \
                 the last screen:\n{}",
                self.command,
                framed(&screen)
            );
        }
    }

    /// [`Tmux::wait_until`] the screen contains `text`.
    #[track_caller]
    pub fn wait_for(&self, text: &str) -> String {
        self.wait_until(&format!("`{text}`"), |screen| screen.contains(text))
    }

    /// Waits for the program in the pane to exit and returns its exit status; fails the test
    /// with the last screen after [`SCREEN_TIMEOUT`], or when a signal ended the program.
    #[track_caller]
    pub fn wait_for_exit(&self) -> i32 {
        let deadline = Instant::now() + SCREEN_TIMEOUT;
        loop {
            let state = self.pane_format("#{pane_dead} #{pane_dead_status} #{pane_dead_signal}");
            // tmux marks the pane dead a moment before it records how the program ended:
            // until a status or a signal is there, keep waiting.
            let mut fields = state.split(' ');
            let (dead, status, signal) = (
                fields.next(),
                fields.next().unwrap_or(""),
                fields.next().unwrap_or(""),
            );
            if dead == Some("1") && (!status.is_empty() || !signal.is_empty()) {
                return status.parse().unwrap_or_else(|e| {
                    panic!(
                        "`{}` exited without an exit status ({e}: `{state}`), so a signal ended \
                         it; the last screen:\n{}",
                        self.command,
                        framed(&self.screen())
                    )
                });
            }
            assert!(
                Instant::now() < deadline,
                "`{}` did not exit within {SCREEN_TIMEOUT:?}; the last screen:\n{}",
                self.command,
                framed(&self.screen())
            );
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Not `run`: a failure here must not turn a failing test's panic into an abort.
        let _ = self
            .command(["kill-server"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A captured screen between rulers, so that its blank rows and edges show in a message.
pub fn framed(screen: &str) -> String {
    format!("--- screen ---\n{screen}--- end of screen ---")
}
