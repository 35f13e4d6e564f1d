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

    /// `line` is the whole command: smtp-proto keeps only the first word of the argument, and
    /// `EHLO two words` is as wrong as `EHLO a<NUL>b`.
    pub(super) async fn ehlo(&mut self, line: &[u8], esmtp: bool) -> Reply {
        let argument = line
            .get(4..line.len().saturating_sub(2))
            .unwrap_or_default();
        let host = String::from_utf8_lossy(argument)
            .trim_matches(' ')
            .to_string();
        if !valid_helo(&host) {
            return Reply::new(
                501,
                (5, 5, 4),
                "Syntax: EHLO hostname (a domain name or an address literal such as [192.0.2.1])",
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

pub(super) fn help() -> Reply {
    Reply::new(
        214,
        (2, 0, 0),
        "bccguard relays mail and keeps recipient lists private.\nCommands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY\nSee RFC 5321",
    )
}

/// RFC 5321 4.1.1.1: EHLO takes a domain or an address literal. Underscores are tolerated
/// (Windows host names carry them); anything else, NUL and controls above all, is refused.
fn valid_helo(host: &str) -> bool {
    if let Some(literal) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let v6 = literal
            .strip_prefix("IPv6:")
            .or_else(|| literal.strip_prefix("ipv6:"));
        return match v6 {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => literal.parse::<std::net::Ipv4Addr>().is_ok(),
        };
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 255
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::valid_helo;

    #[test]
    fn helo_is_a_domain_or_an_address_literal() {
        for ok in [
            "mail.example.org",
            "localhost",
            "host_1.corp",
            "[192.0.2.1]",
            "[IPv6:2001:db8::1]",
            "bücher.example",
            "x.example.",
        ] {
            assert!(valid_helo(ok), "{ok}");
        }
        for bad in [
            "",
            "a\0b",
            "a b",
            "a..b",
            "[192.0.2.300]",
            "[2001:db8::1]",
            "x\r\ny",
            "<a@b>",
            "a/b",
        ] {
            assert!(!valid_helo(bad), "{bad:?}");
        }
    }
}
