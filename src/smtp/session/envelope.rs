//! MAIL and RCPT: the envelope, forwarded to the upstream command by command so each verdict
//! (the upstream's or our relay check's) reaches the client as it is given.

use smtp_proto::{MailFrom, MAIL_BODY_8BITMIME, MAIL_SMTPUTF8};

use super::{Io, Phase, Session, Transaction};
use crate::config::AuthRequirement;
use crate::message::{Envelope, MailParams};
use crate::metrics::RejectReason;
use crate::reply::Reply;

impl<S: Io> Session<S> {
    pub(super) async fn mail(&mut self, from: MailFrom<String>, line: &[u8]) -> Reply {
        match self.phase {
            Phase::Greeted => return Reply::new(503, (5, 5, 1), "Send EHLO/HELO first"),
            Phase::Mail(_) => return Reply::new(503, (5, 5, 1), "Nested MAIL command"),
            Phase::Ready => {}
        }
        if self.listener.cfg.auth == AuthRequirement::Required && self.auth_user.is_none() {
            self.metrics().rejected(RejectReason::AuthRequired);
            return Reply::new(530, (5, 7, 0), "Authentication required");
        }
        let max = self.shared.cfg.server.max_message_size;
        // smtp-proto saturates a huge SIZE into a small number: read the digits ourselves.
        if from.size > max || declared_size(line).is_some_and(|size| size > max as u128) {
            self.metrics().rejected(RejectReason::Size);
            return Reply::new(
                552,
                (5, 3, 4),
                format!("Message size exceeds the limit of {max} bytes"),
            );
        }
        let sender = match path(&from.address) {
            Ok(p) => p,
            Err(why) => return Reply::new(501, (5, 1, 7), format!("Bad sender address: {why}")),
        };
        if let Some(login) = self.auth_user.as_deref() {
            if self.shared.cfg.auth.enforce_sender_login && !self.login_owns(login, &sender) {
                tracing::info!(client = %self.peer.ip(), user = %login, "sender address not owned by this login");
                return Reply::new(
                    553,
                    (5, 7, 1),
                    format!("Sender address rejected: not owned by user {login}; ask IT to allow it for your login"),
                );
            }
        }
        let params = MailParams {
            eight_bit_mime: from.flags & MAIL_BODY_8BITMIME != 0,
            smtputf8: from.flags & MAIL_SMTPUTF8 != 0,
            size: from.size,
        };
        let permitted = self.relay_permitted();
        let mut tx = Transaction {
            envelope: Envelope {
                sender,
                recipients: Vec::new(),
                params,
            },
            upstream_params: String::new(),
            permitted,
            chunks: None,
        };
        if !permitted {
            // Refused at RCPT (where RFC 5321 puts relay decisions); no upstream is opened for it.
            self.phase = Phase::Mail(Box::new(tx));
            return Reply::new(250, (2, 1, 0), "Sender OK");
        }
        let upstream = &self.shared.stages.upstream;
        match upstream
            .begin(&mut self.upstream, &tx.envelope.sender, &params)
            .await
        {
            Ok(begun) => {
                if begun.reply.is_positive() {
                    tx.upstream_params = begun.params;
                    self.phase = Phase::Mail(Box::new(tx));
                }
                begun.reply
            }
            Err(e) => {
                tracing::warn!("{e}");
                self.metrics().rejected(RejectReason::UpstreamTemp);
                e.reply()
            }
        }
    }

    pub(super) async fn rcpt(&mut self, address: String) -> Reply {
        let Phase::Mail(tx) = &self.phase else {
            return Reply::new(503, (5, 5, 1), "Need MAIL before RCPT");
        };
        if !tx.permitted {
            self.metrics().rejected(RejectReason::RelayDenied);
            tracing::info!(client = %self.peer.ip(), "relay attempt refused");
            return Reply::new(
                554,
                (5, 7, 1),
                "Relay access denied: authenticate first (AUTH) or connect from a permitted network",
            );
        }
        let max = self.shared.cfg.server.max_recipients;
        if tx.envelope.recipients.len() >= max {
            self.metrics().rejected(RejectReason::TooManyRecipients);
            return Reply::new(
                452,
                (4, 5, 3),
                format!("Too many recipients (limit {max}); send the rest in another transaction"),
            );
        }
        let rcpt = match path(&address) {
            Ok(p) if !p.is_empty() => p,
            Ok(_) => return Reply::new(501, (5, 1, 3), "Bad recipient address: empty"),
            Err(why) => return Reply::new(501, (5, 1, 3), format!("Bad recipient address: {why}")),
        };
        let Some(up) = self.upstream.as_mut() else {
            self.phase = Phase::Ready;
            return Reply::new(
                451,
                (4, 4, 1),
                "Upstream connection lost; transaction aborted",
            );
        };
        match up.rcpt_to(&rcpt).await {
            Ok(reply) => {
                if reply.is_positive() {
                    if let Phase::Mail(tx) = &mut self.phase {
                        tx.envelope.recipients.push(rcpt);
                    }
                }
                reply
            }
            Err(e) => {
                tracing::warn!("{e}");
                self.upstream = None;
                self.phase = Phase::Ready;
                let mut reply = e.reply();
                reply.text.push_str(" (transaction aborted)");
                reply
            }
        }
    }
}

impl<S: Io> Session<S> {
    /// May this login send as `sender` (Postfix `smtpd_sender_login_maps`)? The null sender is
    /// always allowed (bounces); otherwise the login itself when it is an address, what
    /// `[auth] senders` lists for it, and for a bare login name `login@` each internal domain.
    fn login_owns(&self, login: &str, sender: &str) -> bool {
        if sender.is_empty() {
            return true;
        }
        let sender = sender.to_lowercase();
        let Some((local, sender_domain)) = sender.rsplit_once('@') else {
            return false;
        };
        let login_lower = login.to_lowercase();
        if login.contains('@') {
            if sender == login_lower {
                return true;
            }
        } else if local == login_lower
            && self
                .shared
                .live()
                .policy
                .internal_domains()
                .is_internal(&sender)
        {
            return true;
        }
        let allowed = self.shared.cfg.auth.senders.get(login);
        allowed.is_some_and(|list| {
            list.iter().any(|pattern| {
                let pattern = pattern.to_lowercase();
                match pattern
                    .strip_prefix("*@")
                    .or_else(|| pattern.strip_prefix('@'))
                {
                    Some(domain) => sender_domain == domain,
                    None => sender == pattern,
                }
            })
        })
    }
}

/// The SIZE parameter's value as written (`None` when absent), however many digits it has.
fn declared_size(line: &[u8]) -> Option<u128> {
    let params = &line[line.iter().rposition(|&b| b == b'>')? + 1..];
    let text = std::str::from_utf8(params).ok()?;
    let value = text.split_ascii_whitespace().find_map(|p| {
        p.get(..5)
            .filter(|k| k.eq_ignore_ascii_case("size="))
            .map(|_| &p[5..])
    })?;
    // Too many digits for u128 is certainly too big.
    Some(value.parse::<u128>().unwrap_or(u128::MAX))
}

/// The `Postmaster` of `RCPT TO:<Postmaster>` (any case, as written): RFC 5321 4.5.1 says every
/// SMTP server must take this one address without a domain; it is forwarded so to the upstream.
pub(super) fn bare_postmaster(line: &[u8]) -> Option<String> {
    let open = memchr::memchr(b'<', line)?;
    let close = open + 1 + memchr::memchr(b'>', &line[open + 1..])?;
    let inside = &line[open + 1..close];
    inside
        .eq_ignore_ascii_case(b"postmaster")
        .then(|| String::from_utf8_lossy(inside).into_owned())
}

/// An envelope address in its RFC 5321 form, as the client meant it: smtp-proto hands us the
/// local part unquoted, so a local part that is not a dot-string is quoted again. Forwarded
/// unquoted, `"a@evil> NOTIFY=..."@example.org` would become parameters at the upstream.
/// Control characters (NUL, CR, LF, ...) are refused outright.
pub(crate) fn path(address: &str) -> Result<String, &'static str> {
    if address.chars().any(char::is_control) {
        return Err("control characters are not allowed");
    }
    if address.is_empty() {
        return Ok(String::new());
    }
    let Some((local, domain)) = address.rsplit_once('@') else {
        // RFC 5321 4.5.1: the one address that needs no domain.
        if address.eq_ignore_ascii_case("postmaster") {
            return Ok(address.to_string());
        }
        return Err("no domain");
    };
    if domain.is_empty() || local.is_empty() {
        return Err("empty local part or domain");
    }
    let domain_ok = domain
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    if !domain_ok {
        return Err("invalid domain");
    }
    if is_dot_string(local) {
        return Ok(address.to_string());
    }
    let mut quoted = String::with_capacity(local.len() + domain.len() + 4);
    quoted.push('"');
    for c in local.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push_str("\"@");
    quoted.push_str(domain);
    Ok(quoted)
}

/// RFC 5321 Dot-string (with RFC 6531 UTF-8 atext).
fn is_dot_string(local: &str) -> bool {
    local.split('.').all(|atom| {
        !atom.is_empty()
            && atom.chars().all(|c| {
                c.is_ascii_alphanumeric() || !c.is_ascii() || "!#$%&'*+-/=?^_`{|}~".contains(c)
            })
    })
}

#[cfg(test)]
mod tests {
    use super::path;

    #[test]
    fn a_huge_size_is_read_as_huge() {
        use super::declared_size;
        assert_eq!(
            declared_size(b"MAIL FROM:<a@b> SIZE=99999999999999999999999\r\n"),
            Some(99_999_999_999_999_999_999_999)
        );
        let huge = format!("MAIL FROM:<a@b> SIZE={}\r\n", "9".repeat(60));
        assert_eq!(declared_size(huge.as_bytes()), Some(u128::MAX));
        assert_eq!(
            declared_size(b"MAIL FROM:<a@b> BODY=8BITMIME size=1000\r\n"),
            Some(1000)
        );
        assert_eq!(declared_size(b"MAIL FROM:<a@b>\r\n"), None);
    }

    #[test]
    fn quoted_local_parts_stay_quoted_so_nothing_becomes_a_parameter() {
        assert_eq!(path("a.b@example.org").as_deref(), Ok("a.b@example.org"));
        assert_eq!(
            path("john doe@example.net").as_deref(),
            Ok("\"john doe\"@example.net")
        );
        assert_eq!(
            path("a@evil.example> ENVID=x@example.org").as_deref(),
            Ok("\"a@evil.example> ENVID=x\"@example.org")
        );
        assert_eq!(
            path("a\"b\\c@x.org").as_deref(),
            Ok("\"a\\\"b\\\\c\"@x.org")
        );
        assert_eq!(path("").as_deref(), Ok(""));
        assert!(path("a\0b@x.org").is_err());
        assert!(path("a\r\nRCPT TO:<b@x.org").is_err());
        assert!(path("a@x y.org").is_err());
    }
}
