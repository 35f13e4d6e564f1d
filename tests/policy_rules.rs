//! Policy: rule compilation, first-match evaluation, counts, reasons and reject texts,
//! through the public API (`Policy::decide` on raw messages and `decide_visible` on hand-made sets).

use std::path::Path;

use bccguard::config::{Action, Config, Mode, PolicyConfig, RuleConfig};
use bccguard::message::{Envelope, Message};
use bccguard::policy::{Policy, Visible};

fn rule(name: &str, action: Action) -> RuleConfig {
    RuleConfig::new(name, action)
}

/// The shipped example's rules: press office exempt, 20+ outside rejected, 6+ outside hidden.
fn shipped_like(mode: Mode) -> PolicyConfig {
    let mut press = rule("press-office", Action::Accept);
    press.senders = vec!["press@example.org".into()];
    let mut mass = rule("mass-external", Action::Reject);
    mass.min_visible_external = Some(20);
    let mut many = rule("many-external", Action::Rewrite);
    many.min_visible_external = Some(6);
    many.except_recipients = vec!["partners@lists.example.net".into()];
    many.notify_sender = true;
    PolicyConfig {
        mode,
        internal_domains: vec!["example.org".into()],
        rules: vec![press, mass, many],
        ..PolicyConfig::default()
    }
}

fn visible(addrs: &[String]) -> Visible {
    Visible {
        addresses: addrs.iter().collect(),
        bcc_present: false,
        lenient_fields: vec![],
        attendees: vec![],
    }
}

/// `n` outside addresses spread over `domains` domains.
fn outside(n: usize, domains: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("person{i}@client{}.net", i % domains))
        .collect()
}

fn raw_with(to: &[String], cc: &[String], extra: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@example.org>\r\nTo: {}\r\nCc: {}\r\n{extra}Subject: hi\r\n\r\nBody\r\n",
        to.join(",\r\n "),
        cc.join(", ")
    )
    .into_bytes()
}

#[test]
fn shipped_config_compiles_and_matches_its_intent() {
    let cfg = Config::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/bccguard.toml"
    )))
    .unwrap();
    let p = Policy::new(&cfg.policy).unwrap();
    assert_eq!(p.version().len(), 64);
    let d = p.decide_visible("alice@example.org", visible(&outside(7, 3)));
    assert_eq!(
        (d.action, d.rule.as_deref()),
        (Action::Rewrite, Some("many-external"))
    );
    assert!(d.notify_sender);
    let d = p.decide_visible("alice@example.org", visible(&outside(25, 3)));
    assert_eq!(
        (d.action, d.rule.as_deref()),
        (Action::Reject, Some("mass-external"))
    );
    assert_eq!(
        d.reject_text.as_deref(),
        Some("This message shows 20 or more outside addresses to each other. Put the recipients in Bcc and send it again.")
    );
}

#[test]
fn first_match_wins_in_order() {
    let p = Policy::new(&shipped_like(Mode::Enforce)).unwrap();
    // 25 outside: both mass (20) and many (6) hold; mass comes first.
    let d = p.decide_visible("bob@example.org", visible(&outside(25, 5)));
    assert_eq!(d.rule.as_deref(), Some("mass-external"));
    // The press office is accepted before any count is looked at.
    let d = p.decide_visible("PRESS@example.ORG", visible(&outside(25, 5)));
    assert_eq!(
        (d.action, d.rule.as_deref()),
        (Action::Accept, Some("press-office"))
    );
    // Below every threshold: no rule, accept.
    let d = p.decide_visible("bob@example.org", visible(&outside(5, 5)));
    assert_eq!((d.action, d.rule), (Action::Accept, None));
}

#[test]
fn except_recipients_do_not_count_but_stay_visible() {
    let p = Policy::new(&shipped_like(Mode::Enforce)).unwrap();
    let mut addrs = outside(5, 2);
    addrs.push("Partners@Lists.Example.NET".into());
    let d = p.decide_visible("bob@example.org", visible(&addrs));
    assert_eq!(d.action, Action::Accept, "{}", d.reason);
    assert_eq!(d.visible.len(), 6);
    assert_eq!(d.visible_external, 6);
    addrs.push("one-more@client9.net".into());
    let d = p.decide_visible("bob@example.org", visible(&addrs));
    assert_eq!(d.action, Action::Rewrite);
    assert_eq!(
        d.not_counted,
        vec!["Partners@Lists.Example.NET".to_string()]
    );
    assert!(
        d.reason.contains("1 listed address not counted"),
        "{}",
        d.reason
    );
    assert!(
        !d.reason.contains("Partners"),
        "reasons never name addresses: {}",
        d.reason
    );
}

#[test]
fn internal_domains_include_subdomains_when_configured() {
    let mut cfg = shipped_like(Mode::Enforce);
    let mut addrs: Vec<String> = (0..6)
        .map(|i| format!("c{i}@branch{i}.example.org"))
        .collect();
    addrs.push("x@example.org.attacker.net".into());
    let d = Policy::new(&cfg)
        .unwrap()
        .decide_visible("", visible(&addrs));
    assert_eq!((d.visible_external, d.external_domains), (1, 1));
    assert_eq!(d.action, Action::Accept);
    cfg.include_subdomains = false;
    let d = Policy::new(&cfg)
        .unwrap()
        .decide_visible("", visible(&addrs));
    assert_eq!((d.visible_external, d.external_domains), (7, 7));
    assert_eq!(d.action, Action::Rewrite);
}

#[test]
fn sender_conditions() {
    let mut r = rule("sales-split", Action::Split);
    r.senders = vec!["*@sales.example.org".into()];
    r.except_senders = vec!["boss@sales.example.org".into()];
    r.min_visible = Some(2);
    let p = Policy::new(&PolicyConfig {
        rules: vec![r],
        ..PolicyConfig::default()
    })
    .unwrap();
    let v = visible(&outside(2, 1));
    assert_eq!(
        p.decide_visible("ann@Sales.Example.org", v.clone()).action,
        Action::Split
    );
    assert_eq!(
        p.decide_visible("boss@sales.example.org", v.clone()).action,
        Action::Accept
    );
    assert_eq!(
        p.decide_visible("ann@example.org", v.clone()).action,
        Action::Accept
    );
    assert_eq!(p.decide_visible("", v).action, Action::Accept);
}

#[test]
fn min_external_domains_counts_distinct_domains_case_insensitively() {
    let mut r = rule("domains", Action::Rewrite);
    r.min_external_domains = Some(3);
    let p = Policy::new(&PolicyConfig {
        rules: vec![r],
        ..PolicyConfig::default()
    })
    .unwrap();
    let v = visible(&["a@x.net".into(), "b@X.NET".into(), "c@y.net".into()]);
    let d = p.decide_visible("", v);
    assert_eq!((d.external_domains, d.action), (2, Action::Accept));
    let v = visible(&["a@x.net".into(), "c@y.net".into(), "d@z.net".into()]);
    assert_eq!(p.decide_visible("", v).action, Action::Rewrite);
}

#[test]
fn reason_and_reject_text_are_plain_sentences() {
    let mut cfg = shipped_like(Mode::Enforce);
    cfg.rules[1].message = None; // default reject text
    let p = Policy::new(&cfg).unwrap();
    let d = p.decide_visible("bob@example.org", visible(&outside(18, 12)));
    assert_eq!(
        d.reason,
        "The message shows 18 recipients (18 outside example.org, 12 domains) to each other; \
         rule 'many-external' (6 or more outside addresses) hides them."
    );
    let d = p.decide_visible("bob@example.org", visible(&outside(25, 4)));
    let t = d.reject_text.unwrap();
    assert_eq!(
        t,
        "Message not sent: it would show 25 outside recipients each other's addresses \
         (this relay refuses 20 or more). Put the recipients in Bcc and send it again."
    );
    assert!(t.bytes().all(|b| (0x20..0x7f).contains(&b)));
}

#[test]
fn monitor_mode_decides_but_delivers_unchanged() {
    let p = Policy::new(&shipped_like(Mode::Monitor)).unwrap();
    let d = p.decide_visible("bob@example.org", visible(&outside(25, 4)));
    assert_eq!((d.action, d.mode), (Action::Reject, Mode::Monitor));
    assert_eq!(d.effective_action(), Action::Accept);
    assert!(d.reason.contains("monitor mode"), "{}", d.reason);
    assert_ne!(
        p.version(),
        Policy::new(&shipped_like(Mode::Enforce)).unwrap().version()
    );
}

#[test]
fn decide_reads_the_message() {
    let p = Policy::new(&shipped_like(Mode::Enforce)).unwrap();
    let to = outside(4, 2);
    let cc = vec![
        "x@other.com".to_string(),
        "y@other.com".to_string(),
        "colleague@example.org".to_string(),
    ];
    let raw = raw_with(&to, &cc, "Bcc: hidden@secret.net\r\n");
    let d = p.decide(&msg(&raw), &from("alice@example.org")).unwrap();
    assert_eq!(d.action, Action::Rewrite, "{}", d.reason);
    assert_eq!(d.visible.len(), 7);
    assert_eq!(d.visible_external, 6);
    assert_eq!(d.external_domains, 3);
    assert!(d.bcc_header_stripped);
    assert!(
        !d.visible.iter().any(|a| a.contains("secret")),
        "Bcc is not visible"
    );
    // Same recipients with no Bcc field.
    let raw = raw_with(&to, &cc, "");
    assert!(
        !p.decide(&msg(&raw), &from("alice@example.org"))
            .unwrap()
            .bcc_header_stripped
    );
}

#[test]
fn unreadable_header_propagates() {
    let p = Policy::new(&shipped_like(Mode::Enforce)).unwrap();
    let raw = b"From: a@example.org\r\nT o: x@y.net\r\n\r\nbody\r\n";
    assert!(Message::parse(raw.to_vec()).is_err());
    let raw = b"From: a@example.org\r\nTo: x@y.net\r\nCc: Bob <bob@y.net\r\n\r\nbody\r\n";
    assert!(p.decide(&msg(raw), &from("a@example.org")).is_err());
}

#[test]
fn nonsense_rules_are_refused_with_their_name() {
    let cases: Vec<(Vec<RuleConfig>, &str)> = vec![
        (
            {
                let mut r = rule("chatty", Action::Rewrite);
                r.message = Some("text".into());
                vec![r]
            },
            "'chatty'",
        ),
        (
            {
                let mut r = rule("bad-list", Action::Rewrite);
                r.except_recipients = vec!["lists.example.net".into()];
                vec![r]
            },
            "'bad-list'",
        ),
        (
            {
                let mut r = rule("glob", Action::Reject);
                r.senders = vec!["a*@example.org".into()];
                vec![r]
            },
            "'glob'",
        ),
        (
            vec![
                rule("everything", Action::Accept),
                rule("unreachable", Action::Reject),
            ],
            "'unreachable'",
        ),
        (
            {
                let mut r = rule("notify-reject", Action::Reject);
                r.notify_sender = true;
                vec![r]
            },
            "'notify-reject'",
        ),
    ];
    for (rules, needle) in cases {
        let err = Policy::new(&PolicyConfig {
            rules,
            ..PolicyConfig::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(needle) && err.contains("policy.rule["),
            "{needle}: {err}"
        );
    }
    // No conditions on a non-accept rule = always; thresholds of 0 are fine.
    let mut r = rule("always", Action::Rewrite);
    r.min_visible = Some(0);
    let p = Policy::new(&PolicyConfig {
        rules: vec![r],
        ..PolicyConfig::default()
    })
    .unwrap();
    assert_eq!(p.decide_visible("", visible(&[])).action, Action::Rewrite);
    assert!(
        p.describe().contains("'always': every message -> rewrite"),
        "{}",
        p.describe()
    );
}

fn msg(raw: &[u8]) -> Message {
    Message::parse(raw.to_vec()).expect("splittable header")
}

fn from(sender: &str) -> Envelope {
    Envelope {
        sender: sender.to_string(),
        ..Envelope::default()
    }
}
