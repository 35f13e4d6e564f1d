//! `bccguard audit report`: what the policy did (or, in monitor mode, would have done) over a
//! period, counted by rule, action, mode, sender domain and day. Reads the audit log's whole
//! file set in one pass with memory bounded by the number of distinct keys, not of records.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::when::{parse_bound, within, Bound};
use crate::audit::{self, Record};
use crate::config::{Action, Config, Mode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Csv,
}

/// One cell of the cube every view is summed from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    day: String,
    rule: String,
    action: Action,
    mode: Mode,
    sender_domain: String,
}

/// The counts over a period.
#[derive(Debug, Default)]
pub struct Report {
    cube: BTreeMap<Key, u64>,
    pub records: u64,
    pub skipped_lines: u64,
    first: Option<String>,
    last: Option<String>,
}

/// `-` for no rule, so every row has a value.
const NO_RULE: &str = "-";

impl Report {
    pub fn add(&mut self, r: &Record) {
        let day = r.time.get(..10).unwrap_or("?").to_string();
        let sender_domain = match r.sender.rsplit_once('@') {
            Some((_, d)) if !d.is_empty() => d.to_ascii_lowercase(),
            _ if r.sender.is_empty() => "<>".to_string(),
            _ => "?".to_string(),
        };
        let key = Key {
            day,
            rule: r.rule.clone().unwrap_or_else(|| NO_RULE.to_string()),
            action: r.action,
            mode: r.mode,
            sender_domain,
        };
        *self.cube.entry(key).or_default() += 1;
        self.records += 1;
        if self.first.is_none() {
            self.first = Some(r.time.clone());
        }
        self.last = Some(r.time.clone());
    }

    /// Sums the cube over everything but what `f` picks: (key, enforce count, monitor count).
    fn by<K: Ord + Clone>(&self, f: impl Fn(&Key) -> K) -> Vec<(K, u64, u64)> {
        let mut m: BTreeMap<K, (u64, u64)> = BTreeMap::new();
        for (k, n) in &self.cube {
            let e = m.entry(f(k)).or_default();
            match k.mode {
                Mode::Enforce => e.0 += n,
                Mode::Monitor => e.1 += n,
            }
        }
        m.into_iter().map(|(k, (e, mo))| (k, e, mo)).collect()
    }

    fn mode_totals(&self) -> (u64, u64) {
        self.by(|_| ()).first().map_or((0, 0), |&(_, e, m)| (e, m))
    }

    pub fn to_json(
        &self,
        since: Option<&Bound>,
        until: Option<&Bound>,
        log: &Path,
    ) -> serde_json::Value {
        let rows = |v: Vec<(String, u64, u64)>, name: &str| -> Vec<serde_json::Value> {
            v.into_iter()
                .map(|(k, e, m)| json!({name: k, "enforce": e, "monitor": m, "total": e + m}))
                .collect()
        };
        let by_rule: Vec<serde_json::Value> = self
            .by(|k| (k.rule.clone(), k.action))
            .into_iter()
            .map(|((rule, action), e, m)| {
                json!({"rule": rule, "action": action.as_str(), "enforce": e, "monitor": m, "total": e + m})
            })
            .collect();
        let (enforce, monitor) = self.mode_totals();
        let mut domains = self.by(|k| k.sender_domain.clone());
        domains.sort_by(|a, b| (b.1 + b.2).cmp(&(a.1 + a.2)).then(a.0.cmp(&b.0)));
        json!({
            "log": log.display().to_string(),
            "since": since.and_then(|b| b.at.replace_nanosecond(0).ok()?.format(&Rfc3339).ok()),
            "until": until.and_then(|b| b.at.replace_nanosecond(0).ok()?.format(&Rfc3339).ok()),
            "records": self.records,
            "first_record": self.first,
            "last_record": self.last,
            "by_mode": {"enforce": enforce, "monitor": monitor},
            "by_action": rows(self.by(|k| k.action.as_str().to_string()), "action"),
            "by_rule": by_rule,
            "by_sender_domain": rows(domains, "sender_domain"),
            "by_day": rows(self.by(|k| k.day.clone()), "day"),
        })
    }

    pub fn to_csv(&self) -> String {
        let mut s = String::from("day,rule,action,mode,sender_domain,count\n");
        for (k, n) in &self.cube {
            s.push_str(&format!(
                "{},{},{},{},{},{n}\n",
                k.day,
                csv_field(&k.rule),
                k.action.as_str(),
                k.mode.as_choice(),
                csv_field(&k.sender_domain)
            ));
        }
        s
    }

    pub fn to_text(&self, since: Option<&Bound>, until: Option<&Bound>, log: &Path) -> String {
        let show = |b: Option<&Bound>, none: &str| {
            b.and_then(|b| b.at.replace_nanosecond(0).ok()?.format(&Rfc3339).ok())
                .unwrap_or_else(|| none.to_string())
        };
        let mut s = format!(
            "Audit report for {} .. {} (UTC) from {}\n",
            show(since, "the first record"),
            show(until, "now"),
            log.display()
        );
        let (enforce, monitor) = self.mode_totals();
        s.push_str(&format!(
            "{} records: {enforce} enforced, {monitor} in monitor mode (would have been done, nothing changed)\n",
            self.records
        ));
        if self.records == 0 {
            return s;
        }
        let table = |s: &mut String, title: &str, rows: Vec<(String, u64, u64)>| {
            let w = rows
                .iter()
                .map(|r| r.0.len())
                .max()
                .unwrap_or(0)
                .max(title.len());
            s.push_str(&format!(
                "\n{title:<w$}  {:>8}  {:>8}  {:>8}\n",
                "enforce", "monitor", "total"
            ));
            for (k, e, m) in rows {
                s.push_str(&format!("{k:<w$}  {e:>8}  {m:>8}  {:>8}\n", e + m));
            }
        };
        table(&mut s, "action", self.by(|k| k.action.as_str().to_string()));
        table(
            &mut s,
            "rule (action)",
            self.by(|k| (k.rule.clone(), k.action))
                .into_iter()
                .map(|((r, a), e, m)| (format!("{r} ({})", a.as_str()), e, m))
                .collect(),
        );
        let mut domains = self.by(|k| k.sender_domain.clone());
        domains.sort_by(|a, b| (b.1 + b.2).cmp(&(a.1 + a.2)).then(a.0.cmp(&b.0)));
        let more = domains.len().saturating_sub(20);
        domains.truncate(20);
        table(&mut s, "sender domain", domains);
        if more > 0 {
            s.push_str(&format!(
                "... and {more} more sender domains (--csv lists all)\n"
            ));
        }
        table(&mut s, "day", self.by(|k| k.day.clone()));
        s
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn run(
    config: &Path,
    log: Option<&Path>,
    since: Option<&str>,
    until: Option<&str>,
    format: Format,
) -> ExitCode {
    let now = OffsetDateTime::now_utc();
    let bounds = since
        .map(|s| parse_bound(s, false, now).map_err(|e| format!("--since: {e}")))
        .transpose()
        .and_then(|s| {
            until
                .map(|u| parse_bound(u, true, now).map_err(|e| format!("--until: {e}")))
                .transpose()
                .map(|u| (s, u))
        });
    let (since, until) = match bounds {
        Ok(b) => b,
        Err(e) => {
            eprintln!("audit report: {e}");
            return ExitCode::from(2);
        }
    };
    let path = match log {
        Some(p) => p.to_path_buf(),
        None => match Config::load(config) {
            Ok(c) => c.audit.path,
            Err(e) => {
                eprintln!("audit report: {e} (or name the log file: --log PATH)");
                return ExitCode::from(2);
            }
        },
    };
    if let Err(e) = super::audit::log_exists(&path, log.is_none().then_some(config)) {
        eprintln!("audit report: {e}");
        return ExitCode::from(2);
    }
    let mut report = Report::default();
    let walked = audit::for_each_record(&path, |e| match e.record {
        Ok(r) => {
            let inside = match OffsetDateTime::parse(&r.time, &Rfc3339) {
                Ok(t) => within(t, since.as_ref(), until.as_ref()),
                Err(_) => since.is_none() && until.is_none(),
            };
            if inside {
                report.add(&r);
            }
        }
        Err(_) => report.skipped_lines += 1,
    });
    if let Err(e) = walked {
        eprintln!("audit report: {}: {e}", path.display());
        return ExitCode::from(2);
    }
    if report.skipped_lines > 0 {
        eprintln!(
            "audit report: {} lines are not records and were skipped (`bccguard audit verify` tells more)",
            report.skipped_lines
        );
    }
    match format {
        Format::Json => println!("{}", report.to_json(since.as_ref(), until.as_ref(), &path)),
        Format::Csv => print!("{}", report.to_csv()),
        Format::Text => print!("{}", report.to_text(since.as_ref(), until.as_ref(), &path)),
    }
    ExitCode::SUCCESS
}
