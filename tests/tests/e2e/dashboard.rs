//! The dashboard (`tokendealer --socket PATH` with no subcommand) in a real terminal: tmux
//! runs it against a real daemon, the test types as a person would and reads the screen back.

use std::{path::Path, process::Command};

use tokendealer_tests::{
    Daemon, TestClient,
    access::{NOBODY, open_socket_to_everyone},
    bins, jwt, keys,
    tmux::{Tmux, framed},
};

/// The terminal: wide enough for every column of the clients and keys tables.
const WIDTH: u16 = 100;
const HEIGHT: u16 = 30;

/// The client registered through the dashboard; short enough that the clients table shows
/// each of its cells whole.
const ID: &str = "dash-client";
const AUDIENCE: &str = "https://dash";
const SCOPE: &str = "runs:read";

/// Runs the dashboard and, once it has exited, says how it left the terminal (its exit status,
/// and whether the tty is back in canonical mode with echo), then waits for Enter so that the
/// test can look at the terminal it gave back before the pane closes.
const WRAPPER: &str = r#""$@"; status=$?
modes=
for flag in $(stty -a); do
    case $flag in icanon|-icanon|echo|-echo) modes="$modes $flag" ;; esac
done
echo "dashboard exited with status $status; tty:$modes"
read -r _
exit "$status""#;

/// What [`WRAPPER`] prints after a clean quit that restored the tty.
const CLEAN_EXIT: &str = "dashboard exited with status 0; tty: icanon echo";

/// The dashboard on `socket`, in a fresh tmux server.
fn dashboard(socket: &Path) -> Tmux {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(WRAPPER)
        .arg("sh")
        .arg(bins::tokendealer())
        .arg("--socket")
        .arg(socket);
    Tmux::start(WIDTH, HEIGHT, &cmd)
}

/// The bottom row, where the dashboard keeps its status bar.
fn status_bar(screen: &str) -> &str {
    screen.lines().last().unwrap_or_default()
}

fn connected(screen: &str) -> bool {
    status_bar(screen).trim_start().starts_with("connected ·")
}

fn disconnected(screen: &str) -> bool {
    status_bar(screen)
        .trim_start()
        .starts_with("disconnected — retrying (")
}

/// The keys the status bar always ends with, however long the rest of it is.
const HELP_HINT: &str = "? help · q quit";

/// Whether the status bar shows `lead` and then `rest`, as much of it as fits: the bar is cut
/// before the help hint at the right edge, and a temporary directory's path takes room.
fn shows_cut(screen: &str, lead: &str, rest: &str) -> bool {
    let bar = status_bar(screen).trim_end();
    let bar = bar
        .strip_suffix(HELP_HINT)
        .map_or(bar, |b| b.trim_end().trim_end_matches('·'));
    bar.split_once(lead).is_some_and(|(_, shown)| {
        let shown = shown.trim_end();
        !shown.is_empty() && (rest.starts_with(shown) || shown.starts_with(rest))
    })
}

/// The words of the clients table's row for `id`, if the screen shows one.
fn client_row<'a>(screen: &'a str, id: &str) -> Option<Vec<&'a str>> {
    screen
        .lines()
        .map(|row| row.split_whitespace().collect::<Vec<_>>())
        .find(|words| words.contains(&id))
}

/// Whether the clients table shows the client registered through the dashboard, as it was
/// registered.
fn lists_registered_client(screen: &str) -> bool {
    client_row(screen, ID).is_some_and(|row| {
        [AUDIENCE, SCOPE, "default", "enabled"]
            .iter()
            .all(|cell| row.contains(cell))
    })
}

/// The state the keys table shows for `kid` (whose cell may be cut short).
fn key_state<'a>(screen: &'a str, kid: &str) -> Option<&'a str> {
    screen.lines().find_map(|row| {
        let words: Vec<&str> = row.split_whitespace().collect();
        words
            .iter()
            .any(|w| w.len() >= 16 && kid.starts_with(w))
            .then(|| {
                words
                    .into_iter()
                    .find(|w| ["next", "active", "retiring"].contains(w))
            })
            .flatten()
    })
}

/// The secret on the line below "The secret of `ID` is:" in the popup.
#[track_caller]
fn shown_secret(screen: &str) -> String {
    let intro = format!("The secret of `{ID}` is:");
    let secret = screen
        .lines()
        .skip_while(|row| !row.contains(&intro))
        .nth(1)
        .map(|row| {
            // The popup sits inside the table's box: borders on either side of the word.
            let mut words = row.split(|c: char| c == '│' || c.is_whitespace());
            words.find(|w| !w.is_empty()).unwrap_or_default()
        })
        .unwrap_or_default();
    assert!(
        secret.len() >= 32 && secret.bytes().all(|b| b.is_ascii_hexdigit()),
        "no secret of at least 128 bits in hex below `{intro}`:\n{}",
        framed(screen)
    );
    secret.to_owned()
}

/// After the dashboard exited (`screen` shows the wrapper's report): exit status 0, the tty
/// back in canonical mode with echo, the main screen untouched, the cursor shown.
#[track_caller]
fn assert_terminal_given_back(tmux: &Tmux, screen: &str) {
    assert!(
        screen.contains(CLEAN_EXIT),
        "expected `{CLEAN_EXIT}`:\n{}",
        framed(screen)
    );
    assert!(
        !screen.contains("q quit"),
        "the dashboard drew on the main screen, not only the alternate one:\n{}",
        framed(screen)
    );
    assert_eq!(
        tmux.pane_format("alternate screen #{alternate_on}, cursor shown #{cursor_flag}"),
        "alternate screen 0, cursor shown 1",
        "the dashboard left the terminal in the wrong state"
    );
}

/// The `kid` in a token's header.
#[track_caller]
fn kid_of(token: &str) -> String {
    let jws = jwt::decode(token);
    jws.header["kid"]
        .as_str()
        .unwrap_or_else(|| panic!("no `kid` in the header {}", jws.header))
        .to_owned()
}

/// Opens the clients screen (no client yet) and fills in the registration form for [`ID`]
/// with [`AUDIENCE`] and [`SCOPE`], leaving it to be sent.
fn fill_in_registration(tmux: &Tmux) {
    tmux.send_keys(&["2"]);
    tmux.wait_for("Clients: 0 shown");
    tmux.send_keys(&["a"]);
    tmux.wait_for("Register a client");
    tmux.type_text(ID);
    tmux.send_keys(&["Tab"]);
    tmux.type_text(AUDIENCE);
    tmux.send_keys(&["Tab"]);
    tmux.type_text(SCOPE);
}

#[test]
fn registers_a_client_rotates_the_keys_and_rides_out_a_daemon_restart() {
    let mut daemon = Daemon::builder().start();
    let socket = daemon.admin_socket().to_path_buf();
    let tmux = dashboard(&socket);
    tmux.wait_until("`connected` in the status bar", connected);

    // Register a client with the form; its secret is shown once.
    fill_in_registration(&tmux);
    tmux.send_keys(&["Enter"]);
    let screen = tmux.wait_for("New secret — shown once");
    let secret = shown_secret(&screen);
    tmux.send_keys(&["Enter"]);
    tmux.wait_until(
        "the new client in the clients table, the popup closed",
        |s| !s.contains("New secret") && lists_registered_client(s),
    );

    // The secret on the screen is the one the daemon checks.
    let client = TestClient::new(ID).secret(&secret);
    let before = keys::list(&daemon);
    let old_active = keys::only(&before, "active").kid.clone();
    let old_next = keys::only(&before, "next").kid.clone();
    let token = daemon.access_token(&client, &[("audience", AUDIENCE)]);
    let claims = jwt::decode(&token).claims;
    assert_eq!(claims["sub"], ID, "{claims}");
    assert_eq!(kid_of(&token), old_active);

    // Rotate the signing keys now.
    tmux.send_keys(&["3"]);
    tmux.wait_until("the active and the next key in the keys table", |s| {
        key_state(s, &old_active) == Some("active") && key_state(s, &old_next) == Some("next")
    });
    tmux.send_keys(&["r"]);
    tmux.wait_for("Rotate signing keys");
    tmux.send_keys(&["!"]);
    // The status line names the key by its first 12 characters.
    let notice = format!("{}… signs now", &old_next[..12]);
    let screen = tmux.wait_until(&format!("`keys rotated: {notice}`"), |s| {
        shows_cut(s, "keys rotated: ", &notice)
    });
    assert!(
        !screen.contains("Rotate signing keys"),
        "the dialog closes once the keys are rotated:\n{}",
        framed(&screen)
    );
    tmux.wait_until(
        "the former next key active, the former active retiring",
        |s| {
            key_state(s, &old_next) == Some("active")
                && key_state(s, &old_active) == Some("retiring")
        },
    );
    let after = keys::list(&daemon);
    assert_eq!(keys::only(&after, "active").kid, old_next, "{after:#?}");
    assert_eq!(keys::only(&after, "retiring").kid, old_active, "{after:#?}");
    let published = daemon.kids();
    assert!(
        published.contains(&old_next) && published.contains(&old_active),
        "the JWKS publishes the new active and the retiring key: {published:?}"
    );
    let token = daemon.access_token(&client, &[("audience", AUDIENCE)]);
    assert_eq!(
        kid_of(&token),
        old_next,
        "new tokens are signed by the former next key"
    );

    // The daemon goes away and comes back on the same socket.
    let status = daemon.stop();
    assert!(status.success(), "tokendealerd exited with {status}");
    tmux.wait_until(
        "`disconnected — retrying (…)` in the status bar",
        disconnected,
    );
    daemon.start();
    assert_eq!(daemon.admin_socket(), socket, "the same admin socket");
    tmux.wait_until("`connected` again in the status bar", connected);
    // A client added behind the dashboard's back shows that the table is read afresh from
    // the restarted daemon, not left over from before.
    daemon
        .admin(&["clients", "add", "after-restart"])
        .assert_success();
    tmux.send_keys(&["2"]);
    tmux.wait_until(
        "both clients in the table read from the restarted daemon",
        |s| lists_registered_client(s) && client_row(s, "after-restart").is_some(),
    );

    // `q` quits and gives the terminal back as it was.
    tmux.send_keys(&["q"]);
    let screen = tmux.wait_for("dashboard exited");
    assert_terminal_given_back(&tmux, &screen);
    // CLEAN_EXIT already carries the dashboard's exit status, printed by the wrapper; tmux's
    // own record of the wrapper's status is not reliable enough to wait on.
}

#[test]
fn waits_for_a_daemon_that_is_not_running_yet() {
    let mut daemon = Daemon::builder().write();
    let socket = daemon.dir().join("admin.sock");
    let tmux = dashboard(&socket);
    let reason = format!("{} (is it running?))", socket.display());
    tmux.wait_until("why there is no daemon in the status bar", |s| {
        disconnected(s) && shows_cut(s, "no tokendealer daemon at ", &reason)
    });

    daemon.start();
    assert_eq!(daemon.admin_socket(), socket, "the configured admin socket");
    let listening = format!("listening on {}", daemon.addr());
    tmux.wait_until(
        &format!("`connected` and the daemon's `{listening}`"),
        |s| connected(s) && s.contains(&listening),
    );
}

/// How many admin requests named `name` (`list clients`, `list keys`) the daemon logged.
fn requests(log: &str, name: &str) -> usize {
    log.matches(&format!("request=\"{name}\"")).count()
}

#[test]
fn lists_the_clients_only_while_the_clients_screen_shows() {
    // Listing every client is the one refresh whose cost grows with the registry; the
    // overview and the keys screen do not show the list, so they do not read it.
    let client = TestClient::new("listed").audiences(&[AUDIENCE]);
    let daemon = Daemon::builder().log_level("debug").client(&client).start();
    let tmux = dashboard(daemon.admin_socket());
    tmux.wait_until("`connected` in the status bar", connected);
    let log = daemon.wait_for_log("two refresh rounds", |log| requests(log, "list keys") >= 2);
    assert_eq!(
        requests(&log, "list clients"),
        0,
        "the overview listed the clients:\n{log}"
    );

    // On the clients screen the list is read at once, and again every refresh.
    tmux.send_keys(&["2"]);
    tmux.wait_until("the client in the clients table", |s| {
        client_row(s, "listed").is_some()
    });
    daemon.wait_for_log("a second listing of the clients", |log| {
        requests(log, "list clients") >= 2
    });

    // Back on the overview, the listing stops (one sent just before may still arrive).
    tmux.send_keys(&["1"]);
    tmux.wait_until("the overview", |s| !s.contains("Clients: ") && connected(s));
    let log = daemon.stderr();
    let (listed, rounds) = (requests(&log, "list clients"), requests(&log, "list keys"));
    let log = daemon.wait_for_log("two more refresh rounds", |log| {
        requests(log, "list keys") >= rounds + 2
    });
    assert!(
        requests(&log, "list clients") <= listed + 1,
        "the clients were listed after the overview came back:\n{log}"
    );
}

/// The dashboard's process, the child of the wrapper shell the pane runs.
fn dashboard_pid(tmux: &Tmux) -> nix::unistd::Pid {
    let shell = tmux.pane_format("#{pane_pid}");
    let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
        .expect("the wrapper's children");
    let pid: i32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no dashboard process under the wrapper ({children:?})"));
    nix::unistd::Pid::from_raw(pid)
}

/// A signal that ends a terminal program, sent from outside (not typed), ends the dashboard
/// as `q` does.
#[track_caller]
fn signal_gives_the_terminal_back(signal: nix::sys::signal::Signal) {
    let daemon = Daemon::with_client(&TestClient::new("any"));
    let tmux = dashboard(daemon.admin_socket());
    tmux.wait_until("`connected` in the status bar", connected);
    nix::sys::signal::kill(dashboard_pid(&tmux), signal)
        .unwrap_or_else(|e| panic!("sending {signal} to the dashboard: {e}"));
    let screen = tmux.wait_for("dashboard exited");
    assert_terminal_given_back(&tmux, &screen);
}

#[test]
fn sigterm_gives_the_terminal_back() {
    signal_gives_the_terminal_back(nix::sys::signal::Signal::SIGTERM);
}

/// `kill -INT`: in raw mode Ctrl-C arrives as a key, so only an outside SIGINT gets here.
#[test]
fn sigint_gives_the_terminal_back() {
    signal_gives_the_terminal_back(nix::sys::signal::Signal::SIGINT);
}

#[test]
fn a_stopped_daemon_is_not_shown_as_connected() {
    let daemon = Daemon::with_client(&TestClient::new("any"));
    let tmux = dashboard(daemon.admin_socket());
    tmux.wait_until("`connected` in the status bar", connected);
    daemon.signal(nix::sys::signal::Signal::SIGSTOP);
    let screen = tmux.wait_until(
        "`disconnected — retrying (…)` in the status bar",
        disconnected,
    );
    daemon.signal(nix::sys::signal::Signal::SIGCONT);
    assert!(
        status_bar(&screen).contains("sent nothing")
            || status_bar(&screen).contains("did not answer"),
        "the status bar says why:\n{}",
        framed(&screen)
    );
    tmux.wait_until("`connected` again in the status bar", connected);
}

/// What the status bar says when an action is asked for while another is unanswered.
const ONE_AT_A_TIME: &str = "one action at a time";

/// A secret exists nowhere but in the answer that brings it: while the daemon is stopped
/// the registration waits, the dashboard says the daemon has gone quiet, refuses a second
/// action (whose answer, coming right after the secret, used to replace it on screen), and
/// shows the secret when the daemon wakes, until the user closes it.
#[test]
fn a_new_secret_outlives_a_stopped_daemon_and_no_second_action_is_sent() {
    let daemon = Daemon::builder().start();
    let tmux = dashboard(daemon.admin_socket());
    tmux.wait_until("`connected` in the status bar", connected);
    let active = keys::only(&keys::list(&daemon), "active").kid.clone();

    // The form is filled in before the daemon stops, so that the registration is sent well
    // within the silence the dashboard allows a daemon with no action pending.
    fill_in_registration(&tmux);
    daemon.signal(nix::sys::signal::Signal::SIGSTOP);
    tmux.send_keys(&["Enter"]);
    tmux.wait_for(&format!("registering `{ID}`"));
    // Esc stops the waiting, not the registration.
    tmux.send_keys(&["Escape"]);
    tmux.wait_until(
        "the waiting dialog closed, the wait in the status bar",
        |s| {
            !s.contains(" Working ")
                && status_bar(s).contains("still waiting for the daemon's answer")
        },
    );

    // Rotating the keys would be a second action.
    tmux.send_keys(&["3"]);
    tmux.wait_for("Signing keys:");
    tmux.send_keys(&["R"]);
    let screen = tmux.wait_until(&format!("`{ONE_AT_A_TIME}` in the status bar"), |s| {
        status_bar(s).contains(ONE_AT_A_TIME)
    });
    assert!(
        !screen.contains("Rotate signing keys"),
        "a rotation was offered while the registration is unanswered:\n{}",
        framed(&screen)
    );
    // What the user would press to confirm it: there is nothing to confirm.
    tmux.send_keys(&["y"]);

    // The daemon says nothing: the bar says so instead of `connected`, and keeps the link.
    tmux.wait_until("`no word from the daemon` in the status bar", |s| {
        status_bar(s).contains("no word from the daemon for")
    });
    daemon.signal(nix::sys::signal::Signal::SIGCONT);
    let screen = tmux.wait_for("New secret — shown once");
    let secret = shown_secret(&screen);
    let screen = tmux.wait_until("`connected` again in the status bar", connected);
    assert!(
        screen.contains("New secret — shown once") && !screen.contains("Refused"),
        "the secret was replaced:\n{}",
        framed(&screen)
    );
    assert!(
        !status_bar(&screen).contains("still waiting"),
        "the answer came, the waiting notice stayed:\n{}",
        framed(&screen)
    );

    let client = TestClient::new(ID).secret(&secret);
    let token = daemon.access_token(&client, &[("audience", AUDIENCE)]);
    assert_eq!(jwt::decode(&token).claims["sub"], ID);
    assert_eq!(
        keys::only(&keys::list(&daemon), "active").kid,
        active,
        "the keys were rotated"
    );

    tmux.send_keys(&["Enter"]);
    tmux.wait_until("the secret closed", |s| !s.contains("New secret"));
    tmux.send_keys(&["q"]);
    let screen = tmux.wait_for("dashboard exited");
    assert_terminal_given_back(&tmux, &screen);
}

/// The dashboard of an admin taken off `admin_uids` stops working at the reload, though it
/// connected before: it is refused, not left able to change clients until it reconnects.
/// The dashboard on `daemon`'s socket, run as uid and gid [`NOBODY`] with no supplementary
/// groups (through setpriv, as root).
fn dashboard_as_nobody(daemon: &Daemon) -> Tmux {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(WRAPPER)
        .arg("sh")
        .arg("setpriv")
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg(bins::tokendealer())
        .arg("--socket")
        .arg(daemon.admin_socket());
    Tmux::start(WIDTH, HEIGHT, &cmd)
}

#[test]
fn a_dashboard_open_when_its_access_is_taken_away_is_refused() {
    let daemon = Daemon::builder()
        .config(&format!("admin_uids = [{NOBODY}]"))
        .start();
    open_socket_to_everyone(&daemon);
    let tmux = dashboard_as_nobody(&daemon);
    tmux.wait_until("`connected` in the status bar", connected);

    let config = std::fs::read_to_string(daemon.config_path()).expect("the config");
    let without = config.replace(&format!("admin_uids = [{NOBODY}]"), "");
    assert_ne!(without, config);
    std::fs::write(daemon.config_path(), without).expect("writing the config");
    daemon.admin(&["reload"]).assert_success();
    tmux.wait_until("the refusal of the open dashboard", |s| {
        s.contains("Refused by the daemon") && s.contains(&NOBODY.to_string())
    });
    tmux.send_keys(&["q"]);
    let screen = tmux.wait_for("dashboard exited");
    assert_terminal_given_back(&tmux, &screen);
}

/// A refusal is final: asking again gets the same answer and a warning in the daemon's log
/// each time. The dashboard shows the whole reason, stops, and still quits cleanly.
#[test]
fn a_dashboard_the_daemon_refuses_says_why_and_does_not_retry() {
    let daemon = Daemon::builder().log_level("debug").start();
    open_socket_to_everyone(&daemon);
    let refused = dashboard_as_nobody(&daemon);
    // The end of the reason, what to ask for, is what a status bar cut off.
    refused.wait_until("the refusal and its whole reason", |s| {
        s.contains("Refused by the daemon")
            && s.contains(&NOBODY.to_string())
            && s.contains("admin_uids/admin_gids)")
    });

    // A dashboard the daemon lets in lists the keys every 2 s: its requests in the log are
    // the clock that shows the refused one has stopped asking.
    let refusals = |log: &str| log.matches("admin connection refused").count();
    let watcher = dashboard(daemon.admin_socket());
    watcher.wait_until("`connected` in the status bar", connected);
    let rounds = requests(&daemon.stderr(), "list keys");
    let log = daemon.wait_for_log("three more refresh rounds", |log| {
        requests(log, "list keys") >= rounds + 3
    });
    assert_eq!(
        refusals(&log),
        1,
        "the refused dashboard asked again:\n{log}"
    );

    refused.send_keys(&["q"]);
    let screen = refused.wait_for("dashboard exited");
    assert_terminal_given_back(&refused, &screen);
}

/// The overview follows what admins do: a client disabled and a secret rotated with the
/// command-line tool show up in its feed of changes as they happen, with who did them, and
/// the count of disabled clients moves.
#[test]
fn the_overview_shows_changes_as_they_happen() {
    let client = TestClient::new("feed-me");
    let daemon = Daemon::builder().client(&client).start();
    let tmux = dashboard(daemon.admin_socket());
    tmux.wait_until("`connected` and no change yet", |s| {
        connected(s) && s.contains("none since the daemon started")
    });
    daemon
        .admin(&["clients", "disable", "feed-me"])
        .assert_success();
    tmux.wait_until("the disabling in the feed, and counted", |s| {
        s.contains("client `feed-me` disabled (uid ") && s.contains("1 clients: 1 disabled")
    });
    daemon
        .admin(&["clients", "rotate-secret", "feed-me"])
        .assert_success();
    let screen = tmux.wait_until("the rotation above the disabling", |s| {
        s.contains("secret of `feed-me` rotated") && s.contains("1 secret rotations")
    });
    let newest = screen
        .lines()
        .position(|l| l.contains("secret of `feed-me` rotated"));
    let older = screen
        .lines()
        .position(|l| l.contains("client `feed-me` disabled"));
    assert!(newest < older, "newest first:\n{screen}");
    tmux.send_keys(&["q"]);
    let screen = tmux.wait_for("dashboard exited");
    assert_terminal_given_back(&tmux, &screen);
}
