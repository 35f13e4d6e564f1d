"""What the sender hears about an intervention (issues 3 and 6): a delivery report when some split
copies fail, an optional notice after a rewrite, and DKIM signatures over To/Cc that a rewrite would
break. Runs against the scriptable Python upstream, which keeps exact bytes."""

from __future__ import annotations

import pytest

from helpers import external_addresses, fold_address_list, load_message, send_mail

pytestmark = pytest.mark.policy

SPLITTER = "splitter@example.org"
ALICE = "alice@example.org"


def cc_message(tag: str, cc: list[str], sender: str) -> bytes:
    return load_message("cc_external.eml", sender=sender, cc=fold_address_list(cc), tag=tag)


def test_split_with_one_failed_copy_accepts_and_reports_to_sender(py_relay):
    rcpts = external_addresses(6) + ["baddata@partner.example"]
    r = send_mail(py_relay.smtp_port, SPLITTER, rcpts, cc_message("split-dsn", rcpts, SPLITTER))
    # Six copies are out and cannot be recalled: the client gets 250, the sender a report.
    assert r["data"].code == 250, r
    assert "1 failed" in r["data"].text, r["data"]
    msgs = py_relay.upstream.wait_for(7)
    copies = [m for m in msgs if m.sender == SPLITTER]
    reports = [m for m in msgs if m.sender == ""]
    assert sorted(a for m in copies for a in m.rcpts) == sorted(external_addresses(6))
    assert len(reports) == 1, [m.sender for m in msgs]
    dsn = reports[0]
    assert dsn.rcpts == [SPLITTER]
    assert b"multipart/report" in dsn.data and b"report-type=delivery-status" in dsn.data
    assert b"Final-Recipient: rfc822; baddata@partner.example" in dsn.data
    assert b"Status: 5.7.1" in dsn.data
    # The report's own parts name only the failed recipient; the returned header section is the
    # sender's own (it goes to nobody else).
    own_parts = dsn.data.split(b"text/rfc822-headers", 1)[0]
    assert not any(a.encode() in own_parts for a in external_addresses(6))


def test_split_where_every_copy_fails_is_refused(py_relay):
    rcpts = [f"baddata{i}@partner{i}.example" for i in range(6)]
    r = send_mail(py_relay.smtp_port, SPLITTER, rcpts, cc_message("split-all-fail", rcpts, SPLITTER))
    assert r["data"].code == 550, r
    assert py_relay.upstream.messages(settle=0.3) == [], "nothing was accepted, so nothing is reported"


def test_rewrite_with_notify_sender_sends_a_plain_notice(make_relay):
    def notify(cfg):
        for rule in cfg["policy"]["rule"]:
            if rule["action"] in ("rewrite", "split"):
                rule["notify_sender"] = True

    relay = make_relay(notify, upstream="py")
    rcpts = external_addresses(8)
    r = send_mail(relay.smtp_port, ALICE, rcpts, cc_message("notice", rcpts, ALICE))
    assert r["data"].code == 250, r
    msgs = relay.upstream.wait_for(2)
    [rewritten] = [m for m in msgs if m.sender == ALICE]
    [notice] = [m for m in msgs if m.sender == ""]
    assert rewritten.header("To") == ["undisclosed-recipients:;"]
    assert notice.rcpts == [ALICE]
    assert notice.header("Auto-Submitted"), "a notice must be marked as automatic"
    assert b"Invitation to our partner day" in notice.data, "the notice names the message"
    assert not any(a.encode() in notice.data for a in rcpts), "the notice must not list the recipients"


def test_without_notify_sender_no_notice(py_relay):
    rcpts = external_addresses(8)
    r = send_mail(py_relay.smtp_port, ALICE, rcpts, cc_message("no-notice", rcpts, ALICE))
    assert r["data"].code == 250, r
    msgs = py_relay.upstream.wait_for(1)
    assert [m.sender for m in py_relay.upstream.messages(settle=0.5)] == [ALICE]
    assert msgs[0].header("To") == ["undisclosed-recipients:;"]


def test_dkim_signed_over_cc_is_refused_not_silently_broken(py_relay):
    rcpts = external_addresses(8)
    msg = cc_message("dkim", rcpts, ALICE)
    signed = (
        b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=sel;\r\n"
        b"\th=from:to:cc:subject:date; bh=AAAA; b=BBBB\r\n" + msg
    )
    r = send_mail(py_relay.smtp_port, ALICE, rcpts, signed)
    assert r["data"].code == 550, r
    assert r["data"].text.startswith("5.7.1") or "5.7.1" in str(r["data"]), r["data"]
    assert "Bcc" in r["data"].text, "the refusal tells the sender what to do"
    assert py_relay.upstream.messages(settle=0.3) == []
    [rec] = py_relay.wait_audit(1)
    assert rec["action"] == "rewrite", rec  # what the rule asked for ...
    assert rec.get("upstream") in (None, ""), rec  # ... and nothing was sent upstream


def test_dkim_forward_mode_delivers_and_warns(make_relay):
    relay = make_relay(lambda cfg: cfg["policy"].setdefault("dkim", {}).update(on_rewrite="forward"), upstream="py")
    rcpts = external_addresses(8)
    msg = cc_message("dkim-forward", rcpts, ALICE)
    signed = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=sel; h=from:cc; bh=AAAA; b=BBBB\r\n" + msg
    r = send_mail(relay.smtp_port, ALICE, rcpts, signed)
    assert r["data"].code == 250, r
    [m] = relay.upstream.wait_for(1)
    assert m.header("Cc") == []
    assert "dkim" in relay.log.lower() and "broken" in relay.log.lower(), relay.log[-2000:]
