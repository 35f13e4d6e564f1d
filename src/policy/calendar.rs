//! Calendar invitations (SPEC section 2): a `text/calendar` part with a `METHOD` (inline, in
//! `multipart/alternative`, or an `.ics` attachment; any transfer encoding) is shown by calendar
//! clients to every invitee with its whole ATTENDEE list, so its attendees are visible
//! recipients. ORGANIZER is the sending side, like `From`, and is not counted.
//!
//! Also the API the rewrite stage needs to split an invitation: [`calendar_parts`] locates each
//! part (byte range of its encoded body in the raw message, transfer encoding, decoded text),
//! [`for_invitee`] cuts the iCalendar text down to the organizer and one attendee, and
//! [`encode_body`] re-encodes it for splicing back over that byte range.

use std::ops::Range;

use base64::Engine;
use mail_parser::{MessageParser, MimeHeaders, PartType};

use super::address::parse_address_list;

/// Content-Transfer-Encoding of a calendar part's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferEncoding {
    /// 7bit, 8bit, binary or none given: the body is the text.
    Identity,
    QuotedPrintable,
    Base64,
}

/// One calendar part of the top-level message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarPart {
    /// The encoded body in the raw message (after the part's blank line, up to the CRLF that
    /// precedes the next boundary, or the end of the message for a single-part message).
    pub body: Range<usize>,
    pub encoding: TransferEncoding,
    /// The body decoded (UTF-8; invalid sequences replaced).
    pub text: String,
    /// The calendar's METHOD (upper-cased), e.g. `REQUEST` or `CANCEL`: the VCALENDAR's own
    /// property, else the Content-Type `method` parameter.
    pub method: String,
}

/// The MIME parser gave up on the message's structure, so nobody can say which calendar
/// parts it has: the caller refuses the message rather than count without them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("its MIME structure cannot be read")]
pub struct MimeUnreadable;

/// Every calendar part with a METHOD in the message's own MIME tree (never inside an attached
/// `message/rfc822`), in message order.
pub fn try_calendar_parts(raw: &[u8]) -> Result<Vec<CalendarPart>, MimeUnreadable> {
    // mail-parser 0.11.9 has a debug_assert! that peer bytes can reach (a part id it cannot
    // find); in a debug build that panics. Contain it: the message is refused, not the process.
    std::panic::catch_unwind(|| scan_parts(raw)).map_err(|_| MimeUnreadable)
}

/// [`try_calendar_parts`] for callers that already know the message is readable (the rewrite
/// stage after the finder accepted it): an unreadable structure yields no parts.
pub fn calendar_parts(raw: &[u8]) -> Vec<CalendarPart> {
    try_calendar_parts(raw).unwrap_or_default()
}

fn scan_parts(raw: &[u8]) -> Vec<CalendarPart> {
    // MIME fields only: the others are skipped, not parsed. A header showing millions of
    // addresses would otherwise be parsed a second time into mail-parser's own structures
    // (about a hundred bytes an address; issue 11 item 4).
    let parser = MessageParser::new()
        .with_mime_headers()
        .default_header_ignore();
    let Some(msg) = parser.parse(raw) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for part in &msg.parts {
        // Nested messages are parsed into their own `Message`: their parts are not in this
        // list, so an attached forwarded invitation is not counted (it is not this mail's).
        if matches!(part.body, PartType::Multipart(_) | PartType::Message(_)) {
            continue;
        }
        if !is_calendar(part) {
            continue;
        }
        let (start, end) = (part.offset_body as usize, part.offset_end as usize);
        let Some(body) = raw.get(start..end) else {
            continue;
        };
        let encoding = match part
            .content_transfer_encoding()
            .map(|e| e.trim().to_ascii_lowercase())
            .as_deref()
        {
            Some("base64") => TransferEncoding::Base64,
            Some("quoted-printable") => TransferEncoding::QuotedPrintable,
            _ => TransferEncoding::Identity,
        };
        let text = String::from_utf8_lossy(&decode_body(body, encoding)).into_owned();
        // Either place marks a scheduling message; clients act on both.
        let param = part
            .content_type()
            .and_then(|ct| ct.attribute("method"))
            .map(|m| m.trim().to_ascii_uppercase())
            .filter(|m| !m.is_empty());
        let Some(method) = method(&text).or(param) else {
            continue;
        };
        out.push(CalendarPart {
            body: start..end,
            encoding,
            text,
            method,
        });
    }
    out
}

fn is_calendar(part: &mail_parser::MessagePart<'_>) -> bool {
    let by_type = part.content_type().is_some_and(|ct| {
        let sub = ct.subtype().unwrap_or_default();
        (ct.ctype().eq_ignore_ascii_case("text") && sub.eq_ignore_ascii_case("calendar"))
            || (ct.ctype().eq_ignore_ascii_case("application")
                && (sub.eq_ignore_ascii_case("ics") || sub.eq_ignore_ascii_case("calendar")))
    });
    let by_name = part.attachment_name().is_some_and(|n| {
        let n = n.trim().to_ascii_lowercase();
        n.ends_with(".ics") || n.ends_with(".vcs")
    });
    by_type || by_name
}

fn decode_body(body: &[u8], encoding: TransferEncoding) -> Vec<u8> {
    match encoding {
        TransferEncoding::Identity => body.to_vec(),
        TransferEncoding::Base64 => super::rfc2047::lenient_base64(body).unwrap_or_default(),
        TransferEncoding::QuotedPrintable => decode_qp(body),
    }
}

fn decode_qp(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i] == b'=' {
            let rest = &body[i + 1..];
            if rest.starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            if rest.starts_with(b"\n") {
                i += 2;
                continue;
            }
            if rest.len() >= 2 && rest[0].is_ascii_hexdigit() && rest[1].is_ascii_hexdigit() {
                let hex = [rest[0], rest[1]];
                if let Some(b) = std::str::from_utf8(&hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(body[i]);
        i += 1;
    }
    out
}

/// Encodes calendar text for a part with `encoding` (base64 lines of 76, quoted-printable
/// with soft breaks), ending in CRLF, ready to replace [`CalendarPart::body`].
pub fn encode_body(text: &str, encoding: TransferEncoding) -> Vec<u8> {
    match encoding {
        TransferEncoding::Identity => text.as_bytes().to_vec(),
        TransferEncoding::Base64 => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
            let mut out = Vec::with_capacity(b64.len() + b64.len() / 38);
            for chunk in b64.as_bytes().chunks(76) {
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out
        }
        TransferEncoding::QuotedPrintable => encode_qp(text.as_bytes()),
    }
}

fn encode_qp(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 8);
    let mut col = 0;
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
            col = 0;
            i += 2;
            continue;
        }
        let b = data[i];
        let next_is_eol = data[i + 1..].starts_with(b"\r\n") || i + 1 == data.len();
        let literal =
            (b == b' ' || b == b'\t') && !next_is_eol || (b.is_ascii_graphic() && b != b'=');
        let piece_len = if literal { 1 } else { 3 };
        if col + piece_len > 75 {
            out.extend_from_slice(b"=\r\n");
            col = 0;
        }
        if literal {
            out.push(b);
        } else {
            out.extend_from_slice(format!("={b:02X}").as_bytes());
        }
        col += piece_len;
        i += 1;
    }
    out
}

/// The bytes that replace `part.body` when its calendar text becomes `text`: encoded like the
/// original, and ending like it (in a multipart body the CRLF before the next boundary belongs
/// to the boundary, so the range does not end in one and the replacement must not either).
pub fn replacement_body(raw: &[u8], part: &CalendarPart, text: &str) -> Vec<u8> {
    let mut body = encode_body(text, part.encoding);
    let original_ends_in_newline = raw
        .get(part.body.clone())
        .is_some_and(|b| b.ends_with(b"\n"));
    if !original_ends_in_newline {
        while body.ends_with(b"\r\n") {
            body.truncate(body.len() - 2);
        }
    }
    body
}

/// The whole message as `invitee`'s split copy should carry it: every calendar part cut down to
/// the organizer and that invitee ([`for_invitee`]), every other byte unchanged. Returns the
/// message unchanged when it has no calendar part.
pub fn copy_for_invitee(raw: &[u8], invitee: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut at = 0;
    for part in calendar_parts(raw) {
        out.extend_from_slice(&raw[at..part.body.start]);
        out.extend_from_slice(&replacement_body(
            raw,
            &part,
            &for_invitee(&part.text, invitee),
        ));
        at = part.body.end;
    }
    out.extend_from_slice(&raw[at..]);
    out
}

/// One unfolded content line: `NAME;PARAM=..:VALUE`.
#[derive(Debug)]
struct ContentLine<'a> {
    name: String,
    params: Vec<(String, Vec<String>)>,
    value: &'a str,
}

/// Unfolds RFC 5545 content lines (CRLF or LF; a line starting with space or tab continues
/// the previous one, that one white-space character removed).
fn unfold(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for raw in text.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if let Some(rest) = line.strip_prefix([' ', '\t']) {
            if let Some(last) = lines.last_mut() {
                last.push_str(rest);
                continue;
            }
        }
        if !line.is_empty() {
            lines.push(line.to_string());
        }
    }
    lines
}

fn parse_line(line: &str) -> Option<ContentLine<'_>> {
    let name_end = line.find([';', ':'])?;
    let name = line[..name_end].trim().to_ascii_uppercase();
    let mut params = Vec::new();
    let bytes = line.as_bytes();
    let mut i = name_end;
    while i < bytes.len() && bytes[i] == b';' {
        let eq = i + 1 + line[i + 1..].find(['=', ':', ';'])?;
        if bytes[eq] != b'=' {
            // A parameter without a value: keep going from its end.
            params.push((line[i + 1..eq].to_ascii_uppercase(), Vec::new()));
            i = eq;
            continue;
        }
        let pname = line[i + 1..eq].trim().to_ascii_uppercase();
        let mut values = Vec::new();
        let mut j = eq + 1;
        loop {
            if bytes.get(j) == Some(&b'"') {
                let close = j + 1 + line[j + 1..].find('"')?;
                values.push(line[j + 1..close].to_string());
                j = close + 1;
            } else {
                let end = line[j..]
                    .find([',', ';', ':'])
                    .map_or(line.len(), |k| j + k);
                values.push(line[j..end].to_string());
                j = end;
            }
            if bytes.get(j) == Some(&b',') {
                j += 1;
            } else {
                break;
            }
        }
        params.push((pname, values));
        i = j;
    }
    if bytes.get(i) != Some(&b':') {
        return None;
    }
    Some(ContentLine {
        name,
        params,
        value: &line[i + 1..],
    })
}

/// METHOD of the calendar object, if it has one.
fn method(text: &str) -> Option<String> {
    let lines = unfold(text);
    let mut depth = 0usize;
    for l in &lines {
        let Some(cl) = parse_line(l) else { continue };
        match cl.name.as_str() {
            "BEGIN" => depth += 1,
            "END" => depth = depth.saturating_sub(1),
            // Only the VCALENDAR's own METHOD (depth 1) makes it a scheduling message.
            "METHOD" if depth == 1 && !cl.value.trim().is_empty() => {
                return Some(cl.value.trim().to_ascii_uppercase());
            }
            _ => {}
        }
    }
    None
}

/// The canonical addresses a calendar property names: its `mailto:` value and an `EMAIL`
/// parameter (RFC 7986), each read with the header address reader.
fn property_addresses(cl: &ContentLine<'_>) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |text: &str| {
        if let Ok(list) = parse_address_list(text.as_bytes()) {
            for a in list.addresses {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
    };
    let v = cl.value.trim();
    // Compare bytes: the value is peer text and byte 7 need not be a char boundary.
    if v.len() > 7 && v.as_bytes()[..7].eq_ignore_ascii_case(b"mailto:") {
        push(&percent_decode(&v[7..]));
    }
    for (name, values) in &cl.params {
        if name == "EMAIL" {
            for e in values {
                push(e);
            }
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && b.len() >= i + 3 {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Distinct canonical attendee addresses of one iCalendar text, first-seen order.
pub fn attendees(text: &str) -> Vec<String> {
    let mut out = super::address_set::AddressSet::new();
    for l in unfold(text) {
        let Some(cl) = parse_line(&l) else { continue };
        if cl.name == "ATTENDEE" {
            out.extend(property_addresses(&cl));
        }
    }
    out.to_vec()
}

/// The organizer's canonical address, if the calendar names one.
pub fn organizer(text: &str) -> Option<String> {
    unfold(text).iter().find_map(|l| {
        let cl = parse_line(l)?;
        (cl.name == "ORGANIZER")
            .then(|| property_addresses(&cl).into_iter().next())
            .flatten()
    })
}

/// Distinct attendees of every calendar part of a raw message.
pub fn message_attendees(raw: &[u8]) -> Result<Vec<String>, MimeUnreadable> {
    // A set, not `Vec::contains`: an invitation can list a hundred thousand attendees.
    let mut out = super::address_set::AddressSet::new();
    for part in try_calendar_parts(raw)? {
        out.extend(attendees(&part.text));
    }
    Ok(out.to_vec())
}

/// The iCalendar text as `invitee` should receive it in a split copy: every ATTENDEE line
/// removed except the invitee's own (compared canonically), everything else (ORGANIZER, UID,
/// SEQUENCE, METHOD...) kept, so the copy still updates and cancels the same event. Lines are
/// unfolded, then refolded at 75 octets (never inside a UTF-8 sequence) and end in CRLF
/// (RFC 5545 section 3.1).
pub fn for_invitee(text: &str, invitee: &str) -> String {
    // Calendar clients match attendees to mailboxes ignoring case, so the invitee's own line
    // is found the same way (the local part's case is kept everywhere else).
    let who: Vec<String> = parse_address_list(invitee.as_bytes())
        .map(|l| l.addresses)
        .unwrap_or_default()
        .iter()
        .map(|a| a.to_lowercase())
        .collect();
    let mut out = String::with_capacity(text.len());
    for l in unfold(text) {
        if let Some(cl) = parse_line(&l) {
            if cl.name == "ATTENDEE"
                && !property_addresses(&cl)
                    .iter()
                    .any(|a| who.contains(&a.to_lowercase()))
            {
                continue;
            }
        }
        fold_into(&mut out, &l);
    }
    out
}

/// Appends one content line folded at 75 octets, with CRLF line ends.
fn fold_into(out: &mut String, line: &str) {
    let mut rest = line;
    let mut limit = 75;
    loop {
        if rest.len() <= limit {
            out.push_str(rest);
            out.push_str("\r\n");
            return;
        }
        let mut cut = limit;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push_str(&rest[..cut]);
        out.push_str("\r\n ");
        rest = &rest[cut..];
        // The leading space of a continuation line counts towards its 75 octets.
        limit = 74;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Test//EN\r\nMETHOD:REQUEST\r\n\
        BEGIN:VEVENT\r\nUID:42@example.org\r\nSEQUENCE:0\r\nDTSTAMP:20260101T090000Z\r\n\
        DTSTART:20260105T090000Z\r\nSUMMARY:Kick-off\r\n\
        ORGANIZER;CN=Boss:mailto:boss@example.org\r\n\
        ATTENDEE;CN=\"Doe, Jane\";ROLE=REQ-PARTICIPANT;RSVP=TRUE:mailto:jane@Fabrikam.COM\r\n\
        ATTENDEE;CN=Bob;PARTSTAT=NEEDS-ACTION:MAILTO:bob@contoso.com\r\n\
        ATTENDEE;CN=Long Name With Many Words To Force A Fold Here;RSVP=TRUE:mai\r\n lto:carol@example.net\r\n\
        ATTENDEE;CN=Boss:mailto:boss@example.org\r\n\
        END:VEVENT\r\nEND:VCALENDAR\r\n";

    #[test]
    fn attendees_unfolded_canonical_and_organizer_apart() {
        assert_eq!(
            attendees(INVITE),
            [
                "jane@fabrikam.com",
                "bob@contoso.com",
                "carol@example.net",
                "boss@example.org"
            ]
        );
        assert_eq!(organizer(INVITE).as_deref(), Some("boss@example.org"));
        assert_eq!(method(INVITE).as_deref(), Some("REQUEST"));
        assert_eq!(
            method(
                "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nMETHOD:X\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
            ),
            None
        );
    }

    #[test]
    fn for_invitee_keeps_organizer_and_one_attendee_folded_at_75() {
        let one = for_invitee(INVITE, "Bob <BOB@contoso.com>");
        assert_eq!(attendees(&one), ["bob@contoso.com"]);
        assert_eq!(organizer(&one).as_deref(), Some("boss@example.org"));
        assert!(one.contains("UID:42@example.org\r\n") && one.contains("METHOD:REQUEST\r\n"));
        let carol = for_invitee(INVITE, "carol@example.net");
        assert_eq!(attendees(&carol), ["carol@example.net"]);
        for line in carol.split("\r\n") {
            assert!(line.len() <= 75, "{line:?}");
        }
        assert!(carol.ends_with("END:VCALENDAR\r\n"));
        assert!(!carol.replace("\r\n", "").contains('\n'));
        // Refolding is lossless.
        assert_eq!(
            unfold(&carol).len(),
            unfold(&for_invitee(&carol, "carol@example.net")).len()
        );
    }

    #[test]
    fn non_ascii_where_mailto_is_expected_does_not_panic() {
        let t = "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nATTENDEE:mailt\u{fffd}o:a@x\r\n\
                 ATTENDEE:\u{e9}\u{e9}\u{e9}\u{e9}:x\r\nATTENDEE;CN=\"\u{e9}:mailto:b@y\r\nEND:VCALENDAR\r\n";
        assert!(attendees(t).is_empty());
        assert!(!for_invitee(t, "a@x").contains("mailt\u{fffd}o"));
    }

    #[test]
    fn fold_never_splits_a_utf8_sequence() {
        let mut s = String::new();
        fold_into(&mut s, &format!("SUMMARY:{}", "ü".repeat(100)));
        for line in s.split("\r\n") {
            assert!(line.len() <= 75);
        }
        assert_eq!(unfold(&s), [format!("SUMMARY:{}", "ü".repeat(100))]);
    }

    #[test]
    fn encodings_round_trip() {
        for enc in [
            TransferEncoding::Identity,
            TransferEncoding::Base64,
            TransferEncoding::QuotedPrintable,
        ] {
            let text = format!("{INVITE}DESCRIPTION:caf\u{e9} = 100%  \r\n");
            let body = encode_body(&text, enc);
            assert_eq!(
                String::from_utf8(decode_body(&body, enc)).unwrap(),
                text,
                "{enc:?}"
            );
            if enc != TransferEncoding::Identity {
                assert!(body.split(|&b| b == b'\n').all(|l| l.len() <= 78));
            }
        }
    }

    #[test]
    fn finds_parts_in_alternative_and_attachments() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(INVITE);
        let raw = format!(
            "From: boss@example.org\r\nTo: team@example.org\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n--outer\r\n\
             Content-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n--alt\r\n\
             Content-Type: text/plain\r\n\r\nYou are invited.\r\n--alt\r\n\
             Content-Type: text/calendar; method=REQUEST; charset=UTF-8\r\n\
             Content-Transfer-Encoding: quoted-printable\r\n\r\n{}\r\n--alt--\r\n\r\n--outer\r\n\
             Content-Type: application/octet-stream; name=\"invite.ics\"\r\n\
             Content-Disposition: attachment; filename=\"invite.ics\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{b64}\r\n--outer\r\n\
             Content-Type: message/rfc822\r\n\r\nFrom: x@y\r\nTo: z@w\r\n\
             Content-Type: text/calendar\r\n\r\nBEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\n\
             ATTENDEE:mailto:hidden@else.where\r\nEND:VCALENDAR\r\n\r\n--outer--\r\n",
            String::from_utf8(encode_body(INVITE, TransferEncoding::QuotedPrintable)).unwrap()
        );
        let parts = calendar_parts(raw.as_bytes());
        assert_eq!(parts.len(), 2, "{parts:#?}");
        assert_eq!(parts[0].encoding, TransferEncoding::QuotedPrintable);
        assert_eq!(parts[1].encoding, TransferEncoding::Base64);
        for p in &parts {
            assert_eq!(p.text, INVITE);
            assert_eq!(p.method, "REQUEST");
            let body = &raw.as_bytes()[p.body.clone()];
            assert_eq!(
                String::from_utf8_lossy(&decode_body(body, p.encoding)),
                INVITE
            );
        }
        assert_eq!(message_attendees(raw.as_bytes()).unwrap().len(), 4);
    }
}
