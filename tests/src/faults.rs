//! Fault injection for the crash and I/O-error tests: a seeded random source whose seed a
//! failing test prints, an admin command left running while the daemon dies under it, and
//! `strace` attached to a running daemon to kill it at one exact system call or to make one
//! call fail.
//!
//! strace is attached (`-p`) only for the one request under test, rather than started with
//! the daemon: what happens at start-up then never counts towards `when=`, and the daemon
//! stays a child of the [`Daemon`] that started it.

use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{OnceLock, mpsc},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use nix::sys::signal::{self, Signal};
use serde_json::Value;

use crate::{
    Daemon, bins,
    daemon::admin_command,
    process::{self, COMMAND_TIMEOUT, Output},
};

/// Set to the seed a failing fault loop printed to replay the same kill moments.
pub const SEED_VAR: &str = "TOKENDEALER_FAULT_SEED";

/// How long strace may take to attach to every thread of the daemon.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);

/// A small seeded PRNG (SplitMix64): reproducible from the seed it prints when a test that
/// owns it panics.
#[derive(Debug)]
pub struct Prng {
    seed: u64,
    state: u64,
}

impl Prng {
    /// Seeded from [`SEED_VAR`] when set, else from the operating system.
    #[track_caller]
    pub fn from_env_or_random() -> Self {
        let seed = match std::env::var(SEED_VAR) {
            Ok(text) => text
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("{SEED_VAR}={text} is not a u64 ({e})")),
            Err(_) => {
                let mut bytes = [0u8; 8];
                getrandom::fill(&mut bytes).expect("the operating system's random source");
                u64::from_le_bytes(bytes)
            }
        };
        Self { seed, state: seed }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `bound` (at least 1). The modulo bias is irrelevant at these sizes.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }
}

impl Drop for Prng {
    #[expect(
        clippy::print_stderr,
        reason = "a failing test's captured stderr is where the replay seed belongs"
    )]
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "fault loop seed {seed}: replay with {SEED_VAR}={seed}",
                seed = self.seed
            );
        }
    }
}

/// Busy-waits until `deadline`. A kill moment a few microseconds wide cannot be hit by a
/// sleep, whose wake-up is late by more than that.
pub fn spin_until(deadline: Instant) {
    while Instant::now() < deadline {
        std::hint::spin_loop();
    }
}

/// An admin command running in the background, its output going to anonymous files so that
/// it never blocks on a pipe nobody reads while the test kills the daemon.
pub struct Pending {
    pid: nix::unistd::Pid,
    command: String,
    stdout: File,
    stderr: File,
    issued: Instant,
    /// The exit status and when the waiter saw it: the command's duration must not include
    /// the time the test spent killing and restarting the daemon before it asked.
    ended: mpsc::Receiver<(std::io::Result<ExitStatus>, Instant)>,
    waiter: Option<JoinHandle<()>>,
}

/// Starts `tokendealer --socket ADMIN ARGS` without waiting for it.
#[track_caller]
pub fn spawn_admin(daemon: &Daemon, args: &[&str]) -> Pending {
    let mut cmd = Command::new(bins::tokendealer());
    cmd.arg("--socket")
        .arg(daemon.admin_socket())
        .args(args)
        .env_remove("TOKENDEALER_SOCKET")
        .env("NO_COLOR", "1");
    let command = process::describe(&cmd);
    let (stdout, stderr) = process::capture(&mut cmd);
    let issued = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("could not start `{command}`: {e}"));
    let pid = process::pid_of(&child);
    let (tx, ended) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send((status, Instant::now()));
    });
    Pending {
        pid,
        command,
        stdout,
        stderr,
        issued,
        ended,
        waiter: Some(waiter),
    }
}

impl Pending {
    /// When the command was started.
    pub fn issued(&self) -> Instant {
        self.issued
    }

    /// Waits for the command to end (failing the test after [`COMMAND_TIMEOUT`]) and
    /// returns what it did and how long after it was issued it ended.
    #[track_caller]
    pub fn finish(mut self) -> (Output, Duration) {
        let Ok((status, ended)) = self.ended.recv_timeout(COMMAND_TIMEOUT) else {
            // Not reaped yet (the waiter still blocks in `wait`), so the pid is still ours.
            let _ = signal::kill(self.pid, Signal::SIGKILL);
            panic!(
                "`{}` did not finish within {COMMAND_TIMEOUT:?} and was killed",
                self.command
            );
        };
        if let Some(waiter) = self.waiter.take() {
            let _ = waiter.join();
        }
        let output = Output {
            command: self.command.clone(),
            status: status.expect("waiting for the admin tool"),
            stdout: process::read_all(&mut self.stdout),
            stderr: process::read_all(&mut self.stderr),
        };
        (output, ended.duration_since(self.issued))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(waiter) = self.waiter.take() {
            if !waiter.is_finished() {
                let _ = signal::kill(self.pid, Signal::SIGKILL);
            }
            let _ = waiter.join();
        }
    }
}

/// The daemon's process id, as `tokendealer status --json` reports it.
#[track_caller]
pub fn daemon_pid(daemon: &Daemon) -> i32 {
    let output = daemon.admin(&["status", "--json"]);
    output.assert_success();
    let status: Value = serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("`status --json` printed no JSON ({e}):\n{output}"));
    status["pid"]
        .as_i64()
        .and_then(|pid| i32::try_from(pid).ok())
        .unwrap_or_else(|| panic!("`status --json` has no `pid`:\n{output}"))
}

/// `tokendealerd check-config CONFIG`: the config and the clients file it names parse.
#[track_caller]
pub fn check_config(daemon: &Daemon) -> Output {
    let mut cmd = Command::new(bins::tokendealerd());
    cmd.arg("check-config").arg(daemon.config_path());
    admin_command(cmd)
}

/// Fails (never skips) when strace is missing: the exact-moment faults cannot be made
/// without it.
#[track_caller]
fn require_strace() {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    let check = CHECK.get_or_init(|| match Command::new("strace").arg("-V").output() {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(String::from_utf8_lossy(&output.stderr).trim().to_owned()),
        Err(e) => Err(e.to_string()),
    });
    if let Err(why) = check {
        panic!(
            "strace is required to kill the daemon at an exact system call or make one fail; \
             install it (`apt-get install strace`) ({why})"
        );
    }
}

/// `strace -f -y -p PID -o TRACE ARGS`, attached to a running daemon. Killed on drop if still
/// running, so it never outlives the test.
pub struct Strace {
    child: Option<Child>,
    command: String,
    trace: PathBuf,
    messages: mpsc::Receiver<String>,
    reader: Option<JoinHandle<()>>,
}

impl Strace {
    /// Attaches to every thread of `pid` with `args` (filters, `-e inject=…`), writing the
    /// trace to `trace`; returns once strace reports them attached, so the next request is
    /// traced from its first system call.
    #[track_caller]
    pub fn attach(pid: i32, trace: &Path, args: &[&str]) -> Self {
        require_strace();
        let mut cmd = Command::new("strace");
        cmd.args(["-f", "-y", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(trace)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let command = process::describe(&cmd);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("could not start `{command}`: {e}"));
        let stderr = child.stderr.take().expect("strace's stderr is piped");
        // strace's messages are read to the end by a thread of their own: a full pipe would
        // stop strace, and with it the daemon it holds.
        let (tx, messages) = mpsc::channel();
        let reader = thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut strace = Self {
            child: Some(child),
            command,
            trace: trace.to_owned(),
            messages,
            reader: Some(reader),
        };
        strace.await_attached();
        strace
    }

    #[track_caller]
    fn await_attached(&mut self) {
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                // "Process N attached" or "Process N attached with K threads": strace prints
                // it once every thread of the process is seized.
                Ok(line) if line.contains("attached") => return,
                Ok(line) => seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "`{}` did not attach within {ATTACH_TIMEOUT:?}:\n{}",
                    self.command,
                    seen.join("\n")
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self
                        .child
                        .take()
                        .map(|c| process::wait_timeout(c, COMMAND_TIMEOUT));
                    panic!(
                        "`{}` ended before it attached ({status:?}); attaching needs ptrace \
                         (root or CAP_SYS_PTRACE, and a seccomp profile that allows it):\n{}",
                        self.command,
                        seen.join("\n")
                    )
                }
            }
        }
    }

    /// What strace wrote so far.
    pub fn trace(&self) -> String {
        fs::read_to_string(&self.trace).unwrap_or_default()
    }

    /// Detaches from the daemon, which goes on running, and returns the trace.
    #[track_caller]
    pub fn detach(mut self) -> String {
        let child = self.child.take().expect("strace is running");
        // SIGINT makes strace detach from every thread and exit.
        let _ = signal::kill(process::pid_of(&child), Signal::SIGINT);
        if let Err(killed) = process::wait_timeout(child, COMMAND_TIMEOUT) {
            panic!(
                "`{}` did not detach and was killed ({killed})",
                self.command
            );
        }
        self.join_reader();
        self.trace()
    }

    /// Waits for strace to end on its own, as it does once the daemon it traces has died,
    /// and returns the trace.
    #[track_caller]
    pub fn wait_end(mut self) -> String {
        let child = self.child.take().expect("strace is running");
        if let Err(killed) = process::wait_timeout(child, COMMAND_TIMEOUT) {
            panic!(
                "`{}` was still running {COMMAND_TIMEOUT:?} after the request, so the injected \
                 fault never ended the daemon; it was killed ({killed}). Trace:\n{}",
                self.command,
                self.trace()
            );
        }
        self.join_reader();
        self.trace()
    }

    fn join_reader(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for Strace {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.join_reader();
    }
}
