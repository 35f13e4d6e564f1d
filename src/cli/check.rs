//! `bccguard check` (dry-run the policy on one message). (`config check` is in `cli::config`.)
//!
//! Exit codes: `check` exits 0 whatever the decision and 2 when the config, the file or the
//! message cannot be read. With `--json`, stdout always carries exactly one JSON object: the
//! decision, or `{"error": "...", "kind": "config" | "input" | "unreadable"}` on exit 2 (the same
//! text also goes to stderr). `config check` exits 0 when the config is valid and 1 otherwise.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::json;

use crate::config::{Action, Config, DkimOnRewrite, Mode, DEFAULT_CONFIG_PATH};
use crate::policy::{Decision, Policy};
use crate::rewrite::{dkim_signatures_over_recipients, RewriteError, Rewriter};

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    #[arg(long, env = crate::config::CONFIG_ENV, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Envelope sender. Default: the address in the message's From: field.
    #[arg(long)]
    pub from: Option<String>,
    /// Envelope recipient (repeatable). Default: the visible recipients.
    #[arg(long)]
    pub rcpt: Vec<String>,
    /// Print one JSON object instead of prose.
    #[arg(long)]
    pub json: bool,
    /// Raw message file, or - for stdin.
    pub file: PathBuf,
}

/// Why `check` could not produce a decision.
struct Failure {
    kind: &'static str,
    message: String,
}

impl Failure {
    fn new(kind: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
        }
    }
}

/// Everything `check` reports about one message.
struct Report {
    decision: Decision,
    sender: String,
    sender_source: &'static str,
    envelope: Vec<String>,
    external: Vec<bool>,
    delivered_as: String,
    smtp_reply: Option<String>,
    dkim: Option<String>,
    policy_version: String,
}

pub fn run_check(args: &CheckArgs) -> ExitCode {
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
                println!("{}", json!({"error": f.message, "kind": f.kind}));
            }
            eprintln!("bccguard check: {}", f.message);
            ExitCode::from(2)
        }
    }
}

fn check(args: &CheckArgs) -> Result<Report, Failure> {
    let cfg = Config::load(&args.config).map_err(|e| Failure::new("config", e.to_string()))?;
    let shown = args.config.display();
    let policy =
        Policy::new(&cfg.policy).map_err(|e| Failure::new("config", format!("{shown}: {e:#}")))?;
    let rewriter = Rewriter::new(&cfg.policy)
        .map_err(|e| Failure::new("config", format!("{shown}: {e:#}")))?;
    let raw = read_input(&args.file)?;

    let (sender, sender_source) = match &args.from {
        Some(f) => (f.trim().to_string(), "--from"),
        None => match from_field_address(&raw) {
            Some(a) => (a, "From: field"),
            None => (String::new(), "none (null sender)"),
        },
    };
    // Without --rcpt the envelope is what the message shows (as a client would have sent it).
    let visible_first = crate::policy::visible::find_visible(&raw).map_err(|u| {
        Failure::new(
            "unreadable",
            format!("the relay would refuse this message (550 5.6.0): {u}"),
        )
    })?;
    let envelope: Vec<String> = if args.rcpt.is_empty() {
        visible_first.addresses.clone()
    } else {
        args.rcpt.iter().map(|r| r.trim().to_string()).collect()
    };
    let decision = policy.decide(&sender, &envelope, &raw).map_err(|u| {
        Failure::new(
            "unreadable",
            format!("the relay would refuse this message (550 5.6.0): {u}"),
        )
    })?;

    let (delivered_as, smtp_reply) = outcome(&rewriter, &raw, &sender, &envelope, &decision)?;
    let dkim = dkim_note(&raw, &decision, cfg.policy.dkim.on_rewrite);
    let internal = policy.internal_domains();
    let external = decision
        .visible
        .iter()
        .map(|a| !internal.is_internal(a))
        .collect();
    Ok(Report {
        decision,
        sender,
        sender_source,
        envelope,
        external,
        delivered_as,
        smtp_reply,
        dkim,
        policy_version: policy.version(),
    })
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
fn from_field_address(raw: &[u8]) -> Option<String> {
    // Our own reader, not mail-parser: it must not panic on whatever file an admin feeds it.
    let header = crate::message::header::split(raw).ok()?;
    let from = header.fields.iter().find(|f| f.name_is("From"))?;
    let list = crate::policy::address::parse_address_list(from.value).ok()?;
    list.addresses.into_iter().find(|a| !a.is_empty())
}

/// What would leave the relay, in words, and the SMTP reply when the client would get a refusal.
fn outcome(
    rw: &Rewriter,
    raw: &[u8],
    sender: &str,
    envelope: &[String],
    d: &Decision,
) -> Result<(String, Option<String>), Failure> {
    let n = envelope.len();
    let rcpts = format!(
        "{n} envelope {}",
        if n == 1 { "recipient" } else { "recipients" }
    );
    let refused = |e: RewriteError| -> Result<(String, Option<String>), Failure> {
        match e {
            RewriteError::DkimRefused(text) => Ok((
                "nothing: refused because of DKIM".to_string(),
                Some(format!("550 5.7.1 {text}")),
            )),
            RewriteError::Unreadable(why) => Err(Failure::new(
                "unreadable",
                format!("the relay would refuse this message (550 5.6.0): {why}"),
            )),
        }
    };
    let bcc = if d.bcc_header_stripped {
        ", Bcc field removed"
    } else {
        ""
    };
    match d.effective_action() {
        Action::Accept => match rw.pass_through(raw) {
            Ok(_) => Ok((format!("the message unchanged{bcc}, to {rcpts}"), None)),
            Err(e) => refused(e),
        },
        Action::Reject => Ok((
            "nothing: the message is refused".to_string(),
            Some(format!(
                "550 5.7.1 {}",
                d.reject_text.clone().unwrap_or_else(|| d.reason.clone())
            )),
        )),
        Action::Rewrite => match rw.hide_recipients(raw, sender, d) {
            Ok(out) => Ok((
                format!("one message to {rcpts} with {}", to_line(&out.header)),
                None,
            )),
            Err(e) => refused(e),
        },
        Action::Split => {
            for r in envelope {
                if let Err(e) = rw.for_recipient(raw, r, d) {
                    return refused(e);
                }
            }
            Ok((
                format!(
                    "{n} separate {}, each with To: that recipient alone",
                    if n == 1 { "copy" } else { "copies" }
                ),
                None,
            ))
        }
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

fn dkim_note(raw: &[u8], d: &Decision, on_rewrite: DkimOnRewrite) -> Option<String> {
    let sigs = dkim_signatures_over_recipients(raw);
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

fn to_json(r: &Report) -> serde_json::Value {
    let d = &r.decision;
    json!({
        "action": d.action.as_str(),
        "effective_action": d.effective_action().as_str(),
        "mode": mode_str(d.mode),
        "rule": d.rule,
        "reason": d.reason,
        "visible_recipients": d.visible,
        "visible_count": d.visible.len(),
        "visible_external": d.visible_external,
        "external_domains": d.external_domains,
        "bcc_header_stripped": d.bcc_header_stripped,
        "not_counted": d.not_counted,
        "lenient_fields": d.lenient_fields,
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

fn mode_str(m: Mode) -> &'static str {
    match m {
        Mode::Enforce => "enforce",
        Mode::Monitor => "monitor",
    }
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
        mode_str(d.mode)
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
    s
}
