"""Audit (issue 4): one hash-chained JSON line per intervention, pseudonymised recipients, the
`audit verify` / `audit query` commands, and refusing mail that cannot be audited."""

from __future__ import annotations

import json

import pytest

from helpers import external_addresses, fold_address_list, load_message, send_mail

pytestmark = pytest.mark.audit

SENDER = "alice@example.org"
EXTERNAL18 = external_addresses(18)


def cc_message(tag: str, cc=EXTERNAL18, sender: str = SENDER) -> bytes:
    return load_message("cc_external.eml", sender=sender, cc=fold_address_list(cc), tag=tag)


def field(rec: dict, *names: str):
    """The first of these keys present in the record (SPEC says "sequence", the brief "seq")."""
    for n in names:
        if n in rec:
            return rec[n]
    raise AssertionError(f"record has none of {names}: {sorted(rec)}")


def recipient_entries(rec: dict) -> list[str]:
    value = field(rec, "recipients")
    if isinstance(value, dict):  # e.g. {"visible": [...], "envelope": [...]}
        out = []
        for v in value.values():
            out.extend(v if isinstance(v, list) else [v])
        return out
    return list(value)


def send_three_interventions(relay):
    """rewrite, reject and split, in that order."""
    assert send_mail(relay.smtp_port, SENDER, EXTERNAL18, cc_message("a-rewrite"))["data"].code == 250
    r = send_mail(relay.smtp_port, "rejecter@example.org", EXTERNAL18,
                  cc_message("a-reject", sender="rejecter@example.org"))
    assert r["data"].code == 550
    six = EXTERNAL18[:6]
    r = send_mail(relay.smtp_port, "splitter@example.org", six, cc_message("a-split", cc=six, sender="splitter@example.org"))
    assert r["data"].code == 250
    return relay.wait_audit(3)


def test_records_for_rewrite_reject_split(relay):
    recs = send_three_interventions(relay)
    assert len(recs) == 3, recs
    assert [r["action"] for r in recs] == ["rewrite", "reject", "split"]
    assert [r["rule"] for r in recs] == ["many-external", "reject-sender", "split-sender"]
    seqs = [field(r, "seq", "sequence") for r in recs]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3, seqs
    for r in recs:
        for key in ("time", "session", "client", "sender", "mode", "prev", "hash"):
            assert key in r, f"record lacks {key}: {r}"
        assert r["mode"] == "enforce"
        assert str(r["client"]).startswith("127.0.0.1"), r["client"]
        entries = recipient_entries(r)
        assert entries, f"no recipients recorded: {r}"
        assert all(isinstance(e, str) and e.startswith("hmac:") for e in entries), entries
    assert [r["sender"] for r in recs] == [SENDER, "rejecter@example.org", "splitter@example.org"]
    # Hash chain: each line (decisions, outcomes, one-shot records) points at the previous line's hash.
    lines = relay.audit_lines()
    assert len(lines) >= 3
    for prev, cur in zip(lines, lines[1:]):
        assert cur["prev"] == prev["hash"], (prev, cur)
    assert len({r["hash"] for r in lines}) == len(lines)
    # Every forwarded intervention has its outcome; the refused one is a one-shot record.
    assert [r.get("kind", "record") for r in recs][1] == "record"
    for r in (recs[0], recs[2]):
        if r.get("kind") == "decision":
            assert r["outcome"] and r["outcome"]["result"] == "delivered", r
            assert r["upstream"].startswith("250"), r


def test_plain_addresses_never_in_hmac_log(relay):
    send_three_interventions(relay)
    text = relay.audit_path.read_text()
    for addr in EXTERNAL18:
        assert addr not in text, f"{addr} stored in plain in the audit log"
        assert addr.split("@")[0] + "@" not in text


def test_record_is_on_disk_before_reply(relay):
    """The reply comes only after the record is written: read the file right after the 550."""
    r = send_mail(relay.smtp_port, "rejecter@example.org", EXTERNAL18,
                  cc_message("durable", sender="rejecter@example.org"))
    assert r["data"].code == 550
    recs = relay.audit_records()
    assert len(recs) == 1 and recs[0]["action"] == "reject", recs


def test_audit_verify_ok_then_detects_tampering(relay):
    send_three_interventions(relay)
    p = relay.cli("audit", "verify", "--config", str(relay.config_path))
    assert p.returncode == 0, (p.stdout + p.stderr).decode(errors="replace")
    # Tamper with the second record's sender; verify must fail and name the record.
    lines = relay.audit_path.read_text().splitlines()
    rec = json.loads(lines[1])
    rec["sender"] = "someone-else@example.org"
    lines[1] = json.dumps(rec, separators=(",", ":"))
    relay.audit_path.write_text("\n".join(lines) + "\n")
    p = relay.cli("audit", "verify", "--config", str(relay.config_path))
    assert p.returncode == 1, (p.returncode, (p.stdout + p.stderr).decode(errors="replace"))
    out = (p.stdout + p.stderr).decode(errors="replace")
    seq = str(field(rec, "seq", "sequence"))
    assert seq in out or "2" in out, f"verify does not say which record broke: {out}"


def test_audit_verify_detects_deleted_record(relay):
    send_three_interventions(relay)
    lines = relay.audit_path.read_text().splitlines()
    del lines[1]
    relay.audit_path.write_text("\n".join(lines) + "\n")
    p = relay.cli("audit", "verify", "--config", str(relay.config_path))
    assert p.returncode == 1, (p.stdout + p.stderr).decode(errors="replace")


def parse_query_output(stdout: bytes) -> list[dict]:
    text = stdout.decode().strip()
    if not text:
        return []
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(l) for l in text.splitlines() if l.strip()]


def test_audit_query_by_recipient_with_hmac(relay):
    send_three_interventions(relay)
    target = EXTERNAL18[7]  # in the rewrite and reject messages, not in the split (first 6)
    p = relay.cli("audit", "query", "--config", str(relay.config_path), "--recipient", target, "--json")
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    found = parse_query_output(p.stdout)
    assert sorted(r["action"] for r in found) == ["reject", "rewrite"], found
    # A different case in the domain finds the same records.
    local, domain = target.split("@")
    p = relay.cli("audit", "query", "--config", str(relay.config_path), "--recipient", f"{local}@{domain.upper()}",
                  "--json")
    assert len(parse_query_output(p.stdout)) == 2
    # Someone never mailed: nothing.
    p = relay.cli("audit", "query", "--config", str(relay.config_path), "--recipient", "nobody@nowhere.example",
                  "--json")
    assert p.returncode == 0
    assert parse_query_output(p.stdout) == []


def test_audit_query_by_action_and_sender(relay):
    send_three_interventions(relay)
    p = relay.cli("audit", "query", "--config", str(relay.config_path), "--action", "split", "--json")
    [rec] = parse_query_output(p.stdout)
    assert rec["sender"] == "splitter@example.org"
    p = relay.cli("audit", "query", "--config", str(relay.config_path), "--sender", "rejecter@example.org", "--json")
    [rec] = parse_query_output(p.stdout)
    assert rec["action"] == "reject"


def test_plain_recipient_storage(make_relay):
    relay = make_relay(lambda cfg: cfg["audit"].update(recipients="plain"))
    assert send_mail(relay.smtp_port, SENDER, EXTERNAL18, cc_message("plain"))["data"].code == 250
    [rec] = relay.wait_audit(1)
    entries = recipient_entries(rec)
    assert EXTERNAL18[0] in entries, entries


def test_no_recipient_storage(make_relay):
    relay = make_relay(lambda cfg: cfg["audit"].update(recipients="none"))
    assert send_mail(relay.smtp_port, SENDER, EXTERNAL18, cc_message("none"))["data"].code == 250
    [rec] = relay.wait_audit(1)
    assert not rec.get("recipients"), rec
    text = relay.audit_path.read_text()
    assert "hmac:" not in text and EXTERNAL18[0] not in text


def test_log_accepts(make_relay):
    relay = make_relay(lambda cfg: cfg["audit"].update(log_accepts=True))
    assert send_mail(relay.smtp_port, SENDER, ["bob@example.org"], cc_message("accepted", cc=["bob@example.org"]))[
        "data"].code == 250
    [rec] = relay.wait_audit(1)
    assert rec["action"] == "accept", rec


def test_unwritable_audit_log_refuses_interventions(make_relay, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a regular file where the audit directory should be\n")
    relay = make_relay(lambda cfg: cfg["audit"].update(path=str(blocker / "audit.jsonl")))
    r = send_mail(relay.smtp_port, SENDER, EXTERNAL18, cc_message("no-audit"))
    assert r["data"].code == 451 and r["data"].status == "4.3.0", r["data"]
    assert relay.dumps(settle=0.5) == [], "a message that needed an audit record was delivered without one"
    # A message that needs no record still flows.
    few = external_addresses(2)
    r = send_mail(relay.smtp_port, SENDER, few, cc_message("no-audit-needed", cc=few))
    assert r["data"].code == 250, r["data"]


def test_authenticated_user_recorded(relay, credentials):
    r = send_mail(relay.submission_port, SENDER, EXTERNAL18, cc_message("authed"), starttls=True, auth=credentials)
    assert r["data"].code == 250, r
    [rec] = relay.wait_audit(1)
    assert rec.get("auth_user") == credentials[0], rec
    assert rec["action"] == "rewrite"
