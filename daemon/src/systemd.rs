//! sd_notify(3): readiness, reload and stop notifications to the service manager. Every call
//! is a no-op when `NOTIFY_SOCKET` is unset.

use sd_notify::NotifyState;

use crate::State;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// READY=1, once both listeners are bound and keys and clients are loaded. Besides a STATUS
/// line it carries the bound addresses as `X_` variables (sd_notify(3) reserves that prefix
/// for such extensions), so a supervisor or a test that asked for port 0 learns the port.
pub fn ready(state: &State) {
    let status = format!(
        "STATUS=serving {} clients on {}, signing with {}",
        state.clients.load().len(),
        state.listen,
        state.keys.load().active().kid()
    );
    let listen = format!("X_TOKENDEALER_LISTEN={}", state.listen);
    let admin = format!("X_TOKENDEALER_ADMIN={}", state.admin_socket.display());
    send(&[
        NotifyState::Ready,
        NotifyState::Custom(&status),
        NotifyState::Custom(&listen),
        NotifyState::Custom(&admin),
    ]);
}

/// RELOADING=1 with MONOTONIC_USEC=, which systemd 253+ requires beside it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => tracing::warn!(error = %e, "cannot read the monotonic clock for RELOADING=1"),
    }
}

/// STOPPING=1.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}
