"""Operations (issue 6): metrics and health, SIGHUP reload (good and broken configs, TLS
certificate), HAProxy PROXY protocol, JSON logs, config check, environment overrides, limits."""

from __future__ import annotations

import copy
import json
import re
import signal
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REJECT_TEXT, require_tool
from helpers import (
    ConnectionClosed,
    RawClient,
    external_addresses,
    fold_address_list,
    free_port,
    http_get,
    load_message,
    send_mail,
    strip_first_received,
    lf,
    wait_for_port,
    wait_until,
)

pytestmark = pytest.mark.ops

SENDER = "alice@example.org"
EXTERNAL18 = external_addresses(18)
ROOT = Path(__file__).resolve().parents[2]


def cc_message(tag: str, cc=EXTERNAL18, sender: str = SENDER) -> bytes:
    return load_message("cc_external.eml", sender=sender, cc=fold_address_list(cc), tag=tag)


# --------------------------------------------------------------------------------------------
# metrics and health


def test_metrics_count_traffic(relay):
    assert send_mail(relay.smtp_port, SENDER, EXTERNAL18, cc_message("metrics"))["data"].code == 250
    assert send_mail(relay.smtp_port, SENDER, ["bob@example.org"], cc_message("m2", cc=["bob@example.org"]))[
        "data"].code == 250
    status, text = http_get(relay.metrics_url + "/metrics")
    assert status == 200, status
    names = set(re.findall(r"^(bccguard_\w+)", text, re.M))
    assert names, f"no bccguard_ metrics:\n{text[:2000]}"
    rewrite = [l for l in text.splitlines() if l.startswith("bccguard_") and 'action="rewrite"' in l]
    assert rewrite, f'no series with action="rewrite":\n{text[:3000]}'
    assert any(float(l.rsplit(" ", 1)[1]) >= 1 for l in rewrite), rewrite


def test_healthz_follows_upstream(relay):
    status, _ = http_get(relay.metrics_url + "/healthz")
    assert status == 200
    relay.upstream.stop()
    wait_until(lambda: http_get(relay.metrics_url + "/healthz")[0] == 503, timeout=12,
               what="/healthz to report 503 with the upstream down")
    relay.upstream.start()
    wait_until(lambda: http_get(relay.metrics_url + "/healthz")[0] == 200, timeout=12,
               what="/healthz to recover to 200")


# --------------------------------------------------------------------------------------------
# reload


def test_sighup_changes_rule(relay):
    assert send_mail(relay.smtp_port, SENDER, EXTERNAL18, cc_message("before-reload"))["data"].code == 250
    cfg = copy.deepcopy(relay.config)
    cfg["policy"]["rule"][-1].update(action="reject", message=REJECT_TEXT)
    relay.reload(cfg)
    r = send_mail(relay.smtp_port, SENDER, EXTERNAL18, cc_message("after-reload"))
    assert r["data"].code == 550 and r["data"].status == "5.7.1", r["data"]
    assert len(relay.dumps(settle=0.3)) == 1
    assert relay.alive()


def test_sighup_with_broken_config_keeps_old_policy(relay):
    cfg = copy.deepcopy(relay.config)
    cfg["policy"]["rule"][-1]["action"] = "explode"
    new_log = relay.reload(cfg, wait=2)
    assert relay.alive(), "a broken config on SIGHUP must not stop the relay"
    assert re.search(r"explode|policy\.rule|action", new_log), f"reload failure not logged with a reason:\n{new_log}"
    # Old policy (rewrite) still in force.
    assert send_mail(relay.smtp_port, SENDER, EXTERNAL18, cc_message("old-policy"))["data"].code == 250
    [m] = relay.upstream.wait_for(1)
    assert m.header("To") == ["undisclosed-recipients:;"]
    # A later good config is taken.
    cfg["policy"]["rule"][-1]["action"] = "reject"
    relay.reload(cfg)
    r = send_mail(relay.smtp_port, SENDER, EXTERNAL18, cc_message("good-again"))
    assert r["data"].code == 550, r["data"]


def test_sighup_reloads_tls_certificate(relay, tmp_path):
    cert, key = tmp_path / "cert2.pem", tmp_path / "key2.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=reloaded.localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    cfg = copy.deepcopy(relay.config)
    cfg["tls"] = {"certificate": str(cert), "private_key": str(key)}
    relay.reload(cfg)
    want = ssl.PEM_cert_to_DER_cert(cert.read_text())
    c = RawClient(relay.tls_port, tls=True)
    try:
        assert c.sock.getpeercert(binary_form=True) == want, "implicit TLS listener still serves the old certificate"
    finally:
        c.close()


# --------------------------------------------------------------------------------------------
# HAProxy in front (PROXY protocol v2)


@pytest.fixture
def haproxy_pair(harness, tmp_path):
    """Two bccguard instances behind HAProxy (roundrobin, send-proxy-v2). Only 127.0.0.2 may relay
    without AUTH; HAProxy itself connects from 127.0.0.1, which is the only trusted proxy."""
    haproxy = require_tool("haproxy")
    sink = harness.sink()

    def mutate(cfg):
        cfg["server"]["relay_networks"] = ["127.0.0.2/32"]
        cfg["listener"] = [{"address": f"127.0.0.1:{free_port()}", "tls": "none", "auth": "none",
                            "proxy_protocol": True, "proxy_networks": ["127.0.0.1/32"]}]
        cfg["audit"]["log_accepts"] = True

    relays = [harness.relay(mutate, upstream=sink, name=f"behind-haproxy-{i}") for i in (1, 2)]
    port = free_port()
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(f"""
global
    maxconn 100
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend smtp_in
    bind 127.0.0.1:{port}
    default_backend bccguard
backend bccguard
    balance roundrobin
    server r1 127.0.0.1:{relays[0].smtp_port} send-proxy-v2
    server r2 127.0.0.1:{relays[1].smtp_port} send-proxy-v2
""")
    check = subprocess.run([haproxy, "-c", "-f", str(conf)], capture_output=True, timeout=10)
    assert check.returncode == 0, check.stdout + check.stderr
    log = open(tmp_path / "haproxy.log", "wb")
    proc = subprocess.Popen([haproxy, "-db", "-f", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)

    def stop():
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(3)
    harness.cleanups.append(stop)
    wait_for_port(port, alive=lambda: proc.poll() is None)
    return port, relays, sink


def test_haproxy_proxy_protocol_client_address(haproxy_pair):
    port, relays, sink = haproxy_pair
    # Round robin spreads connections over both instances; which one gets the first is HAProxy's
    # business, so send until both have audited one (log_accepts is on), at most 6 messages.
    for i in range(6):
        r = send_mail(port, SENDER, EXTERNAL18, cc_message(f"via-haproxy-{i}"), source="127.0.0.2")
        assert r["rcpt"][0].code == 250, f"127.0.0.2 is in relay_networks (via PROXY header): {r}"
        assert r["data"].code == 250, r
        if i >= 1 and all(relay.audit_records() for relay in relays):
            break
    sink.wait_for(i + 1)
    for relay in relays:
        recs = relay.audit_records()
        assert recs, f"{relay.name} got no message through HAProxy"
        assert all(str(rec["client"]).rsplit(":", 1)[0].strip("[]") == "127.0.0.2" for rec in recs), recs


def test_haproxy_relay_networks_use_proxied_address(haproxy_pair):
    port, relays, sink = haproxy_pair
    for _ in range(2):  # both instances (roundrobin)
        with RawClient(port, source="127.0.0.3") as c:
            c.ehlo()
            assert c.cmd(f"MAIL FROM:<{SENDER}>").code == 250
            r = c.cmd("RCPT TO:<victim@outside.example.com>")
            assert r.code == 554 and r.status == "5.7.1", f"127.0.0.3 is not in relay_networks: {r}"
    assert sink.messages(settle=0.3) == []


def test_proxy_header_from_untrusted_peer_is_not_believed(make_relay):
    def mutate(cfg):
        cfg["server"]["relay_networks"] = ["127.0.0.2/32"]
        cfg["listener"] = [{"address": f"127.0.0.1:{free_port()}", "tls": "none", "auth": "none",
                            "proxy_protocol": True, "proxy_networks": ["127.0.0.1/32"]}]
    relay = make_relay(mutate)
    try:
        c = RawClient(relay.smtp_port, source="127.0.0.5", greeting=False)
        c.send(b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 25\r\n")
        banner = c.reply()
        if banner.code != 220:
            return  # refused outright: fine
        c.ehlo()
        r = c.cmd(f"MAIL FROM:<{SENDER}>")
        if r.code == 250:
            r = c.cmd("RCPT TO:<victim@outside.example.com>")
        assert r.code >= 500, f"forged PROXY header from an untrusted peer granted relaying: {r}"
    except (ConnectionClosed, OSError):
        pass  # connection dropped: fine
    assert relay.dumps(settle=0.3) == []


# --------------------------------------------------------------------------------------------
# logs, config, environment, limits


def test_json_log_format(make_relay):
    relay = make_relay(log_format="json")
    assert send_mail(relay.smtp_port, SENDER, EXTERNAL18, cc_message("json-log"))["data"].code == 250
    relay.upstream.wait_for(1)
    time.sleep(0.2)
    lines = [l for l in relay.log.splitlines() if l.strip()]
    assert lines, "no log output"
    for l in lines:
        json.loads(l)  # every line is one JSON object


def test_config_check_shipped_config():
    import os
    binary = os.environ.get("BCCGUARD_BIN", str(ROOT / "target/debug/bccguard"))
    p = subprocess.run([binary, "config", "check", "--config", str(ROOT / "config/bccguard.toml")],
                       capture_output=True, timeout=30, cwd=ROOT)
    assert p.returncode == 0, (p.stdout + p.stderr).decode(errors="replace")
    assert p.stdout.strip(), "config check printed no description of the policy"


def test_config_check_names_bad_key(relay, tmp_path):
    cfg = copy.deepcopy(relay.config)
    cfg["server"]["relay_networks"] = ["0.0.0.0/0"]
    bad = tmp_path / "bad.toml"
    from helpers import to_toml
    bad.write_text(to_toml(cfg))
    p = relay.cli("config", "check", "--config", str(bad))
    out = (p.stdout + p.stderr).decode(errors="replace")
    assert p.returncode != 0, out
    assert "relay_networks" in out and "bad.toml" in out, out


def test_serve_refuses_open_relay_config(make_relay):
    relay = make_relay(lambda cfg: cfg["server"].update(relay_networks=["0.0.0.0/0"]), start=False)
    relay.write_config()
    p = subprocess.run([relay.binary, "serve", "--config", str(relay.config_path)], capture_output=True, timeout=10)
    assert p.returncode != 0
    assert b"relay_networks" in p.stderr + p.stdout


def test_environment_overrides_upstream(harness):
    sink = harness.sink()
    relay = harness.relay(upstream=None, env={"BCCGUARD__UPSTREAM__ADDRESS": f"127.0.0.1:{sink.port}"})
    relay.upstream = sink
    msg = cc_message("env", cc=["bob@example.org"])
    r = send_mail(relay.smtp_port, SENDER, ["bob@example.org"], msg)
    assert r["data"] is not None and r["data"].code == 250, r
    [m] = sink.wait_for(1)
    assert strip_first_received(m.lf) == lf(msg)


def test_max_connections(make_relay):
    relay = make_relay(lambda cfg: cfg["server"].update(max_connections=2))
    time.sleep(0.5)  # let the harness's start-up probe connections be released
    held = [RawClient(relay.smtp_port) for _ in range(2)]
    try:
        assert all(c.banner.code == 220 for c in held), [c.banner for c in held]
        with RawClient(relay.smtp_port, greeting=False, timeout=3) as extra:
            r = extra.reply()
            assert r.code == 421 and r.status == "4.3.2", r
    finally:
        for c in held:
            c.close()
    time.sleep(0.3)
    with RawClient(relay.smtp_port) as c:
        assert c.banner.code == 220, "slots not freed after clients left"


def test_sigint_also_stops(relay):
    code = relay.stop(sig=signal.SIGINT)
    relay.stopped_by_test = True
    assert code == 0, code
