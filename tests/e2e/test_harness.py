"""Self-tests of the harness (no bccguard involved): if these fail, fix the harness, not the relay."""

from __future__ import annotations

import smtplib
import tomllib

from conftest import base_config
from helpers import PyUpstream, SmtpSink, crlf, free_port, load_message, strip_first_received, to_toml


def test_toml_writer_round_trips(tmp_path):
    cfg = base_config(tmp_path, 2526, {"certificate": "c.pem", "private_key": "k.pem"}, "users")
    cfg["policy"]["dkim"] = {"on_rewrite": "forward"}
    parsed = tomllib.loads(to_toml(cfg))
    assert parsed == cfg


def test_smtp_sink_dump_parsing(tmp_path):
    sink = SmtpSink(tmp_path).start()
    try:
        msg = load_message("simple.eml", sender="a@example.org", to="b@example.org", tag="harness")
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=5) as s:
            s.sendmail("a@example.org", ["b@example.org", "c@example.net"], msg)
        [m] = sink.wait_for(1)
        assert m.sender == "a@example.org"
        assert m.rcpts == ["b@example.org", "c@example.net"]
        assert m.lf == msg.replace(b"\r\n", b"\n"), m.lf
        assert m.header("X-Folded") == ["first part second part"]
    finally:
        sink.cleanup()


def test_smtp_sink_restart_same_port(tmp_path):
    sink = SmtpSink(tmp_path).start()
    port = sink.port
    sink.stop()
    assert not sink.running
    sink.start()
    try:
        assert sink.port == port and sink.running
    finally:
        sink.cleanup()


def test_py_upstream_rejects_and_keeps_bytes():
    up = PyUpstream().start()
    try:
        msg = crlf("Received: from x\n\tby y\nSubject: t\n\n.dot\nend\n")
        with smtplib.SMTP("127.0.0.1", up.port, timeout=5) as s:
            refused = s.sendmail("a@example.org", ["ok@example.org", "reject1@example.org"], msg)
        assert refused == {"reject1@example.org": (550, b"5.1.1 No such user <reject1@example.org>")}
        [m] = up.wait_for(1)
        assert m.data == msg and m.rcpts == ["ok@example.org"]
        assert strip_first_received(m.data) == crlf("Subject: t\n\n.dot\nend\n")
    finally:
        up.stop()


def test_free_port_is_bindable():
    import socket
    p = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", p))
