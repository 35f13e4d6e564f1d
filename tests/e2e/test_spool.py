"""The durable spool for split copies (issue 11 item 1), end to end: a split copy the upstream
defers is spooled, the client gets 250, the copy survives a relay restart and is delivered once
when the upstream recovers (`spool flush`), or is bounced to the sender after its lifetime.
`spool list` and `/healthz` show it meanwhile.

Skipped while `serve` does not open the spool yet (no `lock` file in the spool folder)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from helpers import external_addresses, fold_address_list, http_get, load_message, send_mail, wait_until

pytestmark = pytest.mark.relay

SPLITTER = "splitter@example.org"
TEMP = "tempdata@partner.example"


def spool_relay(harness, **spool):
    upstream = harness.py_upstream()

    def mutate(cfg):
        var = Path(cfg["audit"]["path"]).parent
        cfg["spool"] = {
            "path": str(var / "spool"),
            "backoff_initial_seconds": 1,
            "backoff_max_seconds": 2,
            **spool,
        }

    relay = harness.relay(mutate, upstream=upstream)
    folder = Path(relay.config["spool"]["path"])
    if not (folder / "lock").exists():
        pytest.skip("serve does not open the spool yet (delivery wiring pending)")
    return relay, folder


def spool_list(relay) -> list[dict]:
    out = subprocess.run(
        [relay.binary, "spool", "list", "--config", str(relay.config_path), "--json"],
        capture_output=True, text=True, timeout=10, cwd=relay.workdir,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def send_split(relay, tag: str):
    rcpts = external_addresses(6) + [TEMP]
    msg = load_message("cc_external.eml", sender=SPLITTER, cc=fold_address_list(rcpts), tag=tag)
    return send_mail(relay.smtp_port, SPLITTER, rcpts, msg)


def test_deferred_split_copy_is_spooled_survives_kill_and_is_delivered_once(harness):
    relay, folder = spool_relay(harness, backoff_initial_seconds=3600, backoff_max_seconds=3600)
    up = relay.upstream
    r = send_split(relay, "spool-restart")
    assert r["data"].code == 250, r
    up.wait_for(6)
    waiting = spool_list(relay)
    assert [e["rcpt"] for e in waiting] == [TEMP], waiting
    status, body = http_get(relay.metrics_url + "/healthz")
    assert status == 200 and "degraded: spool holds 1 copies" in body, body
    assert "bccguard_spool_entries 1" in relay.metrics()

    # kill -9: the copy was fsynced before the 250, so no clean shutdown is needed to keep it.
    relay.kill()
    relay.start()
    assert [e["rcpt"] for e in spool_list(relay)] == [TEMP], "lost in the kill -9 and restart"
    up.tempdata_ok = True
    out = subprocess.run(
        [relay.binary, "spool", "flush", "--config", str(relay.config_path)],
        capture_output=True, text=True, timeout=10, cwd=relay.workdir,
    )
    assert out.returncode == 0 and "flush requested" in out.stdout, out
    wait_until(lambda: not spool_list(relay), timeout=10, what="spool drained")
    msgs = up.messages(settle=0.5)
    to_temp = [m for m in msgs if TEMP in m.rcpts]
    assert len(to_temp) == 1, "the spooled copy arrives exactly once"
    assert to_temp[0].sender == SPLITTER
    assert [m for m in msgs if m.sender == ""] == [], "no report: the copy was delivered"
    assert sorted(a for m in msgs for a in m.rcpts) == sorted(external_addresses(6) + [TEMP])
    print(f"spooled copy delivered once after kill -9, restart and flush; {len(msgs)} messages upstream")


def test_spooled_copy_is_bounced_to_the_sender_after_its_lifetime(harness):
    relay, folder = spool_relay(harness, max_lifetime_seconds=3)
    up = relay.upstream
    started = time.monotonic()
    r = send_split(relay, "spool-expiry")
    assert r["data"].code == 250, r
    msgs = wait_until(
        lambda: [m for m in up.messages() if m.sender == ""], timeout=15, what="expiry report"
    )
    took = time.monotonic() - started
    assert len(msgs) == 1
    dsn = msgs[0]
    assert dsn.rcpts == [SPLITTER]
    assert b"Final-Recipient: rfc822; " + TEMP.encode() in dsn.data
    assert b"Status: 5.4.7" in dsn.data
    assert b"451 4.3.0" in dsn.data, "the last error is in the report"
    wait_until(lambda: not spool_list(relay), timeout=5, what="spool empty")
    assert not [m for m in up.messages() if TEMP in m.rcpts]
    print(f"report reached the sender {took:.1f} s after the 250 (lifetime 3 s)")
