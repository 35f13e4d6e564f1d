"""Relay behaviour (issue 2): submission with STARTTLS/implicit TLS and AUTH, exact forwarding,
relay control, limits, command order, upstream failures, and the smuggling/injection defences."""

from __future__ import annotations

import signal
import smtplib
import subprocess
import time

import pytest

from conftest import MAX_MESSAGE_SIZE, MAX_RECIPIENTS, PASSWORD, USER, require_tool
from helpers import (
    ConnectionClosed,
    RawClient,
    client_tls_context,
    crlf,
    dot_stuff,
    header_values,
    lf,
    load_message,
    send_mail,
    strip_first_received,
)

pytestmark = pytest.mark.relay

SENDER = "alice@example.org"


def simple(tag: str, to: str = "bob@example.org") -> bytes:
    return load_message("simple.eml", sender=SENDER, to=to, tag=tag)


def assert_forwarded_exactly(delivered_data: bytes, sent: bytes):
    """At the upstream: one Received: field prepended by bccguard, then the sent bytes unchanged
    (no extra blank line, dot lines intact). Compared with LF line ends (smtp-sink's dump format)."""
    got = strip_first_received(lf(delivered_data))
    assert got == lf(sent), "message changed in transit:\n--- sent ---\n%r\n--- got ---\n%r" % (lf(sent), got)
    # Exactly one Received: added (the message had none).
    assert len(header_values(delivered_data, "Received")) == 1


# --------------------------------------------------------------------------------------------
# EHLO and TLS/AUTH advertisement


def test_ehlo_lists_extensions_and_hides_auth_before_tls(relay):
    with RawClient(relay.submission_port) as c:
        assert c.banner.code == 220, c.banner
        r = c.ehlo()
        kws = r.keywords
        for kw in ("PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING", "STARTTLS"):
            assert kw in kws, f"EHLO lacks {kw}: {r.lines}"
        assert r.keyword_line("SIZE") == f"SIZE {MAX_MESSAGE_SIZE}", r.lines
        assert "AUTH" not in kws, f"AUTH offered before TLS: {r.lines}"
        c.starttls()
        r = c.ehlo()
        assert "AUTH" in r.keywords, f"AUTH not offered after STARTTLS: {r.lines}"
        mechs = r.keyword_line("AUTH").upper().split()[1:]
        assert "PLAIN" in mechs and "LOGIN" in mechs, r.lines
        assert "STARTTLS" not in r.keywords, f"STARTTLS offered again inside TLS: {r.lines}"


def test_auth_before_tls_is_refused(relay):
    with RawClient(relay.submission_port) as c:
        c.ehlo()
        r = c.auth_plain(USER, PASSWORD)
        assert r.code in (538, 503, 530), f"AUTH without TLS must be refused: {r}"
        if r.code == 538:
            assert r.status == "5.7.11", r
        # And the listener still refuses to relay.
        r = c.cmd(f"MAIL FROM:<{SENDER}>")
        if r.code == 250:
            r = c.cmd("RCPT TO:<someone@outside.example.com>")
        assert r.code >= 500, f"unauthenticated cleartext session could relay: {r}"
    assert relay.dumps(settle=0.3) == []


def test_cleartext_auth_allowed_only_when_listener_says_so(make_relay):
    def mutate(cfg):
        cfg["listener"][0].update(tls="none", auth="required", allow_cleartext_auth=True)
    relay = make_relay(mutate)
    with RawClient(relay.smtp_port, source="127.0.0.2") as c:
        r = c.ehlo()
        assert "AUTH" in r.keywords, f"allow_cleartext_auth on loopback should offer AUTH: {r.lines}"
        assert c.auth_plain(USER, PASSWORD).code == 235
        assert c.cmd(f"MAIL FROM:<{SENDER}>").code == 250
        assert c.cmd("RCPT TO:<carol@outside.example.com>").code == 250
        assert c.data(simple("cleartext")).code == 250
    assert len(relay.upstream.wait_for(1)) == 1


# --------------------------------------------------------------------------------------------
# delivery


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_starttls_auth_delivers_exact_bytes(relay, tls_material, mechanism):
    msg = simple(f"auth-{mechanism}", to="carol@outside.example.com")
    with smtplib.SMTP("127.0.0.1", relay.submission_port, timeout=8) as s:
        s.ehlo("client.example.org")
        s.starttls(context=client_tls_context(tls_material["certificate"]))
        s.ehlo("client.example.org")
        s.user, s.password = USER, PASSWORD
        auth = s.auth_plain if mechanism == "PLAIN" else s.auth_login
        code, text = s.auth(mechanism, auth, initial_response_ok=(mechanism == "PLAIN"))
        assert code == 235, (code, text)
        refused = s.sendmail(SENDER, ["carol@outside.example.com", "dave@outside.example.com"], msg)
        assert refused == {}
    [m] = relay.upstream.wait_for(1)
    assert m.sender == SENDER
    assert m.rcpts == ["carol@outside.example.com", "dave@outside.example.com"]
    assert_forwarded_exactly(m.data, msg)


def test_exact_crlf_bytes_at_python_upstream(py_relay):
    """The Python upstream keeps exact bytes, so CRLFs, the final line end and dots are checked."""
    msg = simple("exact-crlf")
    r = send_mail(py_relay.smtp_port, SENDER, ["bob@example.org"], msg)
    assert r["data"].code == 250, r
    [m] = py_relay.upstream.wait_for(1)
    got = strip_first_received(m.data)
    assert got == msg
    assert m.data.endswith(b"Alice\r\n") and not m.data.endswith(b"\r\n\r\n")


def test_implicit_tls_listener_delivers(relay, tls_material):
    msg = simple("implicit")
    with smtplib.SMTP_SSL("127.0.0.1", relay.tls_port, timeout=8,
                          context=client_tls_context(tls_material["certificate"])) as s:
        s.ehlo("client.example.org")
        s.login(USER, PASSWORD)
        s.sendmail(SENDER, ["bob@example.org"], msg)
    [m] = relay.upstream.wait_for(1)
    assert_forwarded_exactly(m.data, msg)


def test_bad_password_is_refused(relay):
    with RawClient(relay.submission_port) as c:
        c.ehlo()
        c.starttls()
        c.ehlo()
        r = c.auth_plain(USER, "wrong password")
        assert r.code == 535 and r.status == "5.7.8", r
        r = c.cmd(f"MAIL FROM:<{SENDER}>")
        assert r.code >= 500, f"MAIL accepted without AUTH on an auth=required listener: {r}"
    assert relay.dumps(settle=0.3) == []


def test_auth_required_listener_refuses_mail_without_auth(relay):
    with RawClient(relay.submission_port) as c:
        c.ehlo()
        c.starttls()
        c.ehlo()
        r = c.cmd(f"MAIL FROM:<{SENDER}>")
        assert r.code == 530 or r.code >= 500, r


def test_swaks_plain_delivery(relay):
    swaks = require_tool("swaks")
    p = subprocess.run(
        [swaks, "--server", "127.0.0.1", "--port", str(relay.smtp_port), "--from", SENDER,
         "--to", "bob@example.org", "--header", "Subject: swaks e2e", "--body", "hello from swaks",
         "--timeout", "8"],
        capture_output=True, timeout=30,
    )
    assert p.returncode == 0, p.stdout.decode(errors="replace")[-2000:]
    [m] = relay.upstream.wait_for(1)
    assert m.rcpts == ["bob@example.org"]
    assert b"hello from swaks" in m.body


def test_swaks_starttls_auth_login(relay):
    swaks = require_tool("swaks")
    p = subprocess.run(
        [swaks, "--server", "127.0.0.1", "--port", str(relay.submission_port), "--from", SENDER,
         "--to", "eve@outside.example.com", "-tls", "--auth", "LOGIN", "--auth-user", USER,
         "--auth-password", PASSWORD, "--body", "tls and login", "--timeout", "8"],
        capture_output=True, timeout=30,
    )
    assert p.returncode == 0, p.stdout.decode(errors="replace")[-2000:]
    [m] = relay.upstream.wait_for(1)
    assert m.rcpts == ["eve@outside.example.com"]


def test_msmtp_submission(relay, tls_material):
    msmtp = require_tool("msmtp")
    msg = simple("msmtp", to="frank@outside.example.com")
    p = subprocess.run(
        [msmtp, "--host=127.0.0.1", f"--port={relay.submission_port}", "--tls=on", "--tls-starttls=on",
         f"--tls-trust-file={tls_material['certificate']}", "--auth=plain", f"--user={USER}",
         f"--passwordeval=echo '{PASSWORD}'", f"--from={SENDER}", "frank@outside.example.com"],
        input=msg, capture_output=True, timeout=30,
    )
    assert p.returncode == 0, (p.stdout + p.stderr).decode(errors="replace")
    [m] = relay.upstream.wait_for(1)
    assert_forwarded_exactly(m.data, msg)


def test_bcc_header_removed(relay):
    msg = load_message("bcc.eml", sender=SENDER, to="bob@example.org", bcc="secret@outside.example.com",
                       tag="bcc")
    r = send_mail(relay.smtp_port, SENDER, ["bob@example.org", "secret@outside.example.com"], msg)
    assert r["data"].code == 250, r
    [m] = relay.upstream.wait_for(1)
    assert m.header("Bcc") == []
    assert b"secret@outside.example.com" not in m.data
    assert sorted(m.rcpts) == ["bob@example.org", "secret@outside.example.com"]
    assert m.body == lf(msg).split(b"\n\n", 1)[1]


# --------------------------------------------------------------------------------------------
# relay control


def test_unauthenticated_client_outside_relay_networks_is_refused(relay):
    with RawClient(relay.smtp_port, source="127.0.0.2") as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<{SENDER}>").code == 250
        r = c.cmd("RCPT TO:<victim@outside.example.com>")
        assert r.code == 554 and r.status == "5.7.1", r
        r = c.cmd("DATA")
        assert r.code >= 500, r
    assert relay.dumps(settle=0.3) == []


def test_client_inside_relay_networks_relays_without_auth(relay):
    r = send_mail(relay.smtp_port, SENDER, ["bob@outside.example.com"], simple("inside"))
    assert r["rcpt"][0].code == 250 and r["data"].code == 250, r
    relay.upstream.wait_for(1)


# --------------------------------------------------------------------------------------------
# upstream failures


def test_upstream_never_started_gives_451(make_relay):
    relay = make_relay(upstream=None)  # config points at a port where nothing listens
    r = send_mail(relay.smtp_port, SENDER, ["bob@example.org"], simple("down"))
    replies = [r["mail"], *r["rcpt"]] + ([r["data"]] if r["data"] else [])
    failing = [x for x in replies if x.code != 250]
    assert failing, f"a message was accepted with no upstream: {replies}"
    assert failing[0].code == 451 and (failing[0].status or "").startswith("4.4."), failing[0]


def test_upstream_killed_gives_451_and_nothing_lost(relay):
    relay.upstream.stop()
    r = send_mail(relay.smtp_port, SENDER, ["bob@example.org"], simple("killed"))
    replies = [r["mail"], *r["rcpt"]] + ([r["data"]] if r["data"] else [])
    failing = [x for x in replies if x.code != 250]
    assert failing and failing[0].code == 451 and (failing[0].status or "").startswith("4.4."), replies
    # The upstream comes back: the next message goes through.
    relay.upstream.start()
    r = send_mail(relay.smtp_port, SENDER, ["bob@example.org"], simple("back"))
    assert r["data"] is not None and r["data"].code == 250, r
    msgs = relay.upstream.wait_for(1)
    assert len(msgs) == 1 and b"simple-back@" in msgs[0].data


def test_upstream_rejects_one_recipient(py_relay):
    r = send_mail(py_relay.smtp_port, SENDER,
                  ["bob@outside.example.com", "reject-me@outside.example.com", "carol@outside.example.com"],
                  simple("one-rejected"))
    ok1, bad, ok2 = r["rcpt"]
    assert ok1.code == 250 and ok2.code == 250, r
    assert bad.code == 550 and bad.status == "5.1.1" and "No such user" in bad.text, bad
    assert r["data"].code == 250, r
    [m] = py_relay.upstream.wait_for(1)
    assert m.rcpts == ["bob@outside.example.com", "carol@outside.example.com"]


def test_upstream_permanent_failure_passed_through(harness):
    up = harness.py_upstream(data_reply="554 5.7.0 Upstream content policy says no")
    relay = harness.relay(upstream=up)
    r = send_mail(relay.smtp_port, SENDER, ["bob@example.org"], simple("upstream-554"))
    assert r["data"].code == 554 and r["data"].status == "5.7.0", r
    assert "Upstream content policy says no" in r["data"].text


def test_upstream_temporary_failure_gives_4xx(harness):
    up = harness.py_upstream(data_reply="451 4.3.0 Upstream queue full")
    relay = harness.relay(upstream=up)
    r = send_mail(relay.smtp_port, SENDER, ["bob@example.org"], simple("upstream-451"))
    assert r["data"].code // 100 == 4, r


# --------------------------------------------------------------------------------------------
# limits


def test_declared_size_too_big(relay):
    with RawClient(relay.smtp_port) as c:
        c.ehlo()
        r = c.cmd(f"MAIL FROM:<{SENDER}> SIZE={MAX_MESSAGE_SIZE + 1}")
        assert r.code == 552 and r.status == "5.3.4", r
        # A size within the limit is fine on the same connection.
        assert c.cmd(f"MAIL FROM:<{SENDER}> SIZE={MAX_MESSAGE_SIZE - 1}").code == 250


def test_message_too_big_during_data(relay):
    big = crlf("From: a@example.org\nTo: b@example.org\nSubject: big\n\n") + (b"x" * 990 + b"\r\n") * (
        MAX_MESSAGE_SIZE // 990 + 5)
    r = send_mail(relay.smtp_port, SENDER, ["bob@example.org"], big)
    assert r["data"].code == 552, r["data"]
    assert relay.dumps(settle=0.5) == []


def test_too_many_recipients(relay):
    with RawClient(relay.smtp_port) as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<{SENDER}>").code == 250
        c.send(b"".join(f"RCPT TO:<r{i}@example.org>\r\n".encode() for i in range(MAX_RECIPIENTS + 1)))
        replies = [c.reply() for _ in range(MAX_RECIPIENTS + 1)]
        assert all(r.code == 250 for r in replies[:MAX_RECIPIENTS]), replies[:MAX_RECIPIENTS]
        assert replies[-1].code == 452 and replies[-1].status == "4.5.3", replies[-1]
        # The transaction goes on with the accepted recipients.
        assert c.data(simple("max-rcpt")).code == 250
    [m] = relay.upstream.wait_for(1)
    assert len(m.rcpts) == MAX_RECIPIENTS


def test_line_longer_than_1000_octets(relay):
    msg = crlf("From: a@example.org\nTo: b@example.org\nSubject: long\n\n") + b"y" * 1200 + b"\r\n"
    r = send_mail(relay.smtp_port, SENDER, ["bob@example.org"], msg)
    assert r["data"].code == 550 and (r["data"].status or "").startswith("5.6."), r["data"]
    assert relay.dumps(settle=0.5) == []


# --------------------------------------------------------------------------------------------
# command handling


def test_command_order_and_simple_commands(relay):
    with RawClient(relay.smtp_port) as c:
        c.ehlo()
        r = c.cmd("DATA")
        assert r.code == 503 and r.status == "5.5.1", r
        r = c.cmd("RCPT TO:<bob@example.org>")
        assert r.code == 503, r
        r = c.cmd("VRFY bob@example.org")
        assert r.code == 252, r
        assert c.cmd("NOOP").code == 250
        assert c.cmd("RSET").code == 250
        r = c.cmd("HELP")
        assert r.code in (211, 214), r
        r = c.cmd("FROBNICATE now")
        assert r.code in (500, 502), r
        assert c.cmd("QUIT").code == 221


def test_rset_discards_transaction(relay):
    with RawClient(relay.smtp_port) as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<{SENDER}>").code == 250
        assert c.cmd("RCPT TO:<bob@example.org>").code == 250
        assert c.cmd("RSET").code == 250
        assert c.cmd("DATA").code == 503


def test_pipelined_transaction_in_one_write(relay):
    msg = simple("pipelined")
    with RawClient(relay.smtp_port) as c:
        c.ehlo()
        c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<bob@example.org>\r\nRCPT TO:<carol@example.org>\r\nDATA\r\n".encode())
        replies = [c.reply() for _ in range(4)]
        assert [r.code for r in replies] == [250, 250, 250, 354], replies
        c.send(dot_stuff(msg) + b".\r\nQUIT\r\n")
        assert c.reply().code == 250
        assert c.reply().code == 221
    [m] = relay.upstream.wait_for(1)
    assert m.rcpts == ["bob@example.org", "carol@example.org"]


def test_bdat_chunks(relay):
    msg = simple("bdat")
    a, b = msg[:100], msg[100:]
    with RawClient(relay.smtp_port) as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<{SENDER}>").code == 250
        assert c.cmd("RCPT TO:<bob@example.org>").code == 250
        c.send(f"BDAT {len(a)}\r\n".encode() + a)
        assert c.reply().code == 250
        c.send(f"BDAT {len(b)} LAST\r\n".encode() + b)
        r = c.reply()
        assert r.code == 250, r
    [m] = relay.upstream.wait_for(1)
    assert_forwarded_exactly(m.data, msg)


def test_smtputf8_address(py_relay):
    msg = crlf("From: jörg@example.org\nTo: zoë@example.org\nSubject: utf8\n\nhallo\n")
    with RawClient(py_relay.smtp_port) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<jörg@example.org> SMTPUTF8".encode()).code == 250
        assert c.cmd("RCPT TO:<zoë@example.org>".encode()).code == 250
        assert c.data(msg).code == 250
    [m] = py_relay.upstream.wait_for(1)
    assert m.rcpts == ["zoë@example.org"]


# --------------------------------------------------------------------------------------------
# smuggling and injection


SMUGGLE_ENDS = {
    "lf-dot-lf": b"\n.\n",
    "crlf-dot-lf": b"\r\n.\n",
    "lf-dot-crlf": b"\n.\r\n",
    "cr-dot-crlf": b"\r.\r\n",
    "crlf-dot-cr": b"\r\n.\r",
}


@pytest.mark.parametrize("fake_end", list(SMUGGLE_ENDS.values()), ids=list(SMUGGLE_ENDS))
def test_smtp_smuggling_is_impossible(relay, fake_end):
    body = (crlf("From: alice@example.org\nTo: bob@example.org\nSubject: smuggle\n\nfirst message")
            + fake_end
            + b"MAIL FROM:<evil@x.example>\r\nRCPT TO:<victim@y.example>\r\nDATA\r\n"
            + b"From: evil@x.example\r\nTo: victim@y.example\r\nSubject: smuggled\r\n\r\nsmuggled\r\n")
    with RawClient(relay.smtp_port) as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<{SENDER}>").code == 250
        assert c.cmd("RCPT TO:<bob@example.org>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(body + b"\r\n.\r\n")
        r = c.reply()
        extra = c.pending(0.5)
    assert r.code == 550 and (r.status or "").startswith("5.6."), f"bare CR/LF in DATA not refused: {r}"
    assert b"250" not in extra and b"354" not in extra, f"smuggled commands were answered: {extra!r}"
    msgs = relay.dumps(settle=0.5)
    assert msgs == [], "message with bare CR/LF was passed on"
    assert not any("victim@y.example" in m.rcpts for m in msgs)


@pytest.mark.parametrize("payload", [b"bare\nLF in the middle\r\n", b"bare\rCR in the middle\r\n"],
                         ids=["bare-lf", "bare-cr"])
def test_bare_line_ends_refused(relay, payload):
    msg = crlf("From: a@example.org\nTo: b@example.org\nSubject: bare\n\n") + payload
    r = send_mail(relay.smtp_port, SENDER, ["bob@example.org"], msg)
    assert r["data"].code == 550 and (r["data"].status or "").startswith("5.6."), r["data"]
    assert relay.dumps(settle=0.5) == []


def test_session_usable_after_refused_data(relay):
    with RawClient(relay.smtp_port) as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<{SENDER}>").code == 250
        assert c.cmd("RCPT TO:<bob@example.org>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: x\r\n\r\nbad\nline\r\n.\r\n")
        assert c.reply().code == 550
        assert c.cmd(f"MAIL FROM:<{SENDER}>").code == 250
        assert c.cmd("RCPT TO:<bob@example.org>").code == 250
        assert c.data(simple("after-refusal")).code == 250
    [m] = relay.upstream.wait_for(1)
    assert b"simple-after-refusal@" in m.data


@pytest.mark.parametrize("injected", [b"RSET\r\n", f"MAIL FROM:<{SENDER}>\r\n".encode()], ids=["rset", "mail"])
def test_starttls_command_injection_discarded(relay, injected):
    c = RawClient(relay.smtp_port, source="127.0.0.1")
    try:
        c.ehlo()
        c.send(b"STARTTLS\r\n" + injected)
        r = c.reply()
        if r.code != 220:
            # Refusing a pipelined STARTTLS outright is also safe.
            assert r.code >= 500, r
            return
        # Whatever the server may have read after STARTTLS, it must not answer it in plaintext.
        assert not c.buf, f"plaintext after the 220: {c.buf!r}"
        try:
            c.wrap_tls()
        except (OSError, ConnectionClosed):
            return  # dropping the connection is safe too
        r = c.cmd("EHLO client.example.org")
        assert r.code == 250 and len(r.lines) > 1, f"first reply inside TLS is not our EHLO's: {r}"
        r = c.cmd("RCPT TO:<bob@example.org>")
        assert r.code == 503, f"a command sent before the TLS handshake ran inside TLS: {r}"
    finally:
        c.close()


# --------------------------------------------------------------------------------------------
# shutdown


def test_sigterm_sends_421_to_idle_client(relay):
    with RawClient(relay.smtp_port) as c:
        c.ehlo()
        relay.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        try:
            line = c.read_line()
        except ConnectionClosed:
            pytest.fail("connection closed without a 421 reply")
        assert line.startswith(b"421"), line
    code = relay.stop()
    relay.stopped_by_test = True
    assert time.monotonic() - t0 < 6
    assert code == 0, f"graceful stop exited with {code}"


def test_sigterm_lets_transaction_in_flight_finish(relay):
    """A message whose DATA is being sent when SIGTERM arrives still completes."""
    msg = simple("in-flight")
    with RawClient(relay.smtp_port) as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<{SENDER}>").code == 250
        assert c.cmd("RCPT TO:<bob@example.org>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(msg[:50])
        time.sleep(0.2)
        relay.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        c.send(msg[50:] + b".\r\n")
        r = c.reply()
        assert r.code == 250, f"transaction in flight was cut at shutdown: {r}"
    relay.upstream.wait_for(1)
    relay.stop()
    relay.stopped_by_test = True


def test_new_connections_refused_after_sigterm(relay):
    with RawClient(relay.smtp_port) as busy:
        busy.ehlo()
        assert busy.cmd(f"MAIL FROM:<{SENDER}>").code == 250
        relay.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        try:
            with RawClient(relay.smtp_port, greeting=False, timeout=2) as c:
                data = c.pending(1.0)
                assert not data.startswith(b"220"), f"new client greeted with 220 during shutdown: {data!r}"
        except OSError:
            pass  # listener closed: fine
    relay.stop()
    relay.stopped_by_test = True


def test_idle_client_times_out(make_relay):
    relay = make_relay(lambda cfg: cfg["server"].update(command_timeout_seconds=1))
    with RawClient(relay.smtp_port) as c:
        c.ehlo()
        t0 = time.monotonic()
        try:
            line = c.read_line()
        except ConnectionClosed:
            pytest.fail("idle client was disconnected without a 421")
        assert line.startswith(b"421"), line
        assert 0.8 < time.monotonic() - t0 < 4
