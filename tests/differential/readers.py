#!/usr/bin/env python3
"""Independent readers for the differential test (tests/differential.rs).

Reads JSON lines {"id": N, "raw": base64 message} on stdin and prints one JSON line per case:
{"id": N, "readers": {"name": [addresses] or null}}. Each reader lists the mailboxes (local@domain,
both non-empty) it finds in To, Cc, Resent-To and Resent-Cc, canonicalised loosely (domain lower
case, trailing dot dropped, IDNA A-label) so that only real differences in what is shown remain.
A reader that raises on a case reports null: it has no reading to compare.
"""
import base64
import json
import sys
from email import message_from_bytes, message_from_string, policy
from email.utils import getaddresses

FIELDS = ("to", "cc", "resent-to", "resent-cc")


def canon(local, domain):
    # compat32 hands raw UTF-8 back as surrogate escapes: make it text again.
    local = (local or "").strip().encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    domain = (domain or "").strip().encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if len(local) >= 2 and local[0] == local[-1] == '"':
        local = local[1:-1]
    domain = domain.lower()
    if domain.endswith("."):
        domain = domain[:-1]
    try:
        domain = domain.encode("idna").decode("ascii").lower()
    except (UnicodeError, ValueError):
        pass
    if not local or not domain:
        return None
    return local + "@" + domain


def distinct(pairs):
    out = []
    for local, domain in pairs:
        a = canon(local, domain)
        if a and a not in out:
            out.append(a)
    return out


def split_addr(addr):
    if "@" not in addr:
        return None, None
    local, _, domain = addr.rpartition("@")
    return local, domain


def lenient_getaddresses(values):
    try:
        return getaddresses(values, strict=False)
    except TypeError:  # Pythons before the CVE-2023-27043 fix have no strict flag
        return getaddresses(values)


def python_default(raw):
    """policy.default's structured address headers (encoded words decoded as tokens)."""
    msg = message_from_bytes(raw, policy=policy.default)
    pairs = []
    for name in FIELDS:
        for h in msg.get_all(name, []):
            for a in h.addresses:
                pairs.append((a.username, a.domain))
    return distinct(pairs)


def python_getaddresses(raw):
    """The common script idiom: getaddresses over the decoded header strings (decode, then parse)."""
    msg = message_from_bytes(raw, policy=policy.default)
    values = [str(h) for name in FIELDS for h in msg.get_all(name, [])]
    return distinct(split_addr(a) for _, a in lenient_getaddresses(values))


def python_compat32(raw):
    """The legacy API: raw header values, getaddresses without decoding."""
    # Raw 8-bit header bytes would come back mangled from the bytes API; scripts that use the
    # legacy API on UTF-8 mail read it as text first.
    msg = message_from_string(raw.decode("utf-8", "surrogateescape"), policy=policy.compat32)
    values = [str(v) for name in FIELDS for v in msg.get_all(name, [])]
    return distinct(split_addr(a) for _, a in lenient_getaddresses(values))


READERS = {
    "python-default": python_default,
    "python-getaddresses": python_getaddresses,
    "python-compat32": python_compat32,
}


def main():
    for line in sys.stdin:
        case = json.loads(line)
        raw = base64.b64decode(case["raw"])
        out = {}
        for name, reader in READERS.items():
            try:
                out[name] = reader(raw)
            except Exception:  # a reader that cannot read the case has no opinion on it
                out[name] = None
        print(json.dumps({"id": case["id"], "readers": out}), flush=False)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
