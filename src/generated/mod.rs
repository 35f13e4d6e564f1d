//! Mail the relay writes itself: notices to senders, delivery reports (RFC 3464), and the
//! Received trace field; plus the helpers they share (date, Message-ID, text made safe for a
//! header or a single line). Generated messages come from the null sender so they never bounce.

pub mod dsn;
pub mod notice;

use crate::message::Client;

/// `Date:` value for a message generated now (RFC 5322 format, UTC).
pub fn rfc5322_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 +0000".to_string())
}

/// A fresh `<random@host>` Message-ID.
pub fn new_message_id(hostname: &str) -> String {
    let n: u128 = rand::random();
    format!("<{n:032x}.bccguard@{}>", header_safe(hostname))
}

/// Text that can go into a header or a line of its own: no control characters, folds undone.
pub fn header_safe(text: &str) -> String {
    text.chars()
        .filter(|c| !matches!(c, '\r' | '\n'))
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The unfolded value of the first field named `name` in a header section, if any.
pub fn field_value(header: &[u8], name: &str) -> Option<String> {
    let h = crate::message::header::split(header).ok()?;
    let f = h.fields.iter().find(|f| f.name_is(name))?;
    Some(header_safe(&String::from_utf8_lossy(f.value)))
}

/// One line of printable ASCII: a DSN field must not break into new fields.
fn ascii_line(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                ' '
            }
        })
        .collect();
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// RFC 5321 4.4 trace field for this hop. No `for` clause: it would name a recipient.
pub fn received_field(client: &Client, hostname: &str) -> String {
    let helo = client
        .helo
        .as_deref()
        .map_or_else(|| "unknown".to_string(), ascii_word);
    format!(
        "Received: from {helo} ([{}])\r\n\tby {} (bccguard) with {} id {}.{};\r\n\t{}\r\n",
        client.peer.ip(),
        ascii_word(hostname),
        client.protocol,
        client.session_id,
        client.message_seq,
        rfc5322_now()
    )
}

/// Printable ASCII without spaces (a HELO name or host name in a trace field).
fn ascii_word(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_graphic()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_safe_unfolds_and_strips_controls() {
        assert_eq!(header_safe("a\r\n\tb\u{7}c"), "a b c");
        assert_eq!(ascii_line("a\r\nBcc: x\u{e9}"), "a Bcc: x");
    }

    #[test]
    fn received_field_cannot_be_broken_by_the_helo_name() {
        let client = Client {
            session_id: "s1".into(),
            peer: "192.0.2.1:25".parse().expect("addr"),
            helo: Some("evil\r\nBcc: x".into()),
            auth_user: None,
            protocol: "ESMTP",
            message_seq: 0,
        };
        let r = received_field(&client, "relay.example.org");
        assert!(r.starts_with("Received: from evilBcc:x ([192.0.2.1])\r\n\tby relay.example.org (bccguard) with ESMTP id s1.0;\r\n\t"));
        assert_eq!(r.matches("\r\n").count(), 3);
    }
}
