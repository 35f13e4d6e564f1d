//! Reject texts and sender notices in the sender's language (`[policy.notices]`): admin-editable
//! template files per language, `<dir>/<lang>/reject.txt` (one line), `notice.txt` (`Subject:`
//! line, blank line, body) and `what_to_do.txt` (one line, the `{what_to_do}` text), with
//! `{placeholder}`s. The language is chosen per sender group or sender domain. Unknown
//! placeholders are refused when the config is loaded (and so by `config check`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::config::org::{GroupsOf, NoticesConfig};
use crate::config::Action;
use crate::message::Message;
use crate::policy::groups::{Group, Groups};
use crate::policy::rules::Rule;
use crate::policy::sender::Sender;
use crate::policy::{one_ascii_line, Decision};

/// Every placeholder a template may use.
pub const PLACEHOLDERS: &[&str] = &[
    "rule",
    "count",
    "external",
    "domains",
    "limit",
    "what_to_do",
    "reason",
    "subject",
    "message_id",
];

/// One language's texts.
#[derive(Debug, Clone)]
struct Texts {
    reject: String,
    notice_subject: String,
    notice_body: String,
    what_to_do: String,
}

#[derive(Debug, Clone)]
enum Selector {
    Group(Arc<Group>),
    Domain(String),
}

#[derive(Debug, Clone)]
pub struct Templates {
    default: String,
    texts: BTreeMap<String, Texts>,
    choose: Vec<(Selector, String)>,
}

/// Checks `{...}` placeholders: each must be known, braces balanced (`{{`/`}}` are literal).
pub fn check_placeholders(text: &str) -> Result<(), String> {
    let mut rest = text;
    while let Some(i) = rest.find(['{', '}']) {
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('}') {
            return Err("a `}` without `{` (write `}}` for a literal brace)".into());
        }
        let end = tail
            .find('}')
            .ok_or("a `{` without `}` (write `{{` for a literal brace)")?;
        let name = &tail[1..end];
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder {{{name}}} (known: {})",
                PLACEHOLDERS
                    .iter()
                    .map(|p| format!("{{{p}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        rest = &tail[end + 1..];
    }
    Ok(())
}

/// Fills placeholders (checked at load time, so every name here is known).
pub fn render(text: &str, vars: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    let mut rest = text;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        match tail.find('}').filter(|_| tail.starts_with('{')) {
            Some(end) => {
                let name = &tail[1..end];
                if let Some((_, v)) = vars.iter().find(|(k, _)| *k == name) {
                    out.push_str(v);
                }
                rest = &tail[end + 1..];
            }
            None => {
                out.push_str(&tail[..1]);
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// SMTP replies are ASCII: spell common European letters the way their languages do without them.
pub fn ascii_fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            'ä' => out.push_str("ae"),
            'ö' => out.push_str("oe"),
            'ü' => out.push_str("ue"),
            'Ä' => out.push_str("Ae"),
            'Ö' => out.push_str("Oe"),
            'Ü' => out.push_str("Ue"),
            'ß' => out.push_str("ss"),
            'é' | 'è' | 'ê' | 'ë' => out.push('e'),
            'É' | 'È' | 'Ê' => out.push('E'),
            'à' | 'â' => out.push('a'),
            'À' | 'Â' => out.push('A'),
            'ç' => out.push('c'),
            'Ç' => out.push('C'),
            'î' | 'ï' => out.push('i'),
            'ô' => out.push('o'),
            'ù' | 'û' => out.push('u'),
            '«' | '»' | '“' | '”' | '„' => out.push('"'),
            '’' | '‘' => out.push('\''),
            _ => out.push(c),
        }
    }
    one_ascii_line(&out)
}

fn read(dir: &Path, lang: &str, file: &str) -> Result<String, String> {
    let p = dir.join(lang).join(file);
    let text = std::fs::read_to_string(&p).map_err(|e| format!("template {}: {e}", p.display()))?;
    check_placeholders(&text).map_err(|e| format!("template {}: {e}", p.display()))?;
    Ok(text)
}

fn one_line(text: &str, what: &str) -> Result<String, String> {
    let t = text.trim();
    if t.is_empty() || t.contains('\n') {
        return Err(format!(
            "template {what}: must be exactly one non-empty line"
        ));
    }
    Ok(t.to_string())
}

impl Templates {
    pub fn compile(cfg: &NoticesConfig, groups: &Groups) -> Result<Option<Templates>, String> {
        let key = "key `policy.notices`";
        let Some(dir) = &cfg.templates else {
            if !cfg.languages.is_empty() {
                return Err(format!("{key}.languages: needs policy.notices.templates"));
            }
            return Ok(None);
        };
        let mut wanted: Vec<&String> = cfg.languages.iter().map(|l| &l.lang).collect();
        wanted.push(&cfg.default_language);
        let mut texts = BTreeMap::new();
        for lang in wanted {
            if texts.contains_key(lang) {
                continue;
            }
            if lang.is_empty() || !lang.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(format!("{key}: `{lang}` is not a language tag"));
            }
            let at = |f: &str| format!("{}", dir.join(lang).join(f).display());
            let notice = read(dir, lang, "notice.txt").map_err(|e| format!("{key}: {e}"))?;
            let (first, body) = notice.split_once('\n').unwrap_or((&notice, ""));
            let notice_subject = first
                .trim()
                .strip_prefix("Subject:")
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    format!(
                        "{key}: template {}: the first line must be `Subject: ...`",
                        at("notice.txt")
                    )
                })?;
            texts.insert(
                lang.clone(),
                Texts {
                    reject: one_line(
                        &read(dir, lang, "reject.txt").map_err(|e| format!("{key}: {e}"))?,
                        &at("reject.txt"),
                    )
                    .map_err(|e| format!("{key}: {e}"))?,
                    notice_subject,
                    notice_body: body.trim_start_matches(['\r', '\n']).to_string(),
                    what_to_do: one_line(
                        &read(dir, lang, "what_to_do.txt").map_err(|e| format!("{key}: {e}"))?,
                        &at("what_to_do.txt"),
                    )
                    .map_err(|e| format!("{key}: {e}"))?,
                },
            );
        }
        // In config order; within one entry, groups before domains.
        let mut choose = Vec::new();
        for (i, l) in cfg.languages.iter().enumerate() {
            if l.groups.is_empty() && l.domains.is_empty() {
                return Err(format!(
                    "{key}.language[{i}]: names neither groups nor domains"
                ));
            }
            for g in &l.groups {
                let group = groups.get(g).ok_or_else(|| {
                    format!("{key}.language[{i}].groups: no group '{g}' in [policy.groups]")
                })?;
                choose.push((Selector::Group(group), l.lang.clone()));
            }
            for d in &l.domains {
                let d = d.trim().trim_start_matches("*.").trim_end_matches('.');
                if d.is_empty() || d.contains(['@', ' ']) {
                    return Err(format!(
                        "{key}.language[{i}].domains: `{d}` is not a domain"
                    ));
                }
                choose.push((Selector::Domain(d.to_ascii_lowercase()), l.lang.clone()));
            }
        }
        Ok(Some(Templates {
            default: cfg.default_language.clone(),
            texts,
            choose,
        }))
    }

    /// The sender's language: a group any of their identities is in, else the envelope
    /// sender's (or From:) domain, else the default.
    pub fn language_for(&self, s: &Sender) -> &str {
        for (sel, lang) in &self.choose {
            let hit = match sel {
                Selector::Group(g) => s.identities(GroupsOf::Any).iter().any(|id| g.contains(id)),
                Selector::Domain(d) => s.identities(GroupsOf::Any).iter().any(|id| {
                    id.rsplit_once('@').is_some_and(|(_, dom)| {
                        let dom = dom.trim_end_matches(['.', '>']).to_ascii_lowercase();
                        dom == *d || dom.ends_with(&format!(".{d}"))
                    })
                }),
            };
            if hit {
                return lang;
            }
        }
        &self.default
    }

    /// Sets the decision's language, its reject text (unless the rule has its own) and the
    /// notice text, rendered for this message.
    pub fn apply(&self, message: &Message, s: &Sender, rule: Option<&Rule>, d: &mut Decision) {
        let lang = self.language_for(s).to_string();
        let Some(t) = self.texts.get(&lang) else {
            return;
        };
        let limit = rule
            .and_then(|r| {
                [
                    r.min_visible_external,
                    r.min_external_domains,
                    r.min_visible,
                ]
                .into_iter()
                .flatten()
                .find(|&n| n > 0)
            })
            .map_or("-".to_string(), |n| n.to_string());
        let field = |name: &str| {
            message
                .field(name)
                .map(|v| {
                    String::from_utf8_lossy(v)
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default()
        };
        let vars = [
            ("rule", d.rule.clone().unwrap_or_default()),
            ("count", d.visible.len().to_string()),
            ("external", d.visible_external.to_string()),
            ("domains", d.external_domains.to_string()),
            ("limit", limit),
            ("what_to_do", t.what_to_do.clone()),
            ("reason", d.reason.clone()),
            ("subject", field("Subject")),
            ("message_id", field("Message-ID")),
        ];
        if d.action == Action::Reject && rule.is_some_and(|r| r.message.is_none()) {
            d.reject_text = Some(ascii_fold(&render(&t.reject, &vars)));
        }
        if d.notify_sender {
            d.org.notice = Some((
                one_ascii_line(&render(&t.notice_subject, &vars)),
                render(&t.notice_body, &vars),
            ));
        }
        d.org.language = Some(lang);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_checked_and_rendered() {
        assert!(check_placeholders("Regel {rule}: {count} {{literal}}").is_ok());
        let e = check_placeholders("hi {nmae}").unwrap_err();
        assert!(e.contains("{nmae}") && e.contains("{rule}"), "{e}");
        assert!(check_placeholders("open {rule").is_err());
        assert!(check_placeholders("close }").is_err());
        assert_eq!(
            render(
                "R {rule} {{x}} {count}",
                &[("rule", "a".into()), ("count", "3".into())]
            ),
            "R a {x} 3"
        );
        assert_eq!(
            ascii_fold("Empfänger größer «x»"),
            "Empfaenger groesser \"x\""
        );
    }

    #[test]
    fn shipped_templates_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/templates");
        let cfg = NoticesConfig {
            templates: Some(dir),
            default_language: "en".into(),
            languages: vec![crate::config::org::LanguageChoice {
                lang: "de".into(),
                domains: vec!["example.de".into()],
                groups: vec![],
            }],
        };
        let t = Templates::compile(&cfg, &Groups::default())
            .unwrap()
            .unwrap();
        let s = Sender {
            envelope: "anna@mail.example.de".into(),
            ..Sender::default()
        };
        assert_eq!(t.language_for(&s), "de");
        assert_eq!(t.language_for(&Sender::default()), "en");
    }
}
