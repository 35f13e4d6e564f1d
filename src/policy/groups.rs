//! Sender groups (`[policy.groups]`): static lists, files (one member per line) and directory
//! searches. A member is an address, a `*@domain` pattern, or a login name (no `@`) that matches
//! the SMTP AUTH user. Directory groups ask [`super::directory`], which caches and refreshes.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::org::GroupConfig;
use crate::config::PolicyConfig;
use crate::policy::directory::{Directory, DirectoryGroup};
use crate::policy::rules::AddressPattern;

/// One configured member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    Address(AddressPattern),
    Login(String),
}

impl Member {
    pub fn parse(text: &str) -> Result<Member, String> {
        let t = text.trim();
        if t.contains('@') {
            AddressPattern::parse(t).map(Member::Address)
        } else if t.is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Err(format!(
                "`{text}` is not an address, *@domain pattern or login name"
            ))
        } else {
            Ok(Member::Login(t.to_lowercase()))
        }
    }

    pub fn matches(&self, identity: &str) -> bool {
        match self {
            Member::Address(p) => p.matches(identity),
            Member::Login(l) => identity.trim().to_lowercase() == *l,
        }
    }
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Member::Address(p) => p.fmt(f),
            Member::Login(l) => f.write_str(l),
        }
    }
}

/// Where a group's members come from.
#[derive(Debug)]
enum Source {
    Static(Vec<Member>),
    Directory(DirectoryGroup),
}

/// One compiled group.
#[derive(Debug)]
pub struct Group {
    pub name: String,
    source: Source,
}

impl Group {
    /// Whether `identity` (an address or a login name) belongs to the group. A directory group
    /// never answered yet has no members: conditions fail on the side the rule author chose.
    pub fn contains(&self, identity: &str) -> bool {
        if identity.trim().is_empty() {
            return false;
        }
        match &self.source {
            Source::Static(m) => m.iter().any(|m| m.matches(identity)),
            Source::Directory(d) => d.contains(identity),
        }
    }

    /// Where the members come from, for `describe` and `--explain`.
    pub fn origin(&self) -> String {
        match &self.source {
            Source::Static(m) => format!("{} listed", m.len()),
            Source::Directory(d) => d.describe(),
        }
    }
}

/// Every configured group by name.
#[derive(Debug, Default, Clone)]
pub struct Groups {
    by_name: BTreeMap<String, Arc<Group>>,
    directories: Vec<Arc<Directory>>,
}

impl Groups {
    /// Reads group files and starts one directory client per `[[policy.directory]]`.
    pub fn compile(cfg: &PolicyConfig) -> Result<Groups, String> {
        let mut directories: Vec<Arc<Directory>> = Vec::new();
        for (i, d) in cfg.directories.iter().enumerate() {
            if directories.iter().any(|x| x.name() == d.name) {
                return Err(format!(
                    "key `policy.directory[{i}].name`: directory '{}' is defined twice",
                    d.name
                ));
            }
            directories.push(
                Directory::new(d)
                    .map_err(|e| format!("key `policy.directory[{i}]` ('{}'): {e}", d.name))?,
            );
        }
        let mut by_name = BTreeMap::new();
        for (name, g) in &cfg.groups {
            let key = format!("key `policy.groups.{name}`");
            if name.trim().is_empty() || name.chars().any(|c| c.is_control() || c == '\'') {
                return Err(format!(
                    "{key}: a group name must be one line without quotes"
                ));
            }
            let source = match g {
                GroupConfig::List(items) => Source::Static(
                    items
                        .iter()
                        .map(|m| Member::parse(m).map_err(|e| format!("{key}: {e}")))
                        .collect::<Result<_, _>>()?,
                ),
                GroupConfig::File { file } => {
                    let text = std::fs::read_to_string(file)
                        .map_err(|e| format!("{key}: cannot read {}: {e}", file.display()))?;
                    let mut members = Vec::new();
                    for (n, line) in text.lines().enumerate() {
                        let line = line.split('#').next().unwrap_or("").trim();
                        if line.is_empty() {
                            continue;
                        }
                        members.push(Member::parse(line).map_err(|e| {
                            format!("{key}: {} line {}: {e}", file.display(), n + 1)
                        })?);
                    }
                    Source::Static(members)
                }
                GroupConfig::Ldap {
                    ldap,
                    filter,
                    nested,
                } => {
                    let dir = directories
                        .iter()
                        .find(|d| d.name() == ldap)
                        .ok_or_else(|| {
                            format!("{key}: no [[policy.directory]] is named '{ldap}'")
                        })?;
                    Source::Directory(
                        dir.group(name, filter, *nested)
                            .map_err(|e| format!("{key}: {e}"))?,
                    )
                }
            };
            by_name.insert(
                name.clone(),
                Arc::new(Group {
                    name: name.clone(),
                    source,
                }),
            );
        }
        // One first answer for every directory group before the policy is used, bounded by
        // each directory's timeout; the relay starts anyway when a directory is down.
        for d in &directories {
            d.start();
        }
        Ok(Groups {
            by_name,
            directories,
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Group>> {
        self.by_name.get(name).cloned()
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.by_name.keys()
    }

    pub fn directories(&self) -> &[Arc<Directory>] {
        &self.directories
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_addresses_patterns_or_logins() {
        assert!(Member::parse("Alice").unwrap().matches("alice"));
        assert!(!Member::parse("alice").unwrap().matches("alice@example.org"));
        assert!(Member::parse("*@press.example.org")
            .unwrap()
            .matches("x@PRESS.example.org"));
        assert!(Member::parse("two words").is_err());
    }

    #[test]
    fn list_and_file_groups() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("board.txt");
        std::fs::write(
            &f,
            "# the board\nchair@example.org\n\n*@board.example.org # all\n",
        )
        .unwrap();
        let mut cfg = PolicyConfig::default();
        cfg.groups.insert(
            "press".into(),
            GroupConfig::List(vec!["press@example.org".into(), "pr-team".into()]),
        );
        cfg.groups
            .insert("board".into(), GroupConfig::File { file: f.clone() });
        let g = Groups::compile(&cfg).unwrap();
        let press = g.get("press").unwrap();
        assert!(press.contains("Press@Example.org"));
        assert!(press.contains("PR-team"));
        assert!(!press.contains(""));
        let board = g.get("board").unwrap();
        assert!(board.contains("chair@example.org"));
        assert!(board.contains("x@board.example.org"));
        assert!(!board.contains("x@example.org"));

        std::fs::write(&f, "not an address\n").unwrap();
        let err = Groups::compile(&cfg).unwrap_err();
        assert!(
            err.contains("policy.groups.board") && err.contains("line 1"),
            "{err}"
        );
    }
}
