//! The service manager's view of the relay: systemd `Type=notify` readiness and stop notices
//! (`READY=1` once every listener is bound, `STOPPING=1` at a graceful stop). Without
//! `$NOTIFY_SOCKET` (not under systemd) every call does nothing.

use sd_notify::NotifyState;

/// Tells systemd the relay accepts connections; `status` shows in `systemctl status`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd a graceful stop has begun.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn send(states: &[NotifyState<'_>]) {
    // `false`: keep NOTIFY_SOCKET set, so later notices (stopping) still reach systemd.
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}
