//! `bccguard check` over a folder, a Maildir and an mbox (the bulk dry run), run as the built
//! binary against the fixture policy of check_cli.rs: per-message objects, the summary, refusals
//! by reply, monitor mode, unreadable input, and a generated 10,000-message mbox.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/check")
}

fn bccguard(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bccguard"));
    cmd.current_dir(fixtures()).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("BCCGUARD") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.output().unwrap()
}

/// `check --json` over `paths`: (exit code, per-message objects, summary).
fn bulk_json(paths: &[&Path], envs: &[(&str, &str)]) -> (Option<i32>, Vec<Value>, Value) {
    let mut args = vec!["check", "--json", "--config", "base.toml"];
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));
    let out = bccguard(&args, envs);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let summary = lines.pop().expect("a summary line");
    assert!(
        summary.get("summary").is_some(),
        "last line is the summary: {summary}"
    );
    (out.status.code(), lines, summary["summary"].clone())
}

fn address_list(domain_prefix: &str, n: usize) -> String {
    (1..=n)
        .map(|i| format!("p{i}@{domain_prefix}{i}.net"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A message with `to` in To:, from `from`, with a Message-ID naming it.
fn message(id: &str, from: &str, to: &str, body: &str) -> String {
    format!("From: {from}\nTo: {to}\nSubject: {id}\nMessage-ID: <{id}@test>\n\n{body}\n")
}

fn plain(id: &str) -> String {
    message(id, "ann@example.org", "colleague@example.org", "hello")
}

fn six_external(id: &str) -> String {
    message(id, "ann@example.org", &address_list("client", 6), "hi all")
}

fn twenty_external(id: &str) -> String {
    message(id, "ann@example.org", &address_list("mass", 20), "hi all")
}

fn press(id: &str) -> String {
    message(
        id,
        "press@example.org",
        &address_list("paper", 8),
        "release",
    )
}

/// Rows of the summary as (rule, action, mode, outcome) -> messages.
fn rows(summary: &Value) -> Vec<(String, String, String, String, u64)> {
    summary["by_rule"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["rule"].as_str().unwrap_or("(none)").to_string(),
                r["action"].as_str().unwrap().to_string(),
                r["mode"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
                r["messages"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn row(
    rule: &str,
    action: &str,
    mode: &str,
    outcome: &str,
    n: u64,
) -> (String, String, String, String, u64) {
    (rule.into(), action.into(), mode.into(), outcome.into(), n)
}

#[test]
fn folder_of_eml_files_gives_the_expected_summary() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("1.eml"), plain("a")).unwrap();
    std::fs::write(dir.path().join("2.eml"), six_external("b")).unwrap();
    std::fs::write(dir.path().join("3.eml"), twenty_external("c")).unwrap();
    std::fs::write(dir.path().join("4.eml"), press("d")).unwrap();
    std::fs::write(dir.path().join(".index"), "not a message").unwrap();

    let (code, messages, summary) = bulk_json(&[dir.path()], &[]);
    assert_eq!(code, Some(0));
    assert_eq!(messages.len(), 4);
    let ids: Vec<&str> = messages
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["<a@test>", "<b@test>", "<c@test>", "<d@test>"]);
    assert!(messages[0]["source"].as_str().unwrap().ends_with("1.eml"));
    assert!(
        messages[0].get("index").is_none(),
        "no index outside an mbox"
    );
    // The same decision object as a single-file check.
    assert_eq!(messages[1]["action"], "rewrite");
    assert_eq!(messages[1]["visible_count"], 6);
    assert!(messages[2]["smtp_reply"]
        .as_str()
        .unwrap()
        .starts_with("550 5.7.1"));

    assert_eq!(summary["messages"], 4);
    assert_eq!(summary["sources"], 4);
    assert_eq!(
        rows(&summary),
        vec![
            row("(none)", "accept", "enforce", "delivered unchanged", 1),
            row("many-external", "rewrite", "enforce", "rewritten", 1),
            row("mass-external", "reject", "enforce", "refused 550 5.7.1", 1),
            row(
                "press-office",
                "accept",
                "enforce",
                "delivered unchanged",
                1
            ),
        ]
    );
    assert_eq!(
        summary["refusals"],
        serde_json::json!([{"code": 550, "status": "5.7.1", "cause": "policy", "messages": 1}])
    );
    let t = &summary["totals"];
    assert_eq!(
        (
            t["delivered_unchanged"].as_u64(),
            t["rewritten"].as_u64(),
            t["refused"].as_u64()
        ),
        (Some(2), Some(1), Some(1))
    );
}

#[test]
fn maildir_reads_new_and_cur_and_skips_tmp() {
    let dir = tempfile::tempdir().unwrap();
    let md = dir.path().join("Sent");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(md.join(sub)).unwrap();
    }
    std::fs::write(md.join("new/1700000000.1.host"), six_external("new1")).unwrap();
    std::fs::write(md.join("cur/1700000001.2.host:2,S"), plain("cur1")).unwrap();
    std::fs::write(md.join("cur/1700000002.3.host:2,S"), six_external("cur2")).unwrap();
    // Half-delivered: a Maildir reader must not see it.
    std::fs::write(md.join("tmp/1700000003.4.host"), twenty_external("tmp1")).unwrap();

    let (code, messages, summary) = bulk_json(&[&md], &[]);
    assert_eq!(code, Some(0));
    let ids: Vec<&str> = messages
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["<new1@test>", "<cur1@test>", "<cur2@test>"]);
    assert_eq!(
        rows(&summary),
        vec![
            row("(none)", "accept", "enforce", "delivered unchanged", 1),
            row("many-external", "rewrite", "enforce", "rewritten", 2),
        ]
    );
    assert_eq!(summary["refusals"], serde_json::json!([]));
}

/// An mbox with LF and CRLF messages, quoted `From ` lines, a message over the size limit and
/// one with a bare CR: what `serve` would do with each, and where each starts.
fn sample_mbox() -> (Vec<u8>, Vec<u64>) {
    let mut mbox = Vec::new();
    let mut offsets = Vec::new();
    let mut add = |mbox: &mut Vec<u8>, text: &str| {
        offsets.push(mbox.len() as u64);
        mbox.extend_from_slice(b"From ann@example.org Mon Nov  2 10:00:00 2026\n");
        mbox.extend_from_slice(text.as_bytes());
        mbox.extend_from_slice(b"\n");
    };
    add(&mut mbox, &plain("m1"));
    // Body lines that look like separators, quoted by the writer: still one message.
    add(
        &mut mbox,
        &message(
            "m2",
            "ann@example.org",
            &address_list("client", 6),
            "see below\n>From the minutes:\n>>From an old mail\nend",
        ),
    );
    let big = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n".repeat(1000);
    add(
        &mut mbox,
        &message("m3", "ann@example.org", "colleague@example.org", &big),
    );
    add(
        &mut mbox,
        &message("m4", "ann@example.org", "colleague@example.org", "bare\rcr"),
    );
    // CRLF line ends, as some exporters write.
    let crlf = twenty_external("m5").replace('\n', "\r\n");
    add(&mut mbox, &crlf);
    (mbox, offsets)
}

#[test]
fn mbox_gives_per_message_results_and_refusals_by_reply() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sent.mbox");
    let (mbox, offsets) = sample_mbox();
    std::fs::write(&path, &mbox).unwrap();

    let (code, messages, summary) =
        bulk_json(&[&path], &[("BCCGUARD__SERVER__MAX_MESSAGE_SIZE", "50000")]);
    assert_eq!(code, Some(0));
    assert_eq!(messages.len(), 5);
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(m["index"], i as u64 + 1);
        assert_eq!(m["offset"], offsets[i]);
    }
    assert_eq!(messages[0]["action"], "accept");
    assert_eq!(messages[1]["action"], "rewrite");
    assert_eq!(messages[2]["kind"], "too_big");
    assert!(messages[2]["smtp_reply"]
        .as_str()
        .unwrap()
        .starts_with("552 5.3.4"));
    assert_eq!(messages[3]["kind"], "unreadable");
    assert!(messages[3]["smtp_reply"]
        .as_str()
        .unwrap()
        .starts_with("550 5.6.0"));
    assert_eq!(messages[4]["action"], "reject");
    assert_eq!(messages[4]["visible_count"], 20);

    assert_eq!(
        summary["refusals"],
        serde_json::json!([
            {"code": 550, "status": "5.6.0", "cause": "unreadable", "messages": 1},
            {"code": 550, "status": "5.7.1", "cause": "policy", "messages": 1},
            {"code": 552, "status": "5.3.4", "cause": "too_big", "messages": 1},
        ])
    );
    assert_eq!(summary["totals"]["refused"], 3);
}

#[test]
fn monitor_mode_counts_what_would_have_been_done() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sent.mbox");
    let mut mbox = String::new();
    for (i, m) in [
        plain("a"),
        six_external("b"),
        six_external("c"),
        twenty_external("d"),
    ]
    .iter()
    .enumerate()
    {
        writeln!(mbox, "From x@example.org Mon Nov  2 10:00:0{i} 2026\n{m}").unwrap();
    }
    std::fs::write(&path, mbox).unwrap();
    let (_, _, summary) = bulk_json(&[&path], &[("BCCGUARD__POLICY__MODE", "monitor")]);
    assert_eq!(
        rows(&summary),
        vec![
            row("(none)", "accept", "monitor", "delivered unchanged", 1),
            row(
                "many-external",
                "rewrite",
                "monitor",
                "would rewrite; delivered unchanged",
                2
            ),
            row(
                "mass-external",
                "reject",
                "monitor",
                "would reject; delivered unchanged",
                1
            ),
        ]
    );
    assert_eq!(summary["totals"]["delivered_unchanged"], 4);
    assert_eq!(summary["totals"]["monitor_would_alter"], 3);
}

#[test]
fn text_output_lists_touched_messages_and_the_table_without_a_progress_bar_on_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("1.eml"), plain("a")).unwrap();
    std::fs::write(dir.path().join("2.eml"), six_external("b")).unwrap();
    let out = bccguard(
        &[
            "check",
            "--config",
            "base.toml",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.contains("1.eml"),
        "untouched messages are only counted: {text}"
    );
    assert!(
        text.contains("2.eml: rewritten - rule 'many-external' (rewrite, enforce); 6 visible, 6 outside; Message-ID <b@test>"),
        "{text}"
    );
    assert!(text.contains("Summary: 2 messages from 2 files"), "{text}");
    let table_row = text
        .lines()
        .find(|l| l.contains("many-external") && l.contains("enforce") && !l.contains("2.eml"))
        .unwrap_or_else(|| panic!("a table row for the rule: {text}"));
    assert!(
        table_row.contains(" 1 ") && table_row.ends_with("rewritten"),
        "{table_row}"
    );
    assert!(text.contains("Totals: 1 delivered unchanged"), "{text}");
    assert!(
        out.stderr.is_empty(),
        "no progress bar on a pipe: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unreadable_path_exits_2_after_checking_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("1.eml");
    std::fs::write(&good, six_external("a")).unwrap();
    let missing = dir.path().join("missing.mbox");
    let (code, messages, summary) = bulk_json(&[&missing, &good], &[]);
    assert_eq!(code, Some(2));
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["kind"], "input");
    assert_eq!(messages[1]["action"], "rewrite");
    assert_eq!(summary["input_errors"], 1);
    assert_eq!(summary["messages"], 1);

    // A config that does not load: the single-file error object, exit 2.
    let out = bccguard(
        &[
            "check",
            "--json",
            "--config",
            "no-such.toml",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "config");
}

/// 10,000 messages in one mbox, mixed as tools/gen-mbox.py mixes them: every message is seen
/// once and counted where it belongs.
#[test]
fn ten_thousand_message_mbox() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.mbox");
    let mut mbox = String::with_capacity(10_000 * 400);
    let (mut plain_n, mut six_n, mut twenty_n) = (0u64, 0u64, 0u64);
    for i in 0..10_000u32 {
        let id = format!("g{i}");
        let m = match i % 10 {
            0..=6 => {
                plain_n += 1;
                plain(&id)
            }
            7 | 8 => {
                six_n += 1;
                six_external(&id)
            }
            _ => {
                twenty_n += 1;
                twenty_external(&id)
            }
        };
        writeln!(mbox, "From ann@example.org Mon Nov  2 10:00:00 2026\n{m}").unwrap();
    }
    std::fs::write(&path, mbox).unwrap();
    let (code, messages, summary) = bulk_json(&[&path], &[]);
    assert_eq!(code, Some(0));
    assert_eq!(messages.len(), 10_000);
    assert_eq!(messages[9_999]["message_id"], "<g9999@test>");
    assert_eq!(summary["messages"], 10_000);
    assert_eq!(
        rows(&summary),
        vec![
            row(
                "(none)",
                "accept",
                "enforce",
                "delivered unchanged",
                plain_n
            ),
            row("many-external", "rewrite", "enforce", "rewritten", six_n),
            row(
                "mass-external",
                "reject",
                "enforce",
                "refused 550 5.7.1",
                twenty_n
            ),
        ]
    );
}

/// Bulk and single-file `check` say the same about each message, refusals included, whether
/// the messages come as files or packed into an mbox (mboxrd-quoted where a line says `From `).
#[test]
fn bulk_agrees_with_single_file_check_on_every_fixture() {
    let mut files: Vec<PathBuf> = ["tests/fixtures/check", "tests/e2e/messages"]
        .iter()
        .flat_map(|d| std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(d)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    let dir = tempfile::tempdir().unwrap();
    let mbox_path = dir.path().join("all.mbox");
    let mut mbox = Vec::new();
    for f in &files {
        mbox.extend_from_slice(b"From someone@example.org Mon Nov  2 10:00:00 2026\n");
        let raw = std::fs::read(f).unwrap();
        for line in raw.split_inclusive(|&b| b == b'\n') {
            let quotes = line.iter().take_while(|&&b| b == b'>').count();
            if line[quotes..].starts_with(b"From ") {
                mbox.push(b'>');
            }
            mbox.extend_from_slice(line);
        }
        if !raw.ends_with(b"\n") {
            mbox.push(b'\n');
        }
        mbox.push(b'\n');
    }
    std::fs::write(&mbox_path, mbox).unwrap();

    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let (_, as_files, _) = bulk_json(&paths, &[]);
    let (_, in_mbox, summary) = bulk_json(&[&mbox_path], &[]);
    assert_eq!(summary["messages"], files.len() as u64);
    for (i, f) in files.iter().enumerate() {
        let out = bccguard(
            &[
                "check",
                "--json",
                "--config",
                "base.toml",
                f.to_str().unwrap(),
            ],
            &[],
        );
        let single: Value = serde_json::from_slice(&out.stdout).unwrap();
        for bulk in [&as_files[i], &in_mbox[i]] {
            let mut bulk = bulk.clone();
            let obj = bulk.as_object_mut().unwrap();
            for extra in ["source", "index", "offset", "message_id"] {
                obj.remove(extra);
            }
            assert_eq!(bulk, single, "{}", f.display());
        }
    }
}
