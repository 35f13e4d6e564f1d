//! The short message that tells a sender their message went out altered (rule `notify_sender`).
//! A notice names the original Subject and Message-ID and why; never the recipients.

use super::{field_value, header_safe, new_message_id, rfc5322_now};
use crate::config::Action;
use crate::policy::Decision;

pub fn sender_notice(
    hostname: &str,
    sender: &str,
    d: &Decision,
    original_header: &[u8],
) -> Vec<u8> {
    let host = header_safe(hostname);
    let subject = field_value(original_header, "Subject").filter(|s| !s.is_empty());
    let msgid = field_value(original_header, "Message-ID").filter(|s| !s.is_empty());
    // A notice from the sender's language's template (policy::templates) replaces the built-in text.
    if let Some((title, text)) = &d.org.notice {
        return templated_notice(&host, sender, title, text, msgid.as_deref());
    }
    let (title, what) = match d.action {
        Action::Split => (
            "Your message was sent as separate copies, one per recipient",
            "the relay sent each recipient a separate copy addressed to them alone,\r\n\
             so no recipient can see who else received it.",
        ),
        _ => (
            "Your message was sent with recipients hidden",
            "the relay removed its To and Cc lines before sending it on, so no\r\n\
             recipient can see who else received it.",
        ),
    };
    let mut m = String::with_capacity(1024);
    m.push_str(&format!("From: \"Mail relay\" <MAILER-DAEMON@{host}>\r\n"));
    m.push_str(&format!("To: <{}>\r\n", header_safe(sender)));
    m.push_str(&format!("Subject: {title}\r\n"));
    m.push_str(&format!("Date: {}\r\n", rfc5322_now()));
    m.push_str(&format!("Message-ID: {}\r\n", new_message_id(&host)));
    if let Some(id) = &msgid {
        m.push_str(&format!("In-Reply-To: {id}\r\nReferences: {id}\r\n"));
    }
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    let mut body = String::with_capacity(512);
    body.push_str(&format!("This is the mail relay at {host}.\r\n\r\n"));
    body.push_str("Your message\r\n");
    body.push_str(&format!(
        "  Subject: {}\r\n",
        subject.as_deref().unwrap_or("(none)")
    ));
    if let Some(id) = &msgid {
        body.push_str(&format!("  Message-ID: {id}\r\n"));
    }
    body.push_str(&format!(
        "was delivered to all its recipients, but {what}\r\n\r\n"
    ));
    body.push_str(&format!("Why: {}\r\n", header_safe(&d.reason)));
    if let Some(rule) = &d.rule {
        body.push_str(&format!("Rule: {}\r\n", header_safe(rule)));
    }
    body.push_str(
        "\r\nNext time, put recipients who should not see each other in Bcc.\r\n\
         You do not need to send the message again.\r\n",
    );
    let cte = if body.is_ascii() { "7bit" } else { "8bit" };
    m.push_str(&format!("Content-Transfer-Encoding: {cte}\r\n\r\n"));
    m.push_str(&body);
    m.into_bytes()
}

/// The notice with a templated Subject and body (body lines get CRLF ends).
fn templated_notice(
    host: &str,
    sender: &str,
    title: &str,
    text: &str,
    msgid: Option<&str>,
) -> Vec<u8> {
    let mut m = String::with_capacity(1024);
    m.push_str(&format!("From: \"Mail relay\" <MAILER-DAEMON@{host}>\r\n"));
    m.push_str(&format!("To: <{}>\r\n", header_safe(sender)));
    m.push_str(&format!("Subject: {}\r\n", header_safe(title)));
    m.push_str(&format!("Date: {}\r\n", rfc5322_now()));
    m.push_str(&format!("Message-ID: {}\r\n", new_message_id(host)));
    if let Some(id) = msgid {
        m.push_str(&format!("In-Reply-To: {id}\r\nReferences: {id}\r\n"));
    }
    m.push_str("Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n");
    m.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    let body: String = text
        .lines()
        .map(|l| format!("{}\r\n", l.trim_end_matches('\r')))
        .collect();
    let cte = if body.is_ascii() { "7bit" } else { "8bit" };
    m.push_str(&format!("Content-Transfer-Encoding: {cte}\r\n\r\n"));
    m.push_str(&body);
    m.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notice_names_subject_and_id_but_no_recipient() {
        let d = Decision {
            action: Action::Rewrite,
            mode: crate::config::Mode::Enforce,
            rule: Some("many".into()),
            reason: "The message shows 8 recipients (8 outside example.org, 3 domains) to each other; rule 'many' (6 or more outside addresses) hides them.".into(),
            visible: ["secret@client.net"].into_iter().collect(),
            visible_external: 8,
            external_domains: 3,
            bcc_header_stripped: false,
            reject_text: None,
            notify_sender: true,
            not_counted: Default::default(),
            lenient_fields: vec![],
            org: Default::default(),
            visible_attendees: vec![],
            exempted_by: None,
        };
        let hdr = b"From: a@example.org\r\nTo: secret@client.net\r\nSubject: Quarterly\r\n numbers\r\nMessage-ID: <m1@example.org>\r\n\r\n";
        let n = String::from_utf8(sender_notice("relay.example.org", "a@example.org", &d, hdr))
            .unwrap();
        assert!(
            n.contains("Subject: Your message was sent with recipients hidden\r\n"),
            "{n}"
        );
        assert!(n.contains("From: \"Mail relay\" <MAILER-DAEMON@relay.example.org>\r\n"));
        assert!(n.contains("To: <a@example.org>\r\n"));
        assert!(n.contains("Auto-Submitted: auto-replied\r\n"));
        assert!(n.contains("In-Reply-To: <m1@example.org>\r\n"));
        assert!(n.contains("  Subject: Quarterly numbers\r\n"));
        assert!(n.contains("rule 'many'"));
        assert!(!n.contains("secret@client.net"));
        assert!(n.contains("\r\nDate: ") && n.contains("\r\nMessage-ID: <"));
        // Strict CRLF throughout.
        assert!(!n.replace("\r\n", "").contains('\n'));
    }
}
