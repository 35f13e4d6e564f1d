//! One client connection: the RFC 5321 command state machine (EHLO, STARTTLS, AUTH, MAIL, RCPT,
//! DATA/BDAT, ...), its limits and timeouts. Envelope commands are forwarded to the upstream one
//! at a time so each verdict reaches the client when it is given; the finished message goes to
//! [`super::delivery`], which decides the final reply.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use smtp_proto::{Request, AUTH_LOGIN, AUTH_PLAIN, MAIL_BODY_8BITMIME, MAIL_SMTPUTF8};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::data::{ChunkChecker, DataError, DataReader, Feed};
use super::observe::InFlight;
use super::server::{Listener, Shared};
use super::stream::Conn;
use crate::config::AuthRequirement;
use crate::metrics::RejectReason;
use crate::relay::UpstreamSession;
use crate::reply::Reply;

/// Longest command line we accept (RFC 5321 allows 512; extensions make real ones longer).
const MAX_COMMAND_LINE: usize = 4096;
/// Bad commands tolerated before the connection is dropped (stops protocol-confused peers and scanners).
const MAX_BAD_COMMANDS: u32 = 20;
const MAX_AUTH_FAILURES: u32 = 3;
/// Read sizes: small between commands so idle connections cost little memory, large for content.
const COMMAND_READ: usize = 4 * 1024;
const CONTENT_READ: usize = 64 * 1024;

/// The envelope of the transaction in progress.
#[derive(Debug, Clone, Default)]
pub struct Transaction {
    pub from: String,
    pub rcpts: Vec<String>,
    /// MAIL parameters as forwarded upstream (e.g. ` BODY=8BITMIME SMTPUTF8`), reused by split copies.
    pub upstream_params: String,
    /// May this client relay? If not, every RCPT is refused.
    pub permitted: bool,
    pub declared_size: usize,
}

/// Why a session ends.
#[derive(Debug)]
pub enum End {
    Quit,
    Closed,
    Timeout,
    Shutdown,
    TooManyErrors,
    Io(std::io::Error),
}

/// What reading one command line produced.
enum Line {
    Command(Vec<u8>),
    /// A line ending in a bare LF, or too long: answered without being parsed.
    Invalid(Reply),
}

pub struct Session {
    pub shared: Arc<Shared>,
    pub listener: Arc<Listener>,
    pub id: String,
    pub peer: SocketAddr,
    conn: Option<Conn>,
    input: Vec<u8>,
    output: Vec<u8>,
    shutdown: watch::Receiver<bool>,
    pub helo: Option<String>,
    esmtp: bool,
    pub auth_user: Option<String>,
    auth_failures: u32,
    bad_commands: u32,
    pub tx: Option<Transaction>,
    /// BDAT chunks received so far for the transaction in progress.
    pending_chunks: Option<(ChunkChecker, Vec<u8>, InFlight)>,
    pub upstream: Option<UpstreamSession>,
    /// Messages completed in this session (names the Received id).
    pub messages: u64,
}

impl Session {
    pub fn new(
        shared: Arc<Shared>,
        listener: Arc<Listener>,
        id: String,
        peer: SocketAddr,
        conn: Conn,
        shutdown: watch::Receiver<bool>,
    ) -> Session {
        Session {
            shared,
            listener,
            id,
            peer,
            conn: Some(conn),
            input: Vec::with_capacity(1024),
            output: Vec::with_capacity(1024),
            shutdown,
            helo: None,
            esmtp: false,
            auth_user: None,
            auth_failures: 0,
            bad_commands: 0,
            tx: None,
            pending_chunks: None,
            upstream: None,
            messages: 0,
        }
    }

    fn is_tls(&self) -> bool {
        self.conn.as_ref().is_some_and(Conn::is_tls)
    }

    /// RFC 3848 protocol name for the Received header.
    pub fn protocol_name(&self) -> &'static str {
        match (self.esmtp, self.is_tls(), self.auth_user.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        }
    }

    fn auth_offered(&self) -> bool {
        self.listener.cfg.auth != AuthRequirement::None
            && self.shared.live().users.is_some()
            && (self.is_tls() || self.listener.cleartext_auth_allowed())
    }

    fn starttls_offered(&self) -> bool {
        self.listener.cfg.tls == crate::config::TlsMode::Starttls && !self.is_tls()
    }

    /// May this client relay through us?
    fn relay_permitted(&self) -> bool {
        self.auth_user.is_some()
            || (self.listener.cfg.auth != AuthRequirement::Required
                && self
                    .shared
                    .relay_networks
                    .iter()
                    .any(|n| n.contains(&self.peer.ip())))
    }

    pub async fn run(mut self) -> End {
        let greeting = Reply::bare(
            220,
            format!("{} ESMTP bccguard ready", self.shared.cfg.server.hostname),
        );
        self.queue(&greeting);
        let end = self.command_loop().await;
        match &end {
            End::Shutdown => {
                self.queue(&Reply::new(
                    421,
                    (4, 3, 2),
                    "Service shutting down, please try again later",
                ));
            }
            End::Timeout => {
                self.queue(&Reply::new(
                    421,
                    (4, 4, 2),
                    "Timeout waiting for your command, closing connection",
                ));
            }
            End::TooManyErrors => {
                self.queue(&Reply::new(
                    421,
                    (4, 7, 0),
                    "Too many errors, closing connection",
                ));
            }
            _ => {}
        }
        let _ = self.flush().await;
        if let Some(up) = self.upstream.take() {
            if self.tx.is_none() && !matches!(end, End::Io(_)) {
                self.shared.upstream.checkin(up);
            } else {
                up.quit().await;
            }
        }
        if let Some(mut conn) = self.conn.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.shutdown()).await;
        }
        end
    }

    fn queue(&mut self, reply: &Reply) {
        self.output.extend_from_slice(&reply.to_wire());
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let out = &self.output;
        let timeout = Duration::from_secs(self.shared.cfg.server.command_timeout_seconds);
        let written = tokio::time::timeout(timeout, async {
            conn.write_all(out).await?;
            conn.flush().await
        })
        .await;
        self.output.clear();
        match written {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "write timed out",
            )),
        }
    }

    /// Reads more bytes into `input`. Replies queued so far are sent first (RFC 2920: a server
    /// may batch replies, but must flush before it waits for the client).
    async fn fill(&mut self, timeout: Duration, idle: bool, chunk: usize) -> Result<(), End> {
        self.flush().await.map_err(End::Io)?;
        let Some(conn) = self.conn.as_mut() else {
            return Err(End::Closed);
        };
        if idle && self.input.capacity() > 2 * COMMAND_READ {
            // Give back a large content buffer while the client sits idle.
            self.input.shrink_to(COMMAND_READ);
        }
        // Reads into spare capacity: no zero-filling of the buffer on every read.
        self.input.reserve(chunk);
        let read = conn.read_buf(&mut self.input);
        let result = if idle {
            let shutdown = self.shutdown.clone();
            tokio::select! {
                r = tokio::time::timeout(timeout, read) => r,
                _ = wait_for_shutdown(shutdown) => return Err(End::Shutdown),
            }
        } else {
            tokio::time::timeout(timeout, read).await
        };
        match result {
            Ok(Ok(0)) => Err(End::Closed),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(End::Io(e)),
            Err(_) => Err(End::Timeout),
        }
    }

    /// The next CRLF-terminated line. A line ending in a bare LF is refused, never guessed at:
    /// servers that accept it disagree with their upstreams about where commands start.
    async fn read_line(&mut self) -> Result<Line, End> {
        let timeout = Duration::from_secs(self.shared.cfg.server.command_timeout_seconds);
        let mut scanned = 0;
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.input[scanned..]) {
                let end = scanned + i + 1;
                let line: Vec<u8> = self.input.drain(..end).collect();
                if line.len() < 2 || line[line.len() - 2] != b'\r' {
                    return Ok(Line::Invalid(Reply::new(
                        500,
                        (5, 5, 2),
                        "Syntax error: command lines must end in CRLF",
                    )));
                }
                if line.len() > MAX_COMMAND_LINE {
                    return Ok(Line::Invalid(Reply::new(
                        500,
                        (5, 5, 2),
                        "Command line too long",
                    )));
                }
                return Ok(Line::Command(line));
            }
            scanned = self.input.len();
            if self.input.len() > MAX_COMMAND_LINE {
                // Keep discarding until the line ends, then answer once.
                self.input.clear();
                loop {
                    self.fill(timeout, false, COMMAND_READ).await?;
                    if let Some(i) = memchr::memchr(b'\n', &self.input) {
                        self.input.drain(..=i);
                        return Ok(Line::Invalid(Reply::new(
                            500,
                            (5, 5, 2),
                            "Command line too long",
                        )));
                    }
                    self.input.clear();
                }
            }
            let idle = self.input.is_empty();
            self.fill(timeout, idle, COMMAND_READ).await?;
        }
    }

    async fn command_loop(&mut self) -> End {
        loop {
            let line = match self.read_line().await {
                Ok(Line::Command(line)) => line,
                Ok(Line::Invalid(reply)) => {
                    self.queue(&reply);
                    if self.count_bad_command() {
                        return End::TooManyErrors;
                    }
                    continue;
                }
                Err(end) => return end,
            };
            let parsed = Request::parse(&mut line.iter()).map(Request::into_owned);
            let outcome = match parsed {
                Ok(request) => self.handle(request).await,
                Err(e) => {
                    self.queue(&syntax_reply(&line, e));
                    if self.count_bad_command() {
                        return End::TooManyErrors;
                    }
                    Ok(())
                }
            };
            if let Err(end) = outcome {
                return end;
            }
        }
    }

    /// Counts a bad command; true when the client has had enough chances.
    fn count_bad_command(&mut self) -> bool {
        self.bad_commands += 1;
        self.bad_commands >= MAX_BAD_COMMANDS
    }

    async fn handle(&mut self, request: Request<String>) -> Result<(), End> {
        match request {
            Request::Ehlo { host } => self.ehlo(host, true).await,
            Request::Helo { host } => self.ehlo(host, false).await,
            Request::Lhlo { .. } => self.queue(&Reply::new(500, (5, 5, 1), "LHLO is for LMTP; this is SMTP")),
            Request::StartTls => return self.starttls().await,
            Request::Auth {
                mechanism,
                initial_response,
            } => return self.auth(mechanism, initial_response).await,
            Request::Mail { from } => self.mail(from).await,
            Request::Rcpt { to } => self.rcpt(to.address).await,
            Request::Data => return self.data().await,
            Request::Bdat {
                chunk_size,
                is_last,
            } => return self.bdat(chunk_size, is_last).await,
            Request::Rset => {
                self.abort_transaction().await;
                self.queue(&Reply::new(250, (2, 0, 0), "Reset OK"));
            }
            Request::Noop { .. } => self.queue(&Reply::new(250, (2, 0, 0), "OK")),
            Request::Quit => {
                self.queue(&Reply::new(221, (2, 0, 0), "Bye"));
                return Err(End::Quit);
            }
            Request::Help { .. } => self.queue(&Reply::new(
                214,
                (2, 0, 0),
                "bccguard relays mail and keeps recipient lists private.\nCommands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY\nSee RFC 5321",
            )),
            Request::Vrfy { .. } => self.queue(&Reply::new(
                252,
                (2, 5, 2),
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Request::Expn { .. } => self.queue(&Reply::new(502, (5, 5, 1), "EXPN is not available")),
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                self.queue(&Reply::new(502, (5, 5, 1), "Command not implemented"))
            }
        }
        Ok(())
    }

    async fn ehlo(&mut self, host: String, esmtp: bool) {
        if host.trim().is_empty() {
            self.queue(&Reply::new(501, (5, 5, 4), "Syntax: EHLO hostname"));
            return;
        }
        self.abort_transaction().await;
        self.helo = Some(host.clone());
        self.esmtp = esmtp;
        if !esmtp {
            self.queue(&Reply::bare(
                250,
                format!("{} Hello {host}", self.shared.cfg.server.hostname),
            ));
            return;
        }
        let mut lines = vec![
            format!(
                "{} Hello {host} [{}]",
                self.shared.cfg.server.hostname,
                self.peer.ip()
            ),
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
        self.queue(&Reply::bare(250, lines.join("\n")));
    }

    async fn starttls(&mut self) -> Result<(), End> {
        if !self.starttls_offered() {
            let text = if self.is_tls() {
                "TLS already active"
            } else {
                "STARTTLS not available on this port"
            };
            self.queue(&Reply::new(503, (5, 5, 1), text));
            return Ok(());
        }
        let Some(acceptor) = self.shared.live().tls.clone() else {
            self.queue(&Reply::new(
                454,
                (4, 7, 0),
                "TLS not available due to temporary reason",
            ));
            return Ok(());
        };
        self.queue(&Reply::new(220, (2, 0, 0), "Ready to start TLS"));
        self.flush().await.map_err(End::Io)?;
        // Anything pipelined after STARTTLS was sent in the clear and could have been injected
        // by a man in the middle (CVE-2011-0411 class): it must never run as a command.
        if !self.input.is_empty() {
            tracing::warn!(
                bytes = self.input.len(),
                "discarding plaintext pipelined after STARTTLS"
            );
            self.input.clear();
        }
        let Some(Conn::Plain(tcp)) = self.conn.take() else {
            return Err(End::Closed);
        };
        match tokio::time::timeout(
            Duration::from_secs(self.shared.cfg.server.command_timeout_seconds),
            acceptor.accept(tcp),
        )
        .await
        {
            Ok(Ok(tls)) => {
                self.shared.metrics.tls_handshake(true);
                self.conn = Some(Conn::Tls(Box::new(tls)));
            }
            Ok(Err(e)) => {
                self.shared.metrics.tls_handshake(false);
                tracing::info!("STARTTLS handshake failed: {e}");
                return Err(End::Closed);
            }
            Err(_) => {
                self.shared.metrics.tls_handshake(false);
                return Err(End::Timeout);
            }
        }
        // RFC 3207 4.2: forget everything learnt before TLS.
        self.abort_transaction().await;
        self.helo = None;
        self.esmtp = false;
        self.auth_user = None;
        Ok(())
    }

    async fn auth(&mut self, mechanism: u64, initial: String) -> Result<(), End> {
        if self.listener.cfg.auth == AuthRequirement::None || self.shared.live().users.is_none() {
            self.queue(&Reply::new(
                502,
                (5, 5, 1),
                "AUTH not available on this port",
            ));
            return Ok(());
        }
        if !self.auth_offered() {
            self.queue(&Reply::new(
                538,
                (5, 7, 11),
                "Encryption required for requested authentication mechanism: use STARTTLS first",
            ));
            return Ok(());
        }
        if self.helo.is_none() || !self.esmtp {
            self.queue(&Reply::new(503, (5, 5, 1), "Send EHLO first"));
            return Ok(());
        }
        if self.auth_user.is_some() {
            self.queue(&Reply::new(503, (5, 5, 1), "Already authenticated"));
            return Ok(());
        }
        if self.tx.is_some() {
            self.queue(&Reply::new(
                503,
                (5, 5, 1),
                "AUTH not allowed during a mail transaction",
            ));
            return Ok(());
        }
        let credentials = if mechanism == AUTH_PLAIN {
            let response = if initial.is_empty() {
                match self.challenge("").await? {
                    Some(r) => r,
                    None => return Ok(()),
                }
            } else if initial == "=" {
                Vec::new()
            } else {
                match decode_b64(&initial) {
                    Some(r) => r,
                    None => {
                        self.queue(&bad_base64());
                        return Ok(());
                    }
                }
            };
            parse_plain(&response)
        } else if mechanism == AUTH_LOGIN {
            let user = if initial.is_empty() {
                match self.challenge("VXNlcm5hbWU6").await? {
                    Some(u) => u,
                    None => return Ok(()),
                }
            } else {
                match decode_b64(&initial) {
                    Some(u) => u,
                    None => {
                        self.queue(&bad_base64());
                        return Ok(());
                    }
                }
            };
            let Some(password) = self.challenge("UGFzc3dvcmQ6").await? else {
                return Ok(());
            };
            match (String::from_utf8(user), String::from_utf8(password)) {
                (Ok(u), Ok(p)) => Some((u, p)),
                _ => None,
            }
        } else {
            self.queue(&Reply::new(
                504,
                (5, 5, 4),
                "Unrecognized authentication mechanism; use PLAIN or LOGIN",
            ));
            return Ok(());
        };
        let Some((user, password)) = credentials else {
            self.queue(&Reply::new(501, (5, 5, 2), "Malformed credentials"));
            return Ok(());
        };
        let users = self.shared.live().users.clone();
        let ok = match users {
            Some(users) => users.verify(&user, &password).await,
            None => false,
        };
        if ok {
            tracing::info!(user = %user, "authenticated");
            self.auth_user = Some(user);
            self.queue(&Reply::new(235, (2, 7, 0), "Authentication successful"));
            return Ok(());
        }
        self.auth_failures += 1;
        self.shared.metrics.rejected(RejectReason::AuthFailed);
        tracing::info!(user = %user, failures = self.auth_failures, "authentication failed");
        self.queue(&Reply::new(
            535,
            (5, 7, 8),
            "Authentication credentials invalid",
        ));
        if self.auth_failures >= MAX_AUTH_FAILURES {
            return Err(End::TooManyErrors);
        }
        Ok(())
    }

    /// Sends a 334 challenge and reads the base64 answer; `None` when cancelled or malformed
    /// (the reply is already queued).
    async fn challenge(&mut self, prompt: &str) -> Result<Option<Vec<u8>>, End> {
        self.queue(&Reply::bare(334, prompt));
        let line = match self.read_line().await? {
            Line::Command(line) => line,
            Line::Invalid(reply) => {
                self.queue(&reply);
                return Ok(None);
            }
        };
        let text = String::from_utf8_lossy(&line[..line.len() - 2])
            .trim()
            .to_string();
        if text == "*" {
            self.queue(&Reply::new(501, (5, 0, 0), "Authentication cancelled"));
            return Ok(None);
        }
        match decode_b64(&text) {
            Some(v) => Ok(Some(v)),
            None => {
                self.queue(&bad_base64());
                Ok(None)
            }
        }
    }

    async fn mail(&mut self, from: smtp_proto::MailFrom<String>) {
        if self.helo.is_none() {
            self.queue(&Reply::new(503, (5, 5, 1), "Send EHLO/HELO first"));
            return;
        }
        if self.tx.is_some() {
            self.queue(&Reply::new(503, (5, 5, 1), "Nested MAIL command"));
            return;
        }
        if self.listener.cfg.auth == AuthRequirement::Required && self.auth_user.is_none() {
            self.shared.metrics.rejected(RejectReason::AuthRequired);
            self.queue(&Reply::new(530, (5, 7, 0), "Authentication required"));
            return;
        }
        let max = self.shared.cfg.server.max_message_size;
        if from.size > max {
            self.shared.metrics.rejected(RejectReason::Size);
            self.queue(&Reply::new(
                552,
                (5, 3, 4),
                format!("Message size exceeds the limit of {max} bytes"),
            ));
            return;
        }
        let permitted = self.relay_permitted();
        let mut tx = Transaction {
            from: from.address.clone(),
            rcpts: Vec::new(),
            upstream_params: String::new(),
            permitted,
            declared_size: from.size,
        };
        if !permitted {
            // Refused at RCPT (where RFC 5321 puts relay decisions); no upstream is opened for it.
            self.tx = Some(tx);
            self.queue(&Reply::new(250, (2, 1, 0), "Sender OK"));
            return;
        }
        match self.open_upstream_transaction(&from, &mut tx).await {
            Ok(reply) if reply.is_positive() => {
                self.tx = Some(tx);
                self.queue(&reply);
            }
            Ok(reply) => self.queue(&reply),
            Err(reply) => {
                self.shared.metrics.rejected(RejectReason::UpstreamTemp);
                self.queue(&reply)
            }
        }
    }

    /// Connects (or reuses) the upstream and forwards MAIL FROM with the parameters it supports.
    async fn open_upstream_transaction(
        &mut self,
        from: &smtp_proto::MailFrom<String>,
        tx: &mut Transaction,
    ) -> Result<Reply, Reply> {
        for attempt in 0..2 {
            if self.upstream.as_ref().is_none_or(|u| !u.usable()) {
                let fresh = if attempt == 0 {
                    self.shared.upstream.checkout().await
                } else {
                    self.shared.upstream.connect().await
                };
                match fresh {
                    Ok(up) => self.upstream = Some(up),
                    Err(e) => {
                        tracing::warn!("{e}");
                        self.shared.metrics.upstream_reply(None);
                        return Err(e.reply());
                    }
                }
            }
            let Some(up) = self.upstream.as_mut() else {
                continue;
            };
            let caps = up.caps;
            if from.flags & MAIL_SMTPUTF8 != 0 && !caps.smtputf8 {
                return Ok(Reply::new(
                    553,
                    (5, 6, 7),
                    "The upstream mail server does not support SMTPUTF8 addresses",
                ));
            }
            let mut params = String::new();
            if from.flags & MAIL_BODY_8BITMIME != 0 && caps.eight_bit_mime {
                params.push_str(" BODY=8BITMIME");
            }
            if from.flags & MAIL_SMTPUTF8 != 0 {
                params.push_str(" SMTPUTF8");
            }
            if from.size > 0 && caps.size > 0 {
                params.push_str(&format!(" SIZE={}", from.size));
            }
            match up.mail_from(&from.address, &params).await {
                Ok(reply) if reply.code == 421 && attempt == 0 => {
                    // A reused session the upstream is closing (idle timeout): try a fresh one.
                    self.upstream = None;
                }
                Ok(reply) if reply.code == 530 || reply.code == 538 => {
                    // The upstream refuses *us* (TLS or AUTH needed): a relay misconfiguration, not
                    // a verdict on this message. Keep the mail queued at the client.
                    self.shared.metrics.upstream_reply(Some(reply.code));
                    tracing::error!(upstream_reply = %reply, "upstream refuses this relay's session: check [upstream] tls / username");
                    self.upstream = None;
                    return Err(Reply::new(
                        451,
                        (4, 4, 1),
                        "Upstream mail server refused this relay's session (needs TLS or AUTH); message not accepted, please try again later",
                    ));
                }
                Ok(reply) => {
                    self.shared.metrics.upstream_reply(Some(reply.code));
                    tx.upstream_params = params;
                    return Ok(reply);
                }
                Err(e) => {
                    // A cached connection may have been closed by the upstream while idle: retry once fresh.
                    tracing::info!(attempt, "upstream MAIL failed: {e}");
                    self.upstream = None;
                    if attempt == 1 {
                        self.shared.metrics.upstream_reply(None);
                        return Err(e.reply());
                    }
                }
            }
        }
        Err(Reply::new(451, (4, 4, 1), "Upstream unavailable"))
    }

    async fn rcpt(&mut self, address: String) {
        let Some(tx) = self.tx.as_ref() else {
            self.queue(&Reply::new(503, (5, 5, 1), "Need MAIL before RCPT"));
            return;
        };
        if !tx.permitted {
            self.shared.metrics.rejected(RejectReason::RelayDenied);
            tracing::info!("relay attempt refused");
            self.queue(&Reply::new(
                554,
                (5, 7, 1),
                "Relay access denied: authenticate first (AUTH) or connect from a permitted network",
            ));
            return;
        }
        let max = self.shared.cfg.server.max_recipients;
        if tx.rcpts.len() >= max {
            self.shared
                .metrics
                .rejected(RejectReason::TooManyRecipients);
            self.queue(&Reply::new(
                452,
                (4, 5, 3),
                format!("Too many recipients (limit {max}); send the rest in another transaction"),
            ));
            return;
        }
        let Some(up) = self.upstream.as_mut() else {
            self.tx = None;
            self.queue(&Reply::new(
                451,
                (4, 4, 1),
                "Upstream connection lost; transaction aborted",
            ));
            return;
        };
        match up.rcpt_to(&address).await {
            Ok(reply) => {
                self.shared.metrics.upstream_reply(Some(reply.code));
                if reply.is_positive() {
                    if let Some(tx) = self.tx.as_mut() {
                        tx.rcpts.push(address);
                    }
                }
                self.queue(&reply);
            }
            Err(e) => {
                tracing::warn!("{e}");
                self.shared.metrics.upstream_reply(None);
                self.upstream = None;
                self.tx = None;
                let mut reply = e.reply();
                reply.text.push_str(" (transaction aborted)");
                self.queue(&reply);
            }
        }
    }

    /// Whether a transaction is ready for message content; queues the refusal if not.
    fn ready_for_content(&mut self) -> bool {
        match self.tx.as_ref() {
            None => {
                self.queue(&Reply::new(503, (5, 5, 1), "Need MAIL and RCPT first"));
                false
            }
            Some(tx) if tx.rcpts.is_empty() => {
                self.queue(&Reply::new(554, (5, 5, 1), "No valid recipients"));
                false
            }
            Some(_) => true,
        }
    }

    async fn data(&mut self) -> Result<(), End> {
        if self.pending_chunks.is_some() {
            self.queue(&Reply::new(
                503,
                (5, 5, 1),
                "DATA cannot follow BDAT in one transaction",
            ));
            return Ok(());
        }
        if !self.ready_for_content() {
            return Ok(());
        }
        self.queue(&Reply::bare(
            354,
            "Start mail input; end with <CRLF>.<CRLF>",
        ));
        let max = self.shared.cfg.server.max_message_size;
        let mut reader = DataReader::new(max);
        // Pre-size from the client's SIZE, but only up to 1 MiB: a declared size is a claim, and
        // a thousand idle clients each claiming the maximum must not reserve gigabytes.
        let initial = self
            .tx
            .as_ref()
            .map_or(0, |t| t.declared_size)
            .clamp(4096, 1 << 20);
        let mut message = Vec::with_capacity(initial);
        let timeout = Duration::from_secs(self.shared.cfg.server.data_timeout_seconds);
        let mut in_flight = self.shared.metrics.in_flight();
        loop {
            let before = message.len();
            match reader.feed(&self.input, &mut message) {
                Feed::Done { consumed } => {
                    self.input.drain(..consumed);
                    in_flight.add(message.len().saturating_sub(before));
                    break;
                }
                Feed::More { consumed } => {
                    self.input.drain(..consumed);
                    in_flight.add(message.len().saturating_sub(before));
                }
            }
            if let Err(end) = self.fill(timeout, false, CONTENT_READ).await {
                self.abort_transaction().await;
                return Err(end);
            }
        }
        if let Some(error) = reader.error() {
            self.refuse_content(error).await;
            return Ok(());
        }
        self.finish_message(message).await;
        drop(in_flight);
        Ok(())
    }

    async fn bdat(&mut self, chunk_size: usize, is_last: bool) -> Result<(), End> {
        let max = self.shared.cfg.server.max_message_size;
        let timeout = Duration::from_secs(self.shared.cfg.server.data_timeout_seconds);
        // The chunk follows the command whatever we answer: read it all to stay in step.
        let valid = self.tx.as_ref().is_some_and(|t| !t.rcpts.is_empty());
        let (mut checker, mut message, mut in_flight) =
            self.pending_chunks.take().unwrap_or_else(|| {
                (
                    ChunkChecker::new(max),
                    Vec::new(),
                    self.shared.metrics.in_flight(),
                )
            });
        let mut remaining = chunk_size;
        while remaining > 0 {
            if self.input.is_empty() {
                if let Err(end) = self.fill(timeout, false, CONTENT_READ).await {
                    self.abort_transaction().await;
                    return Err(end);
                }
            }
            let take = remaining.min(self.input.len());
            if valid {
                let before = message.len();
                checker.push(&self.input[..take], &mut message);
                in_flight.add(message.len().saturating_sub(before));
            }
            self.input.drain(..take);
            remaining -= take;
        }
        if !valid {
            self.ready_for_content();
            return Ok(());
        }
        if let Some(error) = checker.error() {
            if is_last {
                self.refuse_content(error).await;
            } else {
                // Keep reading chunks; refuse the message when the client finishes it.
                self.pending_chunks = Some((checker, message, in_flight));
                self.queue(&Reply::new(
                    250,
                    (2, 0, 0),
                    format!("{chunk_size} octets received"),
                ));
            }
            return Ok(());
        }
        if !is_last {
            self.pending_chunks = Some((checker, message, in_flight));
            self.queue(&Reply::new(
                250,
                (2, 0, 0),
                format!("{chunk_size} octets received"),
            ));
            return Ok(());
        }
        checker.finish();
        if let Some(error) = checker.error() {
            self.refuse_content(error).await;
            return Ok(());
        }
        self.finish_message(message).await;
        drop(in_flight);
        Ok(())
    }

    /// A message that broke the DATA rules: refused, and nothing of it goes upstream.
    async fn refuse_content(&mut self, error: DataError) {
        self.shared.metrics.rejected(error.metric_label());
        self.abort_transaction().await;
        self.queue(&error.reply(self.shared.cfg.server.max_message_size));
    }

    async fn finish_message(&mut self, message: Vec<u8>) {
        let reply = super::delivery::deliver(self, message).await;
        self.messages += 1;
        self.tx = None;
        self.pending_chunks = None;
        self.queue(&reply);
    }

    /// Drops the transaction in progress here and at the upstream.
    async fn abort_transaction(&mut self) {
        self.pending_chunks = None;
        if self.tx.take().is_none() {
            return;
        }
        if let Some(up) = self.upstream.as_mut() {
            match up.rset().await {
                Ok(r) if r.is_positive() => {}
                _ => self.upstream = None,
            }
        }
    }
}

async fn wait_for_shutdown(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            // Sender gone: the server is going away, same as a shutdown.
            return;
        }
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
