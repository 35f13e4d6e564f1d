"""Audit durability under faults (issue 11 items 2 and 5): a full audit disk and an immutable audit
log must never let a message be acknowledged (250) without a durable `decision` record; those
messages get 451 4.3.0 and are not forwarded. A removed HMAC key file stops the relay from
starting unless a new key is asked for explicitly.

The full-disk and immutable tests need the two-phase audit wiring in the delivery stage
(`AuditLog::record_decision` before forwarding): before it, they fail by design and print the
messages acknowledged without a decision record."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import ConnectionClosed, RawClient, dot_stuff, external_addresses, fold_address_list, load_message

pytestmark = pytest.mark.audit

SENDER = "alice@example.org"
EXTERNAL18 = external_addresses(18)
SESSIONS = 20


def message(tag: str) -> bytes:
    """A rewrite (18 outside addresses in Cc) with Message-ID <cc-TAG@example.org>."""
    return load_message("cc_external.eml", sender=SENDER, cc=fold_address_list(EXTERNAL18), tag=tag)


def session(port: int, name: str, count: int) -> list[tuple[str, int, str | None]]:
    """One client connection sending `count` messages in turn: [(message id, code, status)]."""
    out = []
    with RawClient(port) as c:
        c.ehlo()
        for i in range(count):
            tag = f"{name}-{i}"
            mid = f"<cc-{tag}@example.org>"
            try:
                r = c.cmd(f"MAIL FROM:<{SENDER}>")
                if r.code != 250:
                    out.append((mid, r.code, r.status))
                    c.cmd("RSET")
                    continue
                for rcpt in EXTERNAL18:
                    c.cmd(f"RCPT TO:<{rcpt}>")
                r = c.cmd("DATA")
                if r.code == 354:
                    c.send(dot_stuff(message(tag)) + b".\r\n")
                    r = c.reply()
                else:
                    c.cmd("RSET")
                out.append((mid, r.code, r.status))
            except (ConnectionClosed, OSError) as e:
                out.append((mid, -1, str(e)))
                break
        try:
            c.cmd("QUIT")
        except (ConnectionClosed, OSError):
            pass
    return out


def concurrent_sessions(port: int, label: str, per_session: int) -> list[tuple[str, int, str | None]]:
    with ThreadPoolExecutor(SESSIONS) as pool:
        futures = [pool.submit(session, port, f"{label}{n}", per_session) for n in range(SESSIONS)]
        return [r for f in futures for r in f.result()]


def decision_ids(relay) -> set[str]:
    """Message-IDs of the `decision` records on disk (the relay's own file, read afresh)."""
    return {r.get("message_id") for r in relay.audit_lines() if r.get("kind") == "decision"}


def check(relay, results, label: str, expect_some_accepted: bool):
    """0 messages acknowledged without a durable decision record; all others 451 4.3.0."""
    decided = decision_ids(relay)
    acked = [mid for mid, code, _ in results if code == 250]
    refused = [(mid, code, status) for mid, code, status in results if code != 250]
    acked_without = [mid for mid in acked if mid not in decided]
    delivered = [d.header("Message-ID")[0].strip() for d in relay.dumps(settle=0.5)]
    ours = [mid for mid in delivered if mid.startswith(f"<cc-{label}")]
    forwarded_without = [mid for mid in ours if mid not in decided]
    print(f"{label}: {len(results)} messages from {SESSIONS} concurrent sessions: {len(acked)} got 250, "
          f"{len(refused)} refused; {len(decided)} decision records on disk; "
          f"{len(acked_without)} acknowledged without a decision record; "
          f"{len(ours)} reached the upstream, {len(forwarded_without)} of them without a decision record")
    assert acked_without == [], f"{len(acked_without)} messages got 250 without a durable decision record"
    assert forwarded_without == [], f"{len(forwarded_without)} messages forwarded without a decision record"
    wrong = [(mid, code, status) for mid, code, status in refused if (code, status) != (451, "4.3.0")]
    assert wrong == [], f"refused otherwise than 451 4.3.0: {wrong[:5]}"
    assert refused, "the audit fault never showed: the test proves nothing"
    if expect_some_accepted:
        assert acked, "nothing was accepted before the disk filled: the test proves nothing"


def mount_tmpfs(harness, where: Path, size: str = "64k"):
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       capture_output=True, timeout=30)
    if r.returncode != 0:
        pytest.skip(f"mount -t tmpfs refused ({r.stderr.decode(errors='replace').strip()}): needs root")
    harness.cleanups.append(lambda: subprocess.run(["umount", str(where)], capture_output=True, timeout=30))


def test_full_audit_disk_never_acknowledges_without_a_decision_record(harness, tmp_path):
    disk = tmp_path / "audit-tmpfs"
    mount_tmpfs(harness, disk)
    # The key stays off the small disk: the log is what fills up.
    relay = harness.relay(lambda cfg: cfg["audit"].update(path=str(disk / "audit.jsonl")))
    results = concurrent_sessions(relay.smtp_port, "full", per_session=5)
    check(relay, results, "full", expect_some_accepted=True)


def test_immutable_audit_log_never_acknowledges_without_a_decision_record(harness):
    relay = harness.relay()
    [(mid, code, _)] = session(relay.smtp_port, "before", 1)
    assert code == 250
    assert mid in decision_ids(relay), "the wiring writes a decision record before forwarding"
    # ext4 (pytest's tmp dir) refuses writes to an immutable file even through an open handle.
    r = subprocess.run(["chattr", "+i", str(relay.audit_path)], capture_output=True, timeout=30)
    if r.returncode != 0:
        pytest.skip(f"chattr +i refused ({r.stderr.decode(errors='replace').strip()}): needs root on ext4")
    harness.cleanups.append(lambda: subprocess.run(["chattr", "-i", str(relay.audit_path)], timeout=30))
    results = concurrent_sessions(relay.smtp_port, "immutable", per_session=2)
    check(relay, results, "immutable", expect_some_accepted=False)
    assert all(code == 451 for _, code, _ in results), "nothing can be recorded, so nothing is accepted"


def test_removed_key_file_refuses_start_until_a_new_key_is_asked_for(harness):
    relay = harness.relay()
    [(_, code, _)] = session(relay.smtp_port, "keyed", 1)
    assert code == 250
    relay.stopped_by_test = True
    assert relay.stop() == 0
    key = Path(relay.config["audit"]["hmac_key_file"])
    key.unlink()

    p = subprocess.run([relay.binary, "serve", "--config", str(relay.config_path)], capture_output=True,
                       timeout=30, cwd=relay.workdir, stdin=subprocess.DEVNULL)
    text = (p.stdout + p.stderr).decode(errors="replace")
    print(text[-1500:])
    assert p.returncode != 0, "started with a log whose key file is gone"
    assert str(key) in text and "audit.new_key" in text, text[-2000:]
    assert not key.exists(), "a new key was made silently"

    again = harness.relay(config=relay.config, upstream=relay.upstream, env={"BCCGUARD__AUDIT__NEW_KEY": "true"},
                          name="relay-newkey")
    [(_, code, _)] = session(again.smtp_port, "rekeyed", 1)
    assert code == 250
    kinds = [r.get("kind", "record") for r in again.audit_lines()]
    assert "key" in kinds, kinds
    key_rec = next(r for r in again.audit_lines() if r.get("kind") == "key")
    assert key.read_text().strip() not in str(key_rec), "the key itself was written into the log"
    p = again.cli("audit", "verify", "--config", str(again.config_path))
    assert p.returncode == 0, (p.stdout + p.stderr).decode(errors="replace")
    assert b"HMAC key changed at seq" in p.stdout
