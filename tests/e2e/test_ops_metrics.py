"""Issue 14.8 metrics over a real relay: reload counts and duration, the TLS certificate expiry
gauge (at start and after a certificate reload), the upstream latency histogram; and issue 14.4's
readable `end=` on the "disconnected" log line."""

from __future__ import annotations

import copy
import datetime
import re
import smtplib
import subprocess

import pytest

from helpers import http_get, send_mail, wait_until
from test_ops import SENDER, cc_message

pytestmark = pytest.mark.ops


def metric(text: str, series: str) -> float | None:
    """Value of one exact series line (`name{labels}`) in a Prometheus text scrape."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def not_after(cert: str) -> int:
    out = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in", cert],
                         check=True, capture_output=True, text=True, timeout=30).stdout
    when = out.strip().split("=", 1)[1]  # e.g. "Dec  4 15:00:00 2026 GMT"
    t = datetime.datetime.strptime(when, "%b %d %H:%M:%S %Y GMT")
    return int(t.replace(tzinfo=datetime.timezone.utc).timestamp())


def scrape(relay) -> str:
    status, text = http_get(relay.metrics_url + "/metrics")
    assert status == 200, status
    return text


def test_reload_metrics_and_certificate_expiry(relay, tmp_path):
    cert = relay.config["tls"]["certificate"]
    expiry = f'bccguard_tls_certificate_expiry_timestamp_seconds{{file="{cert}"}}'
    text = scrape(relay)
    assert metric(text, expiry) == not_after(cert), [l for l in text.splitlines() if "expiry" in l]
    assert metric(text, 'bccguard_reloads_total{result="ok"}') == 0
    assert metric(text, 'bccguard_reloads_total{result="failed"}') == 0

    original = copy.deepcopy(relay.config)  # relay.reload() keeps the config it was given
    broken = copy.deepcopy(relay.config)
    broken["policy"]["rule"][-1]["action"] = "explode"
    relay.reload(broken, wait=2)
    text = scrape(relay)
    assert metric(text, 'bccguard_reloads_total{result="failed"}') == 1
    assert metric(text, 'bccguard_reloads_total{result="ok"}') == 0

    # A new certificate with a different lifetime: the gauge follows it, the old series is gone.
    cert2, key2 = tmp_path / "cert2.pem", tmp_path / "key2.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "9", "-subj",
                    "/CN=reloaded.localhost", "-keyout", str(key2), "-out", str(cert2)],
                   check=True, capture_output=True, timeout=60)
    good = copy.deepcopy(original)
    good["tls"] = {"certificate": str(cert2), "private_key": str(key2)}
    relay.reload(good)
    text = wait_until(lambda: (t := scrape(relay)) and metric(t, 'bccguard_reloads_total{result="ok"}') == 1 and t,
                      timeout=5, what="a successful reload counted")
    assert metric(text, f'bccguard_tls_certificate_expiry_timestamp_seconds{{file="{cert2}"}}') == not_after(str(cert2))
    assert metric(text, expiry) is None, "the replaced certificate's series is removed"
    duration = metric(text, "bccguard_last_reload_duration_seconds")
    assert duration is not None and 0 < duration < 10, duration


def test_upstream_latency_histogram_counts_each_message(relay):
    before = metric(scrape(relay), "bccguard_upstream_latency_seconds_count") or 0
    for i in range(3):
        r = send_mail(relay.smtp_port, SENDER, ["bob@example.org"], cc_message(f"lat{i}", cc=["bob@example.org"]))
        assert r["data"].code == 250
    text = scrape(relay)
    assert metric(text, "bccguard_upstream_latency_seconds_count") == before + 3
    total = metric(text, "bccguard_upstream_latency_seconds_sum")
    assert total is not None and 0 < total < 30, total
    # Every message took less than the largest finite bucket.
    top = [l for l in text.splitlines() if l.startswith("bccguard_upstream_latency_seconds_bucket") and 'le="+Inf"' not in l]
    assert top and float(top[-1].rsplit(" ", 1)[1]) == before + 3, top[-3:]


def test_disconnected_line_names_how_the_session_ended(relay):
    def end_of(port: int) -> str | None:
        """The end= value logged for the session of the client at local `port`."""
        log = relay.log
        m = re.search(rf"session{{id=([^}}]+)}}.*connected client=127\.0\.0\.1:{port} ", log)
        if not m:
            return None
        d = re.search(rf"session{{id={re.escape(m.group(1))}}}.*disconnected end=(.*)$", log, re.M)
        return d and d.group(1).strip()

    polite = smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=10)
    polite_port = polite.sock.getsockname()[1]
    polite.ehlo("client.example.org")
    polite.quit()
    rude = smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=10)
    rude_port = rude.sock.getsockname()[1]
    rude.ehlo("client.example.org")
    rude.close()  # no QUIT
    wait_until(lambda: end_of(polite_port) and end_of(rude_port), timeout=5, what="both disconnected lines")
    assert end_of(polite_port) == "quit"
    assert end_of(rude_port) == "closed"
    assert not re.search(r"end=(Quit|Closed|Io\()", relay.log), "no Rust Debug names in the log"
