//! The split API for calendar invitations (`bccguard::policy::calendar`): each invitee's copy
//! lists the organizer and that invitee only, is valid RFC 5545 (checked by Python's independent
//! `icalendar` parser: tests/calendar/check_ics.py), keeps the UID and METHOD so updates and
//! cancellations still apply, and splices back into the raw message in the part's own transfer
//! encoding.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use bccguard::policy::calendar::{
    attendees, calendar_parts, copy_for_invitee, encode_body, for_invitee, organizer,
    TransferEncoding,
};
use bccguard::policy::visible::find_visible;
use serde_json::{json, Value};

const UID: &str = "040000008200E00074C5B7101A82E0080000000010A1B2C3D4E5F6@example.org";

fn invitees() -> Vec<String> {
    (1..=18)
        .map(|i| format!("victim{i:02}@customer{}.example", i % 7))
        .collect()
}

/// An Outlook-like invitation: long folded ATTENDEE lines with quoted CNs, organizer apart.
fn invitation(method: &str, sequence: u32) -> String {
    let mut lines = vec![
        "BEGIN:VCALENDAR".to_string(),
        "PRODID:-//Microsoft Corporation//Outlook 16.0 MIMEDIR//EN".into(),
        "VERSION:2.0".into(),
        format!("METHOD:{method}"),
        "BEGIN:VEVENT".into(),
        format!("UID:{UID}"),
        format!("SEQUENCE:{sequence}"),
        "DTSTAMP:20260105T090000Z".into(),
        "DTSTART:20260112T100000Z".into(),
        "DTEND:20260112T110000Z".into(),
        "SUMMARY;LANGUAGE=de-DE:Quartalsbesprechung \u{fc}ber die Zahlen".into(),
        "ORGANIZER;CN=\"Schmidt, Eva\":mailto:eva.schmidt@example.org".into(),
    ];
    for (i, a) in invitees().iter().enumerate() {
        lines.push(format!(
            "ATTENDEE;CN=\"Kunde {i}, Vorname mit einem sehr langen Namen\";ROLE=REQ-PARTICIPANT;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:{a}"
        ));
    }
    lines.extend(["END:VEVENT".into(), "END:VCALENDAR".into()]);
    // Fold the way senders do (at 75 octets), so the splitter must unfold first.
    let mut out = String::new();
    for l in lines {
        let mut rest = l.as_str();
        let mut first = true;
        while rest.len() > 74 {
            let mut cut = 74;
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            out.push_str(if first { "" } else { " " });
            out.push_str(&rest[..cut]);
            out.push_str("\r\n");
            rest = &rest[cut..];
            first = false;
        }
        out.push_str(if first { "" } else { " " });
        out.push_str(rest);
        out.push_str("\r\n");
    }
    out
}

fn message(cal: &str, encoding: TransferEncoding) -> Vec<u8> {
    let cte = match encoding {
        TransferEncoding::Identity => "7bit",
        TransferEncoding::Base64 => "base64",
        TransferEncoding::QuotedPrintable => "quoted-printable",
    };
    let body = String::from_utf8(encode_body(cal, encoding)).unwrap();
    format!(
        "From: eva.schmidt@example.org\r\nTo: victim01@customer1.example\r\nSubject: Einladung\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nEinladung\r\n\
         --b1\r\nContent-Type: text/calendar; method=REQUEST; charset=utf-8\r\n\
         Content-Transfer-Encoding: {cte}\r\n\r\n{body}\r\n--b1--\r\n"
    )
    .into_bytes()
}

#[test]
fn each_copy_keeps_organizer_and_its_invitee_only() {
    let cal = invitation("REQUEST", 0);
    assert_eq!(attendees(&cal), invitees());
    for who in invitees() {
        let copy = for_invitee(&cal, &who);
        assert_eq!(attendees(&copy), std::slice::from_ref(&who));
        assert_eq!(organizer(&copy).as_deref(), Some("eva.schmidt@example.org"));
        assert!(copy.contains(&format!("UID:{}", &UID[..60])), "{copy}");
        for other in invitees().iter().filter(|o| **o != who) {
            assert!(!copy.replace("\r\n ", "").contains(other.as_str()));
        }
        for line in copy.split("\r\n") {
            assert!(line.len() <= 75, "{line:?}");
        }
    }
}

#[test]
fn copies_splice_back_in_every_transfer_encoding() {
    let cal = invitation("REQUEST", 0);
    for enc in [
        TransferEncoding::Identity,
        TransferEncoding::QuotedPrintable,
        TransferEncoding::Base64,
    ] {
        let raw = message(&cal, enc);
        let v = find_visible(&raw).unwrap();
        assert_eq!(v.attendees.len(), 18, "{enc:?}");
        assert_eq!(v.addresses.len(), 18, "{enc:?}: To is one of the attendees");
        let parts = calendar_parts(&raw);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].encoding, enc);
        assert_eq!(parts[0].method, "REQUEST");
        let who = "victim07@customer0.example";
        let copy = copy_for_invitee(&raw, who);
        let v = find_visible(&copy).unwrap();
        assert_eq!(v.attendees, [who], "{enc:?}");
        // Only the calendar part changed, and it ends the way the original did.
        assert!(copy.starts_with(&raw[..parts[0].body.start]));
        assert!(copy.ends_with(&raw[parts[0].body.end..]));
        let new = calendar_parts(&copy);
        assert_eq!(new[0].text, for_invitee(&parts[0].text, who), "{enc:?}");
        let body = &copy[new[0].body.clone()];
        assert!(!body.ends_with(b"\r\n\r\n"), "{enc:?}: no blank line grows");
        // A message without invitation passes through unchanged.
        let plain = b"From: a@x\r\nTo: b@y\r\n\r\nhello\r\n";
        assert_eq!(copy_for_invitee(plain, who), plain);
    }
}

#[test]
fn icalendar_reads_every_copy_and_updates_match_by_uid() {
    let mut cases = Vec::new();
    for (method, seq) in [("REQUEST", 0), ("REQUEST", 1), ("CANCEL", 2)] {
        let cal = invitation(method, seq);
        for who in invitees() {
            cases.push(json!({"invitee": who, "text": for_invitee(&cal, &who), "method": method}));
        }
    }
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/calendar/check_ics.py");
    let mut child = Command::new(python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(Value::Array(cases.clone()).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    if let Some(why) = result.get("unavailable") {
        // CI installs python3-icalendar (tests/install-deps); elsewhere say loudly what is skipped.
        eprintln!("SKIPPED: Python icalendar not available ({why}); run tests/install-deps");
        return;
    }
    let result = result.as_array().unwrap();
    assert_eq!(result.len(), cases.len());
    for (r, c) in result.iter().zip(&cases) {
        let who = c["invitee"].as_str().unwrap();
        assert_eq!(r["attendees"], json!([who]), "{r}");
        assert_eq!(r["organizers"], json!(["eva.schmidt@example.org"]), "{r}");
        assert_eq!(
            r["uids"],
            json!([UID]),
            "same UID, so the copy updates/cancels the same event: {r}"
        );
        assert_eq!(r["method"], c["method"], "{r}");
        assert!(r["max_octets"].as_u64().unwrap() <= 75, "{r}");
        assert_eq!(r["crlf_only"], json!(true), "{r}");
    }
}
