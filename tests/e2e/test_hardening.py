"""Hardening (issue 12 items 4, 5, 7): dual-stack listeners match IPv4 insiders, over-wide relay and
proxy networks are refused before anything listens, and client-supplied text cannot forge log lines."""

from __future__ import annotations

import json
import re
import socket
import subprocess

import pytest

from conftest import PASSWORD, USER
from helpers import ConnectionClosed, RawClient, free_port, load_message, send_mail, to_toml

pytestmark = pytest.mark.relay

SENDER = "alice@example.org"
OUTSIDE = "someone@outside.example.com"


def simple(tag: str, to: str = OUTSIDE) -> bytes:
    return load_message("simple.eml", sender=SENDER, to=to, tag=tag)


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# 12.4: IPv4-mapped clients on a [::] listener, and networks that would open the relay


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback")
def test_ipv4_insider_relays_through_dual_stack_listener(make_relay):
    def mutate(cfg):
        cfg["server"]["relay_networks"] = ["127.0.0.0/8"]
        port = cfg["listener"][0]["address"].rsplit(":", 1)[1]  # already distinct from the others
        cfg["listener"][0] = {"address": f"[::]:{port}", "tls": "none", "auth": "none"}
        cfg["audit"]["log_accepts"] = True

    relay = make_relay(mutate)
    port = relay.smtp_port
    # 127.0.0.1 reaches the [::] socket as ::ffff:127.0.0.1 and must match 127.0.0.0/8.
    r = send_mail(port, SENDER, [OUTSIDE], simple("dual-stack"), source="127.0.0.1")
    assert r["rcpt"][0].code == 250, f"IPv4 insider refused on a [::] listener: {r}"
    assert r["data"].code == 250, r
    relay.upstream.wait_for(1)
    [rec] = relay.audit_records()
    assert str(rec["client"]).startswith("127.0.0.1:"), rec  # shown as IPv4, not ::ffff:127.0.0.1
    assert "::ffff:" not in relay.log, relay.log[-2000:]

    # ::1 is not in relay_networks: the IPv6 client must still AUTH.
    with RawClient(port, host="::1") as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<{SENDER}>").code == 250
        r = c.cmd(f"RCPT TO:<{OUTSIDE}>")
        assert r.code == 554 and r.status == "5.7.1", r
    assert len(relay.upstream.messages(settle=0.3)) == 1


WIDE_RELAY = [
    ["0.0.0.0/1", "128.0.0.0/1"],
    ["::ffff:0:0/96"],
    ["::/64"],
    ["2000::/3"],
]


@pytest.mark.parametrize("networks", WIDE_RELAY, ids=lambda n: "+".join(n))
def test_wide_relay_networks_refused(make_relay, networks):
    relay = make_relay(lambda cfg: cfg["server"].update(relay_networks=networks), start=False)
    relay.write_config()
    p = relay.cli("config", "check", "--config", str(relay.config_path))
    out = (p.stdout + p.stderr).decode(errors="replace")
    assert p.returncode != 0, out
    assert "server.relay_networks" in out and "open relay" in out, out


WIDE_PROXY = [["0.0.0.0/0"], ["::ffff:0:0/96"], ["10.0.0.0/8"], ["127.0.0.0/8"]]


@pytest.mark.parametrize("networks", WIDE_PROXY, ids=lambda n: "+".join(n))
def test_forged_proxy_header_impossible_with_wide_proxy_networks(make_relay, networks):
    """proxy_networks = 0.0.0.0/0 once let anyone claim to be an insider in a PROXY header.
    Such a config is refused: `serve` exits before it listens, so nobody can send a header."""
    port = free_port()

    def mutate(cfg):
        cfg["server"]["relay_networks"] = ["127.0.0.2/32"]
        cfg["listener"] = [{"address": f"127.0.0.1:{port}", "tls": "none", "auth": "none",
                            "proxy_protocol": True, "proxy_networks": networks}]

    relay = make_relay(mutate, start=False)
    relay.write_config()
    p = subprocess.run([relay.binary, "serve", "--config", str(relay.config_path)],
                       capture_output=True, timeout=15, cwd=relay.workdir)
    out = (p.stdout + p.stderr).decode(errors="replace")
    assert p.returncode != 0, out
    assert "listener[1].proxy_networks" in out, out  # listeners count from 1 in messages
    # Nothing listens: the forged header has nowhere to go.
    with pytest.raises(OSError):
        c = RawClient(port, greeting=False, timeout=2)
        try:
            c.send(b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 25\r\n")
            banner = c.reply()
            c.ehlo()
            c.cmd(f"MAIL FROM:<{SENDER}>")
            r = c.cmd(f"RCPT TO:<{OUTSIDE}>")
            pytest.fail(f"something answered on the refused listener: {banner} / {r}")
        finally:
            c.close()
    assert relay.upstream.messages(settle=0.2) == []


# --------------------------------------------------------------------------------------------
# 12.5: log forging

# LF, ESC, and NEL / LINE SEPARATOR (line breaks to many log readers; JSON lets them through raw).
EVIL_USER = "alice\nauthenticated user=mallory\x1b[2J\u0085fake\u2028line"
EVIL_HELO = "evil.example\x1b]0;pwned\x07"
EVIL_UPSTREAM = "554 5.7.0 Upstream says no\x1b[31m INFO fake line"


def forge_attempts(relay):
    # AUTH PLAIN and AUTH LOGIN with a user name carrying LF and an ESC sequence.
    # The EHLO name may be refused (501) or taken; either way it must not reach a log raw.
    with RawClient(relay.submission_port) as c:
        c.cmd(f"EHLO {EVIL_HELO}")
        c.ehlo()
        c.starttls()
        c.cmd(f"EHLO {EVIL_HELO}")
        c.ehlo()
        r = c.auth_plain(EVIL_USER, PASSWORD)
        assert r.code == 535, r
        import base64
        r = c.cmd("AUTH LOGIN " + base64.b64encode(EVIL_USER.encode()).decode())
        if r.code == 334:
            r = c.cmd(base64.b64encode(b"wrong").decode())
        assert r.code in (535, 421), r
    # A message the upstream refuses with a reply that carries an ESC sequence.
    r = send_mail(relay.smtp_port, SENDER, ["bob@example.org"], simple("forge", to="bob@example.org"))
    assert r["data"] is not None and r["data"].code >= 500, r


def assert_no_forged_line(log: str, line_ok):
    assert "authentication failed" in log, log[-3000:]
    for c in ("\x1b", "\x07", "\r", "\x85", "\u2028"):
        assert c not in log, f"raw {c!r} in the log: {log[-3000:]!r}"
    for line in log.splitlines():
        assert line_ok(line), f"log line not produced by the logger (forged?): {line!r}"
        assert not re.match(r"\s*authenticated user=mallory", line), line


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_client_text_cannot_forge_log_lines(harness, log_format):
    upstream = harness.py_upstream(data_reply=EVIL_UPSTREAM)
    relay = harness.relay(upstream=upstream, log_format=None if log_format == "text" else "json")
    forge_attempts(relay)
    relay.stop()
    relay.stopped_by_test = True
    log = relay.log
    if log_format == "json":
        records = []

        def line_ok(line):
            try:
                records.append(json.loads(line))
                return True
            except ValueError:
                return False

        assert_no_forged_line(log, line_ok)
        users = [r.get("fields", {}).get("user") for r in records]
        assert EVIL_USER in users, users  # escaped on the wire, exact after decoding
    else:
        # Every text line starts with the logger's own timestamp and level.
        stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z\s+(TRACE|DEBUG|INFO|WARN|ERROR) ")
        assert_no_forged_line(log, lambda line: bool(stamp.match(line)))
        assert "user=alice\\nauthenticated user=mallory\\u{1b}[2J\\u{85}fake\\u{2028}line" in log, log[-3000:]
