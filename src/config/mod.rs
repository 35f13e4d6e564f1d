//! Configuration: the admin's TOML file plus `BCCGUARD__SECTION__KEY` environment overrides,
//! deserialised into typed sections and checked for mistakes that would be dangerous at run time
//! (an open relay, a TLS listener without a certificate, a rule that can never match).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub mod checks;
mod choice;
mod load;
pub mod networks;
pub mod org;

pub use load::{config_path, ordinal, Origins, Pos, CONFIG_ENV, DEFAULT_CONFIG_PATH, ENV_PREFIX};

use choice::choices;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}{hint}: {source}")]
    Read {
        path: String,
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{at}: not valid TOML: {why}")]
    Syntax { at: String, why: String },
    #[error("environment variable {var}: {why}")]
    Env { var: String, why: String },
    /// `at` is `file:line:col` or `environment variable NAME`; `key` is already worded.
    #[error("{at}: key {key}: {why}")]
    Invalid {
        at: String,
        key: String,
        why: String,
    },
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub auth: AuthConfig,
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// Durable spool for split copies the upstream could not take in-session (`[spool]`).
    #[serde(default)]
    pub spool: SpoolConfig,
    /// The file this was loaded from, for messages; not a key.
    #[serde(skip)]
    pub source_path: PathBuf,
    /// Where each value came from (file position or environment variable); not a key.
    #[serde(skip)]
    pub origins: Origins,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub hostname: String,
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    #[serde(default = "default_max_recipients")]
    pub max_recipients: usize,
    #[serde(default)]
    pub relay_networks: Vec<String>,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Longest an idle client may wait between commands (RFC 5321 4.5.3.2.7: 5 minutes).
    #[serde(default = "default_command_timeout")]
    pub command_timeout_seconds: u64,
    /// Longest between two reads while a message is being received (RFC 5321 4.5.3.2.6: 3 minutes).
    #[serde(default = "default_data_timeout")]
    pub data_timeout_seconds: u64,
    /// How long a graceful stop waits for transactions in flight before closing anyway.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_seconds: u64,
    /// Log verbosity: `error`, `warn`, `info`, `debug`, `trace`, or a `RUST_LOG`-style filter
    /// (`info,bccguard::relay=debug`). `RUST_LOG`, when set, wins.
    #[serde(default)]
    pub log_level: Option<String>,
    /// Error replies (4xx/5xx) one session may get before it is disconnected with 421
    /// (Postfix `smtpd_hard_error_limit`, also 20). 0 = no limit.
    #[serde(default = "default_hard_error_limit")]
    pub hard_error_limit: u32,
    /// Simultaneous connections one client address may hold (Postfix
    /// `smtpd_client_connection_count_limit`, also 50). Clients in `relay_networks` are exempt,
    /// as Postfix exempts `$mynetworks`. 0 = no limit.
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: usize,
    /// Slowest DATA/BDAT transfer tolerated, bytes per second (Postfix `smtpd_min_data_rate`,
    /// also 500): the transfer's deadline starts at `data_timeout_seconds` and each byte received
    /// extends it by 1/rate seconds, so trickling one byte at a time cannot hold a session open.
    #[serde(default = "default_min_data_rate")]
    pub min_data_rate: u64,
}

fn default_max_connections_per_client() -> usize {
    50
}
fn default_min_data_rate() -> u64 {
    500
}

fn default_hard_error_limit() -> u32 {
    20
}

fn default_max_message_size() -> usize {
    26_214_400
}
fn default_max_recipients() -> usize {
    1000
}
fn default_max_connections() -> usize {
    1000
}
fn default_command_timeout() -> u64 {
    300
}
fn default_data_timeout() -> u64 {
    180
}
fn default_shutdown_grace() -> u64 {
    30
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    None,
    Starttls,
    Implicit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthRequirement {
    None,
    Optional,
    Required,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: String,
    #[serde(default = "default_listener_tls")]
    pub tls: TlsMode,
    #[serde(default = "default_listener_auth")]
    pub auth: AuthRequirement,
    /// Offer AUTH without TLS. Only honoured on a loopback address.
    #[serde(default)]
    pub allow_cleartext_auth: bool,
    /// Expect a HAProxy PROXY protocol (v1 or v2) header first; only from `proxy_networks`.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Load balancers allowed to send a PROXY header (required when `proxy_protocol` is on).
    #[serde(default)]
    pub proxy_networks: Vec<String>,
}

fn default_listener_tls() -> TlsMode {
    TlsMode::Starttls
}
fn default_listener_auth() -> AuthRequirement {
    AuthRequirement::Optional
}

impl ListenerConfig {
    pub fn socket_addr(&self) -> Result<SocketAddr, String> {
        self.address
            .parse()
            .map_err(|e| format!("`{}` is not an IP:port address ({e})", self.address))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// How long a returning client may resume its TLS session (session tickets and the server
    /// session cache); 0 turns resumption off. Capped at 6 hours (ticket key rotation).
    #[serde(default = "default_tls_session_lifetime")]
    pub session_ticket_lifetime_seconds: u64,
}

fn default_tls_session_lifetime() -> u64 {
    // Postfix smtpd_tls_session_cache_timeout.
    3600
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `user:hash` lines, hashes made by `bccguard passwd` (argon2id PHC strings).
    #[serde(default)]
    pub users_file: Option<PathBuf>,
    /// Refuse a MAIL FROM that the authenticated login does not own (Postfix
    /// `reject_sender_login_mismatch`). On by default: policy exemptions by sender mean nothing
    /// if a login can claim any sender.
    #[serde(default = "default_true")]
    pub enforce_sender_login: bool,
    /// The sender addresses (or `*@domain` patterns) each login may use, besides the login
    /// itself when it is an address (Postfix `smtpd_sender_login_maps`), e.g.
    /// `alice = ["alice@example.org", "press@example.org"]`.
    #[serde(default)]
    pub senders: std::collections::BTreeMap<String, Vec<String>>,
    /// How long a verified user+password is remembered (keyed digest) so a returning client
    /// skips argon2; 0 = always hash. Emptied when the users file is reloaded.
    #[serde(default = "default_auth_cache_ttl")]
    pub cache_ttl_seconds: u64,
    /// Password hashes computed at once (each argon2 check holds about 19 MiB); 0 = one per core.
    #[serde(default)]
    pub max_concurrent_checks: usize,
    /// Hash checks one client address (IPv6: its /64) may have queued or running at once.
    #[serde(default = "default_auth_client_concurrency")]
    pub client_concurrent_checks: usize,
    /// Failures are counted over this sliding window.
    #[serde(default = "default_auth_failure_window")]
    pub failure_window_seconds: u64,
    /// Failures (per client address or user) answered at once; each later failure waits twice as
    /// long as the one before (1 s, 2 s, 4 s, ...) up to `max_failure_delay_seconds`.
    #[serde(default = "default_auth_free_failures")]
    pub free_failures: u32,
    #[serde(default = "default_auth_max_delay")]
    pub max_failure_delay_seconds: u64,
    /// Failures from one client address within the window before it is blocked; 0 = never.
    #[serde(default = "default_auth_client_block")]
    pub client_block_after_failures: u32,
    /// Failures for one username (from anywhere) within the window before AUTH as that user is
    /// refused; 0 = never. Higher than the client limit: it also locks out the real user.
    #[serde(default = "default_auth_user_block")]
    pub user_block_after_failures: u32,
    /// How long a block lasts.
    #[serde(default = "default_auth_block_seconds")]
    pub block_seconds: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            users_file: None,
            enforce_sender_login: true,
            senders: Default::default(),
            cache_ttl_seconds: default_auth_cache_ttl(),
            max_concurrent_checks: 0,
            client_concurrent_checks: default_auth_client_concurrency(),
            failure_window_seconds: default_auth_failure_window(),
            free_failures: default_auth_free_failures(),
            max_failure_delay_seconds: default_auth_max_delay(),
            client_block_after_failures: default_auth_client_block(),
            user_block_after_failures: default_auth_user_block(),
            block_seconds: default_auth_block_seconds(),
        }
    }
}

fn default_auth_cache_ttl() -> u64 {
    3600
}
fn default_auth_client_concurrency() -> usize {
    2
}
fn default_auth_failure_window() -> u64 {
    600
}
fn default_auth_free_failures() -> u32 {
    1
}
fn default_auth_max_delay() -> u64 {
    16
}
fn default_auth_client_block() -> u32 {
    10
}
fn default_auth_user_block() -> u32 {
    20
}
fn default_auth_block_seconds() -> u64 {
    600
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `host:port` of the relay that delivers for us.
    pub address: String,
    #[serde(default = "default_upstream_tls")]
    pub tls: TlsMode,
    /// Per-command timeout, and the connect timeout.
    #[serde(default = "default_upstream_timeout")]
    pub timeout_seconds: u64,
    /// How long to wait for the upstream's reply to the end of DATA: RFC 5321 4.5.3.2.6 says
    /// 10 minutes, because the upstream may be doing its own checks; giving up sooner makes the
    /// client send again a message the upstream then delivers twice.
    #[serde(default = "default_upstream_data_reply_timeout")]
    pub data_reply_timeout_seconds: u64,
    /// Name to verify the upstream's certificate against; defaults to the host part of `address`.
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// PEM file of the CA(s) that sign the upstream's certificate, instead of the system trust store.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any upstream certificate (testing only; logged loudly).
    #[serde(default)]
    pub allow_invalid_certs: bool,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

fn default_upstream_tls() -> TlsMode {
    TlsMode::None
}
fn default_upstream_timeout() -> u64 {
    60
}
fn default_upstream_data_reply_timeout() -> u64 {
    600
}

impl UpstreamConfig {
    pub fn host_port(&self) -> Result<(String, u16), String> {
        let (host, port) = self
            .address
            .rsplit_once(':')
            .ok_or_else(|| format!("`{}` has no :port", self.address))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{}` has no valid port", self.address))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("`{}` has no host", self.address));
        }
        Ok((host.to_string(), port))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Monitor,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        self.as_choice()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Accept,
    Rewrite,
    Split,
    Reject,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Rewrite => "rewrite",
            Action::Split => "split",
            Action::Reject => "reject",
        }
    }
}

/// What a rewritten message shows in place of its recipients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RewriteTo {
    /// `To: undisclosed-recipients:;`
    #[default]
    Undisclosed,
    /// `To:` the envelope sender's own address.
    Sender,
}

/// What to do when a rewrite or split would break a DKIM signature that covers To or Cc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DkimOnRewrite {
    /// Refuse the message (`550 5.7.1`): the sender must resend with Bcc.
    #[default]
    Reject,
    /// Sign the altered message with the relay's own key (needs `[policy.dkim]` key settings).
    Resign,
    /// Forward with the broken signature, logged as a warning on every message.
    Forward,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    #[serde(default)]
    pub on_rewrite: DkimOnRewrite,
    /// PEM (PKCS#8) RSA or Ed25519 private key for `resign`.
    #[serde(default)]
    pub private_key: Option<PathBuf>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub selector: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub internal_domains: Vec<String>,
    /// Whether `example.org` in `internal_domains` also covers `mail.example.org`.
    #[serde(default = "default_true")]
    pub include_subdomains: bool,
    #[serde(default)]
    pub rewrite_to: RewriteTo,
    /// Name of a header added to altered messages (e.g. `X-BCCGuard`); none when unset.
    #[serde(default)]
    pub trace_header: Option<String>,
    #[serde(default)]
    pub dkim: DkimConfig,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleConfig>,
    // Organisation policy (issue 15): groups, directories, override, notice templates.
    #[serde(default)]
    pub groups: std::collections::BTreeMap<String, org::GroupConfig>,
    #[serde(default, rename = "directory")]
    pub directories: Vec<org::DirectoryConfig>,
    #[serde(default, rename = "override")]
    pub override_: org::OverrideConfig,
    #[serde(default)]
    pub notices: org::NoticesConfig,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            mode: Mode::Enforce,
            internal_domains: Vec::new(),
            include_subdomains: true,
            rewrite_to: RewriteTo::Undisclosed,
            trace_header: None,
            dkim: DkimConfig::default(),
            rules: Vec::new(),
            groups: Default::default(),
            directories: Vec::new(),
            override_: Default::default(),
            notices: Default::default(),
        }
    }
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    #[serde(default)]
    pub min_visible: Option<usize>,
    #[serde(default)]
    pub min_visible_external: Option<usize>,
    #[serde(default)]
    pub min_external_domains: Option<usize>,
    /// Rule applies only to these senders (`user@domain` or `*@domain`); empty = everyone.
    #[serde(default)]
    pub senders: Vec<String>,
    #[serde(default)]
    pub except_senders: Vec<String>,
    /// Visible addresses that do not count (e.g. distribution lists that are meant to be seen).
    #[serde(default)]
    pub except_recipients: Vec<String>,
    pub action: Action,
    /// Custom text for `reject` (replaces the default sentence).
    #[serde(default)]
    pub message: Option<String>,
    /// After a rewrite or split, send the sender a short notice of what was done and why.
    #[serde(default)]
    pub notify_sender: bool,
    // Conditions on who sent it (issue 15), compiled by `policy::sender`.
    /// SMTP AUTH login names (or address patterns); a message without AUTH never matches.
    #[serde(default)]
    pub auth_users: Vec<String>,
    #[serde(default)]
    pub except_auth_users: Vec<String>,
    /// Patterns for the address in the From: field.
    #[serde(default)]
    pub from_header: Vec<String>,
    #[serde(default)]
    pub except_from_header: Vec<String>,
    /// Names from `[policy.groups]`.
    #[serde(default)]
    pub sender_groups: Vec<String>,
    #[serde(default)]
    pub except_sender_groups: Vec<String>,
    /// Whose membership `sender_groups` tests (default `envelope_sender`).
    #[serde(default)]
    pub sender_groups_of: org::GroupsOf,
    /// For a `rewrite` rule: what to do with a calendar invitation instead, since hiding To/Cc
    /// leaves every attendee listed in the invitation: "split" (one copy per invitee, each
    /// listing only the organizer and that invitee) or "reject" (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calendar_action: Option<Action>,
    /// This rule's own mode (e.g. `monitor` to trial it while the others enforce); default:
    /// `policy.mode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
}

impl RuleConfig {
    /// A rule with no conditions (it matches every message) and the given action.
    pub fn new(name: &str, action: Action) -> RuleConfig {
        RuleConfig {
            name: name.to_string(),
            min_visible: None,
            min_visible_external: None,
            min_external_domains: None,
            senders: Vec::new(),
            except_senders: Vec::new(),
            except_recipients: Vec::new(),
            action,
            message: None,
            notify_sender: false,
            auth_users: Vec::new(),
            except_auth_users: Vec::new(),
            from_header: Vec::new(),
            except_from_header: Vec::new(),
            sender_groups: Vec::new(),
            except_sender_groups: Vec::new(),
            sender_groups_of: Default::default(),
            calendar_action: None,
            mode: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientStorage {
    #[default]
    Hmac,
    Plain,
    None,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    #[serde(default = "default_audit_path")]
    pub path: PathBuf,
    #[serde(default)]
    pub recipients: RecipientStorage,
    #[serde(default = "default_hmac_key_file")]
    pub hmac_key_file: PathBuf,
    /// Also record messages that passed unchanged.
    #[serde(default)]
    pub log_accepts: bool,
    /// Rotate the log when it grows past this many bytes (0 = never).
    #[serde(default)]
    pub rotate_bytes: u64,
    /// Start a new HMAC key when the key file is missing although the log has records (the
    /// change is recorded in the chain). Off: such a start is refused, so pseudonyms never
    /// silently stop matching. Set it once, for the restart that needs it.
    #[serde(default)]
    pub new_key: bool,
}

fn default_audit_path() -> PathBuf {
    PathBuf::from("var/audit.jsonl")
}
fn default_hmac_key_file() -> PathBuf {
    PathBuf::from("var/audit.key")
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: default_audit_path(),
            recipients: RecipientStorage::Hmac,
            hmac_key_file: default_hmac_key_file(),
            log_accepts: false,
            rotate_bytes: 0,
            new_key: false,
        }
    }
}

choices!(TlsMode { None = "none", Starttls = "starttls", Implicit = "implicit" });
choices!(AuthRequirement { None = "none", Optional = "optional", Required = "required" });
choices!(Mode { Enforce = "enforce", Monitor = "monitor" });
choices!(Action { Accept = "accept", Rewrite = "rewrite", Split = "split", Reject = "reject" });
choices!(RewriteTo { Undisclosed = "undisclosed", Sender = "sender" });
choices!(DkimOnRewrite { Reject = "reject", Resign = "resign", Forward = "forward" });
choices!(RecipientStorage { Hmac = "hmac", Plain = "plain", None = "none" });

/// `[spool]`: where split copies wait when the upstream could not take them in-session, and how
/// they are retried. See `crate::spool`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Folder of spooled copies (created 0700); beside the audit log by default.
    #[serde(default = "default_spool_path")]
    pub path: PathBuf,
    /// A copy still undelivered this long after it was spooled is bounced to its sender
    /// (default 5 days, like Postfix's maximal_queue_lifetime).
    #[serde(default = "default_spool_lifetime")]
    pub max_lifetime_seconds: u64,
    /// Wait before the first spool retry; doubles after every failed try...
    #[serde(default = "default_spool_backoff_initial")]
    pub backoff_initial_seconds: u64,
    /// ...up to this cap.
    #[serde(default = "default_spool_backoff_max")]
    pub backoff_max_seconds: u64,
    /// Most copies held; a copy beyond this is refused (the client then gets a 4xx).
    #[serde(default = "default_spool_max_entries")]
    pub max_entries: usize,
    /// Most bytes held on disk, all copies together.
    #[serde(default = "default_spool_max_bytes")]
    pub max_bytes: u64,
    /// Copies retried at the same time.
    #[serde(default = "default_spool_parallel")]
    pub parallel: usize,
    /// `/healthz` fails once the oldest copy waited longer than this (0 = never; it is then only
    /// reported as information).
    #[serde(default)]
    pub health_max_age_seconds: u64,
}

fn default_spool_path() -> PathBuf {
    PathBuf::from("var/spool")
}
fn default_spool_lifetime() -> u64 {
    432_000
}
fn default_spool_backoff_initial() -> u64 {
    60
}
fn default_spool_backoff_max() -> u64 {
    3600
}
fn default_spool_max_entries() -> usize {
    10_000
}
fn default_spool_max_bytes() -> u64 {
    1 << 30
}
fn default_spool_parallel() -> usize {
    4
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            path: default_spool_path(),
            max_lifetime_seconds: default_spool_lifetime(),
            backoff_initial_seconds: default_spool_backoff_initial(),
            backoff_max_seconds: default_spool_backoff_max(),
            max_entries: default_spool_max_entries(),
            max_bytes: default_spool_max_bytes(),
            parallel: default_spool_parallel(),
            health_max_age_seconds: 0,
        }
    }
}

impl SpoolConfig {
    /// The first mistake in the `[spool]` section, as (key, why).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        let positive = [
            ("spool.max_lifetime_seconds", self.max_lifetime_seconds),
            (
                "spool.backoff_initial_seconds",
                self.backoff_initial_seconds,
            ),
            ("spool.max_bytes", self.max_bytes),
            ("spool.max_entries", self.max_entries as u64),
            ("spool.parallel", self.parallel as u64),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Some((key, "must be above 0".into()));
        }
        if self.backoff_max_seconds < self.backoff_initial_seconds {
            return Some((
                "spool.backoff_max_seconds",
                "must not be below spool.backoff_initial_seconds".into(),
            ));
        }
        if self.path.as_os_str().is_empty() {
            return Some(("spool.path", "must not be empty".into()));
        }
        None
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub address: String,
}

impl Config {
    /// Loads `path`, applies `BCCGUARD__SECTION__KEY` overrides, resolves relative paths
    /// against the file's folder, then validates (rules included). Errors name the file, line
    /// and column (or the environment variable), the key and the valid values.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let cfg = load::parse(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// An error about the key at `path` (0-based indices, e.g. `listener[0].tls`).
    pub fn invalid(&self, key: &str, why: impl Into<String>) -> ConfigError {
        self.origins.invalid(key, why)
    }

    /// The policy's own checks (they live with the rules), placed like every other error.
    fn validate_policy(&self) -> Result<(), ConfigError> {
        let Err(msg) = crate::policy::rules::compile(&self.policy) else {
            return Ok(());
        };
        // Its messages start "key `policy.rule[i].field` (rule 'name'): why" (0-based).
        let parsed = msg.strip_prefix("key `").and_then(|rest| {
            let (key, rest) = rest.split_once('`')?;
            let rest = match rest.strip_prefix(" (rule '") {
                Some(r) => r.split_once("')").map_or(r, |(_, after)| after),
                None => rest,
            };
            Some((
                key.to_string(),
                rest.trim_start_matches(':').trim().to_string(),
            ))
        });
        Err(match parsed {
            Some((key, why)) => self.invalid(&key, why),
            None => self.invalid("policy", msg),
        })
    }

    /// Two listeners (or a listener and the metrics endpoint) on one address can never both
    /// bind; a metrics address must be `IP:port`.
    fn validate_addresses(&self) -> Result<(), ConfigError> {
        let mut taken: Vec<(String, SocketAddr)> = Vec::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if let Ok(addr) = l.socket_addr() {
                taken.push((format!("listener[{i}].address"), addr));
            }
        }
        if let Some(m) = &self.metrics {
            let addr: SocketAddr = m.address.parse().map_err(|_| {
                self.invalid(
                    "metrics.address",
                    format!(
                        "`{}` is not an IP:port address (e.g. 127.0.0.1:9025)",
                        m.address
                    ),
                )
            })?;
            taken.push(("metrics.address".to_string(), addr));
        }
        for (n, (key, addr)) in taken.iter().enumerate() {
            if addr.port() == 0 {
                continue;
            }
            for (earlier_key, earlier) in &taken[..n] {
                let same_ip = addr.ip() == earlier.ip()
                    || (addr.is_ipv4() == earlier.is_ipv4()
                        && (addr.ip().is_unspecified() || earlier.ip().is_unspecified()));
                if same_ip && addr.port() == earlier.port() {
                    return Err(self.invalid(
                        key,
                        format!(
                            "{addr} clashes with {earlier} of {}: both cannot listen on one port",
                            self.origins.display_key(earlier_key)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn relay_networks(&self) -> Result<Vec<IpNet>, ConfigError> {
        self.parse_networks("server.relay_networks", &self.server.relay_networks)
    }

    /// The load balancers listener `i` accepts PROXY headers from.
    pub fn proxy_networks(&self, i: usize) -> Result<Vec<IpNet>, ConfigError> {
        let key = format!("listener[{i}].proxy_networks");
        match self.listeners.get(i) {
            Some(l) => self.parse_networks(&key, &l.proxy_networks),
            None => Ok(Vec::new()),
        }
    }

    /// The entries as written (for width checks), without canonicalisation.
    fn raw_networks(&self, key: &str, list: &[String]) -> Result<Vec<IpNet>, ConfigError> {
        list.iter()
            .map(|n| {
                n.parse::<IpNet>()
                    .or_else(|_| n.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        self.invalid(key, format!("`{n}` is not a network (e.g. 192.0.2.0/24)"))
                    })
            })
            .collect()
    }

    /// Refuses a users file others may write; warns when others may read it (see checks::exposure).
    fn check_users_file(&self) -> Result<(), ConfigError> {
        let Some(path) = &self.auth.users_file else {
            return Ok(());
        };
        match checks::exposure(path) {
            Some(checks::FileExposure::Writable(mode)) => Err(self.invalid(
                "auth.users_file",
                format!(
                    "{} has mode {mode:o}: group or others could add an account and relay; chmod 600 it",
                    path.display()
                ),
            )),
            Some(checks::FileExposure::Readable(mode)) => {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{mode:o}"),
                    "users file is readable by group or others; chmod 600 it"
                );
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Networks in the form client addresses are matched in (see networks::canonical_peer).
    fn parse_networks(&self, key: &str, list: &[String]) -> Result<Vec<IpNet>, ConfigError> {
        Ok(self
            .raw_networks(key, list)?
            .into_iter()
            .map(networks::canonical_net)
            .collect())
    }

    /// Refuses configurations that would be dangerous or cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        checks::hostname(&self.server.hostname)
            .map_err(|why| self.invalid("server.hostname", why))?;
        if self.server.max_message_size == 0 {
            return Err(self.invalid("server.max_message_size", "must be above 0"));
        }
        if self.server.max_recipients == 0 {
            return Err(self.invalid("server.max_recipients", "must be above 0"));
        }
        if self.server.max_connections == 0 {
            return Err(self.invalid("server.max_connections", "must be above 0"));
        }
        // Judged on the raw entries: canonicalising first would hide `::/64` covering all of IPv4.
        networks::check_width(
            &self.raw_networks("server.relay_networks", &self.server.relay_networks)?,
            &networks::RELAY_LIMITS,
        )
        .map_err(|why| self.invalid("server.relay_networks", format!("open relay: {why}")))?;
        self.check_users_file()?;
        if self.auth.client_concurrent_checks == 0 {
            return Err(self.invalid(
                "auth.client_concurrent_checks",
                "must be above 0 (it bounds queued password checks per client, 0 would refuse every login)",
            ));
        }
        if self.auth.failure_window_seconds == 0 {
            return Err(self.invalid("auth.failure_window_seconds", "must be above 0"));
        }
        if self.listeners.is_empty() {
            return Err(self.invalid("listener", "at least one [[listener]] is needed"));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            let addr = l
                .socket_addr()
                .map_err(|why| self.invalid(&format!("listener[{i}].address"), why))?;
            if l.tls != TlsMode::None && self.tls.is_none() {
                return Err(self.invalid(
                    &format!("listener[{i}].tls"),
                    "a starttls/implicit listener needs a [tls] section with certificate and private_key",
                ));
            }
            if l.auth != AuthRequirement::None && self.auth.users_file.is_none() {
                return Err(self.invalid(
                    &format!("listener[{i}].auth"),
                    "AUTH needs [auth] users_file (make lines with `bccguard passwd`), or set auth = \"none\"",
                ));
            }
            if l.auth == AuthRequirement::Required
                && l.tls == TlsMode::None
                && !l.allow_cleartext_auth
            {
                return Err(self.invalid(
                    &format!("listener[{i}].auth"),
                    "auth = \"required\" on a listener without TLS can never succeed: set tls, or allow_cleartext_auth on loopback",
                ));
            }
            let proxies = self.proxy_networks(i)?;
            let key = format!("listener[{i}].proxy_networks");
            networks::check_width(
                &self.raw_networks(&key, &l.proxy_networks)?,
                &networks::PROXY_LIMITS,
            )
            .map_err(|why| self.invalid(&key, format!("too wide for load balancers: {why}")))?;
            if l.proxy_protocol && proxies.is_empty() {
                return Err(self.invalid(
                    &format!("listener[{i}].proxy_networks"),
                    "proxy_protocol needs the load balancers' addresses: anyone else could forge a client address",
                ));
            }
            if l.allow_cleartext_auth && !addr.ip().is_loopback() {
                return Err(self.invalid(
                    &format!("listener[{i}].allow_cleartext_auth"),
                    "cleartext AUTH is only allowed on a loopback address: passwords would cross the network unencrypted",
                ));
            }
        }
        self.validate_addresses()?;
        self.upstream
            .host_port()
            .map_err(|why| self.invalid("upstream.address", why))?;
        if self.upstream.timeout_seconds == 0 {
            return Err(self.invalid("upstream.timeout_seconds", "must be above 0"));
        }
        if self.upstream.username.is_some() != self.upstream.password_file.is_some() {
            return Err(self.invalid(
                "upstream.username",
                "username and password_file go together",
            ));
        }
        for (i, r) in self.policy.rules.iter().enumerate() {
            if r.name.trim().is_empty() {
                return Err(self.invalid(&format!("policy.rule[{i}].name"), "must not be empty"));
            }
            for s in r.senders.iter().chain(&r.except_senders) {
                if !s.contains('@') {
                    return Err(self.invalid(
                        &format!("policy.rule[{i}].senders"),
                        format!("`{s}` is not an address or *@domain pattern"),
                    ));
                }
            }
        }
        self.validate_policy()?;
        if self.policy.dkim.on_rewrite == DkimOnRewrite::Resign
            && (self.policy.dkim.private_key.is_none()
                || self.policy.dkim.domain.is_none()
                || self.policy.dkim.selector.is_none())
        {
            return Err(self.invalid(
                "policy.dkim.on_rewrite",
                "`resign` needs policy.dkim.private_key, domain and selector",
            ));
        }
        if let Some(level) = &self.server.log_level {
            if let Err(e) = tracing_subscriber::EnvFilter::try_new(level) {
                return Err(self.invalid(
                    "server.log_level",
                    format!(
                        "`{level}` is not a log level ({e}); use error, warn, info, debug or trace"
                    ),
                ));
            }
        }
        if let Some((key, why)) = self.spool.problem() {
            return Err(self.invalid(key, why));
        }
        if let Some(name) = &self.policy.trace_header {
            let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
            if !ok {
                return Err(self.invalid(
                    "policy.trace_header",
                    format!("`{name}` is not a valid header field name"),
                ));
            }
        }
        Ok(())
    }
}
