//! Finds the recipients a message shows to every reader (SPEC section 2): every address of every
//! To, Cc, Resent-To and Resent-Cc field of the top-level header section (never the body, never
//! an attached message). Field reading is in [`super::address`]; this module picks the fields,
//! merges their addresses into one distinct, first-seen list and turns uncertainty into either a
//! safe-side count (`lenient_fields`) or [`Unreadable`]. Attendees of calendar invitations
//! ([`super::calendar`]) are shown to every invitee too and join the list after the fields.

use super::address::read_field;
use super::address_set::AddressSet;
use super::calendar;
use crate::message::header;

/// Fields whose addresses every reader of the message sees.
const VISIBLE_FIELDS: [&str; 4] = ["to", "cc", "resent-to", "resent-cc"];

/// The visible recipients of one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Visible {
    /// Distinct addr-specs (domain lower-cased), first-seen order.
    pub addresses: AddressSet,
    /// The top-level header section carries a `Bcc` field.
    pub bcc_present: bool,
    /// Names of fields that could not be read strictly and were counted on the safe side.
    pub lenient_fields: Vec<String>,
    /// Attendees of the message's calendar invitations (also in `addresses`), first-seen order.
    pub attendees: Vec<String>,
}

pub use crate::message::Unreadable;

/// Reads the visible recipients of a raw message (CRLF or LF line ends).
///
/// Addresses are in the canonical form of [`super::address`]: local part as its RFC 5322 value
/// (bare if it is a dot-atom, else quoted), domain lower-cased. Two addresses are the same when
/// these strings are equal, i.e. the domain compares case-insensitively, the local part does not.
pub fn find_visible(raw: &[u8]) -> Result<Visible, Unreadable> {
    refuse_bare_cr(raw)?;
    let section = header::split(raw).map_err(Unreadable::header)?;
    find_visible_in(raw, &section)
}

/// `serve` refuses a bare CR anywhere in DATA; the finder (and so `check`) refuses the same bytes.
fn refuse_bare_cr(raw: &[u8]) -> Result<(), Unreadable> {
    match memchr::memchr_iter(b'\r', raw).find(|&i| raw.get(i + 1) != Some(&b'\n')) {
        Some(at) => {
            let line = 1 + memchr::memchr_iter(b'\n', &raw[..at]).count();
            Err(Unreadable {
                reason: format!(
                    "line {line} contains a carriage return without line feed (bare CR); readers disagree on where its lines end, so the relay cannot tell who would see this message"
                ),
            })
        }
        None => Ok(()),
    }
}

/// [`find_visible`] over the header section of `raw` that is already split (a
/// [`crate::message::Message`]'s); `raw` is still needed for calendar parts in the body.
pub fn find_visible_in(
    raw: &[u8],
    section: &header::HeaderSection<'_>,
) -> Result<Visible, Unreadable> {
    refuse_bare_cr(raw)?;
    let mut visible = Visible::default();
    let shown = || {
        section
            .fields
            .iter()
            .filter(|f| VISIBLE_FIELDS.iter().any(|n| f.name_is(n)))
    };
    // Sized once from the fields (an upper bound for ordinary fields), so a header of
    // millions of addresses is not copied while the list grows.
    visible.addresses.reserve(
        shown()
            .map(|f| memchr::memchr_iter(b'@', f.value).count())
            .sum(),
        shown().map(|f| f.value.len()).sum(),
    );
    for field in &section.fields {
        if field.name_is("bcc") || field.name_is("resent-bcc") {
            visible.bcc_present = true;
            continue;
        }
        if !VISIBLE_FIELDS.iter().any(|n| field.name_is(n)) {
            continue;
        }
        // The splitter only accepts printable ASCII names, so this is lossless.
        let name = String::from_utf8_lossy(field.name).into_owned();
        let lenient = read_field(field.value, &mut visible.addresses).map_err(|e| Unreadable {
            reason: format!(
                "the {name} header field cannot be read ({e}); the relay cannot tell who would see this message"
            ),
        })?;
        if lenient
            && !visible
                .lenient_fields
                .iter()
                .any(|n| n.eq_ignore_ascii_case(&name))
        {
            visible.lenient_fields.push(name);
        }
    }
    let attendees = calendar::message_attendees(raw).map_err(|e| Unreadable {
        reason: format!(
            "the message cannot be read ({e}); the relay cannot tell who would see this message"
        ),
    })?;
    for a in attendees {
        visible.addresses.insert(&a);
        visible.attendees.push(a);
    }
    visible.addresses.freeze();
    Ok(visible)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_fields_in_first_seen_order() {
        let raw = b"From: f@x\r\nTO: a@X.org, b@y\r\ncc: A@x.ORG, a@x.org\r\nResent-To: c@z\r\n\
                    Reply-To: r@x\r\nBcc: hidden@x\r\n\r\nCc: body@x\r\n";
        let v = find_visible(raw).expect("readable");
        assert_eq!(v.addresses, ["a@x.org", "b@y", "A@x.org", "c@z"]);
        assert!(v.bcc_present);
        assert!(v.lenient_fields.is_empty());
    }

    #[test]
    fn lenient_field_is_named_once() {
        let raw = b"To: a@x; b@y\r\nto: c@z; d@w\r\nCc: e@v\r\n\r\n";
        let v = find_visible(raw).expect("readable");
        assert_eq!(v.addresses.len(), 5);
        assert_eq!(v.lenient_fields, ["To"]);
        assert!(!v.bcc_present);
    }

    #[test]
    fn unreadable_names_field_and_cause() {
        let e = find_visible(b"To: a@x\r\nCc: Bob <bob@x\r\n\r\n").expect_err("unreadable");
        assert_eq!(
            e.reason,
            "the Cc header field cannot be read (unclosed '<'); the relay cannot tell who would see this message"
        );
        let e = find_visible(b"To: a@x\r\nT o b@y\r\n\r\n").expect_err("unreadable");
        assert!(e.reason.contains("header line 2"), "{}", e.reason);
    }

    #[test]
    fn bare_cr_anywhere_is_unreadable() {
        for raw in [
            &b"To: a@x\rCc: b@y\r\r"[..],
            b"To: a@x\r\nCc: b@y\rx\r\n\r\n",
            b"To: a@x\r\n\r\nbody\rmore\r\n",
        ] {
            let e = find_visible(raw).expect_err("unreadable");
            assert!(e.reason.contains("bare CR"), "{}", e.reason);
        }
    }

    #[test]
    fn calendar_attendees_join_the_visible_list() {
        let raw = b"From: boss@example.org\r\nTo: a@example.org\r\n\
                    Content-Type: text/calendar; method=REQUEST\r\n\r\n\
                    BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\n\
                    ORGANIZER:mailto:boss@example.org\r\nATTENDEE:mailto:A@Example.org\r\n\
                    ATTENDEE:mailto:b@x.net\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
        let v = find_visible(raw).expect("readable");
        assert_eq!(v.addresses, ["a@example.org", "A@example.org", "b@x.net"]);
        assert_eq!(v.attendees, ["A@example.org", "b@x.net"]);
    }
}
