//! Conditions on who sent a message (issue 15): the SMTP AUTH user, the From: field address and
//! group membership. Compiled from a rule's keys next to the count conditions in `rules`.

use std::sync::Arc;

use crate::config::org::GroupsOf;
use crate::config::RuleConfig;
use crate::policy::groups::{Group, Groups, Member};
use crate::policy::rules::AddressPattern;

/// Who sent one message, as far as the relay knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sender {
    /// Envelope sender (MAIL FROM; empty = null sender).
    pub envelope: String,
    /// The first address of the From: field, when it can be read.
    pub from_header: Option<String>,
    /// SMTP AUTH login name, when the client authenticated.
    pub auth_user: Option<String>,
}

impl Sender {
    /// Identities `sender_groups` tests for `of`.
    pub fn identities(&self, of: GroupsOf) -> Vec<&str> {
        let env = Some(self.envelope.as_str()).filter(|s| !s.is_empty());
        match of {
            GroupsOf::EnvelopeSender => env.into_iter().collect(),
            GroupsOf::FromHeader => self.from_header.as_deref().into_iter().collect(),
            GroupsOf::AuthUser => self.auth_user.as_deref().into_iter().collect(),
            GroupsOf::Any => env
                .into_iter()
                .chain(self.from_header.as_deref())
                .chain(self.auth_user.as_deref())
                .collect(),
        }
    }
}

/// One "who" condition of a rule.
#[derive(Debug, Clone)]
pub enum Who {
    AuthUser(Vec<Member>),
    NotAuthUser(Vec<Member>),
    FromHeader(Vec<AddressPattern>),
    NotFromHeader(Vec<AddressPattern>),
    InGroup(Vec<Arc<Group>>, GroupsOf),
    NotInGroup(Vec<Arc<Group>>, GroupsOf),
}

impl Who {
    pub fn holds(&self, s: &Sender) -> bool {
        let auth = s.auth_user.as_deref().unwrap_or("");
        let from = s.from_header.as_deref().unwrap_or("");
        let in_any = |groups: &[Arc<Group>], of: GroupsOf| {
            s.identities(of)
                .iter()
                .any(|id| groups.iter().any(|g| g.contains(id)))
        };
        match self {
            Who::AuthUser(m) => !auth.is_empty() && m.iter().any(|m| m.matches(auth)),
            Who::NotAuthUser(m) => !m.iter().any(|m| m.matches(auth)),
            Who::FromHeader(p) => p.iter().any(|p| p.matches(from)),
            Who::NotFromHeader(p) => !p.iter().any(|p| p.matches(from)),
            Who::InGroup(g, of) => in_any(g, *of),
            Who::NotInGroup(g, of) => !in_any(g, *of),
        }
    }

    /// The identity this condition looked at, for `--explain` (e.g. `auth user carol`).
    pub fn tested(&self, s: &Sender) -> String {
        let or_none = |v: Option<&str>| v.unwrap_or("none").to_string();
        match self {
            Who::AuthUser(_) | Who::NotAuthUser(_) => {
                format!("auth user {}", or_none(s.auth_user.as_deref()))
            }
            Who::FromHeader(_) | Who::NotFromHeader(_) => {
                format!("From: {}", or_none(s.from_header.as_deref()))
            }
            Who::InGroup(_, of) | Who::NotInGroup(_, of) => {
                let ids = s.identities(*of);
                if ids.is_empty() {
                    "nobody to test".to_string()
                } else {
                    format!("tested {}", ids.join(", "))
                }
            }
        }
    }

    pub fn in_words(&self) -> String {
        fn join<T: std::fmt::Display>(v: &[T], sep: &str) -> String {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(sep)
        }
        let names = |g: &[Arc<Group>]| {
            g.iter()
                .map(|g| format!("'{}'", g.name))
                .collect::<Vec<_>>()
                .join(" or ")
        };
        match self {
            Who::AuthUser(m) => format!("authenticated user is {}", join(m, " or ")),
            Who::NotAuthUser(m) => format!("authenticated user is not {}", join(m, " nor ")),
            Who::FromHeader(p) => format!("From: address is {}", join(p, " or ")),
            Who::NotFromHeader(p) => format!("From: address is not {}", join(p, " nor ")),
            Who::InGroup(g, of) => format!("{} is in group {}", of.as_str(), names(g)),
            Who::NotInGroup(g, of) => format!("{} is not in group {}", of.as_str(), names(g)),
        }
    }
}

/// Compiles a rule's who-keys; errors name the key (`key` formats `policy.rule[i].<k>`).
pub fn compile(
    r: &RuleConfig,
    groups: &Groups,
    key: &dyn Fn(&str) -> String,
) -> Result<Vec<Who>, String> {
    let members = |k: &str, v: &[String]| -> Result<Vec<Member>, String> {
        v.iter()
            .map(|m| Member::parse(m).map_err(|e| format!("{}: {e}", key(k))))
            .collect()
    };
    let patterns = |k: &str, v: &[String]| -> Result<Vec<AddressPattern>, String> {
        v.iter()
            .map(|m| AddressPattern::parse(m).map_err(|e| format!("{}: {e}", key(k))))
            .collect()
    };
    let groups_of = |k: &str, v: &[String]| -> Result<Vec<Arc<Group>>, String> {
        v.iter()
            .map(|n| {
                groups
                    .get(n.trim())
                    .ok_or_else(|| format!("{}: no group '{n}' in [policy.groups]", key(k)))
            })
            .collect()
    };
    let mut out = Vec::new();
    if !r.auth_users.is_empty() {
        out.push(Who::AuthUser(members("auth_users", &r.auth_users)?));
    }
    if !r.except_auth_users.is_empty() {
        out.push(Who::NotAuthUser(members(
            "except_auth_users",
            &r.except_auth_users,
        )?));
    }
    if !r.from_header.is_empty() {
        out.push(Who::FromHeader(patterns("from_header", &r.from_header)?));
    }
    if !r.except_from_header.is_empty() {
        out.push(Who::NotFromHeader(patterns(
            "except_from_header",
            &r.except_from_header,
        )?));
    }
    if !r.sender_groups.is_empty() {
        out.push(Who::InGroup(
            groups_of("sender_groups", &r.sender_groups)?,
            r.sender_groups_of,
        ));
    }
    if !r.except_sender_groups.is_empty() {
        out.push(Who::NotInGroup(
            groups_of("except_sender_groups", &r.except_sender_groups)?,
            r.sender_groups_of,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::config::org::{GroupConfig, GroupsOf};
    use crate::config::{Action, PolicyConfig, RuleConfig};
    use crate::policy::{Policy, Visible};

    use super::Sender;

    fn policy(rules: Vec<RuleConfig>) -> Policy {
        let mut cfg = PolicyConfig {
            internal_domains: vec!["example.org".into()],
            rules,
            ..PolicyConfig::default()
        };
        cfg.groups.insert(
            "board".into(),
            GroupConfig::List(vec!["chair@example.org".into(), "carol".into()]),
        );
        Policy::new(&cfg).unwrap()
    }

    fn many() -> Visible {
        Visible {
            addresses: (0..5).map(|i| format!("u{i}@x{i}.net")).collect(),
            ..Visible::default()
        }
    }

    fn who(env: &str, from: Option<&str>, auth: Option<&str>) -> Sender {
        Sender {
            envelope: env.into(),
            from_header: from.map(Into::into),
            auth_user: auth.map(Into::into),
        }
    }

    #[test]
    fn auth_user_from_header_and_group_conditions() {
        let mut r1 = RuleConfig::new("auth", Action::Reject);
        r1.auth_users = vec!["mallory".into()];
        let mut r2 = RuleConfig::new("from", Action::Split);
        r2.from_header = vec!["*@sales.example.org".into()];
        let mut r3 = RuleConfig::new("board-by-login", Action::Accept);
        r3.sender_groups = vec!["board".into()];
        r3.sender_groups_of = GroupsOf::AuthUser;
        let mut r4 = RuleConfig::new("rest", Action::Rewrite);
        r4.except_sender_groups = vec!["board".into()];
        let p = policy(vec![r1, r2, r3, r4]);
        let d = |s: Sender| p.decide_sender(&s, many()).rule.unwrap_or_default();
        assert_eq!(d(who("m@example.org", None, Some("Mallory"))), "auth");
        // A message without AUTH never matches an auth_users condition.
        assert_eq!(d(who("m@example.org", None, None)), "rest");
        assert_eq!(
            d(who("a@example.org", Some("ann@Sales.example.org"), None)),
            "from"
        );
        assert_eq!(
            d(who("c@example.org", None, Some("carol"))),
            "board-by-login"
        );
        // except_sender_groups tests the envelope sender by default.
        assert_eq!(d(who("chair@example.org", None, None)), "");
        assert_eq!(
            d(who("x@example.org", Some("chair@example.org"), None)),
            "rest"
        );
        let text = p.describe();
        assert!(
            text.contains("authenticated user is carol")
                || text.contains("authenticated user is in group 'board'"),
            "{text}"
        );
    }

    #[test]
    fn except_auth_users_matches_unauthenticated_mail_too() {
        let mut r = RuleConfig::new("not-crm", Action::Split);
        r.except_auth_users = vec!["svc-crm".into()];
        r.min_visible_external = Some(2);
        let p = policy(vec![r]);
        let d = |s: Sender| p.decide_sender(&s, many()).rule.unwrap_or_default();
        assert_eq!(d(who("a@example.org", None, Some("SVC-CRM"))), "");
        assert_eq!(d(who("a@example.org", None, Some("bob"))), "not-crm");
        assert_eq!(d(who("a@example.org", None, None)), "not-crm");
    }

    #[test]
    fn unknown_group_is_refused_with_rule_and_key() {
        let mut r = RuleConfig::new("r", Action::Rewrite);
        r.sender_groups = vec!["nope".into()];
        let err = Policy::new(&PolicyConfig {
            rules: vec![r],
            ..PolicyConfig::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("sender_groups") && err.contains("'nope'"),
            "{err}"
        );
    }
}
