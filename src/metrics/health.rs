//! Readiness for `/healthz`: the [`Health`] trait the HTTP endpoint asks, and [`ProbeHealth`],
//! the relay's own answer (upstream MTA reachable and greeting, audit log writable; copies waiting
//! in the spool are reported as information, and fail readiness only past a configured age).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// The future a [`Health`] check returns: `Ok(())` when ready, else the reason(s) for a person.
pub type HealthFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Whether the relay can take mail right now. Object-safe so the server can hold an
/// `Arc<dyn Health>` without an async-trait crate.
pub trait Health: Send + Sync {
    fn check(&self) -> HealthFuture<'_>;

    /// Lines shown after `ok` when ready but degraded (e.g. copies waiting in the spool).
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// What the spool holds, as `/healthz` reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStatus {
    pub entries: usize,
    pub oldest_age: Duration,
}

/// How the probe learns the spool's state (typically `move || spool.status()`).
pub type SpoolStatusFn = Arc<dyn Fn() -> SpoolStatus + Send + Sync>;

/// Ready when the upstream accepts a TCP connection (and, unless it speaks implicit TLS, greets
/// with 220) and the audit log is writable. The upstream answer is cached for `cache_for` so
/// frequent probes (Docker, Kubernetes, a load balancer) do not each open an SMTP session.
pub struct ProbeHealth {
    upstream: String,
    timeout: Duration,
    expect_greeting: bool,
    audit_writable: Arc<dyn Fn() -> bool + Send + Sync>,
    audit_path: String,
    cache_for: Duration,
    cached: Mutex<Option<(Instant, Result<(), String>)>>,
    spool: Option<(SpoolStatusFn, Option<Duration>)>,
}

impl ProbeHealth {
    /// `upstream` is `host:port`; `expect_greeting` is false for an implicit-TLS upstream, whose
    /// greeting arrives only after a handshake; `audit_writable` is typically
    /// `move || audit_log.is_writable()`, `audit_path` is only shown in the reason.
    pub fn new(
        upstream: impl Into<String>,
        timeout: Duration,
        expect_greeting: bool,
        audit_path: impl Into<String>,
        audit_writable: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> ProbeHealth {
        ProbeHealth {
            upstream: upstream.into(),
            timeout,
            expect_greeting,
            audit_writable,
            audit_path: audit_path.into(),
            cache_for: Duration::from_secs(5),
            cached: Mutex::new(None),
            spool: None,
        }
    }

    /// Reports the spool: copies waiting are a note on a ready answer; readiness fails only once
    /// the oldest waited longer than `max_age` (None = never).
    pub fn spool(mut self, status: SpoolStatusFn, max_age: Option<Duration>) -> ProbeHealth {
        self.spool = Some((status, max_age));
        self
    }

    /// How long an upstream probe result is reused (default 5 s; zero = probe every time).
    pub fn cache_for(mut self, d: Duration) -> ProbeHealth {
        self.cache_for = d;
        self
    }

    async fn upstream_status(&self) -> Result<(), String> {
        // Holding the lock across the probe makes concurrent checks share one probe.
        let mut cached = self.cached.lock().await;
        if let Some((at, result)) = cached.as_ref() {
            if at.elapsed() < self.cache_for {
                return result.clone();
            }
        }
        let result = match tokio::time::timeout(self.timeout, self.probe_upstream()).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} s", self.timeout.as_secs_f32())),
        }
        .map_err(|why| format!("upstream unreachable: {}: {why}", self.upstream));
        *cached = Some((Instant::now(), result.clone()));
        result
    }

    async fn probe_upstream(&self) -> Result<(), String> {
        let stream = TcpStream::connect(&self.upstream)
            .await
            .map_err(|e| e.to_string())?;
        if !self.expect_greeting {
            return Ok(());
        }
        let mut stream = BufReader::new(stream);
        // A greeting may be multi-line ("220-..."): read to its last line.
        loop {
            let mut line = String::new();
            let n = (&mut stream)
                .take(1024)
                .read_line(&mut line)
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed the connection before greeting".into());
            }
            let code = line.get(..3).unwrap_or("");
            if code != "220" {
                return Err(format!("greeted with `{}`", line.trim_end()));
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
        // Polite goodbye so the MTA logs a clean QUIT, not a lost connection.
        let _ = stream.get_mut().write_all(b"QUIT\r\n").await;
        Ok(())
    }
}

impl Health for ProbeHealth {
    fn check(&self) -> HealthFuture<'_> {
        Box::pin(async move {
            let mut problems = Vec::new();
            if let Err(why) = self.upstream_status().await {
                problems.push(why);
            }
            if !(self.audit_writable)() {
                problems.push(format!("audit log not writable: {}", self.audit_path));
            }
            if let Some((status, Some(max_age))) = &self.spool {
                let st = status();
                if st.entries > 0 && st.oldest_age > *max_age {
                    problems.push(format!(
                        "spool: oldest copy waiting {} s, over spool.health_max_age_seconds ({} s)",
                        st.oldest_age.as_secs(),
                        max_age.as_secs()
                    ));
                }
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems.join("; "))
            }
        })
    }

    fn notes(&self) -> Vec<String> {
        // Directories down: the relay works on their last good answer (policy::directory).
        let mut notes = crate::policy::directory::health_notes();
        let Some((status, _)) = &self.spool else {
            return notes;
        };
        let st = status();
        if st.entries == 0 {
            return notes;
        }
        notes.push(format!(
            "degraded: spool holds {} copies for retry, oldest waiting {} s",
            st.entries,
            st.oldest_age.as_secs()
        ));
        notes
    }
}

/// Always ready; for tests and for setups that check health elsewhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct AlwaysReady;

impl Health for AlwaysReady {
    fn check(&self) -> HealthFuture<'_> {
        Box::pin(async { Ok(()) })
    }
}
