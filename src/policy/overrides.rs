//! The audited override (`[policy.override]`): a listed user or group member marks a message as
//! meant to show its recipients (a committee writing to members who know each other), with a
//! reason, in a header field or a subject tag. The marker is always removed before forwarding;
//! an override from anyone else is ignored. Either way the decision's reason says so, and the
//! message is audited (see `deliver`).

use std::sync::Arc;

use crate::config::org::{GroupsOf, OverrideConfig};
use crate::config::Action;
use crate::message::Message;
use crate::policy::groups::{Group, Groups, Member};
use crate::policy::sender::Sender;
use crate::policy::{one_ascii_line, Decision};

/// The longest reason kept (it goes into the audit record and logs).
const MAX_REASON: usize = 200;

/// What the organisation layer adds to a decision (override, marker removal, language).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrgDetail {
    /// Header fields (lower-case names) the rewrite removes: override markers.
    pub strip_fields: Vec<String>,
    /// The Subject field as it leaves (whole field, line end included) when a tag is removed.
    pub subject_field: Option<Vec<u8>>,
    pub override_use: Option<OverrideUse>,
    /// Language of reject texts and notices (from `[policy.notices]`).
    pub language: Option<String>,
    /// The sender notice from the language's template: (Subject, body with LF line ends).
    pub notice: Option<(String, String)>,
}

/// One override request and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideUse {
    pub by: String,
    pub reason: String,
    pub allowed: bool,
    /// Why an override was ignored, in words.
    pub refused_because: Option<String>,
    /// The action the rule had decided (before an allowed override).
    pub overridden_action: Action,
}

#[derive(Debug, Clone)]
pub struct Override {
    header: String,
    subject_tag: Option<String>,
    users: Vec<Member>,
    groups: Vec<Arc<Group>>,
    identity: GroupsOf,
}

impl Override {
    pub fn compile(cfg: &OverrideConfig, groups: &Groups) -> Result<Option<Override>, String> {
        if !cfg.enabled {
            return Ok(None);
        }
        let key = "key `policy.override`";
        let h = cfg.header.trim();
        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(format!("{key}.header: `{h}` is not a header field name"));
        }
        let tag = match cfg.subject_tag.as_deref().map(str::trim) {
            Some("") => return Err(format!("{key}.subject_tag: must not be empty")),
            Some(t) if t.contains(['[', ']', ':']) => {
                return Err(format!(
                    "{key}.subject_tag: write the bare word (`{}`); the marker is `[word: reason]`",
                    t.trim_matches(['[', ']'])
                ))
            }
            t => t.map(str::to_string),
        };
        let users = cfg
            .users
            .iter()
            .map(|u| Member::parse(u).map_err(|e| format!("{key}.users: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let groups = cfg
            .groups
            .iter()
            .map(|g| {
                groups
                    .get(g)
                    .ok_or_else(|| format!("{key}.groups: no group '{g}' in [policy.groups]"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if users.is_empty() && groups.is_empty() {
            return Err(format!(
                "{key}: enabled, but neither users nor groups may use it"
            ));
        }
        Ok(Some(Override {
            header: h.to_string(),
            subject_tag: tag,
            users,
            groups,
            identity: cfg.identity,
        }))
    }

    /// Looks for a marker; when there is one, removes it from what leaves and applies or ignores it.
    pub fn apply(&self, message: &Message, sender: &Sender, d: &mut Decision) {
        let mut reason = None;
        let raw = message.raw();
        let h = message.header();
        for f in &h.fields {
            if f.name_is(&self.header) {
                d.org.strip_fields.push(self.header.to_ascii_lowercase());
                reason.get_or_insert_with(|| String::from_utf8_lossy(f.value).trim().to_string());
            } else if let (Some(tag), true) = (&self.subject_tag, f.name_is("subject")) {
                if let Some((without, why)) = remove_tag(&raw[f.range.clone()], tag) {
                    d.org.subject_field = Some(without);
                    reason.get_or_insert(why);
                }
            }
        }
        d.org.strip_fields.dedup();
        let Some(reason) = reason else { return };
        let reason: String = one_ascii_line(&reason)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let reason: String = reason.chars().take(MAX_REASON).collect();
        let ids = sender.identities(self.identity);
        // Name the identity that is allowed (the login rather than an address, with `any`).
        let allowed_id = ids.iter().find(|id| {
            self.users.iter().any(|u| u.matches(id)) || self.groups.iter().any(|g| g.contains(id))
        });
        let may = allowed_id.is_some();
        let by = allowed_id
            .or(ids.first())
            .map_or("(nobody)".to_string(), |s| s.to_string());
        let refused_because = if !may {
            Some(format!(
                "{by} may not override ({} not listed in [policy.override])",
                self.identity.as_str()
            ))
        } else if reason.is_empty() {
            Some("no reason given".to_string())
        } else {
            None
        };
        let allowed = refused_because.is_none();
        let before = d.action;
        let text = if allowed {
            if d.action != Action::Accept {
                d.action = Action::Accept;
                d.reject_text = None;
                d.notify_sender = false;
                format!(
                    " Overridden by {by} (reason: {reason}): it goes out showing its recipients."
                )
            } else {
                format!(" Override by {by} (reason: {reason}) noted; nothing to override.")
            }
        } else {
            format!(
                " Override request ignored: {}.",
                refused_because.as_deref().unwrap_or("")
            )
        };
        d.reason.push_str(&text);
        d.org.override_use = Some(OverrideUse {
            by,
            reason,
            allowed,
            refused_because,
            overridden_action: before,
        });
    }
}

/// Finds `[tag: reason]` in a raw Subject field; returns the field without it, and the reason.
fn remove_tag(field: &[u8], tag: &str) -> Option<(Vec<u8>, String)> {
    let lower = field.to_ascii_lowercase();
    let open = format!("[{}:", tag.to_ascii_lowercase());
    let start = memchr::memmem::find(&lower, open.as_bytes())?;
    let end = start + memchr::memchr(b']', &field[start..])?;
    let reason = String::from_utf8_lossy(&field[start + open.len()..end])
        .trim()
        .to_string();
    let mut out = field[..start].to_vec();
    let mut rest = &field[end + 1..];
    // One space between the remaining words, not two.
    if out.ends_with(b" ") && rest.first() == Some(&b' ') {
        rest = &rest[1..];
    }
    out.extend_from_slice(rest);
    Some((out, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_tag_is_removed_with_one_space() {
        let (f, why) = remove_tag(
            b"Subject: Agenda [Show-Recipients: board knows each other] May\r\n",
            "show-recipients",
        )
        .unwrap();
        assert_eq!(f, b"Subject: Agenda May\r\n");
        assert_eq!(why, "board knows each other");
        assert!(remove_tag(b"Subject: Agenda\r\n", "show-recipients").is_none());
        assert!(remove_tag(
            b"Subject: [show-recipients: unclosed\r\n",
            "show-recipients"
        )
        .is_none());
    }
}
