#!/usr/bin/env python3
"""Reads split invitation copies with the independent `icalendar` parser (tests/calendar_split.rs).

stdin: JSON list of {"invitee": addr, "text": iCalendar text}. stdout: JSON list of
{"invitee", "method", "uids", "organizers", "attendees", "max_octets", "crlf_only"}, or
{"unavailable": reason} when the icalendar module is missing.
"""
import json
import sys

try:
    from icalendar import Calendar
except ImportError as e:  # the Rust test decides what a missing parser means
    print(json.dumps({"unavailable": str(e)}))
    sys.exit(0)


def mailbox(value):
    v = str(value).strip()
    if v.lower().startswith("mailto:"):
        v = v[7:]
    return v.lower()


def main():
    out = []
    for case in json.load(sys.stdin):
        text = case["text"]
        raw = text.encode("utf-8")
        lines = raw.split(b"\r\n")
        cal = Calendar.from_ical(raw)
        uids, organizers, attendees = [], [], []
        for comp in cal.walk():
            if "UID" in comp:
                uids.append(str(comp["UID"]))
            if "ORGANIZER" in comp:
                organizers.append(mailbox(comp["ORGANIZER"]))
            att = comp.get("ATTENDEE")
            if att is None:
                continue
            for a in att if isinstance(att, list) else [att]:
                attendees.append(mailbox(a))
        out.append({
            "invitee": case["invitee"],
            "method": str(cal.get("METHOD", "")),
            "uids": uids,
            "organizers": organizers,
            "attendees": attendees,
            "max_octets": max(len(l) for l in lines),
            "crlf_only": b"\n" not in raw.replace(b"\r\n", b"") and b"\r" not in raw.replace(b"\r\n", b""),
        })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
