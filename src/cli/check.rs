//! `bccguard check` (dry-run the policy on one message). (`config check` is in `cli::config`.)
//! `check` builds the same [`Message`] and runs the same plan as `serve`, so it reports what
//! the relay does with the same bytes, refusals and their replies included.
//! Several files, a folder, a Maildir or an mbox: see [`super::bulk`] (same checks per message,
//! then a summary).
//!
//! Exit codes: `check` exits 0 whatever the decision and 2 when the config, the file or the
//! message cannot be read. With `--json`, stdout always carries exactly one JSON object: the
//! decision, or `{"error": "...", "kind": "config" | "input" | "unreadable" | "too_big",
//! "smtp_reply": ...}` on exit 2 (the same text also goes to stderr); `smtp_reply` is the reply
//! `serve` gives the same bytes. The file is read as a client would send it with DATA: LF line
//! ends become CRLF, and DATA's rules (bare CR, lines over 1000 octets, size) apply.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::json;

use crate::config::{Action, Config, DkimOnRewrite, Mode, DEFAULT_CONFIG_PATH};
use crate::message::{Envelope, Message, Unreadable};
use crate::policy::{Decision, Policy};
use crate::reply::Reply;
use crate::rewrite::plan::{plan, Plan, Refusal, RefusalCause, Send};
use crate::rewrite::{dkim_signatures_over_recipients, Rewriter};
use crate::smtp::data::{receive_whole, DataError};

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    #[arg(long, env = crate::config::CONFIG_ENV, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Envelope sender. Default: the address in the message's From: field.
    #[arg(long)]
    pub from: Option<String>,
    /// SMTP AUTH login name to decide as (rules may name users and groups). Default: none.
    #[arg(long)]
    pub auth_user: Option<String>,
    /// Envelope recipient (repeatable). Default: the visible recipients.
    #[arg(long)]
    pub rcpt: Vec<String>,
    /// Also show every rule: which conditions held, which rule matched, which were skipped and why.
    #[arg(long)]
    pub explain: bool,
    /// Print one JSON object instead of prose (in bulk: one per message, then a summary object).
    #[arg(long)]
    pub json: bool,
    /// Raw message file (- for stdin), or any number of messages: files, folders of .eml files,
    /// Maildirs (cur/ and new/) and mbox files, each message dry-run with a summary at the end.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// Why `check` could not produce a decision.
pub(super) struct Failure {
    pub(super) kind: &'static str,
    pub(super) message: String,
    /// The reply `serve` gives the same bytes, when it would refuse them.
    pub(super) smtp_reply: Option<String>,
    /// The same reply as a value, for the bulk summary (counted by reply code).
    pub(super) reply: Option<Reply>,
}

impl Failure {
    pub(super) fn new(kind: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
            smtp_reply: None,
            reply: None,
        }
    }

    pub(super) fn to_json(&self) -> serde_json::Value {
        json!({"error": self.message, "kind": self.kind, "smtp_reply": self.smtp_reply})
    }
}

/// Everything `check` reports about one message.
pub(super) struct Report {
    pub(super) decision: Decision,
    sender: String,
    sender_source: &'static str,
    envelope: Vec<String>,
    external: Vec<bool>,
    pub(super) delivered_as: String,
    smtp_reply: Option<String>,
    /// The relay's own refusal (policy, DKIM, unreadable), for the bulk summary.
    pub(super) refusal: Option<Refusal>,
    pub(super) message_id: Option<String>,
    dkim: Option<String>,
    policy_version: String,
    /// `--explain`: every rule and its conditions.
    explain: Option<Vec<crate::policy::explain::RuleTrace>>,
}

pub fn run_check(args: &CheckArgs) -> ExitCode {
    if super::bulk::is_bulk(&args.files) {
        return super::bulk::run(args);
    }
    match check(args) {
        Ok(report) => {
            if args.json {
                println!("{}", to_json(&report));
            } else {
                print!("{}", to_text(&report));
            }
            ExitCode::SUCCESS
        }
        Err(f) => {
            if args.json {
                println!("{}", f.to_json());
            }
            eprintln!("bccguard check: {}", f.message);
            ExitCode::from(2)
        }
    }
}

/// What every message is checked against: the config, policy and rewriter `serve` would load.
pub(super) struct Checker {
    pub(super) cfg: Config,
    policy: Policy,
    rewriter: Rewriter,
}

impl Checker {
    pub(super) fn load(config: &Path) -> Result<Checker, Failure> {
        let cfg = Config::load(config).map_err(|e| Failure::new("config", e.to_string()))?;
        let shown = config.display();
        let policy = Policy::new(&cfg.policy)
            .map_err(|e| Failure::new("config", format!("{shown}: {e:#}")))?;
        let rewriter = Rewriter::new(&cfg.policy)
            .map_err(|e| Failure::new("config", format!("{shown}: {e:#}")))?;
        Ok(Checker {
            cfg,
            policy,
            rewriter,
        })
    }

    pub(super) fn max_size(&self) -> usize {
        self.cfg.server.max_message_size
    }
}

fn check(args: &CheckArgs) -> Result<Report, Failure> {
    let checker = Checker::load(&args.config)?;
    let file = args.files.first().map_or(Path::new("-"), PathBuf::as_path);
    // The bytes `serve` would hold at the end of DATA had a client sent this file (DATA's rules
    // and replies included), then the same value it builds from them, refused the same way.
    let received = receive_whole(&client_line_ends(&read_input(file)?), checker.max_size());
    check_received(&checker, args, received)
}

/// The decision and plan for one message as DATA left it (`Err`: refused by DATA's rules).
pub(super) fn check_received(
    checker: &Checker,
    args: &CheckArgs,
    received: Result<Vec<u8>, DataError>,
) -> Result<Report, Failure> {
    let Checker {
        cfg,
        policy,
        rewriter,
    } = checker;
    let received = received.map_err(|e| refused_data(e, cfg.server.max_message_size))?;
    let message = Message::parse(received).map_err(|r| unreadable(&r.why))?;

    let (sender, sender_source) = match &args.from {
        Some(f) => (f.trim().to_string(), "--from"),
        None => match from_field_address(&message) {
            Some(a) => (a, "From: field"),
            None => (String::new(), "none (null sender)"),
        },
    };
    let mut envelope = Envelope {
        sender,
        ..Envelope::default()
    };
    let decision = policy
        .decide_as(&message, &envelope, args.auth_user.as_deref())
        .map_err(|u| unreadable(&u))?;
    // Without --rcpt the envelope is what the message shows (as a client would have sent it).
    envelope.recipients = if args.rcpt.is_empty() {
        decision.visible.to_vec()
    } else {
        args.rcpt.iter().map(|r| r.trim().to_string()).collect()
    };

    let (delivered_as, refusal) = match plan(rewriter, &decision, &message, &envelope) {
        Plan::Refuse(refusal) => (
            match refusal.cause {
                RefusalCause::Policy => "nothing: the message is refused",
                RefusalCause::Dkim => "nothing: refused because of DKIM",
                RefusalCause::Unreadable => "nothing: the message cannot be read for sure",
                RefusalCause::Signing => "nothing: the relay could not sign it (try again later)",
            }
            .to_string(),
            Some(refusal),
        ),
        Plan::Send(sends) => (describe(&sends, &decision, envelope.recipients.len()), None),
    };
    let dkim = dkim_note(&message, &decision, cfg.policy.dkim.on_rewrite);
    let explain = if args.explain {
        Some(
            policy
                .explain(&message, &envelope, args.auth_user.as_deref())
                .map_err(|u| unreadable(&u))?,
        )
    } else {
        None
    };
    let internal = policy.internal_domains();
    let external = decision
        .visible
        .iter()
        .map(|a| !internal.is_internal(a))
        .collect();
    Ok(Report {
        decision,
        sender: envelope.sender,
        sender_source,
        envelope: envelope.recipients,
        external,
        delivered_as,
        smtp_reply: refusal.as_ref().map(|r| r.reply.to_string()),
        refusal,
        message_id: message.message_id(),
        dkim,
        policy_version: policy.version(),
        explain,
    })
}

/// A header the relay would refuse (550 5.6.0): exit 2, with the very reply `serve` gives.
fn unreadable(u: &Unreadable) -> Failure {
    let reply = Refusal::unreadable(u).reply;
    Failure {
        kind: "unreadable",
        message: format!("the relay would refuse this message ({reply})"),
        smtp_reply: Some(reply.to_string()),
        reply: Some(reply),
    }
}

/// A message that breaks DATA's rules: exit 2, with the very reply `serve` gives.
fn refused_data(e: DataError, max_size: usize) -> Failure {
    let reply = e.reply(max_size);
    Failure {
        kind: match e {
            DataError::TooBig => "too_big",
            DataError::BareLf | DataError::BareCr | DataError::LineTooLong => "unreadable",
        },
        message: format!("the relay would refuse this message ({reply})"),
        smtp_reply: Some(reply.to_string()),
        reply: Some(reply),
    }
}

/// The file as a mail client sends it: files on disk often end lines in LF alone, and clients
/// send every line end as CRLF. A lone CR stays (serve refuses it, so check does too).
pub(super) fn client_line_ends(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
    let mut prev = 0u8;
    for &b in raw {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

fn read_input(file: &Path) -> Result<Vec<u8>, Failure> {
    if file == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).map_err(|e| {
            Failure::new("input", format!("cannot read the message from stdin: {e}"))
        })?;
        Ok(buf)
    } else {
        std::fs::read(file)
            .map_err(|e| Failure::new("input", format!("cannot read {}: {e}", file.display())))
    }
}

/// The first address in the From: field, as a mail client would use it for MAIL FROM.
fn from_field_address(message: &Message) -> Option<String> {
    // Our own reader, not mail-parser: it must not panic on whatever file an admin feeds it.
    crate::policy::address::FirstAddress::of(message.field("From")?)
}

/// What would leave the relay, in words.
fn describe(sends: &[Send<'_>], d: &Decision, n: usize) -> String {
    let rcpts = format!(
        "{n} envelope {}",
        if n == 1 { "recipient" } else { "recipients" }
    );
    let bcc = if d.bcc_header_stripped {
        ", Bcc field removed"
    } else {
        ""
    };
    match (d.effective_action(), sends.first()) {
        (Action::Rewrite, Some(first)) => {
            format!(
                "one message to {rcpts} with {}",
                to_line(&first.message.header)
            )
        }
        (Action::Split, _) => format!(
            "{} separate {}, each with To: that recipient alone",
            sends.len(),
            if sends.len() == 1 { "copy" } else { "copies" }
        ),
        _ => format!("the message unchanged{bcc}, to {rcpts}"),
    }
}

/// The `To:` line of a rewritten header, for display.
fn to_line(header: &[u8]) -> String {
    crate::message::header::split(header)
        .ok()
        .and_then(|h| {
            h.fields
                .iter()
                .find(|f| f.name_is("To"))
                .map(|f| format!("\"To:{}\"", String::from_utf8_lossy(f.value)))
        })
        .unwrap_or_else(|| "no To: field".to_string())
}

fn dkim_note(message: &Message, d: &Decision, on_rewrite: DkimOnRewrite) -> Option<String> {
    let sigs = dkim_signatures_over_recipients(message);
    if sigs.is_empty() {
        return None;
    }
    let who = sigs.join(", ");
    let consequence = match (d.effective_action(), on_rewrite) {
        (Action::Accept, _) => "the message passes unchanged, so the signature stays valid",
        (Action::Reject, _) => "the message is refused anyway",
        (_, DkimOnRewrite::Reject) => "policy.dkim.on_rewrite = reject: the message is refused and the sender asked to use Bcc",
        (_, DkimOnRewrite::Resign) => "policy.dkim.on_rewrite = resign: the relay adds its own signature to the altered message",
        (_, DkimOnRewrite::Forward) => "policy.dkim.on_rewrite = forward: it goes out with this signature broken",
    };
    Some(format!("signature {who} covers To/Cc; {consequence}"))
}

pub(super) fn to_json(r: &Report) -> serde_json::Value {
    let mut v = to_json_base(r);
    // Organisation policy (issue 15): only present when used, so existing output is unchanged.
    if let Some(e) = &r.explain {
        v["explain"] = json!(e);
    }
    if let Some(o) = &r.decision.org.override_use {
        v["override"] = json!({
            "by": o.by, "reason": o.reason, "allowed": o.allowed,
            "refused_because": o.refused_because,
            "overridden_action": o.overridden_action.as_str(),
        });
    }
    if let Some(lang) = &r.decision.org.language {
        v["language"] = json!(lang);
    }
    v
}

fn to_json_base(r: &Report) -> serde_json::Value {
    let d = &r.decision;
    json!({
        "action": d.action.as_str(),
        "effective_action": d.effective_action().as_str(),
        "mode": d.mode.as_str(),
        "rule": d.rule,
        "reason": d.reason,
        "visible_recipients": d.visible,
        "visible_count": d.visible.len(),
        "visible_external": d.visible_external,
        "external_domains": d.external_domains,
        "bcc_header_stripped": d.bcc_header_stripped,
        "not_counted": d.not_counted,
        "lenient_fields": d.lenient_fields,
        "visible_attendees": d.visible_attendees,
        "sender": r.sender,
        "sender_source": r.sender_source,
        "envelope_recipients": r.envelope,
        "would_be_delivered_as": r.delivered_as,
        "smtp_reply": r.smtp_reply,
        "notify_sender": sends_notice(r),
        "dkim": r.dkim,
        "policy_version": r.policy_version,
    })
}

/// A notice goes out only after a rewrite or split that was actually carried out.
fn sends_notice(r: &Report) -> bool {
    let d = &r.decision;
    d.notify_sender
        && r.smtp_reply.is_none()
        && matches!(d.effective_action(), Action::Rewrite | Action::Split)
}

fn to_text(r: &Report) -> String {
    let d = &r.decision;
    let mut s = String::new();
    let rule = d
        .rule
        .as_deref()
        .map_or("no rule matched".to_string(), |n| format!("rule '{n}'"));
    s.push_str(&format!(
        "Decision:  {} ({rule}; {} mode)\n",
        d.action.as_str(),
        d.mode.as_str()
    ));
    if d.mode == Mode::Monitor && d.action != Action::Accept {
        s.push_str(&format!(
            "           monitor mode: would {}, delivers unchanged\n",
            d.action.as_str()
        ));
    }
    s.push_str(&format!("Reason:    {}\n", d.reason));
    let sender = if r.sender.is_empty() {
        "<>"
    } else {
        r.sender.as_str()
    };
    s.push_str(&format!("Sender:    {sender} ({})\n", r.sender_source));
    s.push_str(&format!(
        "Visible:   {} (outside: {}, outside domains: {})\n",
        d.visible.len(),
        d.visible_external,
        d.external_domains
    ));
    for (a, ext) in d.visible.iter().zip(&r.external) {
        let mut tags = vec![if *ext { "outside" } else { "internal" }];
        if d.not_counted.contains(a) {
            tags.push("not counted by the rule");
        }
        s.push_str(&format!("  {a}  [{}]\n", tags.join(", ")));
    }
    if !d.lenient_fields.is_empty() {
        s.push_str(&format!(
            "Note:      could not read {} strictly; counted on the safe side\n",
            d.lenient_fields.join(", ")
        ));
    }
    s.push_str(&format!(
        "Bcc field: {}\n",
        if d.bcc_header_stripped {
            "present (removed before forwarding)"
        } else {
            "none"
        }
    ));
    s.push_str(&format!("Result:    {}\n", r.delivered_as));
    if let Some(reply) = &r.smtp_reply {
        s.push_str(&format!("Reply:     {reply}\n"));
    }
    if sends_notice(r) {
        s.push_str("Notice:    the sender gets a short notice of what was done and why\n");
    }
    if let Some(note) = &r.dkim {
        s.push_str(&format!("DKIM:      {note}\n"));
    }
    if let Some(lang) = &d.org.language {
        s.push_str(&format!("Language:  {lang} (reject texts and notices)\n"));
    }
    if let Some(trace) = &r.explain {
        s.push_str(&explain_text(trace));
    }
    s
}

/// `--explain` in prose: every rule, in order, with each condition and whether it held.
fn explain_text(trace: &[crate::policy::explain::RuleTrace]) -> String {
    let mut s = String::from("Explain (rules in order; the first that matches wins):\n");
    if trace.is_empty() {
        s.push_str("  no rules: every message is accepted unchanged\n");
    }
    for (i, t) in trace.iter().enumerate() {
        s.push_str(&format!(
            "  {}. '{}': {} ({})\n",
            i + 1,
            t.rule,
            t.result,
            t.why
        ));
        for c in &t.conditions {
            let mark = if c.held { "held    " } else { "NOT held" };
            s.push_str(&format!("       [{mark}] {}\n", c.condition));
        }
    }
    if !trace.iter().any(|t| t.result == "matched") {
        s.push_str("  no rule matched: the message is accepted unchanged\n");
    }
    s
}
