//! `bccguard check --explain`: every rule in order, which of its conditions held and which did
//! not, the rule that matched, and the rules never reached. Walks the same compiled rules as
//! [`super::rules::evaluate_sender`]; a unit test keeps the two in agreement.

use serde::Serialize;

use crate::policy::rules::{count, Counts, InternalDomains, Rule};
use crate::policy::sender::Sender;
use crate::policy::Visible;

/// One condition of one rule and whether it held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Condition {
    pub condition: String,
    pub held: bool,
}

/// What became of one rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleTrace {
    pub rule: String,
    /// `matched`, `skipped` (a condition failed) or `not reached` (an earlier rule matched).
    pub result: &'static str,
    pub conditions: Vec<Condition>,
    /// One sentence: why it matched or was skipped.
    pub why: String,
}

pub fn explain(
    internal: &InternalDomains,
    rules: &[Rule],
    sender: &Sender,
    visible: &Visible,
) -> Vec<RuleTrace> {
    let mut out = Vec::with_capacity(rules.len());
    let mut matched: Option<&str> = None;
    for rule in rules {
        if let Some(first) = matched {
            out.push(RuleTrace {
                rule: rule.name.clone(),
                result: "not reached",
                conditions: Vec::new(),
                why: format!("rule '{first}' matched first"),
            });
            continue;
        }
        let conditions = conditions(internal, rule, sender, visible);
        let failed: Vec<&str> = conditions
            .iter()
            .filter(|c| !c.held)
            .map(|c| c.condition.as_str())
            .collect();
        let (result, why) = if failed.is_empty() {
            matched = Some(&rule.name);
            let why = if conditions.is_empty() {
                "no conditions: it matches every message".to_string()
            } else {
                "every condition held".to_string()
            };
            ("matched", why)
        } else {
            ("skipped", format!("did not hold: {}", failed.join("; ")))
        };
        out.push(RuleTrace {
            rule: rule.name.clone(),
            result,
            conditions,
            why,
        });
    }
    out
}

fn conditions(
    internal: &InternalDomains,
    rule: &Rule,
    sender: &Sender,
    visible: &Visible,
) -> Vec<Condition> {
    let mut out = Vec::new();
    let shown = |s: &str| {
        if s.is_empty() {
            "<>".to_string()
        } else {
            s.to_string()
        }
    };
    if !rule.senders.is_empty() {
        let list: Vec<String> = rule.senders.iter().map(|p| p.to_string()).collect();
        out.push(Condition {
            condition: format!(
                "envelope sender is {} (it is {})",
                list.join(" or "),
                shown(&sender.envelope)
            ),
            held: rule.senders.iter().any(|p| p.matches(&sender.envelope)),
        });
    }
    if !rule.except_senders.is_empty() {
        let list: Vec<String> = rule.except_senders.iter().map(|p| p.to_string()).collect();
        out.push(Condition {
            condition: format!(
                "envelope sender is not {} (it is {})",
                list.join(" nor "),
                shown(&sender.envelope)
            ),
            held: !rule
                .except_senders
                .iter()
                .any(|p| p.matches(&sender.envelope)),
        });
    }
    for w in &rule.who {
        out.push(Condition {
            condition: format!("{} ({})", w.in_words(), w.tested(sender)),
            held: w.holds(sender),
        });
    }
    let c: Counts = count(
        internal,
        visible
            .addresses
            .iter()
            .filter(|a| !rule.is_excepted_recipient(a)),
    );
    let checks = [
        (rule.min_visible, c.visible, "visible addresses"),
        (rule.min_visible_external, c.external, "outside addresses"),
        (
            rule.min_external_domains,
            c.external_domains,
            "outside domains",
        ),
    ];
    for (min, has, what) in checks {
        if let Some(n) = min.filter(|&n| n > 0) {
            out.push(Condition {
                condition: format!("{n} or more {what} (counted {has})"),
                held: has >= n,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Action, PolicyConfig, RuleConfig};
    use crate::policy::rules::{compile, evaluate_sender};

    #[test]
    fn explain_agrees_with_evaluate_and_names_failed_conditions() {
        let mut a = RuleConfig::new("press", Action::Accept);
        a.senders = vec!["press@example.org".into()];
        let mut b = RuleConfig::new("board", Action::Accept);
        b.auth_users = vec!["carol".into()];
        let mut c = RuleConfig::new("many", Action::Rewrite);
        c.min_visible_external = Some(3);
        let d = RuleConfig::new("rest", Action::Split);
        let cfg = PolicyConfig {
            internal_domains: vec!["example.org".into()],
            rules: vec![a, b, c, d],
            ..PolicyConfig::default()
        };
        let (internal, rules) = compile(&cfg).unwrap();
        for n in [1, 4] {
            let v = Visible {
                addresses: (0..n).map(|i| format!("u{i}@x{i}.net")).collect(),
                ..Visible::default()
            };
            let s = Sender {
                envelope: "bob@example.org".into(),
                ..Sender::default()
            };
            let t = explain(&internal, &rules, &s, &v);
            let o = evaluate_sender(&internal, &rules, &s, &v);
            let m = t.iter().position(|r| r.result == "matched");
            assert_eq!(m, o.rule);
            assert!(t[0]
                .why
                .contains("envelope sender is press@example.org (it is bob@example.org)"));
            assert!(
                t[1].why.contains("authenticated user is carol"),
                "{}",
                t[1].why
            );
        }
        let v = Visible {
            addresses: (0..4).map(|i| format!("u{i}@x{i}.net")).collect(),
            ..Visible::default()
        };
        let t = explain(&internal, &rules, &Sender::default(), &v);
        assert_eq!(t[2].result, "matched");
        assert_eq!(
            t[2].conditions[0].condition,
            "3 or more outside addresses (counted 4)"
        );
        assert_eq!(
            (t[3].result, t[3].why.as_str()),
            ("not reached", "rule 'many' matched first")
        );
    }
}
