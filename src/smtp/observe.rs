//! The front end's view of the metrics: one call per event, so session code does not care how
//! (or whether) the numbers are exported.

use std::sync::Arc;

use crate::metrics::Metrics;

#[derive(Clone, Default)]
pub struct Observe {
    metrics: Option<Arc<Metrics>>,
}

/// Bytes of one message held in memory; released from the gauge when dropped.
pub struct InFlight {
    bytes: usize,
}

impl InFlight {
    pub fn add(&mut self, bytes: usize) {
        self.bytes += bytes;
    }
}

impl Observe {
    pub fn new(metrics: Option<Arc<Metrics>>) -> Observe {
        Observe { metrics }
    }

    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    pub fn session_opened(&self, listener: &str) {
        let _ = listener;
    }
    pub fn session_closed(&self, listener: &str) {
        let _ = listener;
    }
    pub fn tls_handshake(&self, ok: bool) {
        let _ = ok;
    }
    pub fn rejected(&self, reason: &str) {
        let _ = reason;
    }
    /// `None` = no reply (transport error or timeout).
    pub fn upstream_reply(&self, code: Option<u16>) {
        let _ = code;
    }
    pub fn message(&self, action: &str, rule: &str, mode: &str) {
        let _ = (action, rule, mode);
    }
    pub fn audit_write(&self, seconds: f64) {
        let _ = seconds;
    }
    pub fn in_flight(&self) -> InFlight {
        InFlight { bytes: 0 }
    }
}
