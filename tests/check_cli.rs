//! `bccguard check` and `bccguard config check`, run as the built binary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/check")
}

fn bccguard(args: &[&str], envs: &[(&str, &str)], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bccguard"));
    cmd.current_dir(fixtures()).args(args);
    // Overrides from the caller's environment must not change what the tests see.
    for (k, _) in std::env::vars() {
        if k.starts_with("BCCGUARD") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(envs.iter().copied());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn check_json(args: &[&str], envs: &[(&str, &str)]) -> Value {
    let mut all = vec!["check", "--json", "--config", "base.toml"];
    all.extend_from_slice(args);
    let out = bccguard(&all, envs, None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "one JSON object on one line: {stdout}"
    );
    serde_json::from_str(&stdout).unwrap()
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[test]
fn json_decision_has_the_contract_fields() {
    let v = check_json(&["many-external.eml"], &[]);
    assert_eq!(v["action"], "rewrite");
    assert_eq!(v["mode"], "enforce");
    assert_eq!(v["rule"], "many-external");
    assert_eq!(
        strings(&v["visible_recipients"]),
        [
            "one@client1.net",
            "two@client2.net",
            "three@client3.net",
            "four@client4.net",
            "five@client5.net",
            "six@client1.net",
            "colleague@example.org"
        ]
    );
    assert_eq!(v["visible_count"], 7);
    assert_eq!(v["visible_external"], 6);
    assert_eq!(v["external_domains"], 5);
    assert_eq!(v["bcc_header_stripped"], true);
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains("7 recipients") && reason.contains("'many-external'"),
        "{reason}"
    );
    // Without --rcpt the envelope is the visible recipients.
    assert_eq!(v["envelope_recipients"], v["visible_recipients"]);
    assert_eq!(v["sender"], "alice@example.org");
    assert!(v["would_be_delivered_as"]
        .as_str()
        .unwrap()
        .contains("undisclosed-recipients:;"));
    assert_eq!(v["notify_sender"], true);
    assert!(v["smtp_reply"].is_null());
}

#[test]
fn json_accept_has_null_rule() {
    let v = check_json(&["small.eml"], &[]);
    assert_eq!(v["action"], "accept");
    assert!(v["rule"].is_null());
    assert_eq!(v["visible_count"], 2);
    assert_eq!(v["visible_external"], 1);
    assert_eq!(v["bcc_header_stripped"], false);
}

#[test]
fn from_and_rcpt_set_the_envelope() {
    let v = check_json(&["--from", "press@example.org", "many-external.eml"], &[]);
    assert_eq!(
        (v["action"].as_str(), v["rule"].as_str()),
        (Some("accept"), Some("press-office"))
    );
    let v = check_json(
        &[
            "--rcpt",
            "x@y.net",
            "--rcpt",
            "z@w.net",
            "many-external.eml",
        ],
        &[],
    );
    assert_eq!(strings(&v["envelope_recipients"]), ["x@y.net", "z@w.net"]);
    assert!(v["would_be_delivered_as"]
        .as_str()
        .unwrap()
        .contains("2 envelope recipients"));
}

#[test]
fn environment_overrides_apply_and_monitor_mode_delivers_unchanged() {
    let v = check_json(
        &["many-external.eml"],
        &[("BCCGUARD__POLICY__MODE", "monitor")],
    );
    assert_eq!(v["mode"], "monitor");
    assert_eq!(v["action"], "rewrite");
    assert_eq!(v["effective_action"], "accept");
    assert_eq!(v["notify_sender"], false);
}

#[test]
fn reject_shows_the_smtp_reply() {
    // 25 outside recipients, generated: the mass rule (20) rejects with its default text.
    let to: Vec<String> = (0..25).map(|i| format!("p{i}@c{i}.net")).collect();
    let raw = format!(
        "From: alice@example.org\r\nTo: {}\r\nSubject: x\r\n\r\nhi\r\n",
        to.join(",\r\n ")
    );
    let out = bccguard(
        &["check", "--json", "--config", "base.toml", "-"],
        &[],
        Some(raw.as_bytes()),
    );
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["action"], "reject");
    assert_eq!(v["visible_count"], 25);
    let reply = v["smtp_reply"].as_str().unwrap();
    assert!(
        reply.starts_with("550 5.7.1 Message not sent:") && reply.contains("25 outside"),
        "{reply}"
    );
}

#[test]
fn human_output_explains_the_decision() {
    let out = bccguard(
        &["check", "--config", "base.toml", "many-external.eml"],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("Decision:  rewrite (rule 'many-external'; enforce mode)\n"),
        "{text}"
    );
    assert!(
        text.contains("Reason:    The message shows 7 recipients"),
        "{text}"
    );
    assert!(
        text.contains("  colleague@example.org  [internal]"),
        "{text}"
    );
    assert!(text.contains("Bcc field: present"), "{text}");
}

#[test]
fn split_reports_one_copy_per_envelope_recipient() {
    let out = bccguard(
        &[
            "check",
            "--json",
            "--config",
            "split.toml",
            "--rcpt",
            "a@x.net",
            "--rcpt",
            "b@y.net",
            "--rcpt",
            "c@z.net",
            "many-external.eml",
        ],
        &[],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["action"], "split");
    assert!(v["would_be_delivered_as"]
        .as_str()
        .unwrap()
        .starts_with("3 separate copies"));
}

#[test]
fn dkim_signed_message_is_reported_as_refused() {
    let v = check_json(&["dkim-signed.eml"], &[]);
    assert_eq!(v["action"], "rewrite");
    assert!(v["dkim"].as_str().unwrap().contains("d=example.org s=mail"));
    assert!(v["smtp_reply"]
        .as_str()
        .unwrap()
        .starts_with("550 5.7.1 Message not sent: it is DKIM-signed"));
    assert_eq!(v["notify_sender"], false);
    let v = check_json(
        &["dkim-signed.eml"],
        &[("BCCGUARD__POLICY__DKIM__ON_REWRITE", "forward")],
    );
    assert!(v["smtp_reply"].is_null());
    assert!(v["dkim"].as_str().unwrap().contains("broken"));
}

#[test]
fn unreadable_input_exits_2() {
    let out = bccguard(
        &["check", "--json", "--config", "base.toml", "unreadable.eml"],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "unreadable");
    assert!(v["error"].as_str().unwrap().contains("5.6.0"));

    let out = bccguard(
        &["check", "--config", "base.toml", "no-such-file.eml"],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-file.eml"));

    let out = bccguard(
        &["check", "--json", "--config", "no-such.toml", "small.eml"],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "config");

    let out = bccguard(
        &["check", "--config", "bad-rule.toml", "small.eml"],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'never'"));
}

#[test]
fn config_check_accepts_good_and_names_the_problem_in_bad() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/bccguard.toml");
    let out = bccguard(
        &["config", "check", "--config", shipped.to_str().unwrap()],
        &[],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(&format!("config OK: {}\n", shipped.display())),
        "{text}"
    );
    for needle in [
        "Mode: enforce",
        "example.org",
        "'press-office'",
        "'mass-external'",
        "'many-external'",
        "DKIM",
    ] {
        assert!(text.contains(needle), "missing {needle}: {text}");
    }

    let out = bccguard(&["config", "check", "--config", "bad-rule.toml"], &[], None);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        // Rules count from 1 in messages; the place is the rule's [[policy.rule]] line.
        err.contains("bad-rule.toml:17:")
            && err.contains("policy.rule[2]")
            && err.contains("'never'"),
        "{err}"
    );

    // resign with a key file that does not exist: the key is loaded at check time.
    let out = bccguard(
        &["config", "check", "--config", "base.toml"],
        &[
            ("BCCGUARD__POLICY__DKIM__ON_REWRITE", "resign"),
            ("BCCGUARD__POLICY__DKIM__PRIVATE_KEY", "missing-key.pem"),
            ("BCCGUARD__POLICY__DKIM__DOMAIN", "example.org"),
            ("BCCGUARD__POLICY__DKIM__SELECTOR", "relay"),
        ],
        None,
    );
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("policy.dkim.private_key") && err.contains("missing-key.pem"),
        "{err}"
    );

    let out = bccguard(
        &["config", "check", "--config", "base.toml"],
        &[
            ("BCCGUARD__POLICY__DKIM__ON_REWRITE", "resign"),
            ("BCCGUARD__POLICY__DKIM__PRIVATE_KEY", "dkim-ed25519.pem"),
            ("BCCGUARD__POLICY__DKIM__DOMAIN", "example.org"),
            ("BCCGUARD__POLICY__DKIM__SELECTOR", "relay"),
        ],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("re-sign the altered message as d=example.org s=relay"));
}

/// `check` on stdin, with --json; returns the exit code and the JSON object.
fn check_stdin(input: &[u8], envs: &[(&str, &str)]) -> (Option<i32>, Value) {
    let out = bccguard(
        &["check", "--json", "--config", "base.toml", "-"],
        envs,
        Some(input),
    );
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code(), v)
}

#[test]
fn refuses_what_serve_refuses_at_data_with_the_same_reply() {
    let external = "To: a@p1.example.net, b@p2.example.net, c@p3.example.net,\r\n d@p4.example.net, e@p5.example.net, f@p6.example.net\r\n";
    let good = format!("From: alice@example.org\r\n{external}Subject: x\r\n\r\nhi\r\n");
    // What serve says to these bytes in DATA (src/smtp/data.rs), word for word.
    let bare_cr = "550 5.6.0 Message refused: it contains a carriage return without line feed (bare CR); lines must end in CRLF";
    let cases: [(String, &str); 4] = [
        // A lone CR between addresses: readers that break the line there show more mailboxes.
        (good.replacen(",\r\n d@", ",\r d@", 1), bare_cr),
        // CR-only line ends, as saved by old Mac tools.
        (good.replace("\r\n", "\r"), bare_cr),
        (good.replace("hi\r\n", "hi\r"), bare_cr),
        (
            good.replace("hi", &"x".repeat(1200)),
            "550 5.6.0 Message refused: a line is longer than 1000 octets (RFC 5321 limit)",
        ),
    ];
    for (input, reply) in cases {
        let (code, v) = check_stdin(input.as_bytes(), &[]);
        assert_eq!(code, Some(2), "{input:?}: {v}");
        assert_eq!(v["kind"], "unreadable", "{input:?}");
        assert_eq!(v["smtp_reply"], reply, "{input:?}");
    }

    let (code, v) = check_stdin(
        good.as_bytes(),
        &[("BCCGUARD__SERVER__MAX_MESSAGE_SIZE", "100")],
    );
    assert_eq!(code, Some(2));
    assert_eq!(v["kind"], "too_big");
    assert_eq!(
        v["smtp_reply"],
        "552 5.3.4 Message refused: it is larger than the limit of 100 bytes"
    );

    // Line ends as a client sends them: an LF-only file is read as CRLF, same decision; a
    // 998-octet line (after a leading dot, which the client stuffs) is still within the limit.
    let within = good.replace("hi", &format!(".{}", "y".repeat(997)));
    for input in [good.clone(), good.replace("\r\n", "\n"), within] {
        let (code, v) = check_stdin(input.as_bytes(), &[]);
        assert_eq!(code, Some(0), "{input:?}: {v}");
        assert_eq!(v["action"], "rewrite", "{input:?}");
        assert_eq!(v["visible_count"], 6);
    }
}
