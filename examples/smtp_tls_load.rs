//! TLS-capable SMTP load client for bench/ (smtp-source speaks neither TLS nor AUTH).
//!
//! One message per connection: connect, EHLO, STARTTLS (or implicit TLS, or none), EHLO, AUTH
//! PLAIN, MAIL, RCPT x R, DATA, QUIT; `--concurrency` connections at a time until `--messages`
//! were sent. TLS sessions are resumed across connections unless `--no-resume` (one shared
//! rustls client config, as a mail client or an MTA with a session cache would).
//! Prints one line: `tls-load: messages=.. ok=.. seconds=.. msgs_per_s=.. p50_ms=.. ...`.
//!
//!   cargo run --release --example smtp_tls_load -- --target 127.0.0.1:2531 --tls starttls \
//!       --user alice --password-file pw --messages 500 --concurrency 20
//!
//! Loopback benchmarking only: the server certificate is not verified.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, SignatureScheme};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Security {
    Plain,
    StartTls,
    Implicit,
}

#[derive(Clone)]
struct Opts {
    target: String,
    tls: Security,
    user: Option<String>,
    password: String,
    messages: usize,
    concurrency: usize,
    recipients: usize,
    size: usize,
    resume: bool,
    timeout: Duration,
}

fn usage() -> ! {
    eprintln!(
        "usage: smtp_tls_load --target HOST:PORT [--tls none|starttls|implicit] [--user U \
         (--password P | --password-file F)] [--messages N] [--concurrency C] [--recipients R] \
         [--size BYTES] [--no-resume] [--timeout S]"
    );
    std::process::exit(2)
}

fn parse_args() -> anyhow::Result<Opts> {
    let mut o = Opts {
        target: String::new(),
        tls: Security::StartTls,
        user: None,
        password: String::new(),
        messages: 500,
        concurrency: 1,
        recipients: 1,
        size: 4096,
        resume: true,
        timeout: Duration::from_secs(60),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--target" => o.target = val(),
            "--tls" => {
                o.tls = match val().as_str() {
                    "none" => Security::Plain,
                    "starttls" => Security::StartTls,
                    "implicit" => Security::Implicit,
                    _ => usage(),
                }
            }
            "--user" => o.user = Some(val()),
            "--password" => o.password = val(),
            "--password-file" => {
                let path = val();
                o.password = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {path}"))?
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
            }
            "--messages" => o.messages = val().parse()?,
            "--concurrency" => o.concurrency = val().parse::<usize>()?.max(1),
            "--recipients" => o.recipients = val().parse::<usize>()?.max(1),
            "--size" => o.size = val().parse()?,
            "--no-resume" => o.resume = false,
            "--timeout" => o.timeout = Duration::from_secs(val().parse()?),
            _ => usage(),
        }
    }
    if o.target.is_empty() {
        usage();
    }
    Ok(o)
}

/// Bench-only: the relay under test presents a throw-away self-signed certificate on loopback.
#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Smtp<T> {
    io: BufReader<T>,
    line: String,
}

impl<T: Io> Smtp<T> {
    fn new(io: T) -> Smtp<T> {
        Smtp {
            io: BufReader::new(io),
            line: String::new(),
        }
    }

    /// Reads one (multi-line) reply; returns its code.
    async fn reply(&mut self) -> anyhow::Result<u16> {
        loop {
            self.line.clear();
            if self.io.read_line(&mut self.line).await? == 0 {
                bail!("connection closed");
            }
            let code: u16 = self
                .line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .with_context(|| format!("bad reply line {:?}", self.line))?;
            if self.line.as_bytes().get(3) != Some(&b'-') {
                return Ok(code);
            }
        }
    }

    async fn cmd(&mut self, line: &str, want: u16) -> anyhow::Result<()> {
        self.io.get_mut().write_all(line.as_bytes()).await?;
        self.io.get_mut().flush().await?;
        let code = self.reply().await?;
        if code != want {
            bail!(
                "{} -> {} {}",
                line.trim_end(),
                code,
                self.line.get(4..).unwrap_or("").trim_end()
            );
        }
        Ok(())
    }
}

struct Shared {
    opts: Opts,
    connector: TlsConnector,
    body: String,
    next: AtomicUsize,
    latencies: Mutex<Vec<f64>>,
    errors: AtomicUsize,
    resumed: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

async fn tls_wrap(
    s: &Shared,
    tcp: TcpStream,
) -> anyhow::Result<(tokio_rustls::client::TlsStream<TcpStream>, bool)> {
    let name = ServerName::try_from("localhost")?;
    let tls = s.connector.connect(name, tcp).await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    Ok((tls, resumed))
}

/// One message per connection; returns whether the TLS session was resumed.
async fn one_message(s: &Shared, n: usize) -> anyhow::Result<bool> {
    let o = &s.opts;
    let tcp = TcpStream::connect(&o.target).await?;
    tcp.set_nodelay(true)?;
    if o.tls == Security::Implicit {
        let (tls, resumed) = tls_wrap(s, tcp).await?;
        let mut c = Smtp::new(tls);
        greet(&mut c).await?;
        transaction(s, c, n).await?;
        return Ok(resumed);
    }
    let mut c = Smtp::new(tcp);
    greet(&mut c).await?;
    if o.tls == Security::Plain {
        transaction(s, c, n).await?;
        return Ok(false);
    }
    c.cmd("STARTTLS\r\n", 220).await?;
    if !c.io.buffer().is_empty() {
        bail!("server sent data after 220 to STARTTLS");
    }
    let (tls, resumed) = tls_wrap(s, c.io.into_inner()).await?;
    let mut c = Smtp::new(tls);
    c.cmd("EHLO load.bench.example\r\n", 250).await?;
    transaction(s, c, n).await?;
    Ok(resumed)
}

async fn greet<T: Io>(c: &mut Smtp<T>) -> anyhow::Result<()> {
    if c.reply().await? != 220 {
        bail!("greeting: {}", c.line.trim_end());
    }
    c.cmd("EHLO load.bench.example\r\n", 250).await
}

/// AUTH (if configured) and one message, then QUIT without waiting (the message is accepted).
async fn transaction<T: Io>(s: &Shared, mut c: Smtp<T>, n: usize) -> anyhow::Result<()> {
    let o = &s.opts;
    if let Some(user) = &o.user {
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{}", o.password));
        c.cmd(&format!("AUTH PLAIN {token}\r\n"), 235).await?;
    }
    c.cmd("MAIL FROM:<sender@client.bench.example>\r\n", 250)
        .await?;
    for r in 0..o.recipients {
        c.cmd(&format!("RCPT TO:<rcpt{r}-{n}@dest.example>\r\n"), 250)
            .await?;
    }
    c.cmd("DATA\r\n", 354).await?;
    c.cmd(&s.body, 250).await?;
    let _ = c.io.get_mut().write_all(b"QUIT\r\n").await;
    let _ = c.io.get_mut().shutdown().await;
    Ok(())
}

async fn worker(s: Arc<Shared>) {
    loop {
        let n = s.next.fetch_add(1, Ordering::Relaxed);
        if n >= s.opts.messages {
            return;
        }
        let t = Instant::now();
        match tokio::time::timeout(s.opts.timeout, one_message(&s, n)).await {
            Ok(Ok(resumed)) => {
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                if let Ok(mut l) = s.latencies.lock() {
                    l.push(ms);
                }
                if resumed {
                    s.resumed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Err(e)) => error(&s, format!("{e:#}")),
            Err(_) => error(&s, "timeout".to_string()),
        }
    }
}

fn error(s: &Shared, e: String) {
    s.errors.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut first) = s.first_error.lock() {
        first.get_or_insert(e);
    }
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn body(size: usize) -> String {
    let mut b = String::from(
        "From: sender@client.bench.example\r\nTo: rcpt@dest.example\r\n\
         Subject: tls load\r\nMessage-ID: <tls-load@client.bench.example>\r\n\r\n",
    );
    let line = "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789\r\n";
    while b.len() < size {
        b.push_str(line);
    }
    b.push_str(".\r\n");
    b
}

fn main() -> anyhow::Result<()> {
    let opts = parse_args()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut cfg = ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    cfg.resumption = if opts.resume {
        rustls::client::Resumption::in_memory_sessions(1024)
    } else {
        rustls::client::Resumption::disabled()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let shared = Arc::new(Shared {
        connector: TlsConnector::from(Arc::new(cfg)),
        body: body(opts.size),
        next: AtomicUsize::new(0),
        latencies: Mutex::new(Vec::with_capacity(opts.messages)),
        errors: AtomicUsize::new(0),
        resumed: AtomicUsize::new(0),
        first_error: Mutex::new(None),
        opts: opts.clone(),
    });
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    rt.block_on(async {
        let workers: Vec<_> = (0..opts.concurrency)
            .map(|_| tokio::spawn(worker(shared.clone())))
            .collect();
        for w in workers {
            let _ = w.await;
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let mut lat = shared
        .latencies
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    lat.sort_by(|a, b| a.total_cmp(b));
    let ok = lat.len();
    let errors = shared.errors.load(Ordering::Relaxed);
    println!(
        "tls-load: messages={} ok={ok} errors={errors} seconds={secs:.3} msgs_per_s={:.1} \
         p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.2} resumed={} client_cpu_ms_per_msg={:.3} \
         concurrency={} tls={} auth={} resume={}",
        opts.messages,
        ok as f64 / secs,
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0),
        shared.resumed.load(Ordering::Relaxed),
        cpu * 1000.0 / opts.messages.max(1) as f64,
        opts.concurrency,
        match opts.tls {
            Security::Plain => "none",
            Security::StartTls => "starttls",
            Security::Implicit => "implicit",
        },
        opts.user.is_some(),
        opts.resume,
    );
    if let Ok(Some(e)) = shared.first_error.lock().map(|e| e.clone()) {
        eprintln!("tls-load: first error: {e}");
    }
    if errors > 0 {
        std::process::exit(1);
    }
    Ok(())
}
