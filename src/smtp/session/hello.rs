//! EHLO / HELO: who the client says it is, and what we offer it; plus HELP.

use super::{Io, Phase, Session};
use crate::config::{AuthRequirement, TlsMode};
use crate::reply::Reply;

impl<S: Io> Session<S> {
    pub(super) fn auth_offered(&self) -> bool {
        self.listener.cfg.auth != AuthRequirement::None
            && self.shared.live().users.is_some()
            && (self.conn.is_tls() || self.listener.cleartext_auth_allowed())
    }

    pub(super) fn starttls_offered(&self) -> bool {
        self.listener.cfg.tls == TlsMode::Starttls && !self.conn.is_tls()
    }

    pub(super) async fn ehlo(&mut self, host: String, esmtp: bool) -> Reply {
        if host.trim().is_empty() {
            return Reply::new(501, (5, 5, 4), "Syntax: EHLO hostname");
        }
        self.abort_transaction().await;
        self.phase = Phase::Ready;
        self.helo = Some(host.clone());
        self.esmtp = esmtp;
        let hostname = &self.shared.cfg.server.hostname;
        if !esmtp {
            return Reply::bare(250, format!("{hostname} Hello {host}"));
        }
        let mut lines = vec![
            format!("{hostname} Hello {host} [{}]", self.peer.ip()),
            "PIPELINING".to_string(),
            format!("SIZE {}", self.shared.cfg.server.max_message_size),
            "8BITMIME".to_string(),
            "SMTPUTF8".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "CHUNKING".to_string(),
        ];
        if self.starttls_offered() {
            lines.push("STARTTLS".to_string());
        }
        if self.auth_offered() && self.auth_user.is_none() {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        lines.push("HELP".to_string());
        Reply::bare(250, lines.join("\n"))
    }
}

pub(super) fn help() -> Reply {
    Reply::new(
        214,
        (2, 0, 0),
        "bccguard relays mail and keeps recipient lists private.\nCommands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY\nSee RFC 5321",
    )
}
