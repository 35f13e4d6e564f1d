//! One client connection: the RFC 5321 command loop. Each verb has its own file —
//! [`hello`] (EHLO/HELO and the small talk: NOOP, HELP, VRFY, QUIT...), [`starttls`], [`auth`],
//! [`envelope`] (MAIL, RCPT, RSET) and [`content`] (DATA, BDAT) — and returns the reply; this
//! loop queues, counts and logs every reply in one place and enforces the error limit.
//! Envelope commands are forwarded to the upstream one at a time so each verdict reaches the
//! client when it is given; a finished message goes to [`crate::deliver`].

mod auth;
mod content;
mod envelope;
mod hello;
mod starttls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use smtp_proto::Request;
use tokio::sync::watch;

use super::conn::{Conn, End, Io, Line, Stream};
use super::data::ChunkChecker;
use super::state::{Listener, Shared};
use crate::config::AuthRequirement;
use crate::message::{Client, Envelope};
use crate::metrics::{InFlight, RejectReason};
use crate::relay::UpstreamSession;
use crate::reply::Reply;

/// Where the session is in the RFC 5321 dialogue.
enum Phase {
    /// Connected; no HELO/EHLO yet.
    Greeted,
    /// HELO/EHLO done; no transaction.
    Ready,
    /// MAIL accepted: collecting recipients (and BDAT chunks) until the message is complete.
    Mail(Box<Transaction>),
}

/// The transaction in progress.
struct Transaction {
    envelope: Envelope,
    /// MAIL parameters as forwarded upstream (e.g. ` BODY=8BITMIME SMTPUTF8`), reused by split copies.
    upstream_params: String,
    /// May this client relay? If not, every RCPT is refused.
    permitted: bool,
    /// BDAT chunks received so far.
    chunks: Option<(ChunkChecker, Vec<u8>, InFlight)>,
}

/// What a verb handler asks the loop to do after queueing its reply.
enum Flow {
    Continue(Reply),
    Close(Reply, End),
    /// Nothing to answer (after a TLS handshake the client speaks first).
    Silent,
}

impl From<Reply> for Flow {
    fn from(r: Reply) -> Flow {
        Flow::Continue(r)
    }
}

pub struct Session<S> {
    shared: Arc<Shared>,
    listener: Arc<Listener>,
    id: String,
    peer: SocketAddr,
    conn: Conn<S>,
    phase: Phase,
    helo: Option<String>,
    esmtp: bool,
    auth_user: Option<String>,
    auth_failures: u32,
    /// Error replies (4xx/5xx) given in this session: past the limit the client is dropped.
    errors: u32,
    upstream: Option<UpstreamSession>,
    /// Messages completed in this session (names the Received id).
    messages: u64,
}

impl<S: Io> Session<S> {
    pub fn new(
        shared: Arc<Shared>,
        listener: Arc<Listener>,
        id: String,
        peer: SocketAddr,
        stream: Stream<S>,
        shutdown: watch::Receiver<bool>,
    ) -> Session<S> {
        let write_timeout = Duration::from_secs(shared.cfg.server.command_timeout_seconds);
        Session {
            shared,
            listener,
            id,
            peer,
            conn: Conn::new(stream, shutdown, write_timeout),
            phase: Phase::Greeted,
            helo: None,
            esmtp: false,
            auth_user: None,
            auth_failures: 0,
            errors: 0,
            upstream: None,
            messages: 0,
        }
    }

    /// RFC 3848 protocol name for the Received header.
    fn protocol_name(&self) -> &'static str {
        match (self.esmtp, self.conn.is_tls(), self.auth_user.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        }
    }

    /// The client as the delivery stages see it.
    fn client(&self) -> Client {
        Client {
            session_id: self.id.clone(),
            peer: self.peer,
            helo: self.helo.clone(),
            auth_user: self.auth_user.clone(),
            protocol: self.protocol_name(),
            message_seq: self.messages,
        }
    }

    fn command_timeout(&self) -> Duration {
        Duration::from_secs(self.shared.cfg.server.command_timeout_seconds)
    }

    fn metrics(&self) -> &crate::metrics::Observe {
        &self.shared.stages.metrics
    }

    /// May this client relay through us?
    fn relay_permitted(&self) -> bool {
        self.auth_user.is_some()
            || (self.listener.cfg.auth != AuthRequirement::Required
                && self.shared.in_relay_networks(self.peer.ip()))
    }

    pub async fn run(mut self) -> End {
        let greeting = Reply::bare(
            220,
            format!("{} ESMTP bccguard ready", self.shared.cfg.server.hostname),
        );
        self.conn.queue(&greeting);
        let end = self.command_loop().await;
        let farewell = match &end {
            End::Shutdown => Some((
                RejectReason::Shutdown,
                Reply::new(
                    421,
                    (4, 3, 2),
                    "Service shutting down, please try again later",
                ),
            )),
            End::Timeout => Some((
                RejectReason::Timeout,
                Reply::new(
                    421,
                    (4, 4, 2),
                    "Timeout waiting for your command, closing connection",
                ),
            )),
            End::TooManyErrors => Some((
                RejectReason::Protocol,
                Reply::new(421, (4, 7, 0), "Too many errors, closing connection"),
            )),
            _ => None,
        };
        if let Some((reason, reply)) = farewell {
            self.metrics().rejected(reason);
            self.conn.queue(&reply);
        }
        self.conn.close().await;
        if let Some(up) = self.upstream.take() {
            if matches!(self.phase, Phase::Mail(_)) || matches!(end, End::Io(_)) {
                up.quit().await;
            } else {
                self.shared.stages.upstream.checkin(up);
            }
        }
        end
    }

    async fn command_loop(&mut self) -> End {
        let limit = self.shared.cfg.server.hard_error_limit;
        loop {
            let flow = match self.conn.read_line(self.command_timeout()).await {
                // Never guessed at: a lossy decode would turn bytes into U+FFFD in an address.
                Ok(Line::Command(line)) if std::str::from_utf8(&line).is_err() => {
                    Flow::Continue(Reply::new(500, (5, 5, 2), "Error: bad UTF-8 syntax"))
                }
                Ok(Line::Command(line)) => {
                    match Request::parse(&mut line.iter()).map(Request::into_owned) {
                        Ok(request) => match self.handle(request, &line).await {
                            Ok(flow) => flow,
                            Err(end) => return end,
                        },
                        Err(e) => Flow::Continue(syntax_reply(&line, e)),
                    }
                }
                Ok(Line::Invalid(reply)) => Flow::Continue(reply),
                Err(end) => return end,
            };
            let (reply, end) = match flow {
                Flow::Continue(reply) => (reply, None),
                Flow::Close(reply, end) => (reply, Some(end)),
                Flow::Silent => continue,
            };
            self.conn.queue(&reply);
            tracing::debug!(reply = %reply, "replied");
            if reply.code >= 400 {
                if matches!(reply.code, 500..=504 | 555) {
                    self.metrics().rejected(RejectReason::Protocol);
                }
                self.errors += 1;
                if end.is_none() && limit > 0 && self.errors >= limit {
                    tracing::info!(client = %self.peer.ip(), errors = self.errors, "error limit reached, disconnecting");
                    return End::TooManyErrors;
                }
            }
            if let Some(end) = end {
                return end;
            }
        }
    }

    async fn handle(&mut self, request: Request<String>, line: &[u8]) -> Result<Flow, End> {
        Ok(match request {
            Request::Ehlo { .. } => self.ehlo(line, true).await.into(),
            Request::Helo { .. } => self.ehlo(line, false).await.into(),
            Request::Lhlo { .. } => {
                Reply::new(500, (5, 5, 1), "LHLO is for LMTP; this is SMTP").into()
            }
            Request::StartTls => return self.starttls().await,
            Request::Auth {
                mechanism,
                initial_response,
            } => return self.auth(mechanism, initial_response).await,
            Request::Mail { from } => self.mail(from, line).await.into(),
            Request::Rcpt { to } => {
                // smtp-proto reads `<Postmaster>` as an empty address, like `<>`.
                let address = match envelope::bare_postmaster(line) {
                    Some(p) if to.address.is_empty() => p,
                    _ => to.address,
                };
                self.rcpt(address).await.into()
            }
            Request::Data => return self.data().await,
            Request::Bdat {
                chunk_size,
                is_last,
            } => return self.bdat(chunk_size, is_last).await,
            Request::Rset => {
                self.abort_transaction().await;
                Reply::new(250, (2, 0, 0), "Reset OK").into()
            }
            Request::Noop { .. } => Reply::new(250, (2, 0, 0), "OK").into(),
            Request::Quit => Flow::Close(Reply::new(221, (2, 0, 0), "Bye"), End::Quit),
            Request::Help { .. } => hello::help().into(),
            Request::Vrfy { .. } => Reply::new(
                252,
                (2, 5, 2),
                "Cannot VRFY user, but will accept message and attempt delivery",
            )
            .into(),
            Request::Expn { .. } => Reply::new(502, (5, 5, 1), "EXPN is not available").into(),
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                Reply::new(502, (5, 5, 1), "Command not implemented").into()
            }
        })
    }

    /// Drops the transaction in progress here and at the upstream.
    async fn abort_transaction(&mut self) {
        if !matches!(self.phase, Phase::Mail(_)) {
            return;
        }
        self.phase = Phase::Ready;
        if let Some(up) = self.upstream.as_mut() {
            match up.rset().await {
                Ok(r) if r.is_positive() => {}
                _ => self.upstream = None,
            }
        }
    }
}

/// The reply for a line smtp-proto could not parse.
fn syntax_reply(line: &[u8], e: smtp_proto::Error) -> Reply {
    use smtp_proto::Error;
    match e {
        Error::UnknownCommand => {
            let verb: String = String::from_utf8_lossy(line)
                .split_whitespace()
                .next()
                .unwrap_or("")
                .chars()
                .take(16)
                .collect();
            Reply::new(500, (5, 5, 1), format!("Command unrecognized: {verb}"))
        }
        Error::InvalidSenderAddress => Reply::new(501, (5, 1, 7), "Bad sender address syntax"),
        Error::InvalidRecipientAddress => {
            Reply::new(501, (5, 1, 3), "Bad recipient address syntax")
        }
        Error::SyntaxError { syntax } => Reply::new(501, (5, 5, 4), format!("Syntax: {syntax}")),
        Error::InvalidParameter { param } => {
            Reply::new(501, (5, 5, 4), format!("Invalid parameter {param}"))
        }
        Error::UnsupportedParameter { param } => Reply::new(
            555,
            (5, 5, 4),
            format!(
                "Unsupported parameter {}",
                param.chars().take(32).collect::<String>()
            ),
        ),
        Error::NeedsMoreData { .. } | Error::ResponseTooLong | Error::InvalidResponse { .. } => {
            Reply::new(500, (5, 5, 2), "Syntax error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_get_specific_codes() {
        let line = b"FOO bar\r\n";
        let e = Request::parse(&mut line.iter())
            .err()
            .map(|e| syntax_reply(line, e));
        assert_eq!(e.map(|r| r.code), Some(500));
        let line = b"MAIL FROM:<a@b> FOO=bar\r\n";
        let e = Request::parse(&mut line.iter())
            .err()
            .map(|e| syntax_reply(line, e));
        assert_eq!(e.map(|r| r.code), Some(555));
    }
}
