//! The stages' view of the metrics: one call per event, so calling code does not care
//! whether metrics are exported (`[metrics]` unset = every call is a no-op).

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Action, Mode, TlsConfig};
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

    /// A reload finished (`ok`: applied) after `elapsed`.
    pub fn reload(&self, ok: bool, elapsed: Duration) {
        if let Some(m) = &self.metrics {
            m.reload(ok, elapsed);
        }
    }

    /// Sets the certificate expiry gauge from the `[tls]` certificate file (at start and after
    /// a reload). A file that cannot be read here was refused by the loader already.
    pub fn tls_certificate(&self, tls: Option<&TlsConfig>) {
        let Some(m) = &self.metrics else {
            return;
        };
        let expiry = tls.and_then(|t| {
            let pem = std::fs::read(&t.certificate).ok()?;
            let earliest = super::cert::earliest_not_after(&pem)?;
            Some((t.certificate.display().to_string(), earliest))
        });
        if tls.is_some() && expiry.is_none() {
            tracing::warn!("TLS certificate expiry unreadable: bccguard_tls_certificate_expiry_timestamp_seconds not set");
        }
        m.tls_certificate_expiry(expiry.as_ref().map(|(f, t)| (f.as_str(), *t)));
    }

    /// The upstream's reply to the end of DATA came `elapsed` after it was sent.
    pub fn upstream_latency(&self, elapsed: Duration) {
        if let Some(m) = &self.metrics {
            m.upstream_latency(elapsed);
        }
    }

    pub fn in_flight(&self) -> InFlight {
        InFlight(self.metrics.as_ref().map(|m| m.hold_bytes(0)))
    }
}
