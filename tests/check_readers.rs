//! `bccguard check --json` on what readers see (issue 13): calendar attendees in
//! `visible_attendees`, a bare CR refused the way `serve` refuses it (exit 2, 550 5.6.0), and
//! no phantom recipients tipping a message into a rewrite. Runs the built binary over stdin.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn check(stdin: &[u8]) -> Output {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/check");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bccguard"));
    cmd.current_dir(dir)
        .args(["check", "--json", "--config", "base.toml", "-"]);
    for (k, _) in std::env::vars() {
        if k.starts_with("BCCGUARD") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {} / {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn invitation_attendees_are_visible_and_listed() {
    let mut cal = String::from(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:x1\r\n",
    );
    cal.push_str("ORGANIZER:mailto:boss@example.org\r\n");
    for i in 0..8 {
        cal.push_str(&format!(
            "ATTENDEE;RSVP=TRUE:mailto:guest{i}@outside{i}.example\r\n"
        ));
    }
    cal.push_str("END:VEVENT\r\nEND:VCALENDAR\r\n");
    let raw = format!(
        "From: boss@example.org\r\nTo: guest0@outside0.example\r\nSubject: meeting\r\n\
         Content-Type: text/calendar; method=REQUEST\r\n\r\n{cal}"
    );
    let out = check(raw.as_bytes());
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    assert_eq!(v["visible_count"], 8);
    assert_eq!(v["visible_attendees"].as_array().unwrap().len(), 8);
    assert_eq!(v["visible_attendees"][3], "guest3@outside3.example");
    // 8 outside addresses: the shipped "many-external" rule (6 or more) applies.
    assert_eq!(v["rule"], "many-external");
}

#[test]
fn bare_cr_is_refused_like_serve_refuses_it() {
    for raw in [
        &b"From: a@example.org\rTo: x@outside.example\rSubject: mac\r\rbody\r"[..],
        b"From: a@example.org\r\nTo: x@outside.example,\ry@outside.example\r\n\r\nbody\r\n",
        b"From: a@example.org\r\nTo: x@outside.example\r\n\r\nbody\rmore\r\n",
    ] {
        let out = check(raw);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
        let v = json(&out);
        assert_eq!(v["kind"], "unreadable");
        let e = v["error"].as_str().unwrap();
        assert!(e.contains("550 5.6.0") && e.contains("bare CR"), "{e}");
    }
}

#[test]
fn name_words_do_not_tip_a_message_into_a_rewrite() {
    // Five colleagues outside, written Outlook-style "Last, First" without quotes: five
    // mailboxes. The old reader counted each surname as an extra outside "recipient" (10 > 6).
    let raw = b"From: a@example.org\r\nTo: Doe, John <j@one.example>, Roe, Rick <r@two.example>,\r\n \
                Poe, Pam <p@three.example>, Moe, Max <m@four.example>, Zoe, Zed <z@five.example>\r\n\
                Subject: x\r\n\r\nbody\r\n";
    let out = check(raw);
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    assert_eq!(v["visible_count"], 5, "{v}");
    assert_eq!(v["external_domains"], 5);
    assert_eq!(v["action"], "accept");
    assert_eq!(v["lenient_fields"][0], "To");
}

#[test]
fn trailing_dot_and_idn_forms_are_one_mailbox() {
    let raw =
        "From: a@example.org\r\nTo: p@ext.example., p@ext.example, q@xn--bcher-kva.example,\r\n \
               q@BÜCHER.example, r@EXAMPLE.ORG.\r\nSubject: x\r\n\r\nbody\r\n";
    let v = json(&check(raw.as_bytes()));
    assert_eq!(
        v["visible_recipients"],
        serde_json::json!(["p@ext.example", "q@bücher.example", "r@example.org"])
    );
    assert_eq!(v["visible_external"], 2);
    assert_eq!(v["external_domains"], 2);
}
