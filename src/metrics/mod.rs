//! Metrics: Prometheus counters for every stage and the HTTP endpoint serving /metrics and /healthz.
//!
//! [`Metrics`] owns one prometheus-client registry (every name prefixed `bccguard_`) and offers one
//! method per event the relay reports, so call sites never build label sets by hand. Label values
//! come from fixed lists or from the admin's config (listener addresses, rule names): never from
//! peer input, so a client cannot blow up the number of series.
//! [`http`] serves the registry and readiness; [`health`] has the readiness probe.

pub mod cert;
pub mod health;
pub mod http;
pub mod observe;

use std::fmt;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::config::{Action, Mode};

pub use health::{Health, HealthFuture, ProbeHealth, SpoolStatus, SpoolStatusFn};
pub use http::serve;
pub use observe::{InFlight, Observe};

/// Content type of [`Metrics::encode`] (Prometheus text exposition 0.0.4).
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of [`Metrics::encode_openmetrics`].
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why the relay refused something; the `reason` label of `bccguard_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// A policy rule with action `reject` (550 5.7.1).
    Policy,
    /// A rewrite would break a DKIM signature and `policy.dkim.on_rewrite = "reject"`.
    Dkim,
    /// Relaying attempt from outside `relay_networks` without AUTH (554 5.7.1).
    RelayDenied,
    /// Wrong credentials.
    AuthFailed,
    /// The listener needs AUTH (or STARTTLS first) and the client went on without it.
    AuthRequired,
    /// SIZE parameter or message body over `max_message_size`.
    Size,
    /// RCPT beyond `max_recipients`.
    TooManyRecipients,
    /// Bare CR/LF, over-long lines or other malformed DATA/BDAT content.
    BadData,
    /// Syntax errors and out-of-sequence commands.
    Protocol,
    /// The audit record could not be written, so the message was refused with 451.
    AuditUnavailable,
    /// Upstream temporary failure or timeout, relayed as 451.
    UpstreamTemp,
    /// Upstream permanent failure, relayed with its own code.
    UpstreamPerm,
    /// `max_connections` reached (421).
    ConnectionLimit,
    /// A client too slow between commands or during DATA.
    Timeout,
    /// A missing or invalid PROXY protocol header, or one from outside `proxy_networks`.
    ProxyHeader,
    /// The relay is shutting down (421).
    Shutdown,
    /// A header the relay cannot read for sure (550 5.6.0): it could hide recipients.
    Unreadable,
    /// The relay's own fault (e.g. its DKIM key failed to sign): 451 4.3.0.
    Internal,
}

impl RejectReason {
    pub const ALL: [RejectReason; 18] = [
        RejectReason::Policy,
        RejectReason::Dkim,
        RejectReason::RelayDenied,
        RejectReason::AuthFailed,
        RejectReason::AuthRequired,
        RejectReason::Size,
        RejectReason::TooManyRecipients,
        RejectReason::BadData,
        RejectReason::Protocol,
        RejectReason::AuditUnavailable,
        RejectReason::UpstreamTemp,
        RejectReason::UpstreamPerm,
        RejectReason::ConnectionLimit,
        RejectReason::Timeout,
        RejectReason::ProxyHeader,
        RejectReason::Shutdown,
        RejectReason::Unreadable,
        RejectReason::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Policy => "policy",
            RejectReason::Dkim => "dkim",
            RejectReason::RelayDenied => "relay_denied",
            RejectReason::AuthFailed => "auth_failed",
            RejectReason::AuthRequired => "auth_required",
            RejectReason::Size => "size",
            RejectReason::TooManyRecipients => "too_many_recipients",
            RejectReason::BadData => "bad_data",
            RejectReason::Protocol => "protocol",
            RejectReason::AuditUnavailable => "audit_unavailable",
            RejectReason::UpstreamTemp => "upstream_temp",
            RejectReason::UpstreamPerm => "upstream_perm",
            RejectReason::ConnectionLimit => "connection_limit",
            RejectReason::Timeout => "timeout",
            RejectReason::ProxyHeader => "proxy_header",
            RejectReason::Shutdown => "shutdown",
            RejectReason::Unreadable => "unreadable_header",
            RejectReason::Internal => "internal",
        }
    }
}

impl std::str::FromStr for RejectReason {
    type Err = String;

    /// The label value back to the reason (`"relay_denied"` → `RelayDenied`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RejectReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a reject reason"))
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to a copy in the durable spool; the `event` label of `bccguard_spool_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpoolEvent {
    /// A copy was made durable in the spool.
    Enqueued,
    /// The upstream accepted a spooled copy; it left the spool.
    Delivered,
    /// A retry failed temporarily; the copy waits for the next one.
    Deferred,
    /// Permanent failure or lifetime over: a delivery report to the sender replaced the copy.
    Bounced,
    /// A null-sender copy (itself a report) could not be delivered and was dropped.
    Dropped,
    /// A damaged file (crash mid-write, disk fault) was moved aside to `corrupt/`, never sent.
    Quarantined,
}

impl SpoolEvent {
    pub const ALL: [SpoolEvent; 6] = [
        SpoolEvent::Enqueued,
        SpoolEvent::Delivered,
        SpoolEvent::Deferred,
        SpoolEvent::Bounced,
        SpoolEvent::Dropped,
        SpoolEvent::Quarantined,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SpoolEvent::Enqueued => "enqueued",
            SpoolEvent::Delivered => "delivered",
            SpoolEvent::Deferred => "deferred",
            SpoolEvent::Bounced => "bounced",
            SpoolEvent::Dropped => "dropped",
            SpoolEvent::Quarantined => "quarantined",
        }
    }
}
/// Values of the `result` label of `bccguard_auth_attempts_total`.
const AUTH_RESULTS: [&str; 3] = ["ok", "failed", "blocked"];

/// Which side of the relay a TLS handshake was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsSide {
    /// A client connecting to us (STARTTLS or implicit TLS listener).
    Inbound,
    /// Us connecting to the upstream MTA.
    Upstream,
}

impl TlsSide {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsSide::Inbound => "inbound",
            TlsSide::Upstream => "upstream",
        }
    }
}

/// The `class` label of `bccguard_upstream_replies_total` for an SMTP reply code.
/// Anything outside 2xx/4xx/5xx (no reply, a 3xx where none belongs) counts as `error`.
pub fn reply_class(code: u16) -> &'static str {
    match code {
        200..=299 => "2xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "error",
    }
}

fn action_str(action: Action) -> &'static str {
    action.as_str()
}

fn mode_str(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "enforce",
        Mode::Monitor => "monitor",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageLabels {
    action: &'static str,
    rule: String,
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsLabels {
    side: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SpoolEventLabels {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    /// The certificate file as configured (`tls.certificate`).
    file: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// Every metric the relay exports. Share it as `Arc<Metrics>`; all methods take `&self` and are
/// lock-free apart from the first use of a new label set.
pub struct Metrics {
    registry: Registry,
    sessions: Family<ListenerLabels, Counter>,
    sessions_active: Gauge,
    messages: Family<MessageLabels, Counter>,
    upstream_replies: Family<ClassLabels, Counter>,
    audit_write_seconds: Histogram,
    audit_write_errors: Counter,
    tls_handshakes: Family<TlsLabels, Counter>,
    rejected: Family<ReasonLabels, Counter>,
    inflight_bytes: Gauge,
    spool_entries: Gauge,
    spool_bytes: Gauge,
    spool_oldest_age_seconds: Gauge,
    spool_events: Family<SpoolEventLabels, Counter>,
    auth_cache: Family<ResultLabels, Counter>,
    auth_attempts: Family<ResultLabels, Counter>,
    tls_sessions: Family<KindLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    last_reload_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    tls_certificate_expiry: Family<CertificateLabels, Gauge>,
    upstream_latency_seconds: Histogram,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("bccguard"),
            sessions: Family::default(),
            sessions_active: Gauge::default(),
            messages: Family::default(),
            upstream_replies: Family::default(),
            // fsync latency: 0.5 ms .. ~4 s, doubling.
            audit_write_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            audit_write_errors: Counter::default(),
            tls_handshakes: Family::default(),
            rejected: Family::default(),
            inflight_bytes: Gauge::default(),
            spool_entries: Gauge::default(),
            spool_bytes: Gauge::default(),
            spool_oldest_age_seconds: Gauge::default(),
            spool_events: Family::default(),
            auth_cache: Family::default(),
            auth_attempts: Family::default(),
            tls_sessions: Family::default(),
            reloads: Family::default(),
            last_reload_seconds: Gauge::default(),
            tls_certificate_expiry: Family::default(),
            // End of DATA to the upstream's reply: 1 ms .. ~65 s, doubling (content filters
            // behind the upstream can take tens of seconds).
            upstream_latency_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
        };
        // prometheus-client appends `_info`: this is `bccguard_build_info`.
        m.registry.register(
            "build",
            "bccguard version",
            Info::new(VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        m.registry.register(
            "sessions",
            "SMTP sessions opened, by listener address",
            m.sessions.clone(),
        );
        m.registry.register(
            "sessions_active",
            "SMTP sessions currently open",
            m.sessions_active.clone(),
        );
        m.registry.register(
            "messages",
            "Messages decided, by action, matching rule (empty: none) and mode; in monitor mode the action is what would have been done",
            m.messages.clone(),
        );
        m.registry.register(
            "upstream_replies",
            "Final replies from the upstream MTA to a message, by class (error: no usable reply)",
            m.upstream_replies.clone(),
        );
        m.registry.register(
            "audit_write_seconds",
            "Time to append and fsync one audit record",
            m.audit_write_seconds.clone(),
        );
        m.registry.register(
            "audit_write_errors",
            "Audit records that could not be written",
            m.audit_write_errors.clone(),
        );
        m.registry.register(
            "tls_handshakes",
            "TLS handshakes, by side (inbound, upstream) and result (ok, failed)",
            m.tls_handshakes.clone(),
        );
        m.registry.register(
            "rejected",
            "Commands, messages and connections refused, by reason",
            m.rejected.clone(),
        );
        m.registry.register(
            "inflight_bytes",
            "Bytes of messages currently held in memory",
            m.inflight_bytes.clone(),
        );
        m.registry.register(
            "spool_entries",
            "Split copies waiting in the durable spool for a retry",
            m.spool_entries.clone(),
        );
        m.registry.register(
            "spool_bytes",
            "Bytes on disk of the copies waiting in the spool",
            m.spool_bytes.clone(),
        );
        m.registry.register(
            "spool_oldest_age_seconds",
            "Age of the oldest copy waiting in the spool (0 when empty)",
            m.spool_oldest_age_seconds.clone(),
        );
        m.registry.register(
            "spool_events",
            "Spooled copies by what happened to them (enqueued, delivered, deferred, bounced, dropped, quarantined)",
            m.spool_events.clone(),
        );
        for event in SpoolEvent::ALL {
            let _ = m.spool_events.get_or_create(&SpoolEventLabels {
                event: event.as_str(),
            });
        }
        m.registry.register(
            "auth_cache",
            "AUTH credential cache lookups, by result (hit: no password hash needed, miss)",
            m.auth_cache.clone(),
        );
        m.registry.register(
            "auth_attempts",
            "AUTH attempts, by result (ok, failed, blocked: client or user temporarily blocked)",
            m.auth_attempts.clone(),
        );
        m.registry.register(
            "tls_inbound_sessions",
            "Inbound TLS handshakes completed, by kind (full, resumed)",
            m.tls_sessions.clone(),
        );
        m.registry.register(
            "reloads",
            "Configuration reloads (SIGHUP), by result (ok; failed: the running configuration was kept)",
            m.reloads.clone(),
        );
        for result in ["ok", "failed"] {
            let _ = m.reloads.get_or_create(&ResultLabels { result });
        }
        m.registry.register(
            "last_reload_duration_seconds",
            "Time the last reload took (successful or not)",
            m.last_reload_seconds.clone(),
        );
        m.registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "notAfter of the served TLS certificate chain (the earliest in the file), in seconds since the Unix epoch; set at start and on reload",
            m.tls_certificate_expiry.clone(),
        );
        m.registry.register(
            "upstream_latency_seconds",
            "Time from sending the end of a message's DATA to the upstream's reply",
            m.upstream_latency_seconds.clone(),
        );
        // Directory groups (policy::directory): the series live there, shared by these clones.
        let dir = &*crate::policy::directory::METRICS;
        m.registry.register(
            "directory_up",
            "Whether the last group lookup in each [[policy.directory]] succeeded (0: serving the last good answer)",
            dir.up.clone(),
        );
        m.registry.register(
            "directory_lookups",
            "Group refresh rounds against each directory",
            dir.lookups.clone(),
        );
        m.registry.register(
            "directory_failures",
            "Group refresh rounds that failed, per directory",
            dir.failures.clone(),
        );
        for result in ["hit", "miss"] {
            let _ = m.auth_cache.get_or_create(&ResultLabels { result });
        }
        for result in AUTH_RESULTS {
            let _ = m.auth_attempts.get_or_create(&ResultLabels { result });
        }
        for kind in ["full", "resumed"] {
            let _ = m.tls_sessions.get_or_create(&KindLabels { kind });
        }
        // Series with fixed label values exist from the start, so rate() and alerts see a 0
        // instead of a missing series until the first event.
        for reason in RejectReason::ALL {
            let _ = m.rejected.get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            });
        }
        for class in ["2xx", "4xx", "5xx", "error"] {
            let _ = m.upstream_replies.get_or_create(&ClassLabels { class });
        }
        for side in [TlsSide::Inbound, TlsSide::Upstream] {
            for result in ["ok", "failed"] {
                let _ = m.tls_handshakes.get_or_create(&TlsLabels {
                    side: side.as_str(),
                    result,
                });
            }
        }
        m
    }

    /// Creates the per-listener session series at 0 (call once per configured listener).
    pub fn register_listener(&self, listener: &str) {
        let _ = self.sessions.get_or_create(&ListenerLabels {
            listener: listener.to_string(),
        });
    }

    /// Creates the message series of each rule at 0 for `mode`, so dashboards list every rule.
    pub fn register_rules<'a>(
        &self,
        rules: impl IntoIterator<Item = (&'a str, Action)>,
        mode: Mode,
    ) {
        for (rule, action) in rules {
            let _ = self.messages.get_or_create(&MessageLabels {
                action: action_str(action),
                rule: rule.to_string(),
                mode: mode_str(mode),
            });
        }
    }

    /// A client connected to `listener` (its configured address). Counts the session and keeps
    /// it in `sessions_active` until the returned guard is dropped.
    #[must_use = "the session counts as active only while the guard lives"]
    pub fn session_opened(&self, listener: &str) -> SessionGuard {
        self.sessions
            .get_or_create(&ListenerLabels {
                listener: listener.to_string(),
            })
            .inc();
        self.sessions_active.inc();
        SessionGuard {
            active: self.sessions_active.clone(),
        }
    }

    /// One message decided: `action` is the rule's action (or `Accept` with `rule = None` when no
    /// rule matched); in monitor mode it is what would have been done. Count a split once.
    pub fn message(&self, action: Action, rule: Option<&str>, mode: Mode) {
        self.messages
            .get_or_create(&MessageLabels {
                action: action_str(action),
                rule: rule.unwrap_or("").to_string(),
                mode: mode_str(mode),
            })
            .inc();
    }

    /// The upstream's final reply to a message (to the end of DATA, or the reply that ended the
    /// transaction early).
    pub fn upstream_reply(&self, code: u16) {
        self.upstream_replies
            .get_or_create(&ClassLabels {
                class: reply_class(code),
            })
            .inc();
    }

    /// [`Metrics::upstream_reply`] for `Some(code)`, [`Metrics::upstream_error`] for `None`.
    pub fn upstream_outcome(&self, code: Option<u16>) {
        match code {
            Some(code) => self.upstream_reply(code),
            None => self.upstream_error(),
        }
    }

    /// No usable upstream reply: connect failure, timeout, TLS failure, broken connection.
    pub fn upstream_error(&self) {
        self.upstream_replies
            .get_or_create(&ClassLabels { class: "error" })
            .inc();
    }

    /// One audit record appended and fsynced in `elapsed`.
    pub fn audit_write(&self, elapsed: Duration) {
        self.audit_write_seconds.observe(elapsed.as_secs_f64());
    }

    /// One audit record that could not be written.
    pub fn audit_write_failed(&self) {
        self.audit_write_errors.inc();
    }

    /// A TLS handshake finished (`ok`) or failed.
    pub fn tls_handshake(&self, side: TlsSide, ok: bool) {
        self.tls_handshakes
            .get_or_create(&TlsLabels {
                side: side.as_str(),
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
    }

    /// One AUTH credential cache lookup.
    pub fn auth_cache(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.auth_cache
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// One AUTH attempt answered: `result` is one of `ok`, `failed`, `blocked`.
    pub fn auth_attempt(&self, result: &str) {
        if let Some(result) = AUTH_RESULTS.into_iter().find(|r| *r == result) {
            self.auth_attempts
                .get_or_create(&ResultLabels { result })
                .inc();
        }
    }

    /// An inbound TLS handshake completed, resuming an earlier session or not.
    pub fn tls_session(&self, resumed: bool) {
        let kind = if resumed { "resumed" } else { "full" };
        self.tls_sessions.get_or_create(&KindLabels { kind }).inc();
    }

    /// Something was refused for `reason`.
    pub fn rejected(&self, reason: RejectReason) {
        self.rejected
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Starts holding `bytes` of a message in memory; the guard releases them when dropped and
    /// can grow as more data arrives.
    #[must_use = "the bytes count as held only while the guard lives"]
    pub fn hold_bytes(&self, bytes: u64) -> BytesHeld {
        let mut held = BytesHeld {
            gauge: self.inflight_bytes.clone(),
            bytes: 0,
        };
        held.add(bytes);
        held
    }

    /// The spool now holds `entries` copies of `bytes` in all, the oldest waiting for `oldest_age`.
    pub fn spool_state(&self, entries: usize, bytes: u64, oldest_age: Duration) {
        self.spool_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.spool_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.spool_oldest_age_seconds
            .set(i64::try_from(oldest_age.as_secs()).unwrap_or(i64::MAX));
    }

    /// One spooled copy went through `event`.
    pub fn spool_event(&self, event: SpoolEvent) {
        self.spool_events
            .get_or_create(&SpoolEventLabels {
                event: event.as_str(),
            })
            .inc();
    }

    /// A reload (SIGHUP) finished in `elapsed`: applied (`ok`) or refused.
    pub fn reload(&self, ok: bool, elapsed: Duration) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
        self.last_reload_seconds.set(elapsed.as_secs_f64());
    }

    /// The served certificate in `file` expires at `not_after` (seconds since the epoch); `None`
    /// = no TLS certificate is served (any earlier series is removed).
    pub fn tls_certificate_expiry(&self, certificate: Option<(&str, i64)>) {
        self.tls_certificate_expiry.clear();
        if let Some((file, not_after)) = certificate {
            self.tls_certificate_expiry
                .get_or_create(&CertificateLabels {
                    file: file.to_string(),
                })
                .set(not_after);
        }
    }

    /// The upstream replied to the end of DATA `elapsed` after it was sent.
    pub fn upstream_latency(&self, elapsed: Duration) {
        self.upstream_latency_seconds.observe(elapsed.as_secs_f64());
    }

    /// Current value of `bccguard_spool_entries`.
    pub fn spool_entries(&self) -> i64 {
        self.spool_entries.get()
    }

    /// Current value of `bccguard_sessions_active` (for logs and tests).
    pub fn sessions_active(&self) -> i64 {
        self.sessions_active.get()
    }

    /// Current value of `bccguard_inflight_bytes`.
    pub fn inflight_bytes(&self) -> i64 {
        self.inflight_bytes.get()
    }

    /// Prometheus text exposition format 0.0.4 ([`PROMETHEUS_TEXT_CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail; an Err could only come from a broken metric.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// OpenMetrics 1.0 text, ending in `# EOF` ([`OPENMETRICS_CONTENT_TYPE`]).
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::with_capacity(4096);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Keeps one session in `bccguard_sessions_active`; see [`Metrics::session_opened`].
#[derive(Debug)]
pub struct SessionGuard {
    active: Gauge,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// Message bytes counted in `bccguard_inflight_bytes`; see [`Metrics::hold_bytes`].
#[derive(Debug)]
pub struct BytesHeld {
    gauge: Gauge,
    bytes: i64,
}

impl BytesHeld {
    /// More bytes of the same message arrived.
    pub fn add(&mut self, bytes: u64) {
        let n = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.bytes = self.bytes.saturating_add(n);
        self.gauge.inc_by(n);
    }

    /// Bytes this guard currently holds.
    pub fn bytes(&self) -> u64 {
        u64::try_from(self.bytes).unwrap_or(0)
    }
}

impl Drop for BytesHeld {
    fn drop(&mut self) {
        self.gauge.dec_by(self.bytes);
    }
}
