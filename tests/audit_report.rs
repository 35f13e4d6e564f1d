//! `bccguard audit report` and the `audit query` filters over a generated log, run as the built
//! binary; a missing log is an error; `audit query | head -1` ends quietly.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use bccguard::audit::{Kind, Record, GENESIS};
use bccguard::config::{Action, Mode};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

fn bccguard(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bccguard"));
    cmd.current_dir(dir).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("BCCGUARD") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What one generated record is.
struct Spec {
    days_ago: i64,
    rule: Option<&'static str>,
    action: Action,
    mode: Mode,
    sender: &'static str,
}

/// The generated week: 3 days, two rules, a monitor-mode trial, three sender domains.
fn specs() -> Vec<Spec> {
    let mut v = Vec::new();
    for i in 0..30 {
        let (rule, action) = match i % 3 {
            0 => (Some("mass-external"), Action::Reject),
            1 => (Some("many-external"), Action::Rewrite),
            _ => (Some("trial-split"), Action::Split),
        };
        v.push(Spec {
            days_ago: [0, 1, 3][i % 5 % 3],
            rule,
            action,
            mode: if i % 3 == 2 {
                Mode::Monitor
            } else {
                Mode::Enforce
            },
            sender: ["alice@example.org", "bob@Example.NET", "carol@example.com"][i % 4 % 3],
        });
    }
    v
}

fn write_log(path: &Path, specs: &[Spec]) {
    let now = OffsetDateTime::now_utc();
    let mut prev = GENESIS.to_string();
    let mut out = Vec::new();
    // Oldest first, as the relay writes.
    let mut order: Vec<usize> = (0..specs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(specs[i].days_ago));
    for (n, &i) in order.iter().enumerate() {
        let s = &specs[i];
        let time = now - Duration::days(s.days_ago) - Duration::seconds(60 - n as i64);
        let mut r = Record {
            time: time.format(&Rfc3339).unwrap(),
            seq: n as u64 + 1,
            kind: Kind::Record,
            session: format!("sess-{i}"),
            client: "127.0.0.1".into(),
            auth_user: None,
            sender: s.sender.into(),
            message_id: Some(format!("<m{i}@example.org>")),
            rule: s.rule.map(String::from),
            action: s.action,
            mode: s.mode,
            would: s.mode == Mode::Monitor,
            reason: "generated".into(),
            visible_count: 7,
            visible_external: 7,
            external_domains: 3,
            envelope_recipients: 7,
            recipients_mode: "none".into(),
            recipients: None,
            recipients_summary: None,
            upstream: None,
            policy_version: "v".into(),
            header_digest_original: "d".into(),
            header_digest_forwarded: None,
            prev: prev.clone(),
            hash: String::new(),
        };
        out.extend(r.seal().unwrap());
        prev = r.hash.clone();
    }
    std::fs::write(path, out).unwrap();
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_log(&dir.path().join("audit.jsonl"), &specs());
    std::fs::write(
        dir.path().join("bccguard.toml"),
        "[server]\nhostname = \"r.test\"\n[[listener]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n\
         [upstream]\naddress = \"127.0.0.1:2526\"\n[audit]\npath = \"audit.jsonl\"\nrecipients = \"none\"\n",
    )
    .unwrap();
    dir
}

#[test]
fn report_counts_by_rule_action_mode_domain_and_day() {
    let dir = setup();
    let conf = dir.path().join("bccguard.toml");
    // Run from elsewhere: the log path is relative to the config file.
    let elsewhere = std::env::temp_dir();
    let (code, out, err) = bccguard(
        &elsewhere,
        &[
            "audit",
            "report",
            "--config",
            conf.to_str().unwrap(),
            "--since",
            "2d",
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let specs = specs();
    let recent: Vec<&Spec> = specs.iter().filter(|s| s.days_ago < 2).collect();
    assert_eq!(v["records"], recent.len() as u64);
    let monitor = recent.iter().filter(|s| s.mode == Mode::Monitor).count() as u64;
    assert_eq!(v["by_mode"]["monitor"], monitor);
    assert_eq!(v["by_mode"]["enforce"], recent.len() as u64 - monitor);
    let rule_rows = v["by_rule"].as_array().unwrap();
    let trial = rule_rows
        .iter()
        .find(|r| r["rule"] == "trial-split")
        .unwrap();
    assert_eq!(trial["action"], "split");
    assert_eq!(trial["monitor"], monitor);
    assert_eq!(trial["enforce"], 0);
    // Sender domains are compared lower-cased.
    let doms = v["by_sender_domain"].as_array().unwrap();
    let net = recent
        .iter()
        .filter(|s| s.sender.ends_with("Example.NET"))
        .count() as u64;
    assert_eq!(
        doms.iter()
            .find(|d| d["sender_domain"] == "example.net")
            .unwrap()["total"],
        net
    );
    assert_eq!(v["by_day"].as_array().unwrap().len(), 2, "{out}");

    // Everything: CSV sums to the record count, one row per cell.
    let (code, csv, _) = bccguard(
        dir.path(),
        &["audit", "report", "--config", "bccguard.toml", "--csv"],
    );
    assert_eq!(code, Some(0));
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("day,rule,action,mode,sender_domain,count")
    );
    let total: u64 = lines
        .map(|l| l.rsplit(',').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, specs.len() as u64);

    let (code, text, _) = bccguard(
        dir.path(),
        &[
            "audit",
            "report",
            "--config",
            "bccguard.toml",
            "--since",
            "yesterday",
        ],
    );
    assert_eq!(code, Some(0));
    assert!(text.contains("rule (action)"), "{text}");
    assert!(text.contains("trial-split (split)"), "{text}");
    assert!(text.contains("in monitor mode"), "{text}");

    let (code, _, err) = bccguard(
        dir.path(),
        &[
            "audit",
            "report",
            "--config",
            "bccguard.toml",
            "--since",
            "last week",
        ],
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("--since") && err.contains("7d"), "{err}");
}

#[test]
fn query_filters_by_rule_session_and_message_id() {
    let dir = setup();
    let q = |extra: &[&str]| -> Vec<Value> {
        let mut args = vec!["audit", "query", "--config", "bccguard.toml", "--json"];
        args.extend_from_slice(extra);
        let (code, out, err) = bccguard(dir.path(), &args);
        assert_eq!(code, Some(0), "{err}");
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let n = specs()
        .iter()
        .filter(|s| s.rule == Some("many-external"))
        .count();
    let got = q(&["--rule", "many-external"]);
    assert_eq!(got.len(), n);
    assert!(got.iter().all(|r| r["rule"] == "many-external"));
    let got = q(&["--session", "sess-7"]);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["session"], "sess-7");
    assert_eq!(q(&["--message-id", "<m4@example.org>"]).len(), 1);
    assert_eq!(
        q(&["--message-id", "m4@example.org"])[0]["session"],
        "sess-4"
    );
    assert!(q(&["--rule", "nope"]).is_empty());
}

#[test]
fn a_missing_log_is_an_error_not_an_empty_result() {
    let dir = setup();
    std::fs::remove_file(dir.path().join("audit.jsonl")).unwrap();
    for cmd in ["query", "report", "verify"] {
        let (code, out, err) = bccguard(dir.path(), &["audit", cmd, "--config", "bccguard.toml"]);
        assert_eq!(code, Some(2), "{cmd}: {out}{err}");
        assert!(err.contains("does not exist"), "{cmd}: {err}");
        assert!(
            err.contains(&dir.path().join("audit.jsonl").display().to_string()),
            "{err}"
        );
    }
}

#[test]
fn a_closed_pipe_ends_query_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let many: Vec<Spec> = (0..3000)
        .map(|_| Spec {
            days_ago: 0,
            rule: Some("r"),
            action: Action::Rewrite,
            mode: Mode::Enforce,
            sender: "a@example.org",
        })
        .collect();
    let log = dir.path().join("big.jsonl");
    write_log(&log, &many);
    std::fs::write(
        dir.path().join("bccguard.toml"),
        "[server]\nhostname = \"r.test\"\n[[listener]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n\
         [upstream]\naddress = \"127.0.0.1:2526\"\n[audit]\npath = \"big.jsonl\"\nrecipients = \"none\"\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bccguard"))
        .current_dir(dir.path())
        .args(["audit", "query", "--config", "bccguard.toml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is dropped here, like `head -1` exiting.
    assert!(first.contains("seq=1 "), "{first}");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
}
