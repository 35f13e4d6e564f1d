//! The stages' view of the metrics: one call per event, so calling code does not care
//! whether metrics are exported (`[metrics]` unset = every call is a no-op).

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Action, Mode};
use crate::metrics::{BytesHeld, Metrics, RejectReason, SessionGuard, TlsSide};

#[derive(Clone, Default)]
pub struct Observe {
    metrics: Option<Arc<Metrics>>,
}

/// Bytes of one message held in memory; released from the gauge when dropped.
pub struct InFlight(Option<BytesHeld>);

impl InFlight {
    pub fn add(&mut self, bytes: usize) {
        if let Some(held) = self.0.as_mut() {
            held.add(bytes as u64);
        }
    }
}

/// Counts a session as active until dropped.
pub struct ActiveSession(#[allow(dead_code)] Option<SessionGuard>);

impl Observe {
    pub fn new(metrics: Option<Arc<Metrics>>) -> Observe {
        Observe { metrics }
    }

    pub fn session(&self, listener: &str) -> ActiveSession {
        ActiveSession(self.metrics.as_ref().map(|m| m.session_opened(listener)))
    }

    pub fn tls_handshake(&self, ok: bool) {
        if let Some(m) = &self.metrics {
            m.tls_handshake(TlsSide::Inbound, ok);
        }
    }

    /// A TLS session towards the upstream was (or failed to be) set up.
    pub fn upstream_tls_handshake(&self, ok: bool) {
        if let Some(m) = &self.metrics {
            m.tls_handshake(TlsSide::Upstream, ok);
        }
    }

    /// AUTH credential cache lookup (see `auth::AuthService`).
    pub fn auth_cache(&self, hit: bool) {
        if let Some(m) = &self.metrics {
            m.auth_cache(hit);
        }
    }

    /// AUTH attempt outcome: `ok`, `failed` or `blocked`.
    pub fn auth_result(&self, result: &str) {
        if let Some(m) = &self.metrics {
            m.auth_attempt(result);
        }
    }

    /// An inbound TLS handshake completed; `resumed` = an earlier session was resumed.
    pub fn tls_session(&self, resumed: bool) {
        if let Some(m) = &self.metrics {
            m.tls_session(resumed);
        }
    }

    pub fn rejected(&self, reason: RejectReason) {
        if let Some(m) = &self.metrics {
            m.rejected(reason);
        }
    }

    /// `None` = no reply (transport error or timeout).
    pub fn upstream_reply(&self, code: Option<u16>) {
        if let Some(m) = &self.metrics {
            m.upstream_outcome(code);
        }
    }

    pub fn message(&self, action: Action, rule: Option<&str>, mode: Mode) {
        if let Some(m) = &self.metrics {
            m.message(action, rule, mode);
        }
    }

    pub fn audit_write(&self, elapsed: Duration, ok: bool) {
        if let Some(m) = &self.metrics {
            m.audit_write(elapsed);
            if !ok {
                m.audit_write_failed();
            }
        }
    }

    pub fn in_flight(&self) -> InFlight {
        InFlight(self.metrics.as_ref().map(|m| m.hold_bytes(0)))
    }
}
