"""Policy (issue 3): what the upstream receives after rewrite / split / reject / monitor, and what
`bccguard check --json` reports for the visible-recipient edge cases."""

from __future__ import annotations

import json
import re

import pytest

from conftest import REJECT_TEXT
from helpers import (
    crlf,
    external_addresses,
    fold_address_list,
    lf,
    load_message,
    send_mail,
    split_message,
    strip_first_received,
)

pytestmark = pytest.mark.policy

SENDER = "alice@example.org"
EXTERNAL18 = external_addresses(18)


def cc_message(tag: str, cc: list[str] = EXTERNAL18, sender: str = SENDER) -> bytes:
    return load_message("cc_external.eml", sender=sender, cc=fold_address_list(cc), tag=tag)


def without_fields(data: bytes, *names: str) -> bytes:
    """The message (LF) with every header field of these names (and its folded lines) removed."""
    head, body = split_message(lf(data))
    out, skipping = [], False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and line:
            if not skipping:
                out.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower().decode(errors="replace")
        skipping = name in {n.lower() for n in names}
        if not skipping:
            out.append(line)
    return b"\n".join(out) + b"\n" + body


def addresses_in(value: str) -> list[str]:
    return re.findall(r"[\w.+-]+@[\w.-]+", value)


def squash(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------------------------
# enforcement at the upstream


def test_rewrite_hides_recipients(relay):
    msg = cc_message("rewrite")
    r = send_mail(relay.smtp_port, SENDER, EXTERNAL18, msg)
    assert r["data"].code == 250, r
    msgs = relay.upstream.wait_for(1)
    assert len(relay.dumps(settle=0.3)) == 1
    m = msgs[0]
    assert m.rcpts == EXTERNAL18, "envelope recipients must be unchanged"
    assert m.header("Cc") == [], f"Cc still shown: {m.header('Cc')}"
    assert m.header("To") == ["undisclosed-recipients:;"], m.header("To")
    for addr in EXTERNAL18:
        assert addr.encode() not in m.data, f"{addr} still visible in the forwarded message"
    got = strip_first_received(m.lf)
    assert m.body == lf(msg).split(b"\n\n", 1)[1], "body changed"
    # Every other header field is passed through byte for byte, in order.
    assert without_fields(got, "To", "Cc") == without_fields(msg, "To", "Cc")


def test_rewrite_to_sender(make_relay):
    relay = make_relay(lambda cfg: cfg["policy"].update(rewrite_to="sender"))
    r = send_mail(relay.smtp_port, SENDER, EXTERNAL18, cc_message("rewrite-sender"))
    assert r["data"].code == 250, r
    [m] = relay.upstream.wait_for(1)
    [to] = m.header("To")
    assert addresses_in(to) == [SENDER], to
    assert m.header("Cc") == []


def test_reject_rule(relay):
    r = send_mail(relay.smtp_port, "rejecter@example.org", EXTERNAL18,
                  cc_message("reject", sender="rejecter@example.org"))
    final = r["data"]
    assert final.code == 550 and final.status == "5.7.1", final
    assert squash(REJECT_TEXT) in squash(" ".join(l.removeprefix("5.7.1 ") for l in final.lines)), final
    assert relay.dumps(settle=0.5) == []


def test_split_sends_one_copy_per_recipient(relay):
    msg = cc_message("split", sender="splitter@example.org")
    r = send_mail(relay.smtp_port, "splitter@example.org", EXTERNAL18, msg)
    assert r["data"].code == 250, r
    msgs = relay.upstream.wait_for(18)
    msgs = relay.dumps(settle=0.3)
    assert len(msgs) == 18, f"expected 18 copies, got {len(msgs)}"
    seen = set()
    body = lf(msg).split(b"\n\n", 1)[1]
    for m in msgs:
        assert len(m.rcpts) == 1, m.rcpts
        [to] = m.header("To")
        assert addresses_in(to) == m.rcpts, (to, m.rcpts)
        assert m.header("Cc") == []
        others = [a for a in EXTERNAL18 if a not in m.rcpts]
        assert not any(a.encode() in m.data for a in others), "a copy shows other recipients"
        assert m.body == body
        seen.add(m.rcpts[0])
    assert seen == set(EXTERNAL18)


def test_monitor_mode_delivers_unchanged_and_audits(make_relay):
    relay = make_relay(lambda cfg: cfg["policy"].update(mode="monitor"))
    msg = cc_message("monitor")
    r = send_mail(relay.smtp_port, SENDER, EXTERNAL18, msg)
    assert r["data"].code == 250, r
    [m] = relay.upstream.wait_for(1)
    assert strip_first_received(m.lf) == lf(msg), "monitor mode changed the message"
    [rec] = relay.wait_audit(1)
    assert rec.get("mode") == "monitor", rec
    assert rec.get("action") == "rewrite", rec
    assert rec.get("rule") == "many-external", rec
    if "would" in rec:
        assert rec["would"] is True, rec


def test_monitor_mode_reject_rule_still_delivers(make_relay):
    relay = make_relay(lambda cfg: cfg["policy"].update(mode="monitor"))
    r = send_mail(relay.smtp_port, "rejecter@example.org", EXTERNAL18,
                  cc_message("monitor-reject", sender="rejecter@example.org"))
    assert r["data"].code == 250, r
    relay.upstream.wait_for(1)
    [rec] = relay.wait_audit(1)
    assert rec.get("action") == "reject" and rec.get("mode") == "monitor", rec


def test_unreadable_to_is_never_undercounted(relay):
    """5 readable external Cc + an unclosed `To: <broken@...`: the rule (6 external) must still
    apply, or the message must be refused as unreadable (550 5.6.x). Passing it unchanged is the
    one wrong answer."""
    cc = external_addresses(5)
    msg = load_message("unclosed_to.eml", sender=SENDER, cc=fold_address_list(cc), tag="unclosed")
    r = send_mail(relay.smtp_port, SENDER, cc + ["broken@outside.example.com"], msg)
    final = r["data"]
    if final.code == 550:
        assert (final.status or "").startswith("5.6."), final
        assert relay.dumps(settle=0.5) == []
        # A refusal is an intervention: it is audited like a reject.
        [rec] = relay.wait_audit(1)
        assert rec["action"] == "reject", rec
    else:
        assert final.code == 250, final
        [m] = relay.upstream.wait_for(1)
        assert m.header("Cc") == [], "unreadable To under-counted: message passed with its Cc list"


def test_bcc_recipients_do_not_count(relay):
    bcc = EXTERNAL18
    msg = load_message("bcc.eml", sender=SENDER, to="bob@example.org", bcc=fold_address_list(bcc), tag="bcc18")
    r = send_mail(relay.smtp_port, SENDER, ["bob@example.org", *bcc], msg)
    assert r["data"].code == 250, r
    [m] = relay.upstream.wait_for(1)
    assert m.header("To") == ["bob@example.org"], "a Bcc-only message must not be rewritten"
    assert m.header("Bcc") == []
    assert len(m.rcpts) == 19
    assert relay.audit_records() == []


def test_internal_recipients_do_not_count(relay):
    internal = [f"colleague{i}@example.org" for i in range(10)] + [f"ops{i}@mail.example.org" for i in range(8)]
    msg = cc_message("internal", cc=internal)
    r = send_mail(relay.smtp_port, SENDER, internal, msg)
    assert r["data"].code == 250, r
    [m] = relay.upstream.wait_for(1)
    assert strip_first_received(m.lf) == lf(msg)


def test_few_external_pass_unchanged(relay):
    few = external_addresses(5)
    msg = cc_message("few", cc=few)
    r = send_mail(relay.smtp_port, SENDER, few, msg)
    assert r["data"].code == 250, r
    [m] = relay.upstream.wait_for(1)
    assert strip_first_received(m.lf) == lf(msg)


def test_except_recipients_list_address_does_not_count(make_relay):
    def mutate(cfg):
        cfg["policy"]["rule"][-1]["except_recipients"] = ["partners@lists.example.net"]
    relay = make_relay(mutate)
    cc = external_addresses(5) + ["partners@lists.example.net"]
    msg = cc_message("except", cc=cc)
    r = send_mail(relay.smtp_port, SENDER, cc, msg)
    assert r["data"].code == 250, r
    [m] = relay.upstream.wait_for(1)
    assert m.header("Cc") != [], "the list address should not count towards the rule"


def test_trace_header_on_altered_messages_only(make_relay):
    relay = make_relay(lambda cfg: cfg["policy"].update(trace_header="X-BCCGuard"))
    assert send_mail(relay.smtp_port, SENDER, EXTERNAL18, cc_message("traced"))["data"].code == 250
    few = external_addresses(2)
    assert send_mail(relay.smtp_port, SENDER, few, cc_message("untraced", cc=few))["data"].code == 250
    msgs = relay.upstream.wait_for(2)
    by_tag = {(b"traced" if b"cc-traced@" in m.data else b"untraced"): m for m in msgs}
    assert by_tag[b"traced"].header("X-BCCGuard"), "altered message lacks the trace header"
    assert not by_tag[b"untraced"].header("X-BCCGuard"), "unaltered message got the trace header"


def test_sender_exception_rule(make_relay):
    def mutate(cfg):
        cfg["policy"]["rule"].insert(0, {"name": "press-office", "senders": ["press@example.org"], "action": "accept"})
    relay = make_relay(mutate)
    msg = cc_message("press", sender="press@example.org")
    r = send_mail(relay.smtp_port, "press@example.org", EXTERNAL18, msg)
    assert r["data"].code == 250, r
    [m] = relay.upstream.wait_for(1)
    assert strip_first_received(m.lf) == lf(msg)


# --------------------------------------------------------------------------------------------
# `bccguard check --json`: the visible-recipient rules of SPEC section 2


def check_json(relay, message: bytes, *extra: str) -> dict:
    path = relay.workdir / "check.eml"
    path.write_bytes(message)
    p = relay.cli("check", "--config", str(relay.config_path), "--json", *extra, str(path))
    assert p.returncode == 0, (p.returncode, p.stderr.decode(errors="replace"))
    return json.loads(p.stdout)


def test_check_json_fields(relay):
    out = check_json(relay, cc_message("check"))
    assert out["action"] == "rewrite" and out["mode"] == "enforce" and out["rule"] == "many-external", out
    assert out["visible_count"] == 18 and out["visible_external"] == 18 and out["external_domains"] == 3, out
    assert out["visible_recipients"] == EXTERNAL18
    assert isinstance(out["reason"], str) and out["reason"]
    assert out["bcc_header_stripped"] is False


def test_check_counts_every_visible_field_form(relay):
    msg = crlf(
        "From: Alice <alice@example.org>\n"
        "To: friends: a1@one.example.net, \"Quoted, Name\" <a2@two.example.net>;\n"
        "cc: =?UTF-8?Q?J=C3=B6rg?= <a3@three.example.net> (comment), a4@FOUR.example.net\n"
        "Resent-To: a5@five.example.net\n"
        "RESENT-CC: a6@six.example.net,\n"
        "\ta4@four.EXAMPLE.net\n"
        "Reply-To: not-counted1@seven.example.net\n"
        "Bcc: not-counted2@eight.example.net\n"
        "Subject: forms\n"
        "\n"
        "not-counted3@nine.example.net in the body\n"
    )
    out = check_json(relay, msg)
    vis = out["visible_recipients"]
    assert out["visible_count"] == 6, vis
    assert "a4@four.example.net" in vis, "domain must be lower-cased and duplicates merged"
    assert not any("not-counted" in a for a in vis), vis
    assert out["action"] == "rewrite", out
    assert out["bcc_header_stripped"] is True


def test_check_reject_rule_and_sender(relay):
    out = check_json(relay, cc_message("check-reject", sender="rejecter@example.org"),
                     "--from", "rejecter@example.org")
    assert out["action"] == "reject" and out["rule"] == "reject-sender", out
