//! Policy: decides what happens to a message from what it shows its readers.
//! Owns the visible-recipient finder ([`visible`], [`address`]), internal/external counting and
//! the admin's rules ([`rules`]); returns a [`Decision`] and never touches the message bytes.
//! INTERFACE STUB — the policy helper implements `Policy`.

pub mod address;
pub mod rules;
pub mod visible;

pub use crate::config::{Action, Mode};
use crate::config::PolicyConfig;
pub use visible::{Unreadable, Visible};

/// The effective policy, compiled from config once per (re)load.
#[derive(Debug, Clone)]
pub struct Policy {
    cfg: PolicyConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What the rule says (even in monitor mode).
    pub action: Action,
    pub mode: Mode,
    pub rule: Option<String>,
    /// One sentence a person understands.
    pub reason: String,
    pub visible: Vec<String>,
    pub visible_external: usize,
    pub external_domains: usize,
    pub bcc_header_stripped: bool,
    /// Text for the 550 reply when the action is reject.
    pub reject_text: Option<String>,
}

impl Decision {
    /// What is actually done: monitor mode always delivers unchanged.
    pub fn effective_action(&self) -> Action {
        if self.mode == Mode::Monitor {
            Action::Accept
        } else {
            self.action
        }
    }
}

impl Policy {
    pub fn new(cfg: &PolicyConfig) -> anyhow::Result<Policy> {
        Ok(Policy { cfg: cfg.clone() })
    }

    /// Hash of the effective policy (hex SHA-256), recorded in every audit record.
    pub fn version(&self) -> String {
        String::new()
    }

    pub fn mode(&self) -> Mode {
        self.cfg.mode
    }

    /// The effective policy in words (for `config check` and the start-up log).
    pub fn describe(&self) -> String {
        String::new()
    }

    pub fn decide(&self, sender: &str, envelope_rcpts: &[String], raw: &[u8]) -> Result<Decision, Unreadable> {
        let _ = (sender, envelope_rcpts);
        let v = visible::find_visible(raw)?;
        Ok(Decision {
            action: Action::Accept,
            mode: self.cfg.mode,
            rule: None,
            reason: String::new(),
            visible: v.addresses,
            visible_external: 0,
            external_domains: 0,
            bcc_header_stripped: v.bcc_present,
            reject_text: None,
        })
    }
}
