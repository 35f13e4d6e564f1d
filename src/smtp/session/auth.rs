//! AUTH PLAIN and LOGIN (RFC 4954, 4616), only where passwords are protected (TLS, or a
//! loopback listener that explicitly allows cleartext).

use base64::Engine;
use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN};

use super::{End, Flow, Io, Line, Phase, Session};
use crate::config::AuthRequirement;
use crate::metrics::RejectReason;
use crate::reply::Reply;
use crate::smtp::auth::{blocked_reply, escape, AuthVerdict};

const MAX_AUTH_FAILURES: u32 = 3;

impl<S: Io> Session<S> {
    pub(super) async fn auth(&mut self, mechanism: u64, initial: String) -> Result<Flow, End> {
        if let Some(refusal) = self.auth_refusal() {
            return Ok(refusal.into());
        }
        let credentials = if mechanism == AUTH_PLAIN {
            let response = if initial.is_empty() {
                match self.challenge("").await? {
                    Ok(r) => r,
                    Err(reply) => return Ok(reply.into()),
                }
            } else if initial == "=" {
                Vec::new()
            } else {
                match decode_b64(&initial) {
                    Some(r) => r,
                    None => return Ok(bad_base64().into()),
                }
            };
            parse_plain(&response)
        } else if mechanism == AUTH_LOGIN {
            let user = if initial.is_empty() {
                match self.challenge("VXNlcm5hbWU6").await? {
                    Ok(u) => u,
                    Err(reply) => return Ok(reply.into()),
                }
            } else {
                match decode_b64(&initial) {
                    Some(u) => u,
                    None => return Ok(bad_base64().into()),
                }
            };
            let password = match self.challenge("UGFzc3dvcmQ6").await? {
                Ok(p) => p,
                Err(reply) => return Ok(reply.into()),
            };
            match (String::from_utf8(user), String::from_utf8(password)) {
                (Ok(u), Ok(p)) => Some((u, p)),
                _ => None,
            }
        } else {
            return Ok(Reply::new(
                504,
                (5, 5, 4),
                "Unrecognized authentication mechanism; use PLAIN or LOGIN",
            )
            .into());
        };
        let Some((user, password)) = credentials else {
            return Ok(Reply::new(501, (5, 5, 2), "Malformed credentials").into());
        };
        // Limits, the verified-login cache and the failure log line live in AuthService::verify.
        let verdict = match self.shared.live().users.clone() {
            Some(users) => {
                users
                    .verify(self.peer.ip(), &user, &password, self.metrics())
                    .await
            }
            None => AuthVerdict::Failed,
        };
        let reply = match verdict {
            AuthVerdict::Ok => {
                tracing::info!(user = %escape(&user), "authenticated");
                self.auth_user = Some(user);
                return Ok(Reply::new(235, (2, 7, 0), "Authentication successful").into());
            }
            AuthVerdict::Blocked => blocked_reply(),
            AuthVerdict::Failed => {
                self.metrics().rejected(RejectReason::AuthFailed);
                Reply::new(535, (5, 7, 8), "Authentication credentials invalid")
            }
        };
        self.auth_failures += 1;
        if self.auth_failures >= MAX_AUTH_FAILURES {
            return Ok(Flow::Close(reply, End::TooManyErrors));
        }
        Ok(reply.into())
    }

    /// Why AUTH cannot start now, if it cannot.
    fn auth_refusal(&self) -> Option<Reply> {
        if self.listener.cfg.auth == AuthRequirement::None || self.shared.live().users.is_none() {
            return Some(Reply::new(
                502,
                (5, 5, 1),
                "AUTH not available on this port",
            ));
        }
        if !self.auth_offered() {
            return Some(Reply::new(
                538,
                (5, 7, 11),
                "Encryption required for requested authentication mechanism: use STARTTLS first",
            ));
        }
        if self.helo.is_none() || !self.esmtp {
            return Some(Reply::new(503, (5, 5, 1), "Send EHLO first"));
        }
        if self.auth_user.is_some() {
            return Some(Reply::new(503, (5, 5, 1), "Already authenticated"));
        }
        if matches!(self.phase, Phase::Mail(_)) {
            return Some(Reply::new(
                503,
                (5, 5, 1),
                "AUTH not allowed during a mail transaction",
            ));
        }
        None
    }

    /// Sends a 334 challenge and reads the base64 answer; `Err(reply)` when the client
    /// cancelled or answered nonsense.
    async fn challenge(&mut self, prompt: &str) -> Result<Result<Vec<u8>, Reply>, End> {
        self.conn.queue(&Reply::bare(334, prompt));
        let line = match self.conn.read_line(self.command_timeout()).await? {
            Line::Command(line) => line,
            Line::Invalid(reply) => return Ok(Err(reply)),
        };
        let text = String::from_utf8_lossy(&line[..line.len() - 2])
            .trim()
            .to_string();
        if text == "*" {
            return Ok(Err(Reply::new(501, (5, 0, 0), "Authentication cancelled")));
        }
        Ok(decode_b64(&text).ok_or_else(bad_base64))
    }
}

fn decode_b64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
}

fn bad_base64() -> Reply {
    Reply::new(501, (5, 5, 2), "Invalid base64 data")
}

/// RFC 4616: `[authzid] NUL authcid NUL passwd`. An authzid other than the user is refused.
fn parse_plain(response: &[u8]) -> Option<(String, String)> {
    let mut parts = response.split(|&b| b == 0);
    let authzid = parts.next()?;
    let user = std::str::from_utf8(parts.next()?).ok()?;
    let password = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() || user.is_empty() {
        return None;
    }
    if !authzid.is_empty() && authzid != user.as_bytes() {
        return None;
    }
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_credentials_follow_rfc_4616() {
        assert_eq!(
            parse_plain(b"\0alice\0pw"),
            Some(("alice".into(), "pw".into()))
        );
        assert_eq!(
            parse_plain(b"alice\0alice\0pw"),
            Some(("alice".into(), "pw".into()))
        );
        assert_eq!(
            parse_plain(b"bob\0alice\0pw"),
            None,
            "acting as another user is refused"
        );
        assert_eq!(parse_plain(b"\0alice"), None);
        assert_eq!(parse_plain(b"\0\0pw"), None);
    }
}
