"""Calendar invitations through the relay (issue 13 item 4): an invitation shows its ATTENDEE list
to every invitee, so a rewrite cannot hide it. With `calendar_action = "split"` each of 18 invitees
gets a copy whose calendar lists only the organizer and them (same UID, so updates and cancellations
still match); by default such a rewrite is refused with a sentence saying what to do."""

from __future__ import annotations

import email
import email.policy
import smtplib

import pytest

from helpers import header_values

pytestmark = pytest.mark.policy

SENDER = "alice@example.org"
INVITEES = [f"victim{i:02d}@partner{i % 3}.example.net" for i in range(18)]


def invitation(uid: str, method: str = "REQUEST") -> bytes:
    attendees = "".join(
        f"ATTENDEE;CN=Victim {i};ROLE=REQ-PARTICIPANT;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:\r\n mailto:{a}\r\n"
        for i, a in enumerate(INVITEES))
    ics = (
        "BEGIN:VCALENDAR\r\nPRODID:-//Example//Calendar//EN\r\nVERSION:2.0\r\n"
        f"METHOD:{method}\r\nBEGIN:VEVENT\r\nUID:{uid}\r\nSEQUENCE:0\r\n"
        "DTSTAMP:20261202T100000Z\r\nDTSTART:20261210T090000Z\r\nDTEND:20261210T100000Z\r\n"
        "SUMMARY:Bail hearing update\r\n"
        f"ORGANIZER;CN=Alice:mailto:{SENDER}\r\n" + attendees +
        "END:VEVENT\r\nEND:VCALENDAR\r\n")
    head = (f"From: Alice <{SENDER}>\r\nTo: Alice <{SENDER}>\r\nSubject: Bail hearing update\r\n"
            f"Message-ID: <{uid}@example.org>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n")
    body = ("--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee the invitation.\r\n"
            f"--b1\r\nContent-Type: text/calendar; charset=utf-8; method={method}\r\n"
            "Content-Transfer-Encoding: 7bit\r\n\r\n" + ics + "--b1--\r\n")
    return (head + body).encode()


def calendar_of(data: bytes) -> str:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    for part in msg.walk():
        if part.get_content_type() == "text/calendar":
            return part.get_content()
    raise AssertionError("no text/calendar part in the copy")


def attendees_of(ics: str) -> list[str]:
    unfolded = ics.replace("\r\n ", "").replace("\n ", "")
    return [l.split("mailto:", 1)[1].strip() for l in unfolded.splitlines() if l.upper().startswith("ATTENDEE")]


def send(relay, message: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=20) as s:
        s.ehlo("client.example.org")
        try:
            s.sendmail(SENDER, INVITEES, message)
            return 250, b""
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error


def test_an_invitation_to_18_is_split_into_one_private_invitation_each(make_relay):
    def split_invitations(cfg):
        for rule in cfg["policy"]["rule"]:
            if rule["action"] == "rewrite":
                rule["calendar_action"] = "split"
    relay = make_relay(split_invitations)
    for method in ("REQUEST", "CANCEL"):
        uid = f"hearing-{method.lower()}-4711"
        code, text = send(relay, invitation(uid, method))
        assert code == 250, text
        copies = relay.upstream.wait_for(len(INVITEES), timeout=20)
        relay.upstream.stop()
        relay.upstream.start()
        by_rcpt = {c.rcpts[0]: c for c in copies}
        assert sorted(by_rcpt) == sorted(INVITEES), sorted(by_rcpt)
        for rcpt, c in by_rcpt.items():
            assert len(c.rcpts) == 1
            assert header_values(c.data, "To") == [f"<{rcpt}>"], header_values(c.data, "To")
            ics = calendar_of(c.data)
            assert attendees_of(ics) == [rcpt], (rcpt, attendees_of(ics))
            assert f"UID:{uid}" in ics and f"METHOD:{method}" in ics
            assert f"ORGANIZER;CN=Alice:mailto:{SENDER}" in ics
            others = [a for a in INVITEES if a != rcpt]
            assert not any(a.encode() in c.data for a in others), f"{rcpt}'s copy names another invitee"
            try:
                import icalendar  # Debian python3-icalendar: an independent parser
            except ImportError:
                continue
            cal = icalendar.Calendar.from_ical(ics)
            [event] = [e for e in cal.walk("VEVENT")]
            assert str(event["UID"]) == uid
            att = event.get("ATTENDEE")
            att = att if isinstance(att, list) else [att]
            assert [str(a).lower() for a in att] == [f"mailto:{rcpt}"]
        print(f"{method}: {len(copies)} copies, each listing only its invitee")


def test_by_default_a_rewrite_of_an_invitation_is_refused_with_a_sentence(relay):
    code, text = send(relay, invitation("hearing-default"))
    print("reply:", code, text)
    assert code == 550 and b"5.7.1" in text and b"hide attendee list" in text, (code, text)
    assert relay.upstream.messages(settle=0.5) == []
