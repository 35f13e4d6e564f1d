//! Relay: the upstream side. Owns every upstream transaction: opens the session (plain,
//! STARTTLS or implicit TLS, AUTH) with mail-send, keeps idle sessions in a pool, begins a
//! transaction (a stale pooled session is retried fresh; MAIL parameters downgraded to what the
//! upstream supports), forwards envelope commands one at a time so every verdict can be passed
//! back to our client as it happens, streams the message data (header part + untouched body)
//! with correct dot-stuffing, and runs the single-recipient transactions of split copies and
//! generated mail. Every step has a timeout; any transport failure poisons the session so it is
//! never reused half-way through a transaction. Every upstream reply is counted here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use mail_send::{Credentials, SmtpClient, SmtpClientBuilder};
use rustls::pki_types::pem::PemObject;
use smtp_proto::EhloResponse;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio_rustls::TlsConnector;

use crate::config::{TlsMode, UpstreamConfig};
use crate::message::MailParams;
use crate::metrics::Observe;
use crate::reply::Reply;

/// Anything mail-send can talk SMTP over: TCP or TLS over TCP.
pub trait UpstreamIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> UpstreamIo for T {}

/// A failed upstream step. Every kind is temporary for our client: it keeps the message.
#[derive(Debug, thiserror::Error)]
#[error("{kind}{}", if *.reused { " (on a reused pooled session)" } else { "" })]
pub struct UpstreamError {
    pub kind: UpstreamFailure,
    /// The session came from the pool: a failure may just mean the upstream closed it while idle.
    pub reused: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamFailure {
    #[error("cannot connect to upstream {addr}: {why}")]
    Connect { addr: String, why: String },
    #[error("upstream {addr} did not answer within {secs}s")]
    Timeout { addr: String, secs: u64 },
    #[error("upstream {addr} connection failed: {why}")]
    Transport { addr: String, why: String },
    /// The upstream refuses this relay's session (530/538: it wants TLS or AUTH we were not
    /// configured for): a misconfiguration, not a verdict on the message.
    #[error("upstream refuses this relay's session ({reply}): check [upstream] tls / username")]
    SessionRefused { reply: Reply },
}

impl From<UpstreamFailure> for UpstreamError {
    fn from(kind: UpstreamFailure) -> UpstreamError {
        UpstreamError {
            kind,
            reused: false,
        }
    }
}

impl UpstreamError {
    /// What our client is told: always temporary, so the client keeps the message and retries.
    pub fn reply(&self) -> Reply {
        match &self.kind {
            UpstreamFailure::Connect { .. } => Reply::new(
                451,
                (4, 4, 1),
                "Upstream mail server unavailable; message not accepted, please try again later",
            ),
            UpstreamFailure::Timeout { .. } => Reply::new(
                451,
                (4, 4, 2),
                "Upstream mail server timed out; message not accepted, please try again later",
            ),
            UpstreamFailure::Transport { .. } => Reply::new(
                451,
                (4, 4, 2),
                "Connection to upstream mail server lost; message not accepted, please try again later",
            ),
            UpstreamFailure::SessionRefused { .. } => Reply::new(
                451,
                (4, 4, 1),
                "Upstream mail server refused this relay's session (needs TLS or AUTH); message not accepted, please try again later",
            ),
        }
    }
}

/// A transaction the upstream answered at MAIL: `reply` may be a refusal (passed to the client).
pub struct Begun {
    pub reply: Reply,
    /// The MAIL parameters as forwarded, for split copies of the same message.
    pub params: String,
}

/// What the upstream supports, from its EHLO reply.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpstreamCaps {
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub size: usize,
}

/// Connection settings for the upstream, built once from the config.
#[derive(Clone)]
pub struct Upstream {
    host: String,
    port: u16,
    mode: TlsMode,
    timeout: Duration,
    data_reply_timeout: Duration,
    helo_name: String,
    metrics: Observe,
    tls_name: String,
    connector: TlsConnector,
    credentials: Option<Arc<Credentials<String>>>,
    /// Idle upstream sessions, kept so a new client need not pay connect + greeting + EHLO + TLS.
    pool: Arc<std::sync::Mutex<Vec<(UpstreamSession, Instant)>>>,
}

/// Most idle upstream sessions kept, and for how long (well under MTAs' 300 s idle timeout).
const POOL_MAX: usize = 64;
const POOL_IDLE: Duration = Duration::from_secs(30);

impl Upstream {
    pub fn new(
        cfg: &UpstreamConfig,
        helo_name: &str,
        metrics: Observe,
    ) -> anyhow::Result<Upstream> {
        let (host, port) = cfg.host_port().map_err(anyhow::Error::msg)?;
        let connector = tls_connector(cfg)?;
        let credentials = match (&cfg.username, &cfg.password_file) {
            (Some(user), Some(file)) => {
                let password = std::fs::read_to_string(file).with_context(|| {
                    format!("reading upstream.password_file {}", file.display())
                })?;
                Some(Arc::new(Credentials::new(
                    user.clone(),
                    password.trim_end_matches(['\r', '\n']).to_string(),
                )))
            }
            _ => None,
        };
        if cfg.allow_invalid_certs {
            tracing::warn!(
                "upstream.allow_invalid_certs is on: the upstream's TLS certificate is not checked"
            );
        }
        Ok(Upstream {
            tls_name: cfg.tls_server_name.clone().unwrap_or_else(|| host.clone()),
            host,
            port,
            mode: cfg.tls,
            timeout: Duration::from_secs(cfg.timeout_seconds),
            data_reply_timeout: Duration::from_secs(cfg.data_reply_timeout_seconds),
            helo_name: helo_name.to_string(),
            metrics,
            connector,
            credentials,
            pool: Arc::default(),
        })
    }

    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn timeout_err(&self) -> UpstreamError {
        UpstreamFailure::Timeout {
            addr: self.address(),
            secs: self.timeout.as_secs(),
        }
        .into()
    }

    /// Begins a transaction (MAIL FROM) on `held`, or on a pooled session, or a fresh one. A
    /// pooled session the upstream closed while idle (transport error, or 421) is retried once
    /// on a fresh connection. Parameters the upstream does not support are left out (8BITMIME,
    /// SIZE); SMTPUTF8 it cannot carry is refused with 553 5.6.7.
    pub async fn begin(
        &self,
        held: &mut Option<UpstreamSession>,
        sender: &str,
        params: &MailParams,
    ) -> Result<Begun, UpstreamError> {
        for attempt in 0..2 {
            if held.as_ref().is_none_or(|u| !u.usable()) {
                *held = None;
                let fresh = if attempt == 0 {
                    self.checkout().await
                } else {
                    self.connect().await
                };
                match fresh {
                    Ok(up) => *held = Some(up),
                    Err(e) => {
                        self.metrics.upstream_reply(None);
                        return Err(e);
                    }
                }
            }
            let Some(up) = held.as_mut() else {
                continue;
            };
            let caps = up.caps;
            if params.smtputf8 && !caps.smtputf8 {
                return Ok(Begun {
                    reply: Reply::new(
                        553,
                        (5, 6, 7),
                        "The upstream mail server does not support SMTPUTF8 addresses",
                    ),
                    params: String::new(),
                });
            }
            let forwarded = upstream_params(params, &caps);
            match up.mail_from(sender, &forwarded).await {
                Ok(reply) if reply.code == 421 && attempt == 0 && up.reused => {
                    // A reused session the upstream is closing (idle timeout): try a fresh one.
                    *held = None;
                }
                Ok(reply) if reply.code == 530 || reply.code == 538 => {
                    *held = None;
                    return Err(UpstreamFailure::SessionRefused { reply }.into());
                }
                Ok(reply) => {
                    return Ok(Begun {
                        reply,
                        params: forwarded,
                    })
                }
                Err(e) if e.reused && attempt == 0 => {
                    tracing::info!("upstream MAIL failed on a pooled session, retrying fresh: {e}");
                    *held = None;
                }
                Err(e) => {
                    *held = None;
                    return Err(e);
                }
            }
        }
        Err(UpstreamFailure::Transport {
            addr: self.address(),
            why: "no usable session after a retry".into(),
        }
        .into())
    }

    /// One complete single-recipient transaction (split copies, generated mail) on `held`, or on
    /// a fresh connection when there is none: a stale pooled session would fail a copy that could
    /// have gone out.
    pub async fn send_single(
        &self,
        held: &mut Option<UpstreamSession>,
        sender: &str,
        params: &str,
        rcpt: &str,
        parts: &[&[u8]],
    ) -> Result<Reply, UpstreamError> {
        if held.as_ref().is_none_or(|u| !u.usable()) {
            *held = Some(self.connect().await?);
        }
        let Some(up) = held.as_mut() else {
            return Err(UpstreamFailure::Transport {
                addr: self.address(),
                why: "no session".into(),
            }
            .into());
        };
        let result = async {
            let r = up.mail_from(sender, params).await?;
            if !r.is_positive() {
                return Ok(r);
            }
            let r = up.rcpt_to(rcpt).await?;
            if !r.is_positive() {
                up.rset().await?;
                return Ok(r);
            }
            up.data(parts).await
        }
        .await;
        if result.is_err() {
            *held = None;
        }
        result
    }

    /// An idle pooled session if there is a fresh one, else a new connection. A pooled session may
    /// still have been closed by the upstream meanwhile: [`Upstream::begin`] retries it fresh.
    async fn checkout(&self) -> Result<UpstreamSession, UpstreamError> {
        loop {
            let idle = match self.pool.lock() {
                Ok(mut pool) => pool.pop(),
                Err(_) => None,
            };
            match idle {
                Some((mut session, since)) if since.elapsed() < POOL_IDLE && session.usable() => {
                    session.reused = true;
                    return Ok(session);
                }
                Some((session, _)) => {
                    tokio::spawn(session.quit());
                }
                None => return self.connect().await,
            }
        }
    }

    /// Returns a session with no transaction open to the pool (or closes it when the pool is full).
    pub fn checkin(&self, session: UpstreamSession) {
        if !session.usable() {
            return;
        }
        let rejected = match self.pool.lock() {
            Ok(mut pool) if pool.len() < POOL_MAX => {
                pool.push((session, Instant::now()));
                None
            }
            _ => Some(session),
        };
        if let Some(session) = rejected {
            tokio::spawn(session.quit());
        }
    }

    /// Connects, greets, negotiates TLS as configured, says EHLO and authenticates.
    pub async fn connect(&self) -> Result<UpstreamSession, UpstreamError> {
        match tokio::time::timeout(self.timeout, self.connect_inner()).await {
            Ok(r) => r,
            Err(_) => Err(self.timeout_err()),
        }
    }

    async fn connect_inner(&self) -> Result<UpstreamSession, UpstreamError> {
        let connect_err = |e: mail_send::Error| -> UpstreamError {
            UpstreamFailure::Connect {
                addr: self.address(),
                why: describe(&e),
            }
            .into()
        };
        let builder = SmtpClientBuilder::new_with_tls_connector(
            self.tls_name.clone(),
            self.port,
            self.connector.clone(),
        )
        .say_ehlo(false)
        .helo_host(self.helo_name.clone())
        .timeout(self.timeout);
        // The builder dials `tls_name:port`; dial the configured host instead when they differ.
        let builder = SmtpClientBuilder {
            addr: self.address(),
            ..builder
        };
        let mut client: SmtpClient<Box<dyn UpstreamIo>> = match self.mode {
            TlsMode::None => {
                let c = builder.connect_plain().await.map_err(connect_err)?;
                SmtpClient {
                    stream: Box::new(c.stream),
                    timeout: c.timeout,
                }
            }
            TlsMode::Starttls | TlsMode::Implicit => {
                let connected = builder
                    .implicit_tls(self.mode == TlsMode::Implicit)
                    .connect()
                    .await;
                // A refused connection is not a TLS failure; anything after it is.
                if !matches!(&connected, Err(mail_send::Error::Io(_))) {
                    self.metrics.upstream_tls_handshake(connected.is_ok());
                }
                let c = connected.map_err(connect_err)?;
                SmtpClient {
                    stream: Box::new(c.stream),
                    timeout: c.timeout,
                }
            }
        };
        let ehlo: EhloResponse<String> = client.ehlo(&self.helo_name).await.map_err(connect_err)?;
        if let Some(creds) = &self.credentials {
            client
                .authenticate(creds.as_ref(), &ehlo)
                .await
                .map_err(connect_err)?;
        }
        let caps = UpstreamCaps {
            eight_bit_mime: ehlo.has_capability(smtp_proto::EXT_8BIT_MIME),
            smtputf8: ehlo.has_capability(smtp_proto::EXT_SMTP_UTF8),
            size: ehlo.size,
        };
        Ok(UpstreamSession {
            client,
            caps,
            addr: self.address(),
            timeout: self.timeout,
            data_reply_timeout: self.data_reply_timeout,
            broken: false,
            reused: false,
            metrics: self.metrics.clone(),
        })
    }
}

fn tls_connector(cfg: &UpstreamConfig) -> anyhow::Result<TlsConnector> {
    if cfg.allow_invalid_certs {
        return mail_send::smtp::tls::build_tls_connector(true).map_err(anyhow::Error::msg);
    }
    if let Some(ca) = &cfg.ca_file {
        let pem = std::fs::read(ca)
            .with_context(|| format!("reading upstream.ca_file {}", ca.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.with_context(|| format!("parsing {}", ca.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("adding a CA from {}", ca.display()))?;
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        return Ok(TlsConnector::from(Arc::new(config)));
    }
    if cfg.tls == TlsMode::None {
        // Never used; avoids needing the platform trust store for plain upstreams.
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        return Ok(TlsConnector::from(Arc::new(config)));
    }
    mail_send::smtp::tls::build_tls_connector(false).map_err(anyhow::Error::msg)
}

fn describe(e: &mail_send::Error) -> String {
    match e {
        mail_send::Error::Io(io) => io.to_string(),
        mail_send::Error::Tls(t) => format!("TLS: {t}"),
        mail_send::Error::UnexpectedReply(r) => {
            format!("unexpected reply {} {}", r.code, r.message)
        }
        mail_send::Error::AuthenticationFailed(r) => {
            format!("authentication failed: {} {}", r.code, r.message)
        }
        mail_send::Error::MissingStartTls => "upstream does not offer STARTTLS".to_string(),
        mail_send::Error::Timeout => "timed out".to_string(),
        other => format!("{other:?}"),
    }
}

/// One open upstream SMTP session.
pub struct UpstreamSession {
    client: SmtpClient<Box<dyn UpstreamIo>>,
    pub caps: UpstreamCaps,
    addr: String,
    timeout: Duration,
    data_reply_timeout: Duration,
    broken: bool,
    /// Taken from the pool rather than freshly connected.
    reused: bool,
    metrics: Observe,
}

impl UpstreamSession {
    /// False once a transport error or timeout happened: the session must be dropped.
    pub fn usable(&self) -> bool {
        !self.broken
    }

    fn transport_err(&mut self, e: mail_send::Error, secs: u64) -> UpstreamError {
        self.broken = true;
        self.metrics.upstream_reply(None);
        let kind = match e {
            mail_send::Error::Timeout => UpstreamFailure::Timeout {
                addr: self.addr.clone(),
                secs,
            },
            other => UpstreamFailure::Transport {
                addr: self.addr.clone(),
                why: describe(&other),
            },
        };
        UpstreamError {
            kind,
            reused: self.reused,
        }
    }

    fn answered(&self, r: &smtp_proto::Response<String>) -> Reply {
        self.metrics.upstream_reply(Some(r.code));
        Reply::from_upstream(r)
    }

    /// Sends one command line (CRLF included) and returns the upstream's reply, whatever its code.
    async fn command(&mut self, line: &str) -> Result<Reply, UpstreamError> {
        match self.client.cmd(line.as_bytes()).await {
            Ok(r) => Ok(self.answered(&r)),
            Err(e) => Err(self.transport_err(e, self.timeout.as_secs())),
        }
    }

    pub async fn mail_from(&mut self, from: &str, params: &str) -> Result<Reply, UpstreamError> {
        self.command(&format!("MAIL FROM:<{from}>{params}\r\n"))
            .await
    }

    pub async fn rcpt_to(&mut self, to: &str) -> Result<Reply, UpstreamError> {
        self.command(&format!("RCPT TO:<{to}>\r\n")).await
    }

    pub async fn rset(&mut self) -> Result<Reply, UpstreamError> {
        self.command("RSET\r\n").await
    }

    pub async fn quit(mut self) {
        let _ = self.client.cmd(b"QUIT\r\n").await;
    }

    /// DATA with the message given as consecutive parts (e.g. trace header, edited header, body),
    /// written without joining them. Returns the upstream's final reply (or its DATA refusal).
    pub async fn data(&mut self, parts: &[&[u8]]) -> Result<Reply, UpstreamError> {
        let go = self.command("DATA\r\n").await?;
        if go.code != 354 {
            // A refused DATA leaves MAIL and RCPT standing at the upstream: end that transaction
            // now, or the session's next MAIL meets "nested MAIL". If even RSET fails, drop it.
            if !self.rset().await.is_ok_and(|r| r.is_positive()) {
                self.broken = true;
            }
            return Ok(go);
        }
        let write = async {
            let mut w = BufWriter::with_capacity(64 * 1024, &mut self.client.stream);
            write_dot_stuffed(&mut w, parts).await?;
            w.flush().await
        };
        let secs = self.timeout.as_secs();
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(self.transport_err(mail_send::Error::Io(e), secs)),
            Err(_) => return Err(self.transport_err(mail_send::Error::Timeout, secs)),
        }
        // The final reply gets its own, longer wait (RFC 5321 4.5.3.2.6).
        let secs = self.data_reply_timeout.as_secs();
        let sent = Instant::now(); // metrics: upstream latency
        match tokio::time::timeout(self.data_reply_timeout, self.client.read()).await {
            Ok(Ok(r)) => {
                self.metrics.upstream_latency(sent.elapsed()); // metrics
                Ok(self.answered(&r))
            }
            Ok(Err(e)) => Err(self.transport_err(e, secs)),
            Err(_) => Err(self.transport_err(mail_send::Error::Timeout, secs)),
        }
    }
}

/// The MAIL parameters to forward: what the client asked for that the upstream supports.
fn upstream_params(p: &MailParams, caps: &UpstreamCaps) -> String {
    let mut params = String::new();
    if p.eight_bit_mime && caps.eight_bit_mime {
        params.push_str(" BODY=8BITMIME");
    }
    if p.smtputf8 {
        params.push_str(" SMTPUTF8");
    }
    if p.size > 0 && caps.size > 0 {
        params.push_str(&format!(" SIZE={}", p.size));
    }
    params
}

/// Writes `parts` as one DATA payload: a `.` is doubled at every line start (RFC 5321 4.5.2),
/// the payload is closed with CRLF.CRLF without adding a blank line when it already ends in CRLF.
pub async fn write_dot_stuffed<W: AsyncWrite + Unpin>(
    w: &mut W,
    parts: &[&[u8]],
) -> std::io::Result<()> {
    let mut line_start = true;
    let mut last_two = [0u8; 2];
    let mut total = 0usize;
    for part in parts.iter().filter(|p| !p.is_empty()) {
        let mut from = 0;
        if line_start && part[0] == b'.' {
            w.write_all(b".").await?;
        }
        for nl in memchr::memmem::find_iter(part, b"\n.") {
            w.write_all(&part[from..=nl]).await?;
            w.write_all(b".").await?;
            from = nl + 1;
        }
        w.write_all(&part[from..]).await?;
        line_start = part.last() == Some(&b'\n');
        total += part.len();
        if part.len() >= 2 {
            last_two = [part[part.len() - 2], part[part.len() - 1]];
        } else {
            last_two = [last_two[1], part[0]];
        }
    }
    if total > 0 && last_two != *b"\r\n" {
        w.write_all(b"\r\n").await?;
    }
    w.write_all(b".\r\n").await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn stuffed(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        write_dot_stuffed(&mut out, parts).await.unwrap();
        out
    }

    #[tokio::test]
    async fn dots_are_stuffed_at_every_line_start_across_parts() {
        assert_eq!(
            stuffed(&[b".a\r\n", b".b\r\nc.\r\n"]).await,
            b"..a\r\n..b\r\nc.\r\n.\r\n".to_vec()
        );
        assert_eq!(
            stuffed(&[b"x\r\n", b".\r\n"]).await,
            b"x\r\n..\r\n.\r\n".to_vec()
        );
    }

    #[tokio::test]
    async fn no_blank_line_is_added_and_a_missing_final_crlf_is_supplied() {
        assert_eq!(
            stuffed(&[b"a\r\n\r\nbody\r\n"]).await,
            b"a\r\n\r\nbody\r\n.\r\n".to_vec()
        );
        assert_eq!(
            stuffed(&[b"a\r\n\r\nbody"]).await,
            b"a\r\n\r\nbody\r\n.\r\n".to_vec()
        );
        assert_eq!(stuffed(&[]).await, b".\r\n".to_vec());
    }
}
