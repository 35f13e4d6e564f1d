//! Reading the config: the TOML file (parsed with spans, so every error can name a line and
//! column), the `BCCGUARD__SECTION__KEY` environment overlay (remembered, so an error in an
//! overridden value names the variable, and `config show` can mark it), and relative paths
//! resolved against the file's folder (SPEC 1). Values from the environment that are paths stay
//! relative to the current folder: that is where the admin typed them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::{Config, ConfigError};

/// Used when neither `--config` nor `$BCCGUARD_CONFIG` names a file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/bccguard/bccguard.toml";
/// Environment variable naming the config file (below `--config`, above the default).
pub const CONFIG_ENV: &str = "BCCGUARD_CONFIG";
/// Prefix of per-key overrides: `BCCGUARD__UPSTREAM__ADDRESS=10.0.0.5:587`.
pub const ENV_PREFIX: &str = "BCCGUARD__";

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &["server.relay_networks", "policy.internal_domains"];

/// 1-based line and column (in characters) of a place in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// Where each value came from. Paths are written like `policy.rule[0].action` (0-based, as
/// serde reports them); [`Origins::display_key`] turns them into what the admin reads.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    /// The file as named on the command line (for messages).
    pub file: PathBuf,
    /// Absolute folder of the file: the base of relative paths inside it.
    pub dir: PathBuf,
    /// Key path -> (position of the key, position of the value).
    pub positions: BTreeMap<String, (Pos, Pos)>,
    /// Key path -> environment variable that set it.
    pub env: BTreeMap<String, String>,
    /// Rule names by index, for messages.
    pub rule_names: Vec<String>,
}

impl Origins {
    /// `file:line:col`, or the environment variable, of a key path (or of its nearest
    /// enclosing key that is in the file), for the start of a message.
    pub fn locate(&self, path: &str) -> String {
        if let Some(var) = self.env_var_of(path) {
            return format!("environment variable {var}");
        }
        let file = self.file.display();
        let mut p = path.to_string();
        loop {
            if let Some((key, value)) = self.positions.get(&p) {
                // A leaf: point at the value; a table: at its header.
                let at = if p == path { value } else { key };
                return format!("{file}:{}:{}", at.line, at.col);
            }
            match parent(&p) {
                Some(up) => p = up.to_string(),
                None => return file.to_string(),
            }
        }
    }

    /// The variable that set this key, a key above it, or (for a section that only the
    /// environment created, e.g. from a misspelt `BCCGUARD__UPSTRAEM__ADDRESS`) a key below it.
    pub fn env_var_of(&self, path: &str) -> Option<&str> {
        let mut p = path;
        loop {
            if let Some(v) = self.env.get(p) {
                return Some(v);
            }
            match parent(p) {
                Some(up) => p = up,
                None => break,
            }
        }
        if self.positions.contains_key(path) {
            return None;
        }
        let below = format!("{path}.");
        self.env
            .iter()
            .find(|(k, _)| k.starts_with(&below))
            .map(|(_, v)| v.as_str())
    }

    /// `policy.rule[0].action` -> `policy.rule[1].action` (the 1st rule, 'name'): indices count
    /// from 1 as people do, and rules are named.
    pub fn display_key(&self, path: &str) -> String {
        let mut out = String::with_capacity(path.len() + 24);
        let mut rest = path;
        while let Some(open) = rest.find('[') {
            let Some(close) = rest[open..].find(']').map(|c| open + c) else {
                break;
            };
            out.push_str(&rest[..=open]);
            match rest[open + 1..close].parse::<usize>() {
                Ok(i) => out.push_str(&(i + 1).to_string()),
                Err(_) => out.push_str(&rest[open + 1..close]),
            }
            out.push(']');
            rest = &rest[close + 1..];
        }
        out.push_str(rest);
        let mut s = format!("`{out}`");
        if let Some(i) = index_after(path, "policy.rule[") {
            match self.rule_names.get(i).filter(|n| !n.is_empty()) {
                Some(name) => s.push_str(&format!(" (the {} rule, '{name}')", ordinal(i + 1))),
                None => s.push_str(&format!(" (the {} rule)", ordinal(i + 1))),
            }
        } else if let Some(i) = index_after(path, "listener[") {
            s.push_str(&format!(" (the {} [[listener]])", ordinal(i + 1)));
        }
        s
    }

    /// An error about `path`, placed and worded for the admin.
    pub fn invalid(&self, path: &str, why: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            at: self.locate(path),
            key: self.display_key(path),
            why: why.into(),
        }
    }
}

fn parent(path: &str) -> Option<&str> {
    if path.ends_with(']') {
        return path.rfind('[').map(|i| &path[..i]);
    }
    path.rfind('.').map(|i| &path[..i])
}

fn index_after(path: &str, prefix: &str) -> Option<usize> {
    let rest = path.strip_prefix(prefix)?;
    rest[..rest.find(']')?].parse().ok()
}

pub fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// `--config`, else `$BCCGUARD_CONFIG`, else the default (clap applies the first two; this is
/// for callers that hold an `Option`).
pub fn config_path(given: Option<&Path>) -> PathBuf {
    if let Some(p) = given {
        return p.to_path_buf();
    }
    match std::env::var_os(CONFIG_ENV) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(DEFAULT_CONFIG_PATH),
    }
}

fn pos_of(text: &str, offset: usize) -> Pos {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Pos {
        line,
        col: before[line_start..].chars().count() + 1,
    }
}

fn index_positions(
    prefix: &str,
    table: &DeTable<'_>,
    text: &str,
    out: &mut BTreeMap<String, (Pos, Pos)>,
) {
    for (k, v) in table.iter() {
        let path = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        let key_pos = pos_of(text, k.span().start);
        out.insert(path.clone(), (key_pos, pos_of(text, v.span().start)));
        match v.get_ref() {
            DeValue::Table(t) => index_positions(&path, t, text, out),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let ip = format!("{path}[{i}]");
                    // For an array of tables the item's span is its `[[...]]` header.
                    let at = pos_of(text, item.span().start);
                    out.insert(ip.clone(), (at, at));
                    if let DeValue::Table(t) = item.get_ref() {
                        index_positions(&ip, t, text, out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Every `BCCGUARD__...` variable as (name, key path, value).
fn env_overrides() -> Result<Vec<(String, String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let value = value.into_string().map_err(|_| ConfigError::Env {
            var: name.to_string(),
            why: "the value is not valid UTF-8".into(),
        })?;
        let segments: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if segments.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var: name.to_string(),
                why: "expected the form BCCGUARD__SECTION__KEY".into(),
            });
        }
        out.push((name.to_string(), segments.join("."), value));
    }
    out.sort();
    Ok(out)
}

/// The environment's string as a TOML value: typed like the file's value for the same key when
/// there is one, else by its look (true/false, a whole number, or a string).
fn env_value(path: &str, raw: &str, existing: Option<&toml::Value>) -> toml::Value {
    let list = || {
        toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        )
    };
    match existing {
        Some(toml::Value::String(_)) => return toml::Value::String(raw.to_string()),
        Some(toml::Value::Array(_)) => return list(),
        _ => {}
    }
    if LIST_KEYS.contains(&path) {
        return list();
    }
    match raw {
        "true" | "TRUE" | "True" => return toml::Value::Boolean(true),
        "false" | "FALSE" | "False" => return toml::Value::Boolean(false),
        _ => {}
    }
    if let Ok(n) = raw.parse::<i64>() {
        return toml::Value::Integer(n);
    }
    toml::Value::String(raw.to_string())
}

fn apply_env(table: &mut toml::Table, var: &str, path: &str, raw: &str) -> Result<(), ConfigError> {
    let mut segments: Vec<&str> = path.split('.').collect();
    let Some(leaf) = segments.pop() else {
        return Ok(());
    };
    let mut here = table;
    for (depth, seg) in segments.iter().enumerate() {
        let entry = here
            .entry(seg.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        here = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(ConfigError::Env {
                    var: var.to_string(),
                    why: format!(
                        "`{}` is not a section, so it has no key `{leaf}`",
                        segments[..=depth].join(".")
                    ),
                })
            }
        };
    }
    let value = env_value(path, raw, here.get(leaf));
    here.insert(leaf.to_string(), value);
    Ok(())
}

fn rule_names(table: &toml::Table) -> Vec<String> {
    table
        .get("policy")
        .and_then(|p| p.get("rule"))
        .and_then(toml::Value::as_array)
        .map(|rules| {
            rules
                .iter()
                .map(|r| {
                    r.get("name")
                        .and_then(toml::Value::as_str)
                        .unwrap_or("")
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Text of the file: an error says which file and how the name was chosen.
fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        hint: if path == Path::new(DEFAULT_CONFIG_PATH) {
            " (the default; name another with --config PATH or BCCGUARD_CONFIG)"
        } else {
            ""
        },
        source,
    })
}

/// Reads `path`, overlays the environment and deserialises; no validation yet.
pub fn parse(path: &Path) -> Result<Config, ConfigError> {
    let text = read(path)?;
    let mut origins = Origins {
        file: path.to_path_buf(),
        dir: std::path::absolute(path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default(),
        ..Origins::default()
    };
    let spanned = DeTable::parse(&text).map_err(|e| {
        let at = e
            .span()
            .map_or(Pos { line: 1, col: 1 }, |s| pos_of(&text, s.start));
        ConfigError::Syntax {
            at: format!("{}:{}:{}", path.display(), at.line, at.col),
            why: e.message().trim().to_string(),
        }
    })?;
    index_positions("", spanned.get_ref(), &text, &mut origins.positions);
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
        at: path.display().to_string(),
        why: e.message().trim().to_string(),
    })?;
    for (var, key, value) in env_overrides()? {
        apply_env(&mut table, &var, &key, &value)?;
        origins.env.insert(key, var);
    }
    origins.rule_names = rule_names(&table);
    let mut cfg: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
        .map_err(|e| deserialize_error(&origins, e))?;
    resolve_paths(&mut cfg, &origins);
    cfg.source_path = path.to_path_buf();
    cfg.origins = origins;
    Ok(cfg)
}

fn deserialize_error(
    origins: &Origins,
    e: serde_path_to_error::Error<toml::de::Error>,
) -> ConfigError {
    let mut path = e.path().to_string();
    if path == "." {
        path.clear();
    }
    let message = e.inner().message().trim().to_string();
    // `unknown field `x``: serde reports the table; point at the key itself.
    if let Some(field) = message
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
    {
        // serde_path_to_error already ends the path with the unknown key.
        let full = if path == field || path.ends_with(&format!(".{field}")) {
            path.clone()
        } else if path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        };
        let why = message.replacen("unknown field", "unknown key", 1);
        return origins.invalid(&full, why);
    }
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
    {
        let full = if path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        };
        return ConfigError::Invalid {
            at: origins.locate(&path),
            key: origins.display_key(&full),
            why: "is required and missing".into(),
        };
    }
    origins.invalid(&path, message)
}

fn resolve_paths(cfg: &mut Config, origins: &Origins) {
    let dir = &origins.dir;
    let fix = |key: &str, p: &mut PathBuf| {
        if p.is_relative() && !p.as_os_str().is_empty() && origins.env_var_of(key).is_none() {
            *p = dir.join(&*p);
        }
    };
    if let Some(tls) = cfg.tls.as_mut() {
        fix("tls.certificate", &mut tls.certificate);
        fix("tls.private_key", &mut tls.private_key);
    }
    if let Some(p) = cfg.auth.users_file.as_mut() {
        fix("auth.users_file", p);
    }
    if let Some(p) = cfg.upstream.ca_file.as_mut() {
        fix("upstream.ca_file", p);
    }
    if let Some(p) = cfg.upstream.password_file.as_mut() {
        fix("upstream.password_file", p);
    }
    if let Some(p) = cfg.policy.dkim.private_key.as_mut() {
        fix("policy.dkim.private_key", p);
    }
    fix("audit.path", &mut cfg.audit.path);
    fix("audit.hmac_key_file", &mut cfg.audit.hmac_key_file);
    fix("spool.path", &mut cfg.spool.path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_lines_and_columns() {
        let text = "[a]\nb = 1\n\n[[r]]\nname = \"x\"\n[[r]]\nname = \"y\"\n";
        let t = DeTable::parse(text).unwrap();
        let mut out = BTreeMap::new();
        index_positions("", t.get_ref(), text, &mut out);
        assert_eq!(out["a.b"].0, Pos { line: 2, col: 1 });
        assert_eq!(out["a.b"].1, Pos { line: 2, col: 5 });
        assert_eq!(out["r[1].name"].0, Pos { line: 7, col: 1 });
        assert_eq!(out["r[1]"].0, Pos { line: 6, col: 1 });
    }

    #[test]
    fn keys_are_shown_one_based_with_rule_names() {
        let o = Origins {
            rule_names: vec!["a".into(), "never".into()],
            ..Origins::default()
        };
        assert_eq!(
            o.display_key("policy.rule[1].action"),
            "`policy.rule[2].action` (the 2nd rule, 'never')"
        );
        assert_eq!(
            o.display_key("listener[0].tls"),
            "`listener[1].tls` (the 1st [[listener]])"
        );
        assert_eq!(ordinal(11), "11th");
        assert_eq!(ordinal(22), "22nd");
    }

    #[test]
    fn env_values_take_the_file_values_type() {
        let s = toml::Value::String("x".into());
        assert_eq!(
            env_value("server.hostname", "123", Some(&s)).as_str(),
            Some("123")
        );
        assert_eq!(env_value("a.b", "123", None).as_integer(), Some(123));
        assert_eq!(env_value("a.b", "true", None).as_bool(), Some(true));
        let list = env_value("server.relay_networks", "10.0.0.0/8, 10.1.0.0/16", None);
        assert_eq!(list.as_array().map(Vec::len), Some(2));
    }
}
