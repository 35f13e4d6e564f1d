//! `bccguard audit verify|query`: offline tools over the audit log and its rotated files.
//!
//! `verify [PATH]` checks the hash chain over the log's file set (rotated files oldest first,
//! then the current file; or, given a rotated file, the rotated files up to it). Exit 0 with a
//! summary when intact; when the oldest file present does not start at genesis (older files
//! archived away) it says "continues from hash X" and still exits 0. Exit 1 naming the first bad
//! record (file, line, seq, what is wrong); exit 2 when nothing can be read. With PATH the
//! config is not read at all.
//!
//! `query` reads the configured log's file set and prints matching records, one line each, or
//! the records as JSON lines with `--json`. `--since`/`--until` take relative times (`7d`,
//! `12h`), `today`, `yesterday`, dates, dates with times, or RFC 3339 (UTC; see [`super::when`]).
//! `--rule`, `--session` and `--message-id` match exactly (`--message-id` with or without `<>`).
//! A log that does not exist is an error (exit 2), not an empty result.
//!
//! `report` counts what the policy did (or in monitor mode would have done) over a period, by
//! rule, action, mode, sender domain and day: as text, `--json`, or `--csv` (one row per
//! day, rule, action, mode and sender domain, for a spreadsheet's pivot table). `--sender` matches the address
//! case-insensitively, or `*@domain`. `--recipient` matches plain records and, with the key
//! file, pseudonymised ones (HMAC of the address as given and with its local part lower-cased).
//!
//! Two-phase records: `query` shows a decision with its outcome (`--json`: an `outcome` member,
//! null when none was written, and `later_outcomes`: split copies that left the spool later); outcome and key lines are not shown on their own. With
//! `--recipient` it says how many records were made under another HMAC key (after a `key`
//! line) and how many list only the first of their recipients (a summary). `verify` also lists
//! decisions without an outcome line (still exit 0: the chain is intact) and key changes.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::when::{parse_bound, within, Bound};

use crate::audit::{self, HmacKey, Record, VerifyError, HMAC_PREFIX};
use crate::config::{Action, Config, RecipientStorage, DEFAULT_CONFIG_PATH};

#[derive(clap::Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the hash chain; exit 1 naming the first broken record.
    Verify {
        #[arg(long, env = crate::config::CONFIG_ENV, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Audit log file (default: the configured one).
        path: Option<PathBuf>,
    },
    /// Search the audit log.
    Query {
        #[arg(long, env = crate::config::CONFIG_ENV, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        sender: Option<String>,
        #[arg(long)]
        recipient: Option<String>,
        /// Records of this rule (by name).
        #[arg(long)]
        rule: Option<String>,
        /// Records of this SMTP session id (as in the relay's log lines).
        #[arg(long)]
        session: Option<String>,
        /// Records of this Message-ID (with or without the angle brackets).
        #[arg(long)]
        message_id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// What the policy did (or would have done, in monitor mode) over a period.
    Report {
        #[arg(long, env = crate::config::CONFIG_ENV, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Start: 7d, 24h, today, yesterday, 2026-05-01, "2026-05-01 10:00", RFC 3339 (UTC).
        #[arg(long)]
        since: Option<String>,
        /// End (same forms; a day includes all of it).
        #[arg(long)]
        until: Option<String>,
        /// Audit log file (default: the configured one).
        #[arg(long)]
        log: Option<PathBuf>,
        /// One JSON object.
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// CSV: day,rule,action,mode,sender_domain,count.
        #[arg(long)]
        csv: bool,
    },
}

pub fn run(cmd: &AuditCommand) -> ExitCode {
    match cmd {
        AuditCommand::Verify { config, path } => run_verify(config, path.as_deref()),
        AuditCommand::Query {
            config,
            since,
            until,
            action,
            sender,
            recipient,
            rule,
            session,
            message_id,
            json,
        } => {
            let cfg = match Config::load(config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("audit query: {e}");
                    return ExitCode::from(2);
                }
            };
            let filter = Filter::new(
                &cfg,
                since.as_deref(),
                until.as_deref(),
                action.as_deref(),
                sender.as_deref(),
                recipient.as_deref(),
            )
            .map(|f| Filter {
                rule: rule.clone(),
                session: session.clone(),
                message_id: message_id.as_deref().map(strip_angles),
                ..f
            });
            let filter = match filter {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("audit query: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = log_exists(&cfg.audit.path, Some(config)) {
                eprintln!("audit query: {e}");
                return ExitCode::from(2);
            }
            run_query(&cfg.audit.path, &filter, *json)
        }
        AuditCommand::Report {
            config,
            since,
            until,
            log,
            json,
            csv,
        } => super::report::run(
            config,
            log.as_deref(),
            since.as_deref(),
            until.as_deref(),
            if *json {
                super::report::Format::Json
            } else if *csv {
                super::report::Format::Csv
            } else {
                super::report::Format::Text
            },
        ),
    }
}

fn strip_angles(id: &str) -> String {
    let id = id.trim();
    id.strip_prefix('<')
        .and_then(|i| i.strip_suffix('>'))
        .unwrap_or(id)
        .to_string()
}

/// A log with no file at all (current or rotated) is a wrong path, not an empty log.
pub fn log_exists(path: &Path, config: Option<&Path>) -> Result<(), String> {
    match audit::file_set(path) {
        Ok(files) if !files.is_empty() => Ok(()),
        Ok(_) => Err(format!(
            "audit log {} does not exist{}",
            path.display(),
            match config {
                Some(c) => format!(
                    " (audit.path in {}; relative paths there are relative to the config file's folder)",
                    c.display()
                ),
                None => String::new(),
            }
        )),
        Err(e) => Err(format!("audit log {}: {e}", path.display())),
    }
}

fn run_verify(config: &Path, path: Option<&Path>) -> ExitCode {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => match Config::load(config) {
            Ok(c) => c.audit.path,
            Err(e) => {
                eprintln!("audit verify: {e} (or name the log file: bccguard audit verify PATH)");
                return ExitCode::from(2);
            }
        },
    };
    if let Err(e) = log_exists(&path, None) {
        eprintln!("audit verify: {e}");
        return ExitCode::from(2);
    }
    match audit::verify(&path) {
        Ok(r) => {
            match (r.first_seq, r.last_seq) {
                (Some(first), Some(last)) => println!(
                    "{}: {} records, chain intact, first seq {first}, last seq {last}",
                    path.display(),
                    r.records
                ),
                _ => println!("{}: 0 records, chain intact", path.display()),
            }
            match r.files.as_slice() {
                [] | [_] => {}
                [first, .., last] if r.files.len() > 6 => println!(
                    "{} files, oldest {}, newest {}",
                    r.files.len(),
                    first.display(),
                    last.display()
                ),
                files => {
                    let names: Vec<String> =
                        files.iter().map(|p| p.display().to_string()).collect();
                    println!("files (oldest first): {}", names.join(", "));
                }
            }
            match &r.start_prev {
                Some(prev) if !r.starts_at_genesis() => {
                    println!("chain continues from hash {prev} (the files before it are not here)")
                }
                Some(_) => println!("chain starts at genesis"),
                None => {}
            }
            if let Some(h) = &r.last_hash {
                println!("last hash {h}");
            }
            print_two_phase_notes(&r, &path);
            if !r.torn.is_empty() {
                let names: Vec<String> = r.torn.iter().map(|p| p.display().to_string()).collect();
                println!(
                    "note: {} torn fragment(s) cut off by the relay after a crash (never acknowledged, not part of the chain): {}",
                    r.torn.len(),
                    names.join(", ")
                );
            }
            ExitCode::SUCCESS
        }
        Err(VerifyError::Broken(b)) => {
            println!("chain broken: {b}");
            ExitCode::from(1)
        }
        Err(e @ VerifyError::Io { .. }) => {
            eprintln!("audit verify: {e}");
            ExitCode::from(2)
        }
    }
}

struct Filter {
    since: Option<Bound>,
    until: Option<Bound>,
    rule: Option<String>,
    session: Option<String>,
    /// Without angle brackets.
    message_id: Option<String>,
    action: Option<Action>,
    sender: Option<String>,
    /// Normalised forms of the address looked for.
    recipient_plain: Vec<String>,
    /// Their pseudonyms under the key (empty without a key).
    recipient_hmac: Vec<String>,
    wants_recipient: bool,
    /// Fingerprint of the key the pseudonyms are looked for under.
    key_id: Option<String>,
}

impl Filter {
    fn new(
        cfg: &Config,
        since: Option<&str>,
        until: Option<&str>,
        action: Option<&str>,
        sender: Option<&str>,
        recipient: Option<&str>,
    ) -> Result<Filter, String> {
        let now = OffsetDateTime::now_utc();
        let since = since
            .map(|s| parse_bound(s, false, now))
            .transpose()
            .map_err(|e| format!("--since: {e}"))?;
        let until = until
            .map(|s| parse_bound(s, true, now))
            .transpose()
            .map_err(|e| format!("--until: {e}"))?;
        let action = action
            .map(|a| match a.to_ascii_lowercase().as_str() {
                "accept" => Ok(Action::Accept),
                "rewrite" => Ok(Action::Rewrite),
                "split" => Ok(Action::Split),
                "reject" => Ok(Action::Reject),
                _ => Err(format!(
                    "--action: `{a}` is not one of accept, rewrite, split, reject"
                )),
            })
            .transpose()?;
        let mut recipient_plain = Vec::new();
        let mut recipient_hmac = Vec::new();
        let mut key_id = None;
        if let Some(r) = recipient {
            let exact = audit::normalise_address(r);
            let lower = exact.to_lowercase();
            recipient_plain.push(exact);
            if !recipient_plain.contains(&lower) {
                recipient_plain.push(lower);
            }
            match HmacKey::load(&cfg.audit.hmac_key_file) {
                Ok(key) => {
                    recipient_hmac = recipient_plain.iter().map(|a| key.pseudonym(a)).collect();
                    key_id = Some(key.key_id());
                }
                Err(e) if cfg.audit.recipients == RecipientStorage::Hmac => {
                    return Err(format!(
                        "--recipient needs the HMAC key to find pseudonymised records: {e}"
                    ));
                }
                Err(e) => eprintln!(
                    "audit query: warning: {e}; only records with plain recipients can match"
                ),
            }
        }
        Ok(Filter {
            since,
            until,
            rule: None,
            session: None,
            message_id: None,
            action,
            sender: sender.map(|s| s.trim().to_string()),
            recipient_plain,
            recipient_hmac,
            wants_recipient: recipient.is_some(),
            key_id,
        })
    }

    fn matches(&self, r: &Record) -> bool {
        if self.since.is_some() || self.until.is_some() {
            let Ok(t) = OffsetDateTime::parse(&r.time, &Rfc3339) else {
                return false;
            };
            if !within(t, self.since.as_ref(), self.until.as_ref()) {
                return false;
            }
        }
        if self
            .rule
            .as_ref()
            .is_some_and(|n| r.rule.as_ref() != Some(n))
        {
            return false;
        }
        if self.session.as_ref().is_some_and(|s| &r.session != s) {
            return false;
        }
        if let Some(id) = &self.message_id {
            if r.message_id.as_deref().map(strip_angles).as_ref() != Some(id) {
                return false;
            }
        }
        if self.action.is_some_and(|a| a != r.action) {
            return false;
        }
        if let Some(s) = &self.sender {
            let ok = match s.strip_prefix("*@") {
                Some(domain) => r
                    .sender
                    .rsplit_once('@')
                    .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain)),
                None => r.sender.eq_ignore_ascii_case(s),
            };
            if !ok {
                return false;
            }
        }
        self.matches_recipient(r)
    }

    fn matches_recipient(&self, r: &Record) -> bool {
        if !self.wants_recipient {
            return true;
        }
        let list = r.recipients.as_deref().unwrap_or(&[]);
        list.iter().any(|stored| {
            if stored.starts_with(HMAC_PREFIX) {
                self.recipient_hmac.iter().any(|h| h == stored)
            } else {
                let n = audit::normalise_address(stored);
                self.recipient_plain.contains(&n)
            }
        })
    }
}

fn human(r: &Record) -> String {
    let verb = if r.would {
        format!("would-{}", r.action.as_str())
    } else {
        r.action.as_str().to_string()
    };
    let mode = match r.mode {
        crate::config::Mode::Enforce => "enforce",
        crate::config::Mode::Monitor => "monitor",
    };
    format!(
        "{} seq={} {verb} mode={mode} rule={} sender={} visible={} external={} domains={} rcpts={} msgid={} upstream={:?} reason={:?}",
        r.time,
        r.seq,
        r.rule.as_deref().unwrap_or("-"),
        r.sender,
        r.visible_count,
        r.visible_external,
        r.external_domains,
        r.envelope_recipients,
        r.message_id.as_deref().unwrap_or("-"),
        r.upstream.as_deref().unwrap_or("-"),
        r.reason,
    )
}

/// What the first pass over the log learns: the outcomes of the decisions that will be
/// shown, and (for `--recipient`) how many records were made under another HMAC key or list
/// only part of their recipients.
#[derive(Default)]
struct Pass1 {
    /// Every outcome of each shown decision, in log order: the decision's own first, then one
    /// per split copy that left the spool later.
    outcomes: HashMap<u64, Vec<audit::OutcomeRecord>>,
    other_key: u64,
    other_key_last_seq: Option<u64>,
    /// Records whose recipient list was summarised and did not match in the part listed.
    summarised: u64,
}

fn first_pass(path: &Path, filter: &Filter) -> std::io::Result<Pass1> {
    let mut p = Pass1::default();
    let mut wanted = HashSet::new();
    // The key in force: unknown before the first `key` line (None), then that line's id.
    let mut seen_key_line = false;
    let mut under: Option<String> = None;
    let mut older: Vec<(u64, bool)> = Vec::new();
    audit::for_each_entry(path, |e| match e.record {
        Ok(audit::AnyRecord::Event(r)) => {
            if r.kind == audit::Kind::Decision && filter.matches(&r) {
                wanted.insert(r.seq);
            }
            if filter.wants_recipient
                && r.recipients_summary.is_some()
                && !filter.matches_recipient(&r)
            {
                p.summarised += 1;
            }
            if filter.key_id.is_some() && r.recipients_mode == "hmac" {
                let ours = seen_key_line && under == filter.key_id;
                older.push((r.seq, ours));
            }
        }
        Ok(audit::AnyRecord::Outcome(o)) => {
            if wanted.contains(&o.decision_seq) {
                p.outcomes.entry(o.decision_seq).or_default().push(o);
            }
        }
        Ok(audit::AnyRecord::Key(k)) => {
            seen_key_line = true;
            under = Some(k.key_id);
        }
        Err(_) => {}
    })?;
    // Without any `key` line every record was made under the one key there ever was.
    if seen_key_line {
        for (seq, ours) in older {
            if !ours {
                p.other_key += 1;
                p.other_key_last_seq = Some(seq);
            }
        }
    }
    Ok(p)
}

fn outcome_text(outcomes: &[audit::OutcomeRecord]) -> String {
    let Some((o, later)) = outcomes.split_first() else {
        return " outcome=none (no outcome record)".to_string();
    };
    let mut s = format!(
        " outcome={} (seq {}) upstream={:?}",
        o.result.as_str(),
        o.seq,
        o.upstream.as_deref().unwrap_or("-")
    );
    for l in later {
        s.push_str(&format!(
            " later={} (seq {}) upstream={:?}",
            l.result.as_str(),
            l.seq,
            l.upstream.as_deref().unwrap_or("-")
        ));
    }
    s
}

/// A decision as JSON with `outcome` (its own, or null) and `later_outcomes` (spooled copies
/// that left the spool afterwards; empty for most).
fn json_line(r: &Record, outcomes: &[audit::OutcomeRecord]) -> Result<String, String> {
    let mut v = serde_json::to_value(r).map_err(|e| e.to_string())?;
    if r.kind == audit::Kind::Decision {
        if let serde_json::Value::Object(map) = &mut v {
            let first = serde_json::to_value(outcomes.first()).map_err(|e| e.to_string())?;
            map.insert("outcome".to_string(), first);
            let later = serde_json::to_value(outcomes.get(1..).unwrap_or_default())
                .map_err(|e| e.to_string())?;
            map.insert("later_outcomes".to_string(), later);
        }
    }
    serde_json::to_string(&v).map_err(|e| e.to_string())
}

fn run_query(path: &Path, filter: &Filter, json: bool) -> ExitCode {
    let pass1 = match first_pass(path, filter) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("audit query: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    if pass1.other_key > 0 {
        eprintln!(
            "audit query: note: {} record(s) (the last at seq {}) were made under another HMAC key (before a key change): --recipient cannot match their recipients with the current key",
            pass1.other_key,
            pass1.other_key_last_seq.unwrap_or(0)
        );
    }
    if pass1.summarised > 0 {
        eprintln!(
            "audit query: note: {} record(s) list only the first {} of their visible recipients (recipients_summary): the address may be among the others, which only the summary's digest covers",
            pass1.summarised,
            audit::LISTED_WHEN_SUMMARISED
        );
    }
    let mut shown = 0u64;
    let mut out_err = None;
    let walked = audit::for_each_record(path, |e| match e.record {
        Ok(r) => {
            if !filter.matches(&r) || out_err.is_some() {
                return;
            }
            let outcomes = pass1.outcomes.get(&r.seq).map_or(&[][..], Vec::as_slice);
            let line = if json {
                json_line(&r, outcomes)
            } else if r.kind == audit::Kind::Decision {
                Ok(format!("{}{}", human(&r), outcome_text(outcomes)))
            } else {
                Ok(human(&r))
            };
            match line {
                Ok(l) => {
                    println!("{l}");
                    shown += 1;
                }
                Err(err) => out_err = Some(err),
            }
        }
        Err(why) => eprintln!(
            "audit query: {} line {}: not a record, skipped ({why})",
            e.file.display(),
            e.line
        ),
    });
    if let Err(e) = walked {
        eprintln!("audit query: {}: {e}", path.display());
        return ExitCode::from(2);
    }
    if let Some(e) = out_err {
        eprintln!("audit query: {e}");
        return ExitCode::from(2);
    }
    if shown == 0 && !json {
        eprintln!("no matching records");
    }
    ExitCode::SUCCESS
}

/// The first 20 seqs, comma-separated, and how many more.
fn seq_list(seqs: &[u64]) -> String {
    const SHOWN: usize = 20;
    let mut s = seqs
        .iter()
        .take(SHOWN)
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if seqs.len() > SHOWN {
        s.push_str(&format!(" and {} more", seqs.len() - SHOWN));
    }
    s
}

/// `verify`'s lines about record kinds, key changes and decisions without an outcome.
fn print_two_phase_notes(r: &audit::VerifyReport, path: &Path) {
    if r.decisions > 0 || r.outcomes > 0 {
        println!(
            "{} decisions, {} outcomes, {} one-shot records",
            r.decisions, r.outcomes, r.one_shot
        );
    }
    if !r.key_changes.is_empty() {
        println!(
            "HMAC key changed at seq {}: recipients of records before it are pseudonymised under an older key",
            seq_list(&r.key_changes)
        );
    }
    if !r.decisions_without_outcome.is_empty() {
        println!(
            "{} decisions without an outcome record: seq {}; the relay stopped or could not write the outcome after forwarding{}",
            r.decisions_without_outcome.len(),
            seq_list(&r.decisions_without_outcome),
            if audit::is_live(path) {
                " (the relay is running: messages in flight show here too)"
            } else {
                ""
            }
        );
    }
}
