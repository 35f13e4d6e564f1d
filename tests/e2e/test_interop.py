"""Proof against real peers (issue "Proof against real peers"): mail software this project did not
write, end to end through bccguard into a real Postfix that stores every message as a Maildir file.

    client ──> bccguard ──STARTTLS (verified, CA file) + SASL PLAIN──> Postfix "upstream" ──> Maildir
    client ──> Postfix "mta" (relayhost = bccguard, STARTTLS verified + SASL) ──> bccguard ──> ...

Clients: Python smtplib (STARTTLS + AUTH), swaks (plain, PIPELINING), msmtp (STARTTLS + AUTH),
curl (plain smtp://; STARTTLS --ssl-reqd --user -k; implicit TLS smtps://) and Postfix itself as
an organisation's internal MTA. Each path is shown with a plain accept, a rewrite (8 external Cc)
and a reject (12 external Cc), asserting on the bytes Postfix stored, not only on reply codes.

Everything is built once per module (one upstream Postfix, one bccguard, one Postfix MTA) under a
throw-away directory in /tmp; set BCCGUARD_INTEROP_KEEP=1 to keep it. Needs root (Postfix) and the
packages in tests/e2e/interop/README-packages.txt.
"""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from interop import harness as h

pytestmark = pytest.mark.interop

USER, PASSWORD = "alice", "interop-Secret-1"  # no spaces: also used in a Postfix static: map
UPSTREAM_USER, UPSTREAM_PASSWORD, UPSTREAM_REALM = "bccguard", "upstream-Secret-2", "upstream.test"
SENDER = "alice@example.org"
MTA_SENDER = "alice@sender.test"  # the MTA keeps mail for sender.test itself: bounces land there
RELAY_HOSTNAME = "bccguard.interop.test"
UPSTREAM_HOSTNAME = "mx.upstream.test"
MTA_HOSTNAME = "mta.sender.test"
REJECT_TEXT = "This message shows more than 10 outside addresses to each other. Put the recipients in Bcc and send it again."

POLICY = {
    "mode": "enforce",
    "internal_domains": ["example.org"],
    "include_subdomains": True,
    "rewrite_to": "undisclosed",
    "rule": [
        {"name": "split-sender", "senders": ["splitter@example.org"], "min_visible_external": 6, "action": "split"},
        {"name": "mass-external", "min_visible_external": 10, "action": "reject", "message": REJECT_TEXT},
        {"name": "many-external", "min_visible_external": 6, "action": "rewrite"},
    ],
}

# How many external Cc recipients each case has (plus one internal To).
CASES = {"accept": 2, "rewrite": 8, "reject": 12}
EXPECTED_RULE = {"rewrite": "many-external", "reject": "mass-external"}

# A body that trips careless SMTP code: dot lines (stuffing), a "From " line, a header-looking
# line, 8-bit UTF-8, trailing white space, a tab, a long (900 octet) line.
BODY = (
    "Dear partners,\n"
    "\n"
    "you are all invited to our partner day.\n"
    ".\n"
    "..two dots\n"
    ".leading dot\n"
    "From the desk of Alice (a line starting with From)\n"
    "Cc: not-a-header@partner9.example.net\n"
    "Grüße aus Köln – 8-bit UTF-8 text\n"
    "trailing spaces   \n"
    "\tindented with a tab\n"
    + "x" * 900 + "\n"
    "\n"
    "-- \n"
    "Alice\n"
)


def external(n: int, token: str) -> list[str]:
    """n distinct outside addresses over 3 domains (unique per test, so copies never mix)."""
    tag = token.split("-")[-1]
    return [f"p{i:02d}.{tag}@partner{i % 3}.example.net" for i in range(n)]


def make_submission(workdir: Path, token: str, case: str, sender: str, to: str | None = None,
                    bcc: list[str] | None = None) -> h.Submission:
    """The test message: one internal To, CASES[case] external Cc (folded), optional Bcc field;
    the envelope lists every one of them."""
    to = to or f"bob.{token.split('-')[-1]}@example.org"
    cc = external(CASES[case], token)
    bcc = bcc or []
    head = (
        f'From: "Alice Example" <{sender}>\n'
        f'To: "Bob Colleague" <{to}>\n'
        "Cc: " + ",\n ".join(cc) + "\n"
        + ("Bcc: " + ", ".join(bcc) + "\n" if bcc else "")
        + f"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= partner day {token}\n"
        "Date: Tue, 24 Nov 2026 10:00:00 +0000\n"
        f"Message-ID: <{token}@interop.example.org>\n"
        f"Reply-To: <{sender}>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n"
        f"X-Interop-Token: {token}\n"
        "X-Long-Header: a folded header field value that continues\n"
        "\ton the next line (tab) and\n"
        "  on a third line (spaces)\n"
    )
    message = h.crlf(head + "\n" + BODY)
    f = workdir / f"{token}.eml"
    f.write_bytes(message)
    return h.Submission(sender=sender, rcpts=[to, *cc, *bcc], message=message, file=f)


# --------------------------------------------------------------------------------------------
# the environment: upstream Postfix, bccguard, MTA Postfix


@dataclass
class Env:
    work: Path
    pki: h.Pki
    upstream: h.Postfix
    relay: h.Bccguard
    mta: h.Postfix
    binary: str

    @property
    def plain_port(self) -> int:  # STARTTLS offered, AUTH optional: relay_networks may relay
        return self.relay.port(0)

    @property
    def submission_port(self) -> int:  # STARTTLS, AUTH required
        return self.relay.port(1)

    @property
    def smtps_port(self) -> int:  # implicit TLS, AUTH required
        return self.relay.port(2)

    def relay_config(self, **upstream_overrides) -> dict:
        var = self.work / f"var-{uuid.uuid4().hex[:6]}"
        var.mkdir()
        pwfile = self.work / "upstream.password"
        upstream = {
            "address": f"127.0.0.1:{self.upstream.port}",
            "tls": "starttls",
            "timeout_seconds": 10,
            "ca_file": str(self.pki.ca_cert),  # tls_server_name defaults to 127.0.0.1: IP SAN
            "username": UPSTREAM_USER,
            "password_file": str(pwfile),
        }
        upstream.update(upstream_overrides)
        for k in [k for k, v in upstream.items() if v is None]:
            del upstream[k]
        return {
            "server": {
                "hostname": RELAY_HOSTNAME,
                "max_message_size": 10_000_000,  # below Postfix's default message_size_limit
                "max_recipients": 100,
                "relay_networks": ["127.0.0.1/32"],
                "max_connections": 50,
                "command_timeout_seconds": 30,
                "data_timeout_seconds": 30,
                "shutdown_grace_seconds": 3,
            },
            "listener": [
                {"address": f"127.0.0.1:{h.free_port()}", "tls": "starttls", "auth": "optional"},
                {"address": f"127.0.0.1:{h.free_port()}", "tls": "starttls", "auth": "required"},
                {"address": f"127.0.0.1:{h.free_port()}", "tls": "implicit", "auth": "required"},
            ],
            "tls": {"certificate": str(self.pki.cert), "private_key": str(self.pki.key)},
            # alice is the shared login of the client MTA and of the test clients: it may send for
            # both domains (sender login map; without it bccguard refuses senders alice does not own).
            "auth": {"users_file": str(self.work / "users"),
                     "senders": {USER: ["*@sender.test", "*@example.org"]}},
            "upstream": upstream,
            "policy": POLICY,
            "audit": {"path": str(var / "audit.jsonl"), "recipients": "plain",
                      "hmac_key_file": str(var / "audit.key"), "log_accepts": False},
        }

    def logs(self) -> str:
        return (f"--- bccguard log ---\n{h.tail(self.relay.log_path)}\n"
                f"--- upstream postfix maillog ---\n{h.tail(self.upstream.log_path)}\n"
                f"--- mta postfix maillog ---\n{h.tail(self.mta.log_path)}")


@pytest.fixture(scope="module")
def env(request):
    if os.geteuid() != 0:
        pytest.fail("the interop tests run Postfix instances and must run as root", pytrace=False)
    missing = h.missing_tools(["postfix", h.POSTFIX_MASTER, "postqueue", "saslpasswd2", "openssl",
                               "swaks", "msmtp", "curl"])
    if missing:
        pytest.fail(f"missing tools {missing}: install tests/e2e/interop/README-packages.txt", pytrace=False)
    binary = h.bccguard_binary()
    if not os.access(binary, os.X_OK):
        pytest.fail(f"bccguard binary not found at {binary}: run `cargo build` or set BCCGUARD_BIN", pytrace=False)

    failed_before = request.session.testsfailed
    work = h.make_workdir()
    started: list = []
    try:
        pki = h.make_pki(work / "pki")
        (work / "upstream.password").write_text(UPSTREAM_PASSWORD + "\n")
        os.chmod(work / "upstream.password", 0o600)
        h.make_users_file(binary, work / "users", USER, PASSWORD)

        # Upstream: STARTTLS required, AUTH (Cyrus sasldb) required for every recipient, stores all.
        upstream = h.Postfix(work, "upstream", UPSTREAM_HOSTNAME, mailbox_domains="*", extra={
            "smtpd_tls_security_level": "encrypt",
            "smtpd_tls_cert_file": str(pki.cert),
            "smtpd_tls_key_file": str(pki.key),
            "smtpd_tls_received_header": "yes",
            "smtpd_tls_loglevel": "1",
            "mynetworks": "127.0.0.1/32",
            "smtpd_relay_restrictions": "permit_sasl_authenticated, reject",
            # Per-recipient verdicts from a real server: local parts "tempfail.*" get 450, "nosuch.*" 550.
            "smtpd_recipient_restrictions": f"check_recipient_access regexp:{work}/upstream/etc/rcpt_access, "
                                            "permit_sasl_authenticated, reject",
        })
        (work / "upstream" / "etc").mkdir(parents=True, exist_ok=True)
        (work / "upstream" / "etc" / "rcpt_access").write_text(
            "/^tempfail\\./ 450 4.2.1 Mailbox temporarily unavailable (test)\n"
            "/^nosuch\\./ 550 5.1.1 No such user here (test)\n"
        )
        upstream.sasl_user(UPSTREAM_USER, UPSTREAM_PASSWORD, UPSTREAM_REALM)
        started.append(upstream.start())

        e = Env(work=work, pki=pki, upstream=upstream, relay=None, mta=None, binary=binary)  # type: ignore[arg-type]
        relay = h.Bccguard(binary, work, e.relay_config(), name="bccguard")
        started.append(relay.start())
        e.relay = relay

        # The organisation's internal MTA: relays everything via bccguard's submission port,
        # verifying bccguard's certificate for "localhost" and logging in with SASL PLAIN.
        mta = h.Postfix(work, "mta", MTA_HOSTNAME, mailbox_domains="sender.test", extra={
            "relayhost": f"[localhost]:{e.submission_port}",
            "smtp_tls_security_level": "secure",
            "smtp_tls_secure_cert_match": "nexthop",
            "smtp_tls_CAfile": str(pki.ca_cert),
            "smtp_tls_loglevel": "1",
            "smtp_sasl_auth_enable": "yes",
            "smtp_sasl_password_maps": f"static:{USER}:{PASSWORD}",
            "smtp_sasl_security_options": "noanonymous",
            "smtp_sasl_tls_security_options": "noanonymous",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            # Two connections at most: a backlog makes Postfix reuse cached sessions (RSET, then
            # the next MAIL), the way a busy MTA talks to its relayhost.
            "smtp_destination_concurrency_limit": "2",
            "smtp_connection_cache_on_demand": "yes",
            "smtp_tls_connection_reuse": "yes",  # TLS sessions are only reused via tlsproxy(8)
        })
        started.append(mta.start())
        e.mta = mta
        yield e
    finally:
        problems = []
        for p in reversed(started):
            try:
                code = p.stop()
                if isinstance(p, h.Bccguard) and code not in (0, None):
                    problems.append(f"bccguard exited with {code} on SIGTERM\n{h.tail(p.log_path)}")
            except Exception as ex:  # noqa: BLE001 - cleanup must go on
                problems.append(f"stopping {p}: {ex}")
        keep = os.environ.get("BCCGUARD_INTEROP_KEEP") or request.session.testsfailed > failed_before
        if keep:
            print(f"\ninterop: kept work directory {work} (logs, Maildirs, configs)")
        else:
            shutil.rmtree(work, ignore_errors=True)
        if problems:
            pytest.fail("interop teardown: " + "\n".join(problems), pytrace=False)


# --------------------------------------------------------------------------------------------
# the clients


def send_smtplib(env: Env, sub: h.Submission) -> h.ClientResult:
    return h.smtplib_send(env.submission_port, sub, starttls=True, auth=(USER, PASSWORD), cafile=env.pki.ca_cert)


def send_swaks(env: Env, sub: h.Submission) -> h.ClientResult:
    return h.swaks_send(env.plain_port, sub, ["--pipeline"])


def send_msmtp(env: Env, sub: h.Submission) -> h.ClientResult:
    return h.msmtp_send(env.submission_port, sub, env.work, USER, PASSWORD, env.pki.ca_cert)


def send_curl(env: Env, sub: h.Submission) -> h.ClientResult:
    return h.curl_send(f"smtp://127.0.0.1:{env.plain_port}", sub)


def send_curl_starttls(env: Env, sub: h.Submission) -> h.ClientResult:
    return h.curl_send(f"smtp://127.0.0.1:{env.submission_port}", sub,
                       ["--ssl-reqd", "--user", f"{USER}:{PASSWORD}", "-k"])


def send_curl_smtps(env: Env, sub: h.Submission) -> h.ClientResult:
    return h.curl_send(f"smtps://localhost:{env.smtps_port}", sub,
                       ["--user", f"{USER}:{PASSWORD}", "--cacert", str(env.pki.ca_cert),
                        "--resolve", f"localhost:{env.smtps_port}:127.0.0.1"])


def send_postfix(env: Env, sub: h.Submission) -> h.ClientResult:
    """Hands the message to the MTA Postfix (plain, from mynetworks); Postfix relays via bccguard."""
    r = h.smtplib_send(env.mta.port, sub)
    r.client = "postfix"
    return r


CLIENTS = {
    "smtplib": (send_smtplib, SENDER),
    "swaks": (send_swaks, SENDER),
    "msmtp": (send_msmtp, SENDER),
    "curl": (send_curl, SENDER),
    "curl-starttls": (send_curl_starttls, SENDER),
    "curl-smtps": (send_curl_smtps, SENDER),
    "postfix": (send_postfix, MTA_SENDER),
}


# --------------------------------------------------------------------------------------------
# checks on what the upstream stored


def assert_trace(env: Env, stored: h.Stored, client: str):
    """The upstream's own Received: says ESMTPSA (STARTTLS + AUTH) with TLS details; bccguard's
    Received: follows; for the Postfix path, the MTA's Received: is below that."""
    received = [h.field_value(f) for f in stored.trace() if h.field_name(f) == "received"]
    assert received, f"no Received: fields in {stored.path}"
    top = received[0]
    assert f"by {UPSTREAM_HOSTNAME} (Postfix) with ESMTPSA" in top, (
        f"upstream session was not STARTTLS+AUTH (want 'with ESMTPSA'): {top}")
    assert "using TLS" in top, f"upstream Received: lacks TLS details: {top}"
    assert any(RELAY_HOSTNAME in r for r in received[1:]), f"no Received: by bccguard: {received}"
    if client == "postfix":
        assert any(f"by {MTA_HOSTNAME} (Postfix)" in r for r in received), f"no Received: by the MTA: {received}"


def assert_stored(env: Env, sub: h.Submission, case: str, client: str, token: str):
    stored = env.upstream.wait_stored(token, len(sub.rcpts))
    got_rcpts = sorted(s.delivered_to for s in stored)
    assert got_rcpts == sorted(sub.rcpts), (
        f"envelope recipients at the upstream differ:\n want {sorted(sub.rcpts)}\n got  {got_rcpts}")

    head, body = h.split_message(h.lf(sub.message))
    sent_fields = h.raw_fields(head)
    for s in stored:
        assert_trace(env, s, client)
        assert s.body == body, (
            f"body changed in transit ({s.path}):\n--- sent ---\n{body!r}\n--- stored ---\n{s.body!r}")
        got = s.content_fields()
        if case == "accept":
            assert got == sent_fields, (
                f"header changed in transit ({s.path}):\n--- sent ---\n{b''.join(sent_fields).decode()}"
                f"\n--- stored ---\n{b''.join(got).decode()}")
        else:  # rewrite
            to = [h.field_value(f) for f in got if h.field_name(f) == "to"]
            cc = [f for f in got if h.field_name(f) == "cc"]
            assert to == ["undisclosed-recipients:;"], f"rewritten To: is {to} ({s.path})"
            assert not cc, f"Cc: still present after rewrite: {cc}"
            others = [f for f in got if h.field_name(f) != "to"]
            want = [f for f in sent_fields if h.field_name(f) not in ("to", "cc")]
            assert others == want, (
                f"rewrite changed more than To/Cc ({s.path}):\n--- want ---\n{b''.join(want).decode()}"
                f"\n--- stored ---\n{b''.join(others).decode()}")
            leaked = [a for a in sub.rcpts if a != s.delivered_to and a.encode() in s.head]
            assert not leaked, f"other recipients still visible in the copy for {s.delivered_to}: {leaked}"


def assert_reject_seen(res: h.ClientResult):
    assert not res.ok, f"client reports success for a message that must be rejected:\n{res}"
    assert "550" in res.output and "5.7.1" in res.output, f"client did not see 550 5.7.1:\n{res}"
    assert "Bcc" in res.output, f"client did not see the reject text:\n{res}"


def assert_audit(env: Env, case: str, token: str, sender: str):
    records = env.relay.audit_for(token)
    if case == "accept":
        assert records == [], f"log_accepts is off, yet accepted message was audited: {records}"
        return
    assert len(records) == 1, f"want one audit record for {token}, got {records}"
    rec = records[0]
    assert rec["action"] == case and rec["rule"] == EXPECTED_RULE[case], rec
    assert rec["sender"] == sender, rec
    assert rec["visible_external"] == CASES[case], rec
    if case == "rewrite":
        assert rec.get("upstream") and rec["upstream"].startswith("250"), f"upstream reply not recorded: {rec}"


def assert_postfix_bounced(env: Env, sub: h.Submission, token: str):
    """The MTA got 550 5.7.1 from bccguard at end of DATA and bounced to the sender, whose
    mailbox is on the MTA itself; nothing stays queued."""
    bounces = env.mta.wait_stored(token, 1)
    assert len(bounces) == 1, [b.path for b in bounces]
    b = bounces[0]
    assert b.delivered_to == MTA_SENDER, b.delivered_to
    text = b.data.decode("utf-8", "replace")
    assert "Undelivered Mail Returned to Sender" in text, text[:2000]
    assert "said: 550 5.7.1" in text and "Bcc" in text, f"bounce lacks bccguard's 550 5.7.1 reply:\n{text[:4000]}"
    assert "in reply to end of DATA command" in text, text[:4000]
    log = env.mta.log
    assert "status=bounced" in log and "said: 550 5.7.1" in log, log[-4000:]
    h.wait_until(lambda: env.mta.queue() == [], timeout=10, what="empty MTA queue")


# --------------------------------------------------------------------------------------------
# the tests


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("client", list(CLIENTS))
def test_client_through_bccguard_into_postfix(env, client, case):
    send, sender = CLIENTS[client]
    token = f"{client}-{case}-{uuid.uuid4().hex[:8]}"
    sub = make_submission(env.work, token, case, sender)
    res = send(env, sub)
    print(res)  # the client's own account of the dialogue (shown with -rP / on failure)
    try:
        if case == "reject" and client != "postfix":
            assert_reject_seen(res)
        else:
            # The Postfix MTA accepts first and talks to bccguard afterwards.
            assert res.ok, f"client failed:\n{res}"
        if case == "reject":
            if client == "postfix":
                assert_postfix_bounced(env, sub, token)
            time.sleep(1.0)  # anything wrongly forwarded would have arrived by now
            leaked = env.upstream.stored_with(token)
            assert leaked == [], f"rejected message reached the upstream: {[s.path for s in leaked]}"
        else:
            assert_stored(env, sub, case, client, token)
        assert_audit(env, case, token, sender)
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- client ---\n{res}\n{env.logs()}") from None


def test_postfix_mta_verified_bccguard_certificate_and_authenticated(env):
    """The MTA's smtp client verified bccguard's certificate (level secure) and logged in."""
    token = f"postfix-tls-{uuid.uuid4().hex[:8]}"
    sub = make_submission(env.work, token, "accept", MTA_SENDER)
    assert send_postfix(env, sub).ok
    env.upstream.wait_stored(token, len(sub.rcpts))
    log = env.mta.log
    assert f"Verified TLS connection established to localhost[127.0.0.1]:{env.submission_port}" in log, log[-4000:]
    tag = token.split("-")[-1]
    lines = [l for l in log.splitlines() if f".{tag}@" in l and f"relay=localhost[127.0.0.1]:{env.submission_port}" in l]
    assert len(lines) == len(sub.rcpts) and all("status=sent (250" in l for l in lines), "\n".join(lines)


def test_upstream_postfix_saw_tls_and_sasl_login(env):
    """The upstream Postfix logged bccguard's TLS session and its SASL login for each message."""
    token = f"upstream-auth-{uuid.uuid4().hex[:8]}"
    sub = make_submission(env.work, token, "accept", SENDER)
    assert send_smtplib(env, sub).ok
    env.upstream.wait_stored(token, len(sub.rcpts))
    log = env.upstream.log
    assert "TLS connection established from localhost[127.0.0.1]" in log, log[-4000:]
    assert f"sasl_method=PLAIN, sasl_username={UPSTREAM_USER}@{UPSTREAM_REALM}" in log, log[-4000:]
    assert "authentication failed" not in log, log[-4000:]


@pytest.mark.parametrize("variant", ["wrong-password", "unknown-ca", "no-tls"])
def test_misconfigured_upstream_loses_nothing(env, variant):
    """A bccguard whose upstream settings are wrong must not get mail through, and must not
    acknowledge it: the client keeps the message (4xx) or gets the upstream's refusal."""
    overrides: dict = {}
    if variant == "wrong-password":
        bad = env.work / "wrong.password"
        bad.write_text("not-the-password\n")
        overrides["password_file"] = str(bad)
    elif variant == "unknown-ca":
        other = h.make_pki(env.work / "other-pki", name="other")
        overrides["ca_file"] = str(other.ca_cert)
    else:
        overrides.update({"tls": "none", "ca_file": None, "username": None, "password_file": None})
    relay = h.Bccguard(env.binary, env.work, env.relay_config(**overrides), name=f"bccguard-{variant}")
    relay.start()
    try:
        token = f"misconf-{variant}-{uuid.uuid4().hex[:8]}"
        sub = make_submission(env.work, token, "accept", SENDER)
        res = h.smtplib_send(relay.port(0), sub)
        print(res)
        assert not res.ok, f"{variant}: message acknowledged although the upstream cannot take it:\n{res}"
        code = res.detail.get("code")
        if variant in ("wrong-password", "unknown-ca"):
            # Our own misconfiguration must never bounce users' mail: temporary failure.
            assert code is not None and 400 <= code < 500, f"{variant}: want 4xx, got:\n{res}"
        else:
            assert code is not None and code >= 400, f"{variant}: want a refusal, got:\n{res}"
        time.sleep(0.5)
        assert env.upstream.stored_with(token) == []
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- bccguard-{variant} log ---\n{h.tail(relay.log_path)}") from None
    finally:
        assert relay.stop() == 0, h.tail(relay.log_path)


def test_split_gives_each_recipient_a_copy_addressed_to_them_alone(env):
    """split through the real upstream: one stored copy per envelope recipient, its To: naming
    that recipient alone, no Cc, every other header field and the body unchanged."""
    token = f"split-{uuid.uuid4().hex[:8]}"
    sub = make_submission(env.work, token, "rewrite", "splitter@example.org")
    res = send_smtplib(env, sub)
    assert res.ok, str(res)
    stored = env.upstream.wait_stored(token, len(sub.rcpts))
    assert sorted(s.delivered_to for s in stored) == sorted(sub.rcpts)
    head, body = h.split_message(h.lf(sub.message))
    want = [f for f in h.raw_fields(head) if h.field_name(f) not in ("to", "cc")]
    for s in stored:
        got = s.content_fields()
        to = [h.field_value(f) for f in got if h.field_name(f) == "to"]
        assert len(to) == 1 and s.delivered_to in to[0], f"copy for {s.delivered_to} has To: {to}"
        assert not [f for f in got if h.field_name(f) == "cc"], f"Cc: left in the copy for {s.delivered_to}"
        assert [f for f in got if h.field_name(f) != "to"] == want, f"split changed other fields ({s.path})"
        assert s.body == body
        leaked = [a for a in sub.rcpts if a != s.delivered_to and a.encode() in s.head]
        assert not leaked, f"copy for {s.delivered_to} shows {leaked}"
    rec = env.relay.audit_for(token)
    assert [r["action"] for r in rec] == ["split"], rec


@pytest.mark.parametrize("client", ["smtplib", "curl"])
def test_bcc_field_never_reaches_the_upstream(env, client):
    """A client that leaves the Bcc: field in the data (smtplib, curl send it as is): the blind
    recipient still gets the message, but no stored copy shows the Bcc field."""
    token = f"bcc-{client}-{uuid.uuid4().hex[:8]}"
    blind = f"blind.{token.split('-')[-1]}@partner0.example.net"
    sub = make_submission(env.work, token, "accept", SENDER, bcc=[blind])
    res = CLIENTS[client][0](env, sub)
    assert res.ok, str(res)
    stored = env.upstream.wait_stored(token, len(sub.rcpts))
    assert sorted(s.delivered_to for s in stored) == sorted(sub.rcpts)
    head, body = h.split_message(h.lf(sub.message))
    want = [f for f in h.raw_fields(head) if h.field_name(f) != "bcc"]
    for s in stored:
        assert s.content_fields() == want, f"want the header without Bcc only ({s.path}):\n{s.head.decode()}"
        assert blind.encode() not in s.head or s.delivered_to == blind, s.head.decode()
        assert s.body == body


def test_smtputf8_address_through_bccguard_into_postfix(env):
    """SMTPUTF8 end to end: a UTF-8 envelope sender and recipient, UTF-8 in To:, stored intact."""
    token = f"utf8-{uuid.uuid4().hex[:8]}"
    to = f"jörg.{token.split('-')[-1]}@example.org"
    sub = make_submission(env.work, token, "accept", "zoë@example.org", to=to)
    res = h.smtplib_send(env.submission_port, sub, starttls=True, auth=(USER, PASSWORD),
                         cafile=env.pki.ca_cert, mail_options=("SMTPUTF8",))
    assert res.ok, str(res)
    stored = env.upstream.wait_stored(token, len(sub.rcpts))
    assert sorted(s.delivered_to for s in stored) == sorted(sub.rcpts)
    head, body = h.split_message(h.lf(sub.message))
    for s in stored:
        assert s.values("Return-Path") == ["<zoë@example.org>"], s.values("Return-Path")
        assert s.content_fields() == h.raw_fields(head)
        assert s.body == body


def test_per_recipient_verdicts_of_a_real_upstream(env):
    """smtplib: the upstream's 450 and 550 for single RCPTs reach the client as they are; the
    good recipient gets the message."""
    token = f"rcptverdict-{uuid.uuid4().hex[:8]}"
    tag = token.split("-")[-1]
    sub = make_submission(env.work, token, "accept", SENDER)
    good = sub.rcpts[0]
    sub.rcpts = [good, f"tempfail.{tag}@partner0.example.net", f"nosuch.{tag}@partner1.example.net"]
    res = send_smtplib(env, sub)
    assert res.ok is False and "refused=" in res.output, str(res)  # sendmail() lists refused RCPTs
    assert f"'tempfail.{tag}@partner0.example.net': (450, b'4.2.1" in res.output, str(res)
    assert f"'nosuch.{tag}@partner1.example.net': (550, b'5.1.1" in res.output, str(res)
    env.upstream.wait_stored(token, 1)
    time.sleep(0.5)
    assert [s.delivered_to for s in env.upstream.stored_with(token)] == [good]


def test_postfix_mta_defers_and_bounces_per_recipient(env):
    """The MTA path: upstream says 450 for one recipient and 550 for another. Postfix must
    deliver the good one, keep the 450 one queued (deferred) and bounce the 550 one."""
    token = f"mtaverdict-{uuid.uuid4().hex[:8]}"
    tag = token.split("-")[-1]
    sub = make_submission(env.work, token, "accept", MTA_SENDER)
    good, temp, bad = sub.rcpts[0], f"tempfail.{tag}@partner0.example.net", f"nosuch.{tag}@partner1.example.net"
    sub.rcpts = [good, temp, bad]
    try:
        assert send_postfix(env, sub).ok
        env.upstream.wait_stored(token, 1)
        bounce = env.mta.wait_stored(token, 1)[0].data.decode("utf-8", "replace")
        assert f"Final-Recipient: rfc822; {bad}" in bounce and "Status: 5.1.1" in bounce, bounce[:3000]
        assert "No such user here (test)" in bounce, bounce[:3000]
        assert temp not in bounce.split("Content-Description: Undelivered Message")[0], bounce[:3000]
        deferred = h.wait_until(
            lambda: [q for q in env.mta.queue() if q.get("queue_name") == "deferred"], timeout=10,
            what="a deferred message in the MTA queue")
        rcpts = [r["address"] for q in deferred for r in q["recipients"]]
        assert rcpts == [temp], deferred
        assert "Mailbox temporarily unavailable (test)" in json.dumps(deferred), deferred
        assert [s.delivered_to for s in env.upstream.stored_with(token)] == [good]
    finally:
        h.run(["postsuper", "-c", str(env.mta.etc), "-d", "ALL", "deferred"])


def test_postfix_mta_batch_over_one_session(env):
    """Twelve messages handed to the MTA in one SMTP session (accept/rewrite/reject mixed):
    Postfix delivers them over its (possibly reused) connections to bccguard; every message
    ends where its policy says and none is lost or duplicated."""
    batch = []
    for i in range(12):
        case = list(CASES)[i % 3]
        token = f"batch{i:02d}-{case}-{uuid.uuid4().hex[:8]}"
        batch.append((case, token, make_submission(env.work, token, case, MTA_SENDER)))
    with smtplib.SMTP("127.0.0.1", env.mta.port, timeout=h.IO_TIMEOUT) as c:
        for _case, _token, sub in batch:
            assert c.sendmail(sub.sender, sub.rcpts, sub.message) == {}
    for case, token, sub in batch:
        if case == "reject":
            env.mta.wait_stored(token, 1)
        else:
            stored = env.upstream.wait_stored(token, len(sub.rcpts))
            assert sorted(s.delivered_to for s in stored) == sorted(sub.rcpts), token
    time.sleep(1.0)
    for case, token, sub in batch:
        n = len(env.upstream.stored_with(token))
        assert n == (0 if case == "reject" else len(sub.rcpts)), f"{token}: {n} stored copies"
        assert len(env.mta.stored_with(token)) == (1 if case == "reject" else 0), token
    # With two connections for twelve messages, Postfix reused sessions (RSET + next MAIL):
    # "conn_use=N" in its log marks a delivery over an already used connection.
    qids = {l.split()[5].rstrip(":") for l in env.mta.log.splitlines()
            if "postfix-mta/cleanup" in l and any(t in l for _c, t, _s in batch)}
    reused = [l for l in env.mta.log.splitlines()
              if "conn_use=" in l and "relay=localhost" in l and l.split()[5].rstrip(":") in qids]
    assert reused, "Postfix never reused a connection to bccguard in the batch"


def test_large_message_through_postfix_mta_and_bccguard(env):
    """A 4 MB message (SIZE= from Postfix, streamed through bccguard) arrives byte-identical."""
    token = f"large-{uuid.uuid4().hex[:8]}"
    sub = make_submission(env.work, token, "accept", MTA_SENDER)
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/0123456789ab\r\n"
    sub.message = sub.message + line * (4_000_000 // len(line)) + b".\r\n..\r\nend\r\n"
    res = send_postfix(env, sub)
    assert res.ok, str(res)
    stored = env.upstream.wait_stored(token, len(sub.rcpts), timeout=30)
    head, body = h.split_message(h.lf(sub.message))
    for s in stored:
        assert s.content_fields() == h.raw_fields(head)
        assert len(s.body) == len(body) and s.body == body, f"body differs ({len(s.body)} vs {len(body)} bytes)"
