//! Running a command to completion with its output captured, and waiting for a child with a
//! deadline.

use std::{
    fmt,
    fs::File,
    io::{Read, Seek},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use nix::{sys::signal::Signal, unistd::Pid};

/// How long a command that should finish promptly (the admin tool, `check-config`, a daemon
/// that should refuse to start, the verifier) may run before it is killed and the test fails.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// What a finished command did.
#[derive(Debug, Clone)]
pub struct Output {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The `secret` an acknowledged `clients add --json` or `rotate-secret --json` printed.
    #[track_caller]
    pub fn printed_secret(&self) -> String {
        let printed: serde_json::Value = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"));
        printed["secret"]
            .as_str()
            .unwrap_or_else(|| panic!("no `secret` printed:\n{self}"))
            .to_owned()
    }

    /// The exit code; `None` when a signal ended the process.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.status.success(), "the command failed:\n{self}");
        self
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            Some(code),
            "expected exit code {code}:\n{self}"
        );
        self
    }

    /// The non-empty lines of stderr.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "command: {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- end ---",
            self.command, self.status, self.stdout, self.stderr
        )
    }
}

/// A shell-like rendering of a command for failure messages.
pub fn describe(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), v.to_string_lossy())))
        .collect();
    parts.push(cmd.get_program().to_string_lossy().into_owned());
    parts.extend(cmd.get_args().map(|a| {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(char::is_whitespace) {
            format!("'{a}'")
        } else {
            a.into_owned()
        }
    }));
    let mut line = parts.join(" ");
    if let Some(dir) = cmd.get_current_dir() {
        line.push_str(&format!("  (in {})", dir.display()));
    }
    line
}

/// Runs `cmd` to completion with stdin closed and stdout/stderr captured in anonymous files,
/// failing the test if it runs longer than [`COMMAND_TIMEOUT`].
#[track_caller]
pub fn run(mut cmd: Command) -> Output {
    let command = describe(&cmd);
    let (mut stdout, mut stderr) = capture(&mut cmd);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("could not start `{command}`: {e}"));
    let status = wait_timeout(child, COMMAND_TIMEOUT);
    let output = Output {
        command,
        status: status.unwrap_or_else(|killed| killed),
        stdout: read_all(&mut stdout),
        stderr: read_all(&mut stderr),
    };
    assert!(
        status.is_ok(),
        "the command did not finish within {COMMAND_TIMEOUT:?} and was killed:\n{output}"
    );
    output
}

/// Closes `cmd`'s stdin and sends its stdout and stderr to anonymous files, returned for
/// [`read_all`] once it has run.
pub fn capture(cmd: &mut Command) -> (File, File) {
    let stdout = tempfile::tempfile().expect("a temporary file for stdout");
    let stderr = tempfile::tempfile().expect("a temporary file for stderr");
    cmd.stdin(Stdio::null())
        .stdout(
            stdout
                .try_clone()
                .expect("a second handle on stdout's file"),
        )
        .stderr(
            stderr
                .try_clone()
                .expect("a second handle on stderr's file"),
        );
    (stdout, stderr)
}

/// Everything a captured output file holds.
pub fn read_all(file: &mut File) -> String {
    let mut bytes = Vec::new();
    file.rewind().expect("rewinding a captured output file");
    file.read_to_end(&mut bytes)
        .expect("reading a captured output file");
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Waits for `child` to exit. After `timeout` it is sent SIGKILL and `Err` carries the status
/// it died with.
///
/// std has no timed wait, so a thread does the blocking `wait` and hands the status over a
/// channel; the caller waits on the channel with a deadline. The thread owns the `Child`, so
/// on timeout we signal by pid: the process has not been reaped yet (the thread is still
/// blocked in `wait`), so the pid cannot have been reused.
pub fn wait_timeout(mut child: Child, timeout: Duration) -> Result<ExitStatus, ExitStatus> {
    let pid = pid_of(&child);
    let (tx, rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let result = match rx.recv_timeout(timeout) {
        Ok(status) => Ok(status.expect("waiting for a child process")),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            Err(rx
                .recv()
                .expect("the waiter thread reports")
                .expect("waiting for a killed child process"))
        }
    };
    waiter.join().expect("the waiter thread does not panic");
    result
}

/// The child's pid for `kill(2)`.
pub fn pid_of(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).expect("a pid fits in pid_t"))
}
