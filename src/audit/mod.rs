//! Audit: the tamper-evident JSON Lines record of every intervention (SPEC section 5).
//! Beside the pipe, not in it: the delivery stage hands it an event and waits for the fsync.
//! INTERFACE STUB — the audit helper implements this.

use crate::config::{Action, AuditConfig, Mode};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What the delivery stage knows about one message when it is done.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub session: String,
    pub client: String,
    pub auth_user: Option<String>,
    pub sender: String,
    pub message_id: Option<String>,
    pub rule: Option<String>,
    /// The rule's action (in monitor mode: what would have been done).
    pub action: Action,
    pub mode: Mode,
    pub reason: String,
    /// Visible addresses (pseudonymised or dropped per config before writing).
    pub visible: Vec<String>,
    pub visible_external: usize,
    pub external_domains: usize,
    pub envelope_recipients: usize,
    /// The reply the upstream gave (None when nothing was sent).
    pub upstream: Option<String>,
    pub header_digest_original: String,
    pub header_digest_forwarded: Option<String>,
}

pub struct AuditLog {
    cfg: AuditConfig,
}

impl AuditLog {
    /// Opens (creating if needed) the log. Never fails for an unwritable log: the relay starts and
    /// answers 451 4.3.0 to messages that need a record, and `is_writable` reports false.
    pub fn open(cfg: &AuditConfig, policy_version: &str) -> anyhow::Result<AuditLog> {
        let _ = policy_version;
        Ok(AuditLog { cfg: cfg.clone() })
    }

    pub fn is_writable(&self) -> bool {
        true
    }

    /// Whether a message with this decision gets a record.
    pub fn wants(&self, action: Action, mode: Mode) -> bool {
        let _ = mode;
        action != Action::Accept || self.cfg.log_accepts
    }

    pub fn set_policy_version(&self, version: &str) {
        let _ = version;
    }

    /// Appends one record and returns once it is fsynced; returns its sequence number.
    pub async fn record(&self, event: AuditEvent) -> Result<u64, AuditError> {
        let _ = event;
        Ok(0)
    }
}

/// Hex SHA-256 of a header section, so a record proves which header went in and out.
pub fn header_digest(header: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(header))
}
