"""TLS session resumption and the credential cache (issue 16), over real sockets with Python's ssl:
a returning client resumes its TLS session (implicit TLS and STARTTLS), also after a SIGHUP that
swapped the certificate, and a repeated login is a cache hit; both show in /metrics."""

from __future__ import annotations

import copy
import re
import socket
import ssl
import subprocess

import pytest

from conftest import PASSWORD, USER
from helpers import RawClient, http_get

pytestmark = pytest.mark.relay


def metric(relay, series: str) -> int:
    _, text = http_get(relay.metrics_url + "/metrics")
    m = re.search(r"^" + re.escape(series) + r" (\d+)", text, re.M)
    assert m, f"{series} missing from /metrics"
    return int(m.group(1))


def implicit_visit(port: int, ctx: ssl.SSLContext, session=None) -> tuple[ssl.SSLSession, bool, bytes]:
    """One implicit-TLS visit: handshake, greeting, EHLO, QUIT. Returns (session, reused, cert)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=8)
    s = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
    try:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(b"EHLO resume.example\r\n")
        while (line := f.readline())[3:4] == b"-":
            pass
        assert line.startswith(b"250")
        s.sendall(b"QUIT\r\n")
        f.readline()  # TLS 1.3 tickets arrive after the handshake: reading makes ssl take them
        return s.session, s.session_reused, s.getpeercert(binary_form=True)
    finally:
        s.close()


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_returning_client_resumes_tls_also_after_certificate_reload(relay, tmp_path):
    ctx = client_context()
    sess, reused, _ = implicit_visit(relay.tls_port, ctx)
    assert not reused
    sess, reused, _ = implicit_visit(relay.tls_port, ctx, sess)
    assert reused, "second visit with the session ticket was a full handshake"
    assert metric(relay, 'bccguard_tls_inbound_sessions_total{kind="resumed"}') == 1

    cert, key = tmp_path / "cert2.pem", tmp_path / "key2.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=reloaded.localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    cfg = copy.deepcopy(relay.config)
    cfg["tls"] = dict(cfg["tls"], certificate=str(cert), private_key=str(key))
    relay.reload(cfg)
    # A new client gets the new certificate; the returning one still resumes.
    _, reused_new, der = implicit_visit(relay.tls_port, ctx)
    assert not reused_new and der == ssl.PEM_cert_to_DER_cert(cert.read_text())
    _, reused, _ = implicit_visit(relay.tls_port, ctx, sess)
    assert reused, "ticket issued before the SIGHUP no longer resumes"


def test_resumption_off_when_lifetime_is_zero(make_relay):
    relay = make_relay(mutate=lambda cfg: cfg["tls"].update(session_ticket_lifetime_seconds=0))
    ctx = client_context()
    sess, _, _ = implicit_visit(relay.tls_port, ctx)
    _, reused, _ = implicit_visit(relay.tls_port, ctx, sess)
    assert not reused
    assert metric(relay, 'bccguard_tls_inbound_sessions_total{kind="full"}') == 2


def test_repeated_login_is_a_cache_hit_and_wrong_password_never_is(relay):
    def login(password: str) -> int:
        with RawClient(relay.submission_port) as c:
            c.ehlo()
            c.starttls()
            c.ehlo()
            return c.auth_plain(USER, password).code

    assert login(PASSWORD) == 235
    assert login("wrong") == 535
    assert login(PASSWORD) == 235
    assert login(PASSWORD) == 235
    assert metric(relay, 'bccguard_auth_cache_total{result="hit"}') == 2
    assert metric(relay, 'bccguard_auth_cache_total{result="miss"}') == 2
    assert metric(relay, 'bccguard_auth_attempts_total{result="failed"}') == 1
