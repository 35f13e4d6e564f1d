//! The client connection as the session sees it: a byte stream (generic, so tests can drive a
//! session over `tokio::io::duplex`) that starts in cleartext and may be upgraded to TLS in
//! place (STARTTLS) or start in TLS, with the session's input buffer, its queued replies, and
//! CRLF line framing. Replies are batched (RFC 2920) and flushed before every read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::reply::Reply;

/// Longest command line we accept (RFC 5321 allows 512; extensions make real ones longer).
pub const MAX_COMMAND_LINE: usize = 4096;
/// Read sizes: small between commands so idle connections cost little memory, large for content.
pub const COMMAND_READ: usize = 4 * 1024;
pub const CONTENT_READ: usize = 64 * 1024;

/// Anything a session can run over: TCP in production, an in-memory pipe in tests.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

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

/// The `end=` value of the "disconnected" log line: one word an admin can grep for, and the
/// error text for an I/O failure.
impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Quit => f.write_str("quit"),
            End::Closed => f.write_str("closed"),
            End::Timeout => f.write_str("timeout"),
            End::Shutdown => f.write_str("shutdown"),
            End::TooManyErrors => f.write_str("too_many_errors"),
            End::Io(e) => write!(f, "io: {e}"),
        }
    }
}

/// What reading one command line produced.
pub enum Line {
    /// The line, CRLF included.
    Command(Vec<u8>),
    /// A line ending in a bare LF, or too long: answered without being parsed.
    Invalid(Reply),
}

pub enum Stream<S> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
}

pub struct Conn<S> {
    stream: Option<Stream<S>>,
    /// Bytes read and not yet consumed.
    pub input: Vec<u8>,
    output: Vec<u8>,
    shutdown: watch::Receiver<bool>,
    write_timeout: Duration,
}

impl<S: Io> Conn<S> {
    pub fn new(
        stream: Stream<S>,
        shutdown: watch::Receiver<bool>,
        write_timeout: Duration,
    ) -> Conn<S> {
        Conn {
            stream: Some(stream),
            input: Vec::with_capacity(1024),
            output: Vec::with_capacity(1024),
            shutdown,
            write_timeout,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Some(Stream::Tls(_)))
    }

    /// Whether the TLS session was resumed from an earlier one (None in cleartext).
    pub fn tls_resumed(&self) -> Option<bool> {
        match &self.stream {
            Some(Stream::Tls(tls)) => Some(super::tls::resumed(tls.get_ref().1)),
            _ => None,
        }
    }

    pub fn queue(&mut self, reply: &Reply) {
        self.output.extend_from_slice(&reply.to_wire());
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        let out = &self.output;
        let written = tokio::time::timeout(self.write_timeout, async {
            stream.write_all(out).await?;
            stream.flush().await
        })
        .await;
        self.output.clear();
        match written {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
        }
    }

    /// Reads more bytes into `input` within the transfer's deadline: the message content's allowance
    /// grows with what was received (see [`ContentDeadline`]).
    pub async fn fill_content(&mut self, deadline: &mut ContentDeadline) -> Result<(), End> {
        let before = self.input.len();
        let left = deadline.left();
        if left.is_zero() {
            return Err(End::Timeout);
        }
        self.fill(left, false, CONTENT_READ).await?;
        deadline.received(self.input.len().saturating_sub(before));
        Ok(())
    }

    /// Reads more bytes into `input`, after sending the replies queued so far (a server may
    /// batch replies, but must flush before it waits for the client). `idle` = between
    /// commands: a shutdown then ends the session, and a large content buffer is given back.
    pub async fn fill(&mut self, timeout: Duration, idle: bool, chunk: usize) -> Result<(), End> {
        self.flush().await.map_err(End::Io)?;
        let Some(stream) = self.stream.as_mut() else {
            return Err(End::Closed);
        };
        if idle && self.input.capacity() > 2 * COMMAND_READ {
            self.input.shrink_to(COMMAND_READ);
        }
        // Reads into spare capacity: no zero-filling of the buffer on every read.
        self.input.reserve(chunk);
        let read = stream.read_buf(&mut self.input);
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
    /// `timeout` is for the whole line, not per read: a client trickling a byte at a time
    /// cannot hold the session past it.
    pub async fn read_line(&mut self, timeout: Duration) -> Result<Line, End> {
        let deadline = Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
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
                    return Ok(Line::Invalid(line_too_long()));
                }
                return Ok(Line::Command(line));
            }
            scanned = self.input.len();
            if self.input.len() > MAX_COMMAND_LINE {
                // Keep discarding until the line ends, then answer once.
                self.input.clear();
                loop {
                    self.fill(left(), false, COMMAND_READ).await?;
                    if let Some(i) = memchr::memchr(b'\n', &self.input) {
                        self.input.drain(..=i);
                        return Ok(Line::Invalid(line_too_long()));
                    }
                    self.input.clear();
                }
            }
            let idle = self.input.is_empty();
            self.fill(left(), idle, COMMAND_READ).await?;
        }
    }

    /// Upgrades the cleartext stream to TLS in place. Anything pipelined after STARTTLS was sent
    /// in the clear and could have been injected by a man in the middle (CVE-2011-0411 class):
    /// it is discarded, never run as a command.
    pub async fn start_tls(
        &mut self,
        acceptor: &TlsAcceptor,
        timeout: Duration,
    ) -> Result<(), End> {
        self.flush().await.map_err(End::Io)?;
        if !self.input.is_empty() {
            tracing::warn!(
                bytes = self.input.len(),
                "discarding plaintext pipelined after STARTTLS"
            );
            self.input.clear();
        }
        let Some(Stream::Plain(plain)) = self.stream.take() else {
            return Err(End::Closed);
        };
        match tokio::time::timeout(timeout, acceptor.accept(plain)).await {
            Ok(Ok(tls)) => {
                self.stream = Some(Stream::Tls(Box::new(tls)));
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::info!("STARTTLS handshake failed: {e}");
                Err(End::Closed)
            }
            Err(_) => Err(End::Timeout),
        }
    }

    /// Sends what is queued and closes the stream (TLS close_notify included).
    pub async fn close(&mut self) {
        let _ = self.flush().await;
        if let Some(mut stream) = self.stream.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.shutdown()).await;
        }
    }
}

/// The deadline of one DATA/BDAT transfer: `base` from its start plus 1/`min_rate` seconds per
/// byte received (Postfix's `smtpd_min_data_rate` idea), so a fast transfer of any size is fine
/// and one that trickles is cut off.
pub struct ContentDeadline {
    start: Instant,
    base: Duration,
    min_rate: u64,
    received: u64,
}

impl ContentDeadline {
    pub fn new(base: Duration, min_rate: u64) -> ContentDeadline {
        ContentDeadline {
            start: Instant::now(),
            base,
            min_rate,
            received: 0,
        }
    }

    fn received(&mut self, bytes: usize) {
        self.received = self.received.saturating_add(bytes as u64);
    }

    fn left(&self) -> Duration {
        let earned = if self.min_rate == 0 {
            Duration::from_secs(u64::MAX / 4)
        } else {
            Duration::from_secs_f64(self.received as f64 / self.min_rate as f64)
        };
        (self.start + self.base.saturating_add(earned)).saturating_duration_since(Instant::now())
    }
}

fn line_too_long() -> Reply {
    Reply::new(500, (5, 5, 2), "Command line too long")
}

pub async fn wait_for_shutdown(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            // Sender gone: the server is going away, same as a shutdown.
            return;
        }
    }
}

impl<S: Io> AsyncRead for Stream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: Io> AsyncWrite for Stream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::End;

    #[test]
    fn end_shows_as_one_greppable_word() {
        let shown: Vec<String> = [
            End::Quit,
            End::Closed,
            End::Timeout,
            End::Shutdown,
            End::TooManyErrors,
            End::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            shown,
            [
                "quit",
                "closed",
                "timeout",
                "shutdown",
                "too_many_errors",
                "io: connection reset"
            ]
        );
    }
}
