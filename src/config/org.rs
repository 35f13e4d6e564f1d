//! Config types for organisation policy: groups, directories (LDAP / AD), the audited override
//! and notice templates (`[policy.groups]`, `[[policy.directory]]`, `[policy.override]`,
//! `[policy.notices]`). Checked and compiled in `policy::groups`, `policy::directory`,
//! `policy::overrides` and `policy::templates`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One `[policy.groups]` entry: a list, a file, or a directory search.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum GroupConfig {
    /// `name = ["a@x", "*@dept.example.org", "login-name"]`
    List(Vec<String>),
    /// `name = { file = "path" }`: one member per line, `#` comments.
    File { file: PathBuf },
    /// `name = { ldap = "directory-name", filter = "(memberOf=cn=press,...)" }`
    Ldap {
        ldap: String,
        filter: String,
        /// Wrap the filter's `memberOf=` test in the AD nested-group rule (1.2.840.113556.1.4.1941).
        #[serde(default)]
        nested: bool,
    },
}

/// Whose group membership `sender_groups` tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupsOf {
    /// The envelope sender (MAIL FROM).
    #[default]
    EnvelopeSender,
    /// The address in the From: field.
    FromHeader,
    /// The SMTP AUTH login name.
    AuthUser,
    /// Any of the three.
    Any,
}

impl GroupsOf {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupsOf::EnvelopeSender => "envelope sender",
            GroupsOf::FromHeader => "From: address",
            GroupsOf::AuthUser => "authenticated user",
            GroupsOf::Any => "envelope sender, From: address or authenticated user",
        }
    }
}

/// One `[[policy.directory]]`: an LDAP server groups are read from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    pub name: String,
    /// `ldaps://host:636` or `ldap://host:389` (then `starttls` is required unless the host is loopback).
    pub url: String,
    #[serde(default)]
    pub starttls: bool,
    #[serde(default)]
    pub bind_dn: Option<String>,
    /// File holding the bind password (first line); never the password itself in the config.
    #[serde(default)]
    pub bind_password_file: Option<PathBuf>,
    pub base_dn: String,
    #[serde(default = "default_mail_attribute")]
    pub mail_attribute: String,
    /// Attribute with the login name, so `sender_groups_of = "auth_user"` can match too.
    #[serde(default)]
    pub login_attribute: Option<String>,
    /// Seconds a group's members are reused before a background refresh.
    #[serde(default = "default_ttl")]
    pub ttl_seconds: u64,
    /// Seconds for one connect + bind + search.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// PEM CA file for the server certificate (default: the system roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_mail_attribute() -> String {
    "mail".into()
}
fn default_ttl() -> u64 {
    300
}
fn default_timeout() -> u64 {
    5
}

/// `[policy.override]`: listed users may mark a message as meant to show its recipients.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideConfig {
    #[serde(default)]
    pub enabled: bool,
    /// Header field carrying the reason, e.g. `X-Bccguard-Override: committee, all know each other`.
    #[serde(default = "default_override_header")]
    pub header: String,
    /// Subject tag alternative, e.g. `[show-recipients]` followed by the reason.
    #[serde(default)]
    pub subject_tag: Option<String>,
    /// Login names or addresses (matched against the auth user, else the envelope sender).
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Whose identity is tested against `users`/`groups` (default: the authenticated user).
    #[serde(default = "default_override_of")]
    pub identity: GroupsOf,
}

impl Default for OverrideConfig {
    fn default() -> Self {
        OverrideConfig {
            enabled: false,
            header: default_override_header(),
            subject_tag: None,
            users: Vec::new(),
            groups: Vec::new(),
            identity: default_override_of(),
        }
    }
}

fn default_override_header() -> String {
    "X-Bccguard-Override".into()
}
fn default_override_of() -> GroupsOf {
    GroupsOf::AuthUser
}

/// `[policy.notices]`: reject texts and sender notices from template files, per language.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NoticesConfig {
    /// Directory with `<lang>/reject.txt` and `<lang>/notice.txt` (e.g. config/templates).
    #[serde(default)]
    pub templates: Option<PathBuf>,
    #[serde(default = "default_language")]
    pub default_language: String,
    /// `[[policy.notices.language]]` entries, tested in order (a list, not a table keyed by
    /// domain: the config loader would split `example.de` at the dot).
    #[serde(default, rename = "language")]
    pub languages: Vec<LanguageChoice>,
}

/// Senders in these groups or domains (or their subdomains) get `lang`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LanguageChoice {
    pub lang: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub domains: Vec<String>,
}

fn default_language() -> String {
    "en".into()
}
