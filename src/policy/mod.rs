//! Policy: decides what happens to a message from what it shows its readers.
//! Owns the visible-recipient finder ([`visible`], [`address`]), internal/external counting and
//! the admin's rules ([`rules`]); returns a [`Decision`] and never touches the message bytes.

pub mod address;
pub mod address_set;
pub mod calendar;
pub mod directory;
pub mod explain;
pub mod groups;
pub mod overrides;
pub mod rfc2047;
pub mod rules;
pub mod sender;
pub mod templates;
pub mod visible;

use sha2::{Digest, Sha256};

pub use crate::config::{Action, Mode};
use crate::config::{DkimOnRewrite, PolicyConfig, RewriteTo};
use crate::message::{Envelope, Message};
pub use address_set::AddressSet;
use rules::{plural, Counts, InternalDomains, Outcome, Rule};
pub use visible::{Unreadable, Visible};

/// The effective policy, compiled from config once per (re)load.
#[derive(Debug, Clone)]
pub struct Policy {
    cfg: PolicyConfig,
    internal: InternalDomains,
    rules: Vec<Rule>,
    version: String,
    groups: groups::Groups,
    override_: Option<overrides::Override>,
    templates: Option<templates::Templates>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What the rule says (even in monitor mode).
    pub action: Action,
    pub mode: Mode,
    pub rule: Option<String>,
    /// One sentence a person understands. Names counts and the rule, never an address.
    pub reason: String,
    /// Every visible address (distinct, domain lower-cased, first-seen order).
    pub visible: AddressSet,
    /// Outside addresses among `visible` (before any rule exception: this is what was exposed).
    pub visible_external: usize,
    /// Distinct outside domains among `visible`.
    pub external_domains: usize,
    pub bcc_header_stripped: bool,
    /// Text for the 550 reply when the action is reject (one line, ASCII).
    pub reject_text: Option<String>,
    /// The matching rule asks for a notice to the sender after a rewrite or split.
    pub notify_sender: bool,
    /// Visible addresses the matching rule's `except_recipients` left out of its counts.
    pub not_counted: AddressSet,
    /// Header fields the finder could not read strictly and counted on the safe side.
    pub lenient_fields: Vec<String>,
    /// Organisation policy: override used or refused, markers to strip, notice language.
    pub org: overrides::OrgDetail,
    /// A rule that would have intervened but for its `except_senders` (and no later rule did):
    /// the message goes out unchanged and is always audited.
    pub exempted_by: Option<String>,
    /// Calendar attendees among `visible` (invitations show them to every invitee).
    pub visible_attendees: Vec<String>,
}

impl Decision {
    /// What is actually done: monitor mode always delivers unchanged.
    pub fn effective_action(&self) -> Action {
        if self.mode == Mode::Monitor {
            Action::Accept
        } else {
            self.action
        }
    }
}

impl Policy {
    /// Compiles the rules; an error names the key and rule that make no sense.
    pub fn new(cfg: &PolicyConfig) -> anyhow::Result<Policy> {
        let groups = groups::Groups::compile(cfg).map_err(anyhow::Error::msg)?;
        let (internal, rules) =
            rules::compile_with_groups(cfg, &groups).map_err(anyhow::Error::msg)?;
        let override_ =
            overrides::Override::compile(&cfg.override_, &groups).map_err(anyhow::Error::msg)?;
        let templates =
            templates::Templates::compile(&cfg.notices, &groups).map_err(anyhow::Error::msg)?;
        // serde_json of the whole section is canonical enough: field order is the struct's,
        // and any change an admin can make to behaviour changes these bytes.
        let canonical = serde_json::to_vec(cfg)?;
        let version = hex::encode(Sha256::digest(&canonical));
        Ok(Policy {
            cfg: cfg.clone(),
            internal,
            rules,
            version,
            groups,
            override_,
            templates,
        })
    }

    /// Hash of the effective policy (hex SHA-256), recorded in every audit record.
    pub fn version(&self) -> String {
        self.version.clone()
    }

    pub fn mode(&self) -> Mode {
        self.cfg.mode
    }

    pub fn internal_domains(&self) -> &InternalDomains {
        &self.internal
    }

    /// [`Policy::describe`] on one line (`" | "` between its lines), for logs: one event, one
    /// line, so journald, syslog and grep keep it whole.
    pub fn describe_one_line(&self) -> String {
        self.describe()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// The effective policy in words (for `config check` and the start-up log).
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let mode = match self.cfg.mode {
            Mode::Enforce => "enforce: decisions are carried out",
            Mode::Monitor => {
                "monitor: decisions are only logged and audited; every message is delivered unchanged"
            }
        };
        s.push_str(&format!("Mode: {mode}.\n"));
        match self.internal.domains() {
            [] => s.push_str(
                "Internal domains: none configured, so every recipient counts as outside.\n",
            ),
            d => s.push_str(&format!(
                "Internal domains: {}{}{}.\n",
                d.join(", "),
                if self.internal.subdomains() {
                    " (and their subdomains)"
                } else {
                    " (exactly; subdomains count as outside)"
                },
                if d.iter().any(|x| x.starts_with("*.")) {
                    "; *.domain means only the subdomains of that domain"
                } else {
                    ""
                }
            )),
        }
        s.push_str("Always: any Bcc or Resent-Bcc field is removed before forwarding.\n");
        if self.rules.is_empty() {
            s.push_str("Rules: none; every message is accepted unchanged.\n");
        } else {
            s.push_str("Rules (the first that matches wins; if none matches, the message is accepted unchanged):\n");
        }
        for (i, r) in self.rules.iter().enumerate() {
            let conds = r.conditions_in_words();
            let when = if conds.is_empty() {
                "every message".to_string()
            } else {
                format!("when {}", conds.join(" and "))
            };
            let what = match r.action {
                Action::Accept => "accept unchanged".to_string(),
                Action::Rewrite => format!(
                    "rewrite: replace To/Cc with \"To: {}\"",
                    match self.cfg.rewrite_to {
                        RewriteTo::Undisclosed => "undisclosed-recipients:;",
                        RewriteTo::Sender => "<the sender>",
                    }
                ),
                Action::Split => {
                    "split: one copy per envelope recipient, each addressed to that recipient alone"
                        .to_string()
                }
                Action::Reject => format!(
                    "reject with 550 5.7.1 \"{}\"",
                    r.message
                        .clone()
                        .unwrap_or_else(|| "<default text naming the count and the fix>".into())
                ),
            };
            s.push_str(&format!("  {}. '{}': {when} -> {what}", i + 1, r.name));
            if !r.except_recipients.is_empty() {
                let list: Vec<String> = r.except_recipients.iter().map(|p| p.to_string()).collect();
                s.push_str(&format!("; not counting {}", list.join(", ")));
            }
            if r.notify_sender {
                s.push_str("; the sender gets a notice");
            }
            match self.cfg.rules.get(i).and_then(|rc| rc.mode) {
                Some(Mode::Monitor) if self.cfg.mode == Mode::Enforce => s.push_str(
                    "; this rule is in monitor mode (audited as 'would', not carried out)",
                ),
                Some(Mode::Enforce) if self.cfg.mode == Mode::Monitor => {
                    s.push_str("; this rule enforces although the policy is in monitor mode")
                }
                _ => {}
            }
            s.push_str(".\n");
        }
        s.push_str(&self.describe_org());
        match &self.cfg.trace_header {
            Some(h) => s.push_str(&format!("Altered messages carry a \"{h}:\" trace field.\n")),
            None => s.push_str("No trace field is added to altered messages.\n"),
        }
        let dkim = match self.cfg.dkim.on_rewrite {
            DkimOnRewrite::Reject => "refuse the message (550 5.7.1) and ask for Bcc".to_string(),
            DkimOnRewrite::Resign => format!(
                "re-sign the altered message as d={} s={}",
                self.cfg.dkim.domain.as_deref().unwrap_or("?"),
                self.cfg.dkim.selector.as_deref().unwrap_or("?")
            ),
            DkimOnRewrite::Forward => {
                "forward it anyway (the signature breaks; logged as a warning)".to_string()
            }
        };
        s.push_str(&format!(
            "DKIM: when a rewrite or split would break a signature over To/Cc: {dkim}.\n"
        ));
        s.push_str(&format!("Policy version: {}\n", self.version));
        s
    }

    /// Groups, directories, override and notice languages in words (issue 15).
    fn describe_org(&self) -> String {
        let mut s = String::new();
        for name in self.groups.names() {
            if let Some(g) = self.groups.get(name) {
                s.push_str(&format!("Group '{name}': {}.\n", g.origin()));
            }
        }
        for d in self.groups.directories() {
            s.push_str(&format!(
                "Directory '{}': {}; groups refreshed in the background, the last good answer is used while it is down.\n",
                d.name(),
                if d.is_up() { "reachable" } else { "NOT reachable now" }
            ));
        }
        let o = &self.cfg.override_;
        if self.override_.is_some() {
            let mut how = format!("a \"{}: <reason>\" field", o.header);
            if let Some(t) = &o.subject_tag {
                how.push_str(&format!(" or \"[{t}: <reason>]\" in the Subject"));
            }
            s.push_str(&format!(
                "Override: {how} from {} (users: {}; groups: {}) lets a message show its recipients; a reason is required, the marker is removed, every request is audited.\n",
                o.identity.as_str(),
                if o.users.is_empty() { "-".to_string() } else { o.users.join(", ") },
                if o.groups.is_empty() { "-".to_string() } else { o.groups.join(", ") },
            ));
        }
        if let Some(dir) = &self.cfg.notices.templates {
            s.push_str(&format!(
                "Notices and reject texts: templates in {} (default language {}{}).\n",
                dir.display(),
                self.cfg.notices.default_language,
                self.cfg
                    .notices
                    .languages
                    .iter()
                    .map(|l| format!(
                        "; {} for {}",
                        l.lang,
                        [l.groups.join(", "), l.domains.join(", ")]
                            .iter()
                            .filter(|x| !x.is_empty())
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                    .collect::<String>()
            ));
        }
        s
    }

    /// The decision for one message. The envelope's recipients do not change what the message
    /// shows (they matter to the plan); its sender is a rule condition.
    pub fn decide(&self, message: &Message, envelope: &Envelope) -> Result<Decision, Unreadable> {
        self.decide_as(message, envelope, None)
    }

    /// [`Policy::decide`] knowing the SMTP AUTH user (rules may name users and groups).
    pub fn decide_as(
        &self,
        message: &Message,
        envelope: &Envelope,
        auth_user: Option<&str>,
    ) -> Result<Decision, Unreadable> {
        let v = visible::find_visible_in(message.raw(), &message.header())?;
        let sender = sender_of(message, envelope, auth_user);
        let mut d = self.decide_sender(&sender, v);
        if let Some(t) = &self.templates {
            let rule = d
                .rule
                .as_deref()
                .and_then(|n| self.rules.iter().find(|r| r.name == n));
            t.apply(message, &sender, rule, &mut d);
        }
        if let Some(o) = &self.override_ {
            o.apply(message, &sender, &mut d);
        }
        Ok(d)
    }

    /// The decision for an already-found visible set (pure: no message bytes).
    pub fn decide_visible(&self, sender: &str, v: Visible) -> Decision {
        let s = sender::Sender {
            envelope: sender.to_string(),
            ..Default::default()
        };
        self.decide_sender(&s, v)
    }

    /// Every rule's conditions for this message (for `check --explain`).
    pub fn explain(
        &self,
        message: &Message,
        envelope: &Envelope,
        auth_user: Option<&str>,
    ) -> Result<Vec<explain::RuleTrace>, Unreadable> {
        let v = visible::find_visible_in(message.raw(), &message.header())?;
        let sender = sender_of(message, envelope, auth_user);
        Ok(explain::explain(&self.internal, &self.rules, &sender, &v))
    }

    /// The groups the rules and the override may name.
    pub fn groups(&self) -> &groups::Groups {
        &self.groups
    }

    /// The decision for an already-found visible set, knowing who sent it.
    pub fn decide_sender(&self, sender: &sender::Sender, v: Visible) -> Decision {
        let outcome = rules::evaluate_sender(&self.internal, &self.rules, sender, &v);
        let rule = outcome.rule.and_then(|i| self.rules.get(i));
        // A rule may be trialled in monitor mode while the policy enforces (or the reverse).
        let mode = outcome
            .rule
            .and_then(|i| self.cfg.rules.get(i))
            .and_then(|r| r.mode)
            .unwrap_or(self.cfg.mode);
        let mut reason = self.reason(rule, &outcome, mode, v.attendees.len());
        let mut action = rule.map_or(Action::Accept, |r| r.action);
        let mut reject_text = match rule {
            Some(r) if r.action == Action::Reject => Some(reject_text(r, &outcome)),
            _ => None,
        };
        // Hiding To/Cc leaves an invitation's attendee list in its calendar part: the rule's
        // calendar_action (split or reject) applies instead.
        if let Some(r) = rule.filter(|r| r.action == Action::Rewrite && !v.attendees.is_empty()) {
            action = r.calendar_action;
            if action == Action::Reject {
                reject_text = Some(calendar_reject_text(v.attendees.len()));
                reason.push_str(" It is a calendar invitation, whose attendee list hiding To and Cc cannot hide, so it is refused.");
            } else {
                reason.push_str(" It is a calendar invitation: each invitee gets a copy that lists only the organizer and them.");
            }
        }
        Decision {
            action,
            mode,
            rule: rule.map(|r| r.name.clone()),
            reason,
            visible: v.addresses,
            visible_external: outcome.all.external,
            external_domains: outcome.all.external_domains,
            bcc_header_stripped: v.bcc_present,
            reject_text,
            notify_sender: rule.is_some_and(|r| r.notify_sender),
            not_counted: outcome.not_counted,
            lenient_fields: v.lenient_fields,
            org: Default::default(),
            visible_attendees: v.attendees,
            exempted_by: match rule {
                None => outcome
                    .exempted_by
                    .and_then(|i| self.rules.get(i))
                    .map(|r| r.name.clone()),
                Some(_) => None,
            },
        }
    }

    fn reason(&self, rule: Option<&Rule>, o: &Outcome, mode: Mode, attendees: usize) -> String {
        let mut shows = shows_phrase(&o.all, &self.internal);
        if attendees > 0 {
            // Admins would otherwise wonder why a one-recipient invitation was stopped.
            shows.push_str(&format!(
                ", {attendees} of them listed in a calendar invitation"
            ));
        }
        let exempting = o.exempted_by.and_then(|i| self.rules.get(i));
        let mut s = match (rule, exempting) {
            (None, Some(r)) => format!(
                "{shows}; rule '{}' would {} it, but its sender is exempt (except_senders), so it goes out unchanged",
                r.name,
                r.action.as_str()
            ),
            (None, None) => format!("{shows}; no rule matches, so it goes out unchanged"),
            (Some(r), _) => {
                let conds = r.conditions_in_words();
                let cond = if conds.is_empty() {
                    "(every message)".to_string()
                } else {
                    format!("({})", conds.join(", "))
                };
                let excepted = if o.not_counted.is_empty() {
                    String::new()
                } else {
                    let n = o.not_counted.len();
                    format!(
                        ", {} not counted as the rule allows",
                        if n == 1 {
                            "1 listed address".to_string()
                        } else {
                            format!("{n} listed addresses")
                        }
                    )
                };
                format!(
                    "{shows}{excepted}; rule '{}' {cond} {}",
                    r.name,
                    r.action_phrase()
                )
            }
        };
        if mode == Mode::Monitor && rule.is_some_and(|r| r.action != Action::Accept) {
            s.push_str(" (monitor mode: delivered unchanged)");
        }
        s.push('.');
        s
    }
}

/// Who sent `message`: the envelope sender, the From: field's first address (read with our own
/// address reader; an unreadable From: simply has none) and the AUTH user.
pub fn sender_of(
    message: &Message,
    envelope: &Envelope,
    auth_user: Option<&str>,
) -> sender::Sender {
    let from_header = message.field("From").and_then(address::FirstAddress::of);
    sender::Sender {
        envelope: envelope.sender.clone(),
        from_header,
        auth_user: auth_user.map(str::to_string),
    }
}

/// "The message shows 18 recipients (18 outside example.org, 12 domains) to each other".
fn shows_phrase(c: &Counts, internal: &InternalDomains) -> String {
    if c.visible == 0 {
        return "The message shows no recipients".to_string();
    }
    let detail = format!(
        "{} {}, {} {}",
        c.external,
        internal.outside_label(),
        c.external_domains,
        plural(c.external_domains, "domain", "domains")
    );
    let detail = if internal.domains().is_empty() {
        format!("{detail}; no internal domains are configured")
    } else {
        detail
    };
    if c.visible == 1 {
        format!("The message shows 1 recipient ({detail})")
    } else {
        format!(
            "The message shows {} recipients ({detail}) to each other",
            c.visible
        )
    }
}

/// The 550 text: the rule's own sentence, or one that names the count, the limit and the fix.
fn reject_text(r: &Rule, o: &Outcome) -> String {
    let text = match &r.message {
        Some(m) => m.clone(),
        None => {
            let c = &o.counted;
            let what = if let Some(n) = r.min_visible_external.filter(|&n| n > 0) {
                format!(
                    "it would show {} outside {} each other's addresses (this relay refuses {n} or more)",
                    c.external,
                    plural(c.external, "recipient", "recipients")
                )
            } else if let Some(n) = r.min_external_domains.filter(|&n| n > 0) {
                format!(
                    "it would show recipients at {} outside {} each other's addresses (this relay refuses {n} or more domains)",
                    c.external_domains,
                    plural(c.external_domains, "domain", "domains")
                )
            } else if let Some(n) = r.min_visible.filter(|&n| n > 0) {
                format!(
                    "it would show {} {} each other's addresses (this relay refuses {n} or more)",
                    c.visible,
                    plural(c.visible, "recipient", "recipients")
                )
            } else {
                format!(
                    "it would show {} {} each other's addresses, which rule '{}' does not allow",
                    c.visible,
                    plural(c.visible, "recipient", "recipients"),
                    r.name
                )
            };
            format!("Message not sent: {what}. Put the recipients in Bcc and send it again.")
        }
    };
    one_ascii_line(&text)
}

/// The 550 text for a calendar invitation that a rule would rewrite: hiding To/Cc cannot hide
/// an attendee list, so unless the rule's calendar fallback is split, the sender is told what to
/// do instead (for the rewrite stage's `calendar_action` fallback).
pub fn calendar_reject_text(attendees: usize) -> String {
    one_ascii_line(&format!(
        "Message not sent: it is a calendar invitation that shows its {attendees} {} to every invitee, \
         which hiding To and Cc cannot change. Use \"hide attendee list\" in your calendar, or \
         invite them separately.",
        plural(attendees, "attendee", "attendees")
    ))
}

/// Makes text safe for an SMTP reply line: printable ASCII only, no line breaks.
pub fn one_ascii_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else if c.is_whitespace() {
                ' '
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RuleConfig;

    fn rule(name: &str, action: Action) -> RuleConfig {
        RuleConfig::new(name, action)
    }

    fn policy(rules: Vec<RuleConfig>, mode: Mode) -> Policy {
        Policy::new(&PolicyConfig {
            mode,
            internal_domains: vec!["example.org".into()],
            rules,
            ..PolicyConfig::default()
        })
        .unwrap()
    }

    fn vis(addrs: &[String], bcc: bool) -> Visible {
        Visible {
            addresses: addrs.iter().collect(),
            bcc_present: bcc,
            lenient_fields: vec![],
            attendees: vec![],
        }
    }

    fn outside(n: usize, domains: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("u{i}@d{}.net", i % domains))
            .collect()
    }

    #[test]
    fn reason_names_counts_and_rule() {
        let mut r = rule("many-external", Action::Rewrite);
        r.min_visible_external = Some(6);
        r.notify_sender = true;
        let p = policy(vec![r], Mode::Enforce);
        let d = p.decide_visible("a@example.org", vis(&outside(18, 12), true));
        assert_eq!(d.action, Action::Rewrite);
        assert_eq!(d.rule.as_deref(), Some("many-external"));
        assert_eq!(
            d.reason,
            "The message shows 18 recipients (18 outside example.org, 12 domains) to each other; \
             rule 'many-external' (6 or more outside addresses) hides them."
        );
        assert!(d.notify_sender);
        assert!(d.bcc_header_stripped);
        assert_eq!((d.visible_external, d.external_domains), (18, 12));
        assert!(d.reject_text.is_none());
    }

    #[test]
    fn reason_mentions_calendar_attendees() {
        let mut r = rule("many-external", Action::Reject);
        r.min_visible_external = Some(6);
        let p = policy(vec![r], Mode::Enforce);
        let mut v = vis(&outside(18, 6), false);
        v.attendees = v.addresses.to_vec()[1..].to_vec();
        let d = p.decide_visible("boss@example.org", v);
        assert_eq!(d.visible_attendees.len(), 17);
        assert!(
            d.reason.starts_with(
                "The message shows 18 recipients (18 outside example.org, 6 domains) to each other, \
                 17 of them listed in a calendar invitation; rule 'many-external'"
            ),
            "{}",
            d.reason
        );
    }

    #[test]
    fn calendar_reject_text_says_what_to_do() {
        let t = calendar_reject_text(18);
        assert!(
            t.contains("18 attendees") && t.contains("hide attendee list"),
            "{t}"
        );
        assert!(t.is_ascii() && !t.contains('\n'));
        assert!(calendar_reject_text(1).contains("its 1 attendee to"));
    }

    #[test]
    fn default_reject_text_names_count_limit_and_fix() {
        let mut r = rule("mass", Action::Reject);
        r.min_visible_external = Some(20);
        let p = policy(vec![r], Mode::Enforce);
        let d = p.decide_visible("", vis(&outside(25, 3), false));
        let t = d.reject_text.clone().unwrap();
        assert_eq!(
            t,
            "Message not sent: it would show 25 outside recipients each other's addresses \
             (this relay refuses 20 or more). Put the recipients in Bcc and send it again."
        );
        assert!(t.is_ascii() && !t.contains('\n'));
        assert_eq!(d.effective_action(), Action::Reject);
    }

    #[test]
    fn custom_reject_message_and_monitor_mode() {
        let mut r = rule("mass", Action::Reject);
        r.min_visible = Some(2);
        r.message = Some("Use Bcc, please.".into());
        let p = policy(vec![r], Mode::Monitor);
        let d = p.decide_visible("", vis(&outside(3, 1), false));
        assert_eq!(d.reject_text.as_deref(), Some("Use Bcc, please."));
        assert_eq!(d.action, Action::Reject);
        assert_eq!(d.effective_action(), Action::Accept);
        assert!(
            d.reason.ends_with("(monitor mode: delivered unchanged)."),
            "{}",
            d.reason
        );
    }

    #[test]
    fn no_match_is_accept_with_a_reason() {
        let mut r = rule("many", Action::Rewrite);
        r.min_visible_external = Some(6);
        let p = policy(vec![r], Mode::Enforce);
        let mut addrs = outside(1, 1);
        addrs.push("colleague@example.org".into());
        let d = p.decide_visible("", vis(&addrs, false));
        assert_eq!(d.action, Action::Accept);
        assert_eq!(d.rule, None);
        assert_eq!(
            d.reason,
            "The message shows 2 recipients (1 outside example.org, 1 domain) to each other; no rule matches, so it goes out unchanged."
        );
    }

    #[test]
    fn a_rule_in_monitor_mode_is_trialled_while_others_enforce() {
        let mut trial = rule("trial", Action::Reject);
        trial.min_visible = Some(5);
        trial.mode = Some(Mode::Monitor);
        let mut firm = rule("firm", Action::Rewrite);
        firm.min_visible = Some(2);
        let p = policy(vec![trial, firm], Mode::Enforce);
        let many: Vec<String> = (0..6).map(|i| format!("r{i}@x{i}.net")).collect();
        let d = p.decide_visible("a@example.org", vis(&many, false));
        assert_eq!((d.action, d.mode), (Action::Reject, Mode::Monitor));
        assert_eq!(d.effective_action(), Action::Accept);
        assert!(
            d.reason.ends_with("(monitor mode: delivered unchanged)."),
            "{}",
            d.reason
        );
        let d = p.decide_visible("a@example.org", vis(&many[..3], false));
        assert_eq!(
            (d.effective_action(), d.mode),
            (Action::Rewrite, Mode::Enforce)
        );
        assert!(p.describe().contains("'trial'") && p.describe().contains("monitor mode (audited"));
    }

    #[test]
    fn reason_without_internal_domains_or_conditions() {
        let p = Policy::new(&PolicyConfig {
            rules: vec![rule("always", Action::Split)],
            ..PolicyConfig::default()
        })
        .unwrap();
        let d = p.decide_visible("", vis(&outside(3, 2), false));
        assert_eq!(
            d.reason,
            "The message shows 3 recipients (3 outside, 2 domains; no internal domains are configured) \
             to each other; rule 'always' (every message) sends each recipient a separate copy."
        );
        let d = p.decide_visible("", vis(&outside(1, 1), false));
        assert!(
            d.reason
                .starts_with("The message shows 1 recipient (1 outside, 1 domain;"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn version_changes_with_policy_and_describe_lists_rules() {
        let mut r = rule("many", Action::Rewrite);
        r.min_visible_external = Some(6);
        let a = policy(vec![r.clone()], Mode::Enforce);
        r.min_visible_external = Some(7);
        let b = policy(vec![r], Mode::Enforce);
        assert_eq!(a.version().len(), 64);
        assert_ne!(a.version(), b.version());
        assert_eq!(
            a.version(),
            policy(
                vec![{
                    let mut r = rule("many", Action::Rewrite);
                    r.min_visible_external = Some(6);
                    r
                }],
                Mode::Enforce
            )
            .version()
        );
        let text = a.describe();
        assert!(
            text.contains("'many': when 6 or more outside addresses -> rewrite"),
            "{text}"
        );
        assert!(
            text.contains("example.org (and their subdomains)"),
            "{text}"
        );
        assert!(text.contains("DKIM"), "{text}");
    }
}
