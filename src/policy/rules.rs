//! The admin's rules, compiled: sender and recipient patterns, internal domains, and the pure
//! first-match evaluation over a [`Visible`] set. Nothing here reads message bytes, so every rule
//! decision can be unit-tested with a hand-made recipient list.

use crate::config::{Action, PolicyConfig, RuleConfig};
use crate::policy::address::canonical_domain;
use crate::policy::address_set::AddressSet;
use crate::policy::groups::Groups;
use crate::policy::sender::{self, Sender, Who};
use crate::policy::Visible;

/// An address pattern from the config: `user@domain` (whole address) or `*@domain` (any user).
/// Matching ignores letter case throughout: admins write addresses the way people type them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressPattern {
    Exact { local: String, domain: String },
    AnyUser { domain: String },
}

impl AddressPattern {
    pub fn parse(text: &str) -> Result<AddressPattern, String> {
        let t = text.trim();
        let t = t
            .strip_prefix('<')
            .and_then(|s| s.strip_suffix('>'))
            .unwrap_or(t);
        let (local, domain) = t
            .rsplit_once('@')
            .ok_or_else(|| format!("`{text}` is not an address or *@domain pattern"))?;
        let domain = normalise_domain(domain)
            .map_err(|why| format!("`{text}` is not an address or *@domain pattern: {why}"))?;
        if local.is_empty() {
            return Err(format!(
                "`{text}` has no user part (use *@{domain} for every user)"
            ));
        }
        if local.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("`{text}` contains white space"));
        }
        if local == "*" {
            return Ok(AddressPattern::AnyUser { domain });
        }
        if local.contains('*') {
            return Err(format!(
                "`{text}`: only `*@domain` wildcards are supported, not `*` inside a user part"
            ));
        }
        Ok(AddressPattern::Exact {
            local: local.to_lowercase(),
            domain,
        })
    }

    pub fn matches(&self, address: &str) -> bool {
        let Some((local, domain)) = split_address(address) else {
            return false;
        };
        let domain = address_domain(domain);
        match self {
            AddressPattern::Exact {
                local: l,
                domain: d,
            } => domain == *d && local.to_lowercase() == *l,
            AddressPattern::AnyUser { domain: d } => domain == *d,
        }
    }
}

impl std::fmt::Display for AddressPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddressPattern::Exact { local, domain } => write!(f, "{local}@{domain}"),
            AddressPattern::AnyUser { domain } => write!(f, "*@{domain}"),
        }
    }
}

/// Splits at the last `@` (a quoted local part may itself contain `@`).
fn split_address(address: &str) -> Option<(&str, &str)> {
    let a = address.trim();
    let a = a
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(a);
    a.rsplit_once('@')
        .filter(|(l, d)| !l.is_empty() && !d.is_empty())
}

/// Puts a configured domain in the canonical form addresses are read in (any letter case,
/// A-label or U-label, trailing dot) and refuses text that cannot be one.
fn normalise_domain(domain: &str) -> Result<String, String> {
    let t = domain.trim();
    let t = t.strip_suffix('.').unwrap_or(t);
    if t.is_empty() {
        return Err("empty domain".into());
    }
    if t.starts_with('.') || t.contains("..") || t.ends_with('.') {
        return Err(format!("`{t}` has an empty label"));
    }
    if t.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '@' || c == '*')
    {
        return Err(format!("`{t}` contains characters a domain cannot have"));
    }
    if !t.is_ascii() || t.to_ascii_lowercase().contains("xn--") {
        idna::domain_to_ascii(t)
            .map_err(|_| format!("`{t}` is not a valid internationalised domain name"))?;
    }
    Ok(canonical_domain(t))
}

/// Canonical domain of an address as the finder writes it (lenient callers pass raw text).
fn address_domain(domain: &str) -> String {
    canonical_domain(domain.trim())
}

/// The configured internal domains: a domain matches itself and, if enabled, its subdomains;
/// `*.example.org` matches the subdomains of example.org only (what it says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalDomains {
    /// Canonical domains as the admin wrote them (`*.` kept), for messages and descriptions.
    domains: Vec<String>,
    /// (canonical domain, matches only its subdomains)
    entries: Vec<(String, bool)>,
    subdomains: bool,
}

impl InternalDomains {
    pub fn new(domains: &[String], subdomains: bool) -> Result<InternalDomains, String> {
        let mut shown: Vec<String> = Vec::new();
        let mut entries: Vec<(String, bool)> = Vec::new();
        for d in domains {
            let t = d.trim();
            let (base, only_subs) = match t.strip_prefix("*.") {
                Some(rest) => (rest, true),
                None => (t, false),
            };
            if base.contains('*') {
                return Err(format!(
                    "key `policy.internal_domains`: `{t}`: a wildcard is only allowed as a whole first label (`*.example.org` = every subdomain of example.org)"
                ));
            }
            let n = normalise_domain(base)
                .map_err(|why| format!("key `policy.internal_domains`: {why}"))?;
            let entry = (n.clone(), only_subs);
            if !entries.contains(&entry) {
                shown.push(if only_subs { format!("*.{n}") } else { n });
                entries.push(entry);
            }
        }
        Ok(InternalDomains {
            domains: shown,
            entries,
            subdomains,
        })
    }

    pub fn domains(&self) -> &[String] {
        &self.domains
    }

    pub fn subdomains(&self) -> bool {
        self.subdomains
    }

    /// Whether `domain` (any letter case or IDN form, optional trailing dot) is internal.
    pub fn is_internal_domain(&self, domain: &str) -> bool {
        let d = address_domain(domain);
        self.entries.iter().any(|(i, only_subs)| {
            let is_sub = d.len() > i.len() + 1
                && d.ends_with(i.as_str())
                && d.as_bytes()[d.len() - i.len() - 1] == b'.';
            if *only_subs {
                is_sub
            } else {
                d == *i || (self.subdomains && is_sub)
            }
        })
    }

    /// Whether the address is internal. An address without a readable domain counts as outside:
    /// when in doubt, the count errs towards protecting recipients.
    pub fn is_internal(&self, address: &str) -> bool {
        split_address(address).is_some_and(|(_, d)| self.is_internal_domain(d))
    }

    /// How the reason sentence names "outside": `outside example.org` or `outside the internal domains`.
    pub fn outside_label(&self) -> String {
        match self.domains.as_slice() {
            [] => "outside".to_string(),
            [one] => format!("outside {one}"),
            _ => "outside the internal domains".to_string(),
        }
    }
}

/// The numbers a rule looks at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub visible: usize,
    pub external: usize,
    pub external_domains: usize,
}

/// Counts `addresses` against the internal domains. Addresses are expected distinct already;
/// domains compare case-insensitively. Outside domains are told apart by sorting one slice of
/// each address (16 bytes an address, whatever the header holds), not by a set of copies.
pub fn count<'a>(
    internal: &InternalDomains,
    addresses: impl IntoIterator<Item = &'a str>,
) -> Counts {
    let mut c = Counts::default();
    let mut domains: Vec<&str> = Vec::new();
    // Domains not already in canonical form (rare: visible addresses are read canonical).
    let mut respelled: Vec<String> = Vec::new();
    for a in addresses {
        c.visible += 1;
        if !internal.is_internal(a) {
            c.external += 1;
            match split_address(a) {
                Some((_, d)) => {
                    let canonical = address_domain(d);
                    if canonical == d {
                        if domains.len() == domains.capacity() && domains.len() >= 1024 {
                            // Millions of addresses in a few domains stay a short list.
                            domains.sort_unstable();
                            domains.dedup();
                        }
                        domains.push(d);
                    } else {
                        respelled.push(canonical);
                    }
                }
                // An unreadable address still belongs to some domain we cannot name: count it as its own.
                None => respelled.push(format!("?{a}")),
            }
        }
    }
    domains.extend(respelled.iter().map(String::as_str));
    domains.sort_unstable();
    domains.dedup();
    c.external_domains = domains.len();
    c
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub min_visible: Option<usize>,
    pub min_visible_external: Option<usize>,
    pub min_external_domains: Option<usize>,
    pub senders: Vec<AddressPattern>,
    pub except_senders: Vec<AddressPattern>,
    pub except_recipients: Vec<AddressPattern>,
    pub action: Action,
    pub message: Option<String>,
    pub notify_sender: bool,
    /// Conditions on who sent it (auth user, From: address, groups): see `policy::sender`.
    pub who: Vec<Who>,
    /// What a `rewrite` does to a calendar invitation instead: `Split` or `Reject`.
    pub calendar_action: Action,
}

impl Rule {
    fn compile(index: usize, r: &RuleConfig) -> Result<Rule, String> {
        let key = |field: &str| format!("key `policy.rule[{index}].{field}` (rule '{}')", r.name);
        let patterns = |field: &str, list: &[String]| -> Result<Vec<AddressPattern>, String> {
            list.iter()
                .map(|p| AddressPattern::parse(p).map_err(|why| format!("{}: {why}", key(field))))
                .collect()
        };
        if r.name.trim().is_empty() {
            return Err(format!(
                "key `policy.rule[{index}].name`: must not be empty"
            ));
        }
        if r.name.chars().any(|c| c.is_control() || c == '\'') {
            return Err(format!("{}: must be one line without quotes", key("name")));
        }
        if let Some(msg) = &r.message {
            if r.action != Action::Reject {
                return Err(format!(
                    "{}: a custom message is only used by action = \"reject\", this rule's action is \"{}\"",
                    key("message"),
                    r.action.as_str()
                ));
            }
            if msg.trim().is_empty() {
                return Err(format!("{}: must not be empty", key("message")));
            }
            // It becomes the text of an SMTP reply: one line of printable ASCII.
            if !msg.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
                return Err(format!(
                    "{}: must be one line of plain ASCII text (it is sent as the SMTP reply)",
                    key("message")
                ));
            }
            if msg.len() > 400 {
                return Err(format!("{}: longer than 400 characters", key("message")));
            }
        }
        if r.notify_sender && !matches!(r.action, Action::Rewrite | Action::Split) {
            return Err(format!(
                "{}: only applies to rewrite and split (a reject already tells the sender; an accept changes nothing)",
                key("notify_sender")
            ));
        }
        let calendar_action = match (r.action, r.calendar_action) {
            (_, None) => Action::Reject,
            (Action::Rewrite, Some(a @ (Action::Split | Action::Reject))) => a,
            (Action::Rewrite, Some(other)) => {
                return Err(format!(
                    "{}: \"{}\" cannot hide a calendar invitation's attendees; use \"split\" or \"reject\"",
                    key("calendar_action"),
                    other.as_str()
                ))
            }
            (action, Some(_)) => {
                return Err(format!(
                    "{}: only used by action = \"rewrite\", this rule's action is \"{}\"",
                    key("calendar_action"),
                    action.as_str()
                ))
            }
        };
        Ok(Rule {
            name: r.name.trim().to_string(),
            min_visible: r.min_visible,
            min_visible_external: r.min_visible_external,
            min_external_domains: r.min_external_domains,
            senders: patterns("senders", &r.senders)?,
            except_senders: patterns("except_senders", &r.except_senders)?,
            except_recipients: patterns("except_recipients", &r.except_recipients)?,
            action: r.action,
            message: r.message.as_ref().map(|m| m.trim().to_string()),
            notify_sender: r.notify_sender,
            who: Vec::new(),
            calendar_action,
        })
    }

    /// True when the rule has no condition at all, so it matches every message.
    pub fn is_unconditional(&self) -> bool {
        self.min_visible.unwrap_or(0) == 0
            && self.min_visible_external.unwrap_or(0) == 0
            && self.min_external_domains.unwrap_or(0) == 0
            && self.senders.is_empty()
            && self.except_senders.is_empty()
            && self.who.is_empty()
    }

    /// Whether every who-condition holds for this sender.
    pub fn who_holds(&self, sender: &Sender) -> bool {
        self.who.iter().all(|w| w.holds(sender))
    }

    pub fn applies_to_sender(&self, sender: &str) -> bool {
        (self.senders.is_empty() || self.senders.iter().any(|p| p.matches(sender)))
            && !self.except_senders.iter().any(|p| p.matches(sender))
    }

    /// The sender is named in `except_senders`.
    pub fn exempts_sender(&self, sender: &str) -> bool {
        self.except_senders.iter().any(|p| p.matches(sender))
    }

    pub fn is_excepted_recipient(&self, address: &str) -> bool {
        self.except_recipients.iter().any(|p| p.matches(address))
    }

    pub fn counts_hold(&self, c: &Counts) -> bool {
        c.visible >= self.min_visible.unwrap_or(0)
            && c.external >= self.min_visible_external.unwrap_or(0)
            && c.external_domains >= self.min_external_domains.unwrap_or(0)
    }

    /// The numeric conditions in words, e.g. `6 or more outside addresses`.
    pub fn count_conditions(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(n) = self.min_visible.filter(|&n| n > 0) {
            out.push(format!(
                "{n} or more visible {}",
                plural(n, "address", "addresses")
            ));
        }
        if let Some(n) = self.min_visible_external.filter(|&n| n > 0) {
            out.push(format!(
                "{n} or more outside {}",
                plural(n, "address", "addresses")
            ));
        }
        if let Some(n) = self.min_external_domains.filter(|&n| n > 0) {
            out.push(format!(
                "{n} or more outside {}",
                plural(n, "domain", "domains")
            ));
        }
        out
    }

    /// Every condition in words, for `describe`.
    pub fn conditions_in_words(&self) -> Vec<String> {
        let mut out = self.count_conditions();
        if !self.senders.is_empty() {
            out.push(format!(
                "sender is {}",
                join_patterns(&self.senders, " or ")
            ));
        }
        if !self.except_senders.is_empty() {
            out.push(format!(
                "sender is not {}",
                join_patterns(&self.except_senders, " nor ")
            ));
        }
        out.extend(self.who.iter().map(Who::in_words));
        out
    }

    /// What the action does, as the end of a reason sentence.
    pub fn action_phrase(&self) -> &'static str {
        match self.action {
            Action::Accept => "lets it through unchanged",
            Action::Rewrite => "hides them",
            Action::Split => "sends each recipient a separate copy",
            Action::Reject => "refuses it",
        }
    }
}

fn join_patterns(p: &[AddressPattern], sep: &str) -> String {
    p.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(sep)
}

pub fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

/// Compiles and checks every rule; errors name the rule and key.
pub fn compile(cfg: &PolicyConfig) -> Result<(InternalDomains, Vec<Rule>), String> {
    compile_with_groups(cfg, &Groups::compile(cfg)?)
}

/// [`compile`] with the groups already compiled (the policy keeps them for overrides and notices).
pub fn compile_with_groups(
    cfg: &PolicyConfig,
    groups: &Groups,
) -> Result<(InternalDomains, Vec<Rule>), String> {
    let internal = InternalDomains::new(&cfg.internal_domains, cfg.include_subdomains)?;
    let mut rules: Vec<Rule> = Vec::with_capacity(cfg.rules.len());
    for (i, rc) in cfg.rules.iter().enumerate() {
        let mut rule = Rule::compile(i, rc)?;
        rule.who = sender::compile(rc, groups, &|field: &str| {
            format!("key `policy.rule[{i}].{field}` (rule '{}')", rc.name)
        })?;
        if let Some(prev) = rules
            .iter()
            .find(|r| r.name.eq_ignore_ascii_case(&rule.name))
        {
            return Err(format!(
                "key `policy.rule[{i}].name`: rule name '{}' is used twice (audit records and reports name rules, so names must be unique; first use: '{}')",
                rule.name, prev.name
            ));
        }
        // A rule that always matches makes every later rule dead weight: almost certainly a mistake.
        if let Some(always) = rules.iter().find(|r| r.is_unconditional()) {
            return Err(format!(
                "key `policy.rule[{i}]` (rule '{}'): can never match, because rule '{}' before it has no conditions and matches every message",
                rule.name, always.name
            ));
        }
        rules.push(rule);
    }
    Ok((internal, rules))
}

/// What evaluation found: the matching rule (if any) and the counts it acted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Index into the rule list; `None` = no rule matched (accept).
    pub rule: Option<usize>,
    /// Counts over every visible address.
    pub all: Counts,
    /// Counts the matching rule used (after its `except_recipients`); equals `all` without a match.
    pub counted: Counts,
    /// Visible addresses the matching rule does not count.
    pub not_counted: AddressSet,
    /// The first rule that would have matched but for its `except_senders`: an exemption that
    /// let this message through, which the audit log must show.
    pub exempted_by: Option<usize>,
}

/// First match wins over the visible set; pure, for tests and for [`crate::policy::Policy::decide`].
pub fn evaluate(
    internal: &InternalDomains,
    rules: &[Rule],
    sender: &str,
    visible: &Visible,
) -> Outcome {
    let sender = Sender {
        envelope: sender.to_string(),
        ..Sender::default()
    };
    evaluate_sender(internal, rules, &sender, visible)
}

/// [`evaluate`] with everything known about who sent it.
pub fn evaluate_sender(
    internal: &InternalDomains,
    rules: &[Rule],
    sender: &Sender,
    visible: &Visible,
) -> Outcome {
    let all = count(internal, &visible.addresses);
    let mut exempted_by = None;
    for (i, rule) in rules.iter().enumerate() {
        if !rule.who_holds(sender) {
            continue;
        }
        let counted = || {
            visible
                .addresses
                .iter()
                .filter(|a| !rule.is_excepted_recipient(a))
        };
        if !rule.applies_to_sender(&sender.envelope) {
            if exempted_by.is_none()
                && rule.exempts_sender(&sender.envelope)
                && rule.counts_hold(&count(internal, counted()))
            {
                exempted_by = Some(i);
            }
            continue;
        }
        let counts = count(internal, counted());
        if rule.counts_hold(&counts) {
            return Outcome {
                rule: Some(i),
                all,
                counted: counts,
                not_counted: visible
                    .addresses
                    .iter()
                    .filter(|a| rule.is_excepted_recipient(a))
                    .collect(),
                exempted_by,
            };
        }
    }
    Outcome {
        rule: None,
        all,
        counted: all,
        not_counted: AddressSet::new(),
        exempted_by,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, action: Action) -> RuleConfig {
        RuleConfig::new(name, action)
    }

    fn visible(addrs: &[&str]) -> Visible {
        Visible {
            addresses: addrs.iter().map(|s| s.to_string()).collect(),
            ..Visible::default()
        }
    }

    #[test]
    fn patterns_match_case_insensitively() {
        let p = AddressPattern::parse("Press@Example.ORG").unwrap();
        assert!(p.matches("press@example.org"));
        assert!(p.matches("PRESS@EXAMPLE.org"));
        assert!(!p.matches("press2@example.org"));
        let w = AddressPattern::parse("*@example.org").unwrap();
        assert!(w.matches("anyone@EXAMPLE.org"));
        assert!(!w.matches("anyone@sub.example.org"));
        assert!(!w.matches(""));
        assert!(AddressPattern::parse("a*b@x.org").is_err());
        assert!(AddressPattern::parse("@x.org").is_err());
        assert!(AddressPattern::parse("a@").is_err());
        assert!(AddressPattern::parse("nobody").is_err());
    }

    #[test]
    fn internal_domains_and_subdomains() {
        let i = InternalDomains::new(&["Example.org".into()], true).unwrap();
        assert!(i.is_internal("a@example.org"));
        assert!(i.is_internal("a@MAIL.example.org"));
        assert!(!i.is_internal("a@badexample.org"));
        assert!(!i.is_internal("a@example.org.evil.net"));
        assert!(!i.is_internal("no-domain"));
        let strict = InternalDomains::new(&["example.org".into()], false).unwrap();
        assert!(!strict.is_internal("a@mail.example.org"));
        assert!(strict.is_internal("a@example.org."));
    }

    #[test]
    fn internal_domains_in_any_case_or_idn_form() {
        let i = InternalDomains::new(
            &["BÜCHER.example".into(), "XN--MNCHEN-3YA.example.".into()],
            false,
        )
        .unwrap();
        assert_eq!(i.domains(), ["bücher.example", "münchen.example"]);
        for a in [
            "a@bücher.example",
            "a@xn--bcher-kva.example",
            "a@XN--BCHER-KVA.EXAMPLE.",
            "a@München.example",
            "a@xn--mnchen-3ya.example",
        ] {
            assert!(i.is_internal(a), "{a}");
        }
        assert!(!i.is_internal("a@bucher.example"));
        let c = count(&i, ["a@ext.example", "b@EXT.example."]);
        assert_eq!((c.external, c.external_domains), (2, 1));
        assert!(InternalDomains::new(&["xn--zz.example".into()], true).is_err());
    }

    #[test]
    fn wildcard_means_subdomains_only_or_is_refused() {
        let i = InternalDomains::new(&["*.Example.org".into()], false).unwrap();
        assert!(i.is_internal("a@mail.example.org"));
        assert!(i.is_internal("a@x.y.example.org"));
        assert!(!i.is_internal("a@example.org"));
        assert_eq!(i.domains(), ["*.example.org"]);
        let both =
            InternalDomains::new(&["*.example.org".into(), "example.org".into()], false).unwrap();
        assert!(both.is_internal("a@example.org") && both.is_internal("a@m.example.org"));
        for bad in ["mail.*.example.org", "*example.org", "*", "*.*.example.org"] {
            let e = InternalDomains::new(&[bad.into()], true).unwrap_err();
            assert!(e.contains("policy.internal_domains"), "{bad}: {e}");
        }
    }

    #[test]
    fn counts_external_and_distinct_domains() {
        let i = InternalDomains::new(&["example.org".into()], true).unwrap();
        let v = visible(&["a@example.org", "b@x.net", "c@X.NET", "d@y.com"]);
        let c = count(&i, &v.addresses);
        assert_eq!(
            c,
            Counts {
                visible: 4,
                external: 3,
                external_domains: 2
            }
        );
    }

    #[test]
    fn first_matching_rule_wins_and_exceptions_do_not_count() {
        let mut press = rule("press", Action::Accept);
        press.senders = vec!["press@example.org".into()];
        let mut many = rule("many", Action::Rewrite);
        many.min_visible_external = Some(3);
        many.except_recipients = vec!["list@partners.net".into()];
        let cfg = PolicyConfig {
            internal_domains: vec!["example.org".into()],
            rules: vec![press, many],
            ..PolicyConfig::default()
        };
        let (internal, rules) = compile(&cfg).unwrap();
        let v = visible(&["list@partners.net", "a@x.net", "b@y.net"]);
        // Only 2 outside addresses count: no match.
        let o = evaluate(&internal, &rules, "alice@example.org", &v);
        assert_eq!(o.rule, None);
        assert_eq!(o.all.external, 3);
        let v = visible(&["list@partners.net", "a@x.net", "b@y.net", "c@z.net"]);
        let o = evaluate(&internal, &rules, "alice@example.org", &v);
        assert_eq!(o.rule, Some(1));
        assert_eq!(o.counted.external, 3);
        assert_eq!(o.not_counted, vec!["list@partners.net".to_string()]);
        // The press office is exempt.
        let o = evaluate(&internal, &rules, "Press@Example.org", &v);
        assert_eq!(o.rule, Some(0));
    }

    #[test]
    fn except_senders_and_empty_sender() {
        let mut r = rule("r", Action::Reject);
        r.min_visible = Some(2);
        r.except_senders = vec!["*@example.org".into()];
        let cfg = PolicyConfig {
            rules: vec![r],
            ..PolicyConfig::default()
        };
        let (internal, rules) = compile(&cfg).unwrap();
        let v = visible(&["a@x.net", "b@y.net"]);
        assert_eq!(
            evaluate(&internal, &rules, "boss@example.org", &v).rule,
            None
        );
        assert_eq!(evaluate(&internal, &rules, "", &v).rule, Some(0));
        assert_eq!(evaluate(&internal, &rules, "x@other.org", &v).rule, Some(0));
    }

    #[test]
    fn thresholds_are_inclusive_and_zero_is_always() {
        let mut r = rule("r", Action::Split);
        r.min_external_domains = Some(2);
        r.min_visible = Some(0);
        let cfg = PolicyConfig {
            rules: vec![r],
            ..PolicyConfig::default()
        };
        let (internal, rules) = compile(&cfg).unwrap();
        assert_eq!(
            evaluate(&internal, &rules, "", &visible(&["a@x.net", "b@x.net"])).rule,
            None
        );
        assert_eq!(
            evaluate(&internal, &rules, "", &visible(&["a@x.net", "b@y.net"])).rule,
            Some(0)
        );
    }

    #[test]
    fn nonsense_rules_are_refused_with_their_name() {
        let mut bad = rule("loud", Action::Rewrite);
        bad.message = Some("hello".into());
        let err = compile(&PolicyConfig {
            rules: vec![bad],
            ..PolicyConfig::default()
        })
        .unwrap_err();
        assert!(err.contains("'loud'") && err.contains("message"), "{err}");

        let mut bad = rule("multi", Action::Reject);
        bad.message = Some("line one\nline two".into());
        let err = compile(&PolicyConfig {
            rules: vec![bad],
            ..PolicyConfig::default()
        })
        .unwrap_err();
        assert!(err.contains("'multi'"), "{err}");

        let mut bad = rule("tell", Action::Accept);
        bad.notify_sender = true;
        assert!(compile(&PolicyConfig {
            rules: vec![bad],
            ..PolicyConfig::default()
        })
        .is_err());

        let err = compile(&PolicyConfig {
            rules: vec![rule("all", Action::Reject), rule("late", Action::Rewrite)],
            ..PolicyConfig::default()
        })
        .unwrap_err();
        assert!(err.contains("'late'") && err.contains("'all'"), "{err}");

        let err = compile(&PolicyConfig {
            rules: vec![
                {
                    let mut r = rule("dup", Action::Reject);
                    r.min_visible = Some(3);
                    r
                },
                rule("DUP", Action::Rewrite),
            ],
            ..PolicyConfig::default()
        })
        .unwrap_err();
        assert!(err.contains("twice"), "{err}");

        let mut bad = rule("pat", Action::Rewrite);
        bad.except_recipients = vec!["list".into()];
        let err = compile(&PolicyConfig {
            rules: vec![bad],
            ..PolicyConfig::default()
        })
        .unwrap_err();
        assert!(
            err.contains("except_recipients") && err.contains("'pat'"),
            "{err}"
        );

        // An unconditional non-accept rule on its own is fine: it applies to everything.
        assert!(compile(&PolicyConfig {
            rules: vec![rule("always", Action::Split)],
            ..PolicyConfig::default()
        })
        .is_ok());
    }
}
