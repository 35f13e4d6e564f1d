//! `bccguard config check` (a preflight: everything `serve` would refuse is refused here, by the
//! same loading functions) and `bccguard config show` (the effective config, like `postconf -n`).
//!
//! `check` exits 0 when `serve` would start (warnings go to stderr and do not change the exit
//! code), 1 with one precise message (file:line:col or environment variable, key, why) otherwise.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use time::OffsetDateTime;

use crate::audit::HmacKey;
use crate::config::{Config, ConfigError, RecipientStorage, RuleConfig, TlsMode};
use crate::policy::Policy;
use crate::relay::Upstream;
use crate::rewrite::Rewriter;
use crate::smtp::auth::Users;
use crate::smtp::state::Live;

/// What the preflight found: the things it loaded, and what looks wrong but would run.
#[derive(Debug, Default)]
pub struct Preflight {
    pub checked: Vec<String>,
    pub warnings: Vec<String>,
}

pub fn run_config_check(path: &Path) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("config error: {e}");
            return ExitCode::from(1);
        }
    };
    let report = match preflight(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("config error: {e}");
            return ExitCode::from(1);
        }
    };
    let policy = match Policy::new(&cfg.policy) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("config error: {}: {e:#}", path.display());
            return ExitCode::from(1);
        }
    };
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    println!("config OK: {}", path.display());
    println!("Checked:");
    for c in &report.checked {
        println!("  {c}");
    }
    if !report.warnings.is_empty() {
        println!("Warnings: {} (on stderr)", report.warnings.len());
    }
    print!("{}", policy.describe());
    ExitCode::SUCCESS
}

/// Loads everything `serve` loads (certificates, keys, users, DKIM key, upstream credentials,
/// audit key) and checks the folders it writes to. `Err` = `serve` would not start (or would
/// start unable to write its audit log).
pub fn preflight(cfg: &Config) -> Result<Preflight, ConfigError> {
    let mut r = Preflight::default();
    for l in &cfg.listeners {
        r.checked.push(format!(
            "listener {} (tls {}, auth {}{})",
            l.address,
            l.tls,
            l.auth,
            if l.proxy_protocol {
                ", PROXY protocol"
            } else {
                ""
            }
        ));
    }
    if let Some(tls) = &cfg.tls {
        crate::smtp::tls::acceptor(tls).map_err(|e| {
            let msg = format!("{e:#}");
            let key = if msg.contains("private key") {
                "tls.private_key"
            } else {
                "tls.certificate"
            };
            cfg.invalid(key, msg)
        })?;
        let pem = std::fs::read(&tls.certificate).map_err(|e| {
            cfg.invalid(
                "tls.certificate",
                format!("reading {}: {e}", tls.certificate.display()),
            )
        })?;
        let now = OffsetDateTime::now_utc();
        for (i, expiry) in cert_expiries(&pem).into_iter().enumerate() {
            let which = if i == 0 {
                "TLS certificate".to_string()
            } else {
                format!("TLS chain certificate {}", i + 1)
            };
            let Some(until) = expiry else {
                r.warnings.push(format!(
                    "{which} in {}: expiry date unreadable",
                    tls.certificate.display()
                ));
                continue;
            };
            let days = (until - now).whole_days();
            r.checked.push(format!(
                "{which} {}: valid until {} ({days} days left)",
                tls.certificate.display(),
                until.date()
            ));
            if until < now {
                r.warnings.push(format!(
                    "{}: {which} EXPIRED on {}: clients that check certificates will refuse STARTTLS and implicit TLS",
                    cfg.origins.locate("tls.certificate"),
                    until.date()
                ));
            } else if days < 21 {
                r.warnings.push(format!(
                    "{}: {which} expires in {days} days ({})",
                    cfg.origins.locate("tls.certificate"),
                    until.date()
                ));
            }
        }
        r.checked
            .push(format!("TLS private key {}", tls.private_key.display()));
    }
    if let Some(file) = &cfg.auth.users_file {
        Users::load(file).map_err(|e| cfg.invalid("auth.users_file", format!("{e:#}")))?;
        r.checked.push(format!("users file {}", file.display()));
    }
    Rewriter::new(&cfg.policy).map_err(|e| {
        let msg = format!("{e:#}");
        let msg = msg
            .strip_prefix("key `policy.dkim.on_rewrite`: ")
            .unwrap_or(&msg)
            .to_string();
        cfg.invalid("policy.dkim.private_key", msg)
    })?;
    if let Some(key) = &cfg.policy.dkim.private_key {
        r.checked.push(format!("DKIM key {}", key.display()));
    }
    Upstream::new(&cfg.upstream, &cfg.server.hostname, Default::default()).map_err(|e| {
        let msg = format!("{e:#}");
        let key = if msg.contains("password_file") {
            "upstream.password_file"
        } else if msg.contains("ca_file") {
            "upstream.ca_file"
        } else {
            "upstream"
        };
        cfg.invalid(key, msg)
    })?;
    if let Some(file) = &cfg.upstream.password_file {
        let empty = std::fs::read_to_string(file)
            .map(|p| p.trim_end_matches(['\r', '\n']).is_empty())
            .unwrap_or(true);
        if empty {
            return Err(cfg.invalid(
                "upstream.password_file",
                format!("{} is empty", file.display()),
            ));
        }
    }
    r.checked.push(format!(
        "upstream {} (tls {}{})",
        cfg.upstream.address,
        cfg.upstream.tls,
        if cfg.upstream.username.is_some() {
            ", AUTH with password file"
        } else {
            ""
        }
    ));
    check_audit(cfg, &mut r)?;
    crate::spool::preflight(&cfg.spool).map_err(|e| cfg.invalid("spool.path", format!("{e:#}")))?;
    r.checked
        .push(format!("spool folder {}", cfg.spool.path.display()));
    if let Some(m) = &cfg.metrics {
        r.checked
            .push(format!("metrics at http://{}/metrics", m.address));
    }
    // The same constructor `serve` and SIGHUP use: nothing above may drift from it.
    Live::build(cfg).map_err(|e| cfg.invalid("policy", format!("{e:#}")))?;
    warnings(cfg, &mut r);
    Ok(r)
}

/// The audit folder must exist or be creatable by us, the log must be a writable file, and an
/// existing key file must hold a key (the relay refuses to start on a bad one).
fn check_audit(cfg: &Config, r: &mut Preflight) -> Result<(), ConfigError> {
    let a = &cfg.audit;
    let folder_ok = |key: &str, file: &Path| -> Result<(), ConfigError> {
        let dir = file.parent().unwrap_or(Path::new("."));
        let mut probe = dir;
        loop {
            if probe.as_os_str().is_empty() {
                probe = Path::new(".");
            }
            if probe.exists() {
                if !probe.is_dir() {
                    return Err(cfg.invalid(key, format!("{} is not a folder", probe.display())));
                }
                if !writable(probe) && probe != dir {
                    return Err(cfg.invalid(
                        key,
                        format!(
                            "folder {} does not exist and cannot be created ({} is not writable for this user)",
                            dir.display(),
                            probe.display()
                        ),
                    ));
                }
                return Ok(());
            }
            match probe.parent() {
                Some(up) => probe = up,
                None => {
                    return Err(cfg.invalid(key, format!("folder {} does not exist", dir.display())))
                }
            }
        }
    };
    folder_ok("audit.path", &a.path)?;
    if a.path.is_dir() {
        return Err(cfg.invalid(
            "audit.path",
            format!("{} is a folder, not a file", a.path.display()),
        ));
    }
    let dir = a.path.parent().unwrap_or(Path::new("."));
    let exists = a.path.exists();
    if exists && !writable(&a.path) {
        return Err(cfg.invalid(
            "audit.path",
            format!("{} is not writable for this user", a.path.display()),
        ));
    }
    if !exists && dir.is_dir() && !writable(dir) {
        return Err(cfg.invalid(
            "audit.path",
            format!(
                "{} does not exist and folder {} is not writable for this user",
                a.path.display(),
                dir.display()
            ),
        ));
    }
    r.checked.push(format!(
        "audit log {}{}",
        a.path.display(),
        if exists {
            ""
        } else if dir.is_dir() {
            " (created on first start)"
        } else {
            " (folder and file created on first start)"
        }
    ));
    if a.recipients == RecipientStorage::Hmac {
        // The audit module's own rule (a missing key on a log with records is refused too).
        crate::audit::check_key_file(a)
            .map_err(|e| cfg.invalid("audit.hmac_key_file", e.to_string()))?;
        if a.hmac_key_file.exists() {
            HmacKey::load(&a.hmac_key_file)
                .map_err(|e| cfg.invalid("audit.hmac_key_file", e.to_string()))?;
            r.checked
                .push(format!("audit HMAC key {}", a.hmac_key_file.display()));
        } else {
            folder_ok("audit.hmac_key_file", &a.hmac_key_file)?;
            r.checked.push(format!(
                "audit HMAC key {} (created on first start: back it up)",
                a.hmac_key_file.display()
            ));
        }
    }
    Ok(())
}

fn writable(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access only reads the NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// Things that would run but are probably not what the admin meant.
fn warnings(cfg: &Config, r: &mut Preflight) {
    let o = &cfg.origins;
    for (j, later) in cfg.policy.rules.iter().enumerate() {
        if let Some(i) = (0..j).find(|&i| covers(&cfg.policy.rules[i], later)) {
            r.warnings.push(format!(
                "{}: key {}: can never match: {} before it matches every message this one would",
                o.locate(&format!("policy.rule[{j}]")),
                o.display_key(&format!("policy.rule[{j}]")),
                o.display_key(&format!("policy.rule[{i}]")),
            ));
        }
    }
    for (i, d) in cfg.policy.internal_domains.iter().enumerate() {
        let why = if d.contains('@') {
            Some("looks like an address; list domains only (example.org)")
        } else if d.starts_with('.') || d.ends_with('.') {
            Some("has a leading or trailing dot")
        } else if !d.trim_start_matches("*.").contains('.') {
            Some("has no dot: a top-level domain or a typo? every address under it would count as internal")
        } else if d.trim() != d {
            Some("has spaces around it")
        } else {
            None
        };
        if let Some(why) = why {
            r.warnings.push(format!(
                "{}: key `policy.internal_domains` entry {} `{d}` {why}",
                o.locate("policy.internal_domains"),
                i + 1
            ));
        }
    }
    if cfg.policy.internal_domains.is_empty() && !cfg.policy.rules.is_empty() {
        r.warnings.push(format!(
            "{}: key `policy.internal_domains` is empty: colleagues count as outside recipients",
            o.locate("policy")
        ));
    }
    if let Ok(nets) = cfg.relay_networks() {
        for (i, n) in nets.iter().enumerate() {
            if is_wide_public(n) {
                r.warnings.push(format!(
                    "{}: key `server.relay_networks` entry {} `{n}` is a large public network: everyone in it may relay without AUTH",
                    o.locate("server.relay_networks"),
                    i + 1
                ));
            }
        }
    }
    if cfg.upstream.allow_invalid_certs {
        r.warnings.push(format!(
            "{}: key `upstream.allow_invalid_certs` is on: the upstream's certificate is not checked",
            o.locate("upstream.allow_invalid_certs")
        ));
    }
    if cfg.upstream.tls == TlsMode::None && !upstream_is_loopback(&cfg.upstream.address) {
        r.warnings.push(format!(
            "{}: key `upstream.tls` is \"none\" for a non-loopback upstream: mail crosses the network unencrypted",
            o.locate("upstream.tls")
        ));
    }
    for (i, rule) in cfg.policy.rules.iter().enumerate() {
        if rule.mode == Some(crate::config::Mode::Monitor)
            && cfg.policy.mode == crate::config::Mode::Enforce
        {
            r.checked.push(format!(
                "rule {} '{}' is in monitor mode: audited as \"would\", not carried out",
                i + 1,
                rule.name
            ));
        }
    }
}

/// A network wider than a /16 (IPv4) or /32 (IPv6) outside private, loopback and link-local space.
fn is_wide_public(n: &ipnet::IpNet) -> bool {
    match n {
        ipnet::IpNet::V4(v4) => {
            let a = v4.network();
            v4.prefix_len() < 16 && !(a.is_private() || a.is_loopback() || a.is_link_local())
        }
        ipnet::IpNet::V6(v6) => {
            let a = v6.network();
            let local = a.is_loopback()
                || (a.segments()[0] & 0xfe00) == 0xfc00
                || (a.segments()[0] & 0xffc0) == 0xfe80;
            v6.prefix_len() < 32 && !local
        }
    }
}

fn upstream_is_loopback(address: &str) -> bool {
    if let Ok(a) = address.parse::<SocketAddr>() {
        return a.ip().is_loopback();
    }
    address.starts_with("localhost:")
}

/// Whether rule `a`, placed before `b`, matches every message `b` would match (so `b` is dead).
fn covers(a: &RuleConfig, b: &RuleConfig) -> bool {
    let le = |x: Option<usize>, y: Option<usize>| x.unwrap_or(0) <= y.unwrap_or(0);
    let lower =
        |v: &[String]| -> Vec<String> { v.iter().map(|s| s.to_ascii_lowercase()).collect() };
    let subset = |small: &[String], big: &[String]| {
        let big = lower(big);
        lower(small).iter().all(|s| big.contains(s))
    };
    le(a.min_visible, b.min_visible)
        && le(a.min_visible_external, b.min_visible_external)
        && le(a.min_external_domains, b.min_external_domains)
        && (a.senders.is_empty() || (!b.senders.is_empty() && subset(&b.senders, &a.senders)))
        && subset(&a.except_senders, &b.except_senders)
        && subset(&a.except_recipients, &b.except_recipients)
}

/// `notAfter` of each certificate in a PEM file (`None` where the DER cannot be read).
pub fn cert_expiries(pem: &[u8]) -> Vec<Option<OffsetDateTime>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    CertificateDer::pem_slice_iter(pem)
        .map(|c| c.ok().and_then(|der| not_after(der.as_ref())))
        .collect()
}

/// One DER element: (tag, content, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version?, serial, signature,
/// issuer, validity SEQUENCE { notBefore, notAfter }, ... }, ... } (RFC 5280 4.1).
fn not_after(cert: &[u8]) -> Option<OffsetDateTime> {
    let (_, cert, _) = der(cert)?;
    let (_, tbs, _) = der(cert)?;
    let mut rest = tbs;
    let (tag, _, after) = der(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    for _ in 0..3 {
        rest = der(rest)?.2; // serial, signature algorithm, issuer
    }
    let (_, validity, _) = der(rest)?;
    let (_, _, after_not_before) = der(validity)?;
    let (tag, time, _) = der(after_not_before)?;
    let text = std::str::from_utf8(time).ok()?;
    let full = match tag {
        // UTCTime YYMMDDHHMMSSZ: 50-99 = 19xx (RFC 5280 4.1.2.5.1).
        0x17 => {
            let yy: u32 = text.get(..2)?.parse().ok()?;
            format!("{}{text}", if yy >= 50 { "19" } else { "20" })
        }
        0x18 => text.to_string(),
        _ => return None,
    };
    let fmt = time::macros::format_description!("[year][month][day][hour][minute][second]Z");
    time::PrimitiveDateTime::parse(&full, &fmt)
        .ok()
        .map(|t| t.assume_utc())
}

/// `bccguard config show`: the effective config as TOML (defaults filled in, relative paths
/// resolved), each value set from the environment marked with the variable's name.
pub fn run_config_show(path: &Path) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("config error: {e}");
            return ExitCode::from(1);
        }
    };
    match show(&cfg) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("config show: {e}");
            ExitCode::from(1)
        }
    }
}

pub fn show(cfg: &Config) -> anyhow::Result<String> {
    let value = toml::Value::try_from(cfg)?;
    let toml::Value::Table(table) = value else {
        anyhow::bail!("the config did not serialise as a table");
    };
    let mut out = format!(
        "# effective configuration from {} (defaults filled in; `# env` = set by that environment variable)\n",
        cfg.source_path.display()
    );
    emit_table(&mut out, "", &table, cfg);
    Ok(out)
}

fn emit_table(out: &mut String, prefix: &str, table: &toml::Table, cfg: &Config) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    let is_table_array = |v: &toml::Value| {
        v.as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(toml::Value::is_table))
    };
    for (k, v) in table {
        if v.is_table() || is_table_array(v) {
            continue;
        }
        let path = join(k);
        out.push_str(&format!("{} = {v}", toml_key(k)));
        if let Some(var) = cfg.origins.env.get(&path) {
            out.push_str(&format!("    # env {var}"));
        }
        out.push('\n');
    }
    for (k, v) in table {
        let path = join(k);
        if let toml::Value::Table(t) = v {
            out.push_str(&format!("\n[{path}]\n"));
            emit_table(out, &path, t, cfg);
        } else if is_table_array(v) {
            for (i, item) in v.as_array().into_iter().flatten().enumerate() {
                if let toml::Value::Table(t) = item {
                    out.push_str(&format!("\n[[{path}]]\n"));
                    emit_table(out, &format!("{path}[{i}]"), t, cfg);
                }
            }
        }
    }
}

fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_string()
    } else {
        toml::Value::String(k.to_string()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_looser_earlier_rule_covers_a_stricter_later_one() {
        let mut a = RuleConfig::new("a", crate::config::Action::Rewrite);
        a.min_visible_external = Some(3);
        let mut b = RuleConfig::new("b", crate::config::Action::Reject);
        b.min_visible_external = Some(20);
        assert!(covers(&a, &b));
        assert!(!covers(&b, &a));
        a.senders = vec!["*@example.org".into()];
        assert!(!covers(&a, &b));
        b.senders = vec!["*@EXAMPLE.org".into()];
        assert!(covers(&a, &b));
        a.except_recipients = vec!["list@example.net".into()];
        assert!(!covers(&a, &b));
    }

    #[test]
    fn wide_public_relay_networks_are_flagged() {
        let wide = |s: &str| is_wide_public(&s.parse().unwrap());
        assert!(wide("8.0.0.0/8"));
        assert!(!wide("10.0.0.0/8"));
        assert!(!wide("203.0.113.0/24"));
        assert!(wide("2000::/3"));
        assert!(!wide("fd00::/8"));
    }

    #[test]
    fn der_lengths_are_bounded() {
        assert!(der(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
        assert!(der(&[0x30, 0x05, 1]).is_none());
        assert_eq!(
            der(&[0x02, 0x01, 7, 9]),
            Some((0x02, &[7u8][..], &[9u8][..]))
        );
    }
}
