//! Delivery status notifications (RFC 3464) for split copies that failed: a multipart/report
//! with a human explanation, the machine-readable message/delivery-status part, and the original
//! header section as text/rfc822-headers.

use super::{ascii_line, header_safe, new_message_id, rfc5322_now};

/// A complete RFC 5322 message (CRLF line ends) reporting `failures` (recipient, upstream reply) to `sender`.
/// `original_header` is the failed message's header section, returned as `text/rfc822-headers`.
pub fn failure_report(
    reporting_host: &str,
    sender: &str,
    original_header: &[u8],
    failures: &[(String, String)],
) -> Vec<u8> {
    let host = header_safe(reporting_host);
    let boundary = format!("bccguard-report-{:032x}", rand::random::<u128>());
    let mut m = Vec::with_capacity(2048 + original_header.len());

    line(
        &mut m,
        &format!("From: \"Mail Delivery System\" <MAILER-DAEMON@{host}>"),
    );
    line(&mut m, &format!("To: <{}>", header_safe(sender)));
    line(&mut m, "Subject: Undelivered Mail Returned to Sender");
    line(&mut m, &format!("Date: {}", rfc5322_now()));
    line(&mut m, &format!("Message-ID: {}", new_message_id(&host)));
    line(&mut m, "Auto-Submitted: auto-replied");
    line(&mut m, "MIME-Version: 1.0");
    line(
        &mut m,
        &format!("Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\""),
    );
    line(&mut m, "");
    line(&mut m, "This is a MIME-encapsulated message.");
    line(&mut m, "");

    // Human part.
    line(&mut m, &format!("--{boundary}"));
    line(&mut m, "Content-Type: text/plain; charset=us-ascii");
    line(&mut m, "Content-Description: Notification");
    line(&mut m, "");
    line(&mut m, &format!("This is the mail relay at {host}."));
    line(&mut m, "");
    line(
        &mut m,
        "Your message was sent as separate copies, one per recipient, so that no recipient",
    );
    line(
        &mut m,
        "could see the others. The copies for the recipients below could not be",
    );
    line(
        &mut m,
        "delivered; every other copy was accepted for delivery.",
    );
    line(&mut m, "");
    for (rcpt, reply) in failures {
        line(
            &mut m,
            &format!("<{}>: {}", ascii_line(rcpt), ascii_line(reply)),
        );
    }
    line(&mut m, "");

    // Machine part.
    line(&mut m, &format!("--{boundary}"));
    line(&mut m, "Content-Type: message/delivery-status");
    line(&mut m, "Content-Description: Delivery report");
    line(&mut m, "");
    line(&mut m, &format!("Reporting-MTA: dns; {host}"));
    line(&mut m, &format!("Arrival-Date: {}", rfc5322_now()));
    for (rcpt, reply) in failures {
        line(&mut m, "");
        line(
            &mut m,
            &format!("Final-Recipient: rfc822; {}", ascii_line(rcpt)),
        );
        line(&mut m, "Action: failed");
        line(&mut m, &format!("Status: {}", status_of(reply)));
        line(
            &mut m,
            &format!("Diagnostic-Code: smtp; {}", ascii_line(reply)),
        );
    }
    line(&mut m, "");

    // The original header section.
    line(&mut m, &format!("--{boundary}"));
    line(&mut m, "Content-Type: text/rfc822-headers");
    line(&mut m, "Content-Description: Undelivered message headers");
    line(&mut m, "");
    m.extend_from_slice(&crlf_header(original_header));
    line(&mut m, "");
    line(&mut m, &format!("--{boundary}--"));
    m
}

fn line(m: &mut Vec<u8>, s: &str) {
    m.extend_from_slice(s.as_bytes());
    m.extend_from_slice(b"\r\n");
}

/// The enhanced status code (x.y.z) in an SMTP reply text like `550 5.1.1 No such user`;
/// derived from the reply code's class when the upstream gave none.
pub fn status_of(reply: &str) -> String {
    let mut words = reply.split_whitespace();
    let code = words.next().unwrap_or("");
    let class = match code.as_bytes().first() {
        Some(b'2') => '2',
        Some(b'4') => '4',
        _ => '5',
    };
    if let Some(esc) = words.next() {
        let parts: Vec<&str> = esc.split('.').collect();
        let numeric = parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        if numeric && parts[0].len() == 1 && matches!(parts[0], "2" | "4" | "5") {
            return esc.to_string();
        }
    }
    format!("{class}.0.0")
}

/// The header section with CRLF line ends and no trailing blank line, ending in one CRLF.
fn crlf_header(h: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(h.len() + 64);
    for (i, &b) in h.iter().enumerate() {
        match b {
            b'\n' if i == 0 || h[i - 1] != b'\r' => out.extend_from_slice(b"\r\n"),
            b'\r' if h.get(i + 1) != Some(&b'\n') => out.extend_from_slice(b"\r\n"),
            _ => out.push(b),
        }
    }
    while out.ends_with(b"\r\n\r\n") {
        out.truncate(out.len() - 2);
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_from_reply() {
        assert_eq!(status_of("550 5.1.1 No such user"), "5.1.1");
        assert_eq!(status_of("451 4.4.1 Upstream unavailable"), "4.4.1");
        assert_eq!(status_of("554 Transaction failed"), "5.0.0");
        assert_eq!(status_of("452 too many"), "4.0.0");
        assert_eq!(status_of("550 9.9.9 odd"), "5.0.0");
    }

    #[test]
    fn report_structure() {
        let hdr = b"From: a@example.org\nSubject: Hi\n";
        let failures = vec![
            ("x@y.net".to_string(), "550 5.1.1 No such user".to_string()),
            (
                "z@w.net".to_string(),
                "451 4.4.2 Timeout\r\nBcc: injected".to_string(),
            ),
        ];
        let r = failure_report("relay.example.org", "a@example.org", hdr, &failures);
        let s = String::from_utf8(r).unwrap();
        // Every line break is CRLF.
        assert!(!s.replace("\r\n", "").contains('\n') && !s.replace("\r\n", "").contains('\r'));
        assert!(
            s.starts_with("From: \"Mail Delivery System\" <MAILER-DAEMON@relay.example.org>\r\n")
        );
        assert!(s.contains("\r\nTo: <a@example.org>\r\n"));
        assert!(s.contains("\r\nAuto-Submitted: auto-replied\r\n"));
        assert!(s.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        let boundary = s
            .split("boundary=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(s.matches(&format!("--{boundary}\r\n")).count(), 3);
        assert!(s.ends_with(&format!("--{boundary}--\r\n")));
        assert!(s.contains("\r\nReporting-MTA: dns; relay.example.org\r\n"));
        assert!(s.contains(
            "\r\nFinal-Recipient: rfc822; x@y.net\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 No such user\r\n"
        ));
        assert!(s.contains(
            "Status: 4.4.2\r\nDiagnostic-Code: smtp; 451 4.4.2 Timeout Bcc: injected\r\n"
        ));
        assert!(!s.contains("\r\nBcc: injected"));
        assert!(s.contains("Content-Type: text/rfc822-headers\r\n"));
        assert!(s.contains("\r\n\r\nFrom: a@example.org\r\nSubject: Hi\r\n\r\n--"));
        // Parses as a multipart/report with three parts.
        let msg = mail_parser::MessageParser::default()
            .parse(s.as_bytes())
            .unwrap();
        assert_eq!(msg.parts.len(), 4);
    }
}
