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
        if !helo_name_ok(&host) {
            return Reply::new(
                501,
                (5, 5, 4),
                "Invalid EHLO argument: give a domain name or an address literal",
            );
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

/// A domain (RFC 5321 4.1.2, with the underscores and UTF-8 labels real clients send) or an
/// address literal. Controls (NUL, ESC, ...) never pass: the name goes into logs and the
/// Received field.
fn helo_name_ok(host: &str) -> bool {
    if let Some(literal) = host.strip_prefix('[') {
        return literal.strip_suffix(']').is_some_and(|inner| {
            !inner.is_empty()
                && inner
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-'))
        });
    }
    // One trailing dot (the root) is allowed.
    let host = host.strip_suffix('.').unwrap_or(host);
    host.split('.').all(|label| {
        !label.is_empty()
            && label
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_'))
    })
}

pub(super) fn help() -> Reply {
    Reply::new(
        214,
        (2, 0, 0),
        "bccguard relays mail and keeps recipient lists private.\nCommands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY\nSee RFC 5321",
    )
}

#[cfg(test)]
mod tests {
    use super::helo_name_ok;

    #[test]
    fn helo_names_are_domains_or_address_literals() {
        for ok in [
            "a.example",
            "localhost",
            "WIN_PC-1",
            "[192.0.2.1]",
            "[IPv6:2001:db8::1]",
            "x.example.",
        ] {
            assert!(helo_name_ok(ok), "{ok}");
        }
        for bad in [
            "a\0b", "a b", "<x>", "u@x.org", "[]", "[1.2.3.4", "a..b", ".", "a..", "a\u{1b}b",
        ] {
            assert!(!helo_name_ok(bad), "{bad:?}");
        }
    }
}
