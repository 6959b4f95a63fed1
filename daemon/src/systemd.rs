//! sd_notify(3): readiness, status, watchdog, reload and stop notifications to the service
//! manager. Every call is a no-op when `NOTIFY_SOCKET` is unset.

use std::{
    sync::{Arc, Mutex, PoisonError, atomic::Ordering::Relaxed},
    time::Duration,
};

use sd_notify::NotifyState;

use crate::State;

/// How often the STATUS= line is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Set by [`stopping`]: from then on the service manager hears no READY=1, RELOADING=1 or
/// STATUS= line, which a reload still running at the stop would otherwise send after it
/// (with systemd 252, a READY=1 then puts a stopping unit back to "running"). Held while
/// such a message is checked and sent, so that none can slip in after STOPPING=1.
static STOPPING: Mutex<bool> = Mutex::new(false);

/// Sends `states` unless the daemon is stopping.
fn send_unless_stopping(states: &[NotifyState<'_>]) {
    let stopping = STOPPING.lock().unwrap_or_else(PoisonError::into_inner);
    if !*stopping {
        send(states);
    }
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// READY=1, once both listeners are bound and keys and clients are loaded. Besides a STATUS
/// line it carries the bound addresses as `X_` variables (sd_notify(3) reserves that prefix
/// for such extensions), so a supervisor or a test that asked for port 0 learns the port.
pub fn ready(state: &State) {
    let status = format!("STATUS={}", status_line(state));
    let listen = format!("X_TOKENDEALER_LISTEN={}", state.listen);
    let admin = format!("X_TOKENDEALER_ADMIN={}", state.admin_socket.display());
    send_unless_stopping(&[
        NotifyState::Ready,
        NotifyState::Custom(&status),
        NotifyState::Custom(&listen),
        NotifyState::Custom(&admin),
    ]);
}

/// A STATUS= line while starting, sent once the signal handlers are in: key generation and
/// a large clients file can take seconds, and `systemctl status` then says what is going on.
pub fn starting() {
    send(&[NotifyState::Custom(
        "STATUS=starting: loading the signing keys and the clients file",
    )]);
}

/// RELOADING=1 with MONOTONIC_USEC=, which systemd 253+ requires beside it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send_unless_stopping(&[NotifyState::Reloading, now]),
        Err(e) => tracing::warn!(error = %e, "cannot read the monotonic clock for RELOADING=1"),
    }
}

/// STOPPING=1.
pub fn stopping() {
    let mut stopping = STOPPING.lock().unwrap_or_else(PoisonError::into_inner);
    *stopping = true;
    send(&[NotifyState::Stopping]);
}

/// The one-line summary `systemctl status` shows.
fn status_line(state: &State) -> String {
    format!(
        "{} clients, signing with {}, {} tokens/s",
        state.clients.load().len(),
        state.keys.load().active_kid(),
        state.stats.rate.load(Relaxed)
    )
}

/// Keeps the service manager informed while serving: WATCHDOG=1 at half the interval it
/// asked for, and a fresh STATUS= line. It runs as a task on the serving runtime on purpose:
/// if that runtime wedges, the pings stop and systemd restarts the daemon.
pub async fn keepalive(state: Arc<State>) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let watchdog = sd_notify::watchdog_enabled().map(|interval| interval / 2);
    let period = watchdog.map_or(STATUS_EVERY, |w| w.min(STATUS_EVERY));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if let Some(w) = watchdog {
        tracing::info!(every_ms = w.as_millis(), "sending watchdog keep-alives");
    }
    let mut since_status = Duration::ZERO;
    loop {
        ticker.tick().await;
        since_status += period;
        if watchdog.is_some() {
            send(&[NotifyState::Watchdog]);
        }
        if since_status >= STATUS_EVERY {
            since_status = Duration::ZERO;
            let status = status_line(&state);
            send_unless_stopping(&[NotifyState::Status(&status)]);
        }
    }
}
