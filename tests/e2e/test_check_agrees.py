"""`bccguard check` = `bccguard serve`, message for message (issue 10 "must show", issue 13 item 6).

Every .eml fixture under tests/ is dry-run with `bccguard check --json` and sent through a running
relay (same config file, same envelope, the same CRLF bytes), and the two must agree on:
  - the action: accept / rewrite / split / reject, and refusals (DKIM, unreadable header, bad DATA);
  - the reply: 2xx for what goes out; for a refusal the exact code, enhanced code and text
    (check's `smtp_reply` vs the relay's reply to the end of DATA);
  - what reached the upstream (smtp-sink): one copy unchanged for accept (Bcc removed), one copy
    with `To: undisclosed-recipients:;` for rewrite, one single-recipient copy per envelope
    recipient for split, nothing for a refusal; and a notice to the sender exactly when check says so.
The relay's action is read from what the sink received, not from the relay's own logs.
Fixture files are stored with LF or CRLF line ends; both sides get them as a mail client sends
them (every line end CRLF, dot-stuffed on the wire by the SMTP client).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import MAX_MESSAGE_SIZE
from helpers import (
    RawClient,
    Reply,
    crlf,
    dot_stuff,
    external_addresses,
    fold_address_list,
    header_values,
    lf,
    split_message,
    strip_first_received,
)

pytestmark = pytest.mark.policy

ROOT = Path(__file__).resolve().parents[2]
# tests/e2e/messages are templates for load_message(): their {placeholders} are filled below.
TEMPLATES = ROOT / "tests" / "e2e" / "messages"
TEMPLATE_VALUES = {
    "sender": "alice@example.org",
    "to": "Bob <bob@example.org>",
    "cc": fold_address_list(external_addresses(8)),
    "bcc": "hidden@partner9.example.net",
}

# One envelope for every message: three recipients, so a split is three single-recipient copies
# and accept/rewrite one copy with three RCPTs.
ENVELOPE = ["one@partner1.example.net", "two@partner2.example.com", "colleague@example.org"]
REJECT_TEXT = "Too many addresses are visible to each other: put them in Bcc and send again."

# Senders are chosen by domain, so every message can have a sender of its own (messages run
# concurrently and are told apart at the sink by it) while the rules still select by sender.
SENDER_DOMAINS = {"anyone": "example.org", "splitter": "split.example.org", "rejecter": "reject.example.org"}

# Rules chosen so that the corpus makes every action happen: by sender (reject / split at two
# outside addresses), a default-text reject for mass mail, and a rewrite for anyone at three.
RULES = [
    {"name": "reject-sender", "senders": ["*@reject.example.org"], "min_visible_external": 2,
     "action": "reject", "message": REJECT_TEXT},
    {"name": "split-sender", "senders": ["*@split.example.org"], "min_visible_external": 2,
     "action": "split", "notify_sender": True},
    {"name": "mass-mail", "min_visible": 30, "action": "reject"},
    {"name": "many-external", "min_visible_external": 3, "action": "rewrite", "notify_sender": True},
]

# (config name, policy mode, kinds of sender the whole corpus is sent with)
RUNS = [
    ("enforce", "enforce", ["anyone", "splitter", "rejecter"]),
    ("monitor", "monitor", ["anyone", "splitter"]),
]
# Messages in flight at once (each: one `check` process and one SMTP connection).
WORKERS = 6


# --------------------------------------------------------------------------------------------
# the corpus


def corpus() -> list[tuple[str, bytes]]:
    """(name relative to tests/, CRLF bytes) of every .eml file under tests/."""
    out = []
    for path in sorted((ROOT / "tests").rglob("*.eml")):
        data = path.read_bytes()
        if path.parent == TEMPLATES:
            data = load_template(path.name)
        out.append((str(path.relative_to(ROOT / "tests")), crlf(data)))
    # Generated: just over the relay's size limit (552 5.3.4 on both sides, check's kind "too_big").
    head = load_template("cc_external.eml")
    line = b"x" * 78 + b"\r\n"
    out.append(("(generated) over-size", head + line * ((MAX_MESSAGE_SIZE - len(head)) // len(line) + 1)))
    return out


def load_template(name: str) -> bytes:
    text = (TEMPLATES / name).read_text("utf-8")
    return crlf(text.format(tag=f"agree-{Path(name).stem}", **TEMPLATE_VALUES))


# --------------------------------------------------------------------------------------------
# the two sides


@dataclass
class Verdict:
    """What one side says happens to a message."""

    action: str  # accept | rewrite | split | refused (a reject rule's outcome is a refusal), or
    # "altered" when the relay forwarded something that is neither unchanged nor a rewrite
    reply: str | None = None  # "550 5.7.1 text" for a refusal; the relay's 2xx reply otherwise
    notice: bool = False
    detail: str = ""
    extra: dict = field(default_factory=dict)


def reply_string(r: Reply) -> str:
    return f"{r.code} " + " ".join(r.lines)


def check_side(relay, path: Path, sender: str) -> Verdict:
    p = relay.cli("check", "--config", str(relay.config_path), "--json", "--from", sender,
                  *[a for r in ENVELOPE for a in ("--rcpt", r)], str(path))
    out = p.stdout.decode("utf-8", "replace").strip()
    try:
        doc = json.loads(out)
    except json.JSONDecodeError:
        raise AssertionError(f"check printed no JSON (exit {p.returncode}): {out!r} {p.stderr!r}") from None
    if p.returncode == 2:
        return Verdict("refused", doc.get("smtp_reply"), detail=f"exit 2, kind {doc.get('kind')}",
                       extra={"kind": doc.get("kind")})
    assert p.returncode == 0, f"check exited {p.returncode}: {p.stderr!r}"
    action = doc["effective_action"]
    if doc["smtp_reply"] is not None:
        # Refused by the plan: a reject rule, or a rewrite/split that DKIM forbids.
        return Verdict("refused", doc["smtp_reply"], detail=f"{action} refused",
                       extra={"action": doc["action"], "mode": doc["mode"]})
    return Verdict(action, None, notice=doc["notify_sender"], detail=doc["would_be_delivered_as"],
                   extra={"action": doc["action"], "mode": doc["mode"], "bcc": doc["bcc_header_stripped"]})


def transaction(port: int, sender: str, message: bytes) -> Reply:
    """One SMTP transaction as a mail client makes it; returns the reply to the end of DATA
    (or the first refusal before it)."""
    params = " BODY=8BITMIME" if any(b > 127 for b in message) else ""
    with RawClient(port) as c:
        c.ehlo()
        r = c.cmd(f"MAIL FROM:<{sender}>{params}")
        if r.code != 250:
            return r
        for rcpt in ENVELOPE:
            r = c.cmd(f"RCPT TO:<{rcpt}>")
            if r.code != 250:
                return r
        r = c.cmd("DATA")
        if r.code != 354:
            return r
        c.send(dot_stuff(message) + b".\r\n")
        reply = c.reply()
        c.cmd("QUIT")
        return reply


def without_fields(data: bytes, names: set[str]) -> bytes:
    """The message (LF) without the header fields called `names` (folded lines included)."""
    lines = lf(data).split(b"\n")
    out, skipping = [], False
    for i, line in enumerate(lines):
        if not line:  # end of the header section (or of a header-only message)
            return b"\n".join(out + lines[i:])
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                out.append(line)
            continue
        skipping = line.split(b":", 1)[0].strip().lower().decode(errors="replace") in names
        if not skipping:
            out.append(line)
    return b"\n".join(out)


def serve_side(reply: Reply, sender: str, message: bytes, delivered: list) -> Verdict:
    """The relay's verdict from its reply and what the sink received from this message's sender
    (its copies) and from the null sender to it (a notice)."""
    copies = [m for m in delivered if m.sender == sender]
    notices = [m for m in delivered if m.sender == "" and m.rcpts == [sender]]
    if reply.code // 100 != 2:
        assert not copies, f"relay refused ({reply_string(reply)}) but the upstream got {len(copies)} copies"
        return Verdict("refused", reply_string(reply), notice=bool(notices), detail="refused")
    if len(copies) == len(ENVELOPE) and all(len(m.rcpts) == 1 for m in copies):
        got = sorted(m.rcpts[0] for m in copies)
        assert got == sorted(ENVELOPE), f"split copies went to {got}"
        for m in copies:
            to = header_values(m.data, "To")
            shown = [v for n in ("Cc", "Resent-To", "Resent-Cc") for v in header_values(m.data, n)]
            assert len(to) == 1 and m.rcpts[0] in to[0] and not shown, (
                f"split copy for {m.rcpts[0]} shows To {to} and {shown}")
        return Verdict("split", reply_string(reply), notice=bool(notices), detail=f"{len(copies)} copies")
    assert len(copies) == 1, f"relay said {reply_string(reply)} and the upstream got {len(copies)} copies"
    copy = copies[0]
    assert sorted(copy.rcpts) == sorted(ENVELOPE), f"forwarded to {copy.rcpts}"
    forwarded = strip_first_received(copy.lf)
    # The client ends the last line with CRLF before the terminator when the file does not.
    sent = message if message.endswith(b"\r\n") else message + b"\r\n"
    if forwarded == without_fields(sent, {"bcc", "resent-bcc"}):
        return Verdict("accept", reply_string(reply), notice=bool(notices), detail="unchanged")
    to = header_values(copy.data, "To")
    shown = [v for n in ("Cc", "Resent-To", "Resent-Cc") for v in header_values(copy.data, n)]
    if to == ["undisclosed-recipients:;"] and not shown:
        assert split_message(forwarded)[1] == split_message(lf(sent))[1], "rewrite changed the body"
        return Verdict("rewrite", reply_string(reply), notice=bool(notices), detail="To: undisclosed-recipients:;")
    return Verdict("altered", reply_string(reply), notice=bool(notices),
                   detail=f"forwarded with To {to} and {shown}, not byte for byte")


def disagreement(c: Verdict, s: Verdict) -> str | None:
    if c.action == "refused" or s.action == "refused":
        if c.action != s.action:
            return f"check: {c.action} ({c.detail}; {c.reply}), serve: {s.action} ({s.detail}; {s.reply})"
        if c.reply != s.reply:
            return f"both refuse, with different replies: check {c.reply!r}, serve {s.reply!r}"
        # Content the relay refuses before any policy runs: check must exit 2, with the kind
        # that says why (a 5.7.1 is a decision: exit 0 with smtp_reply).
        kinds = {"550 5.6.0": "unreadable", "552 5.3.4": "too_big"}
        want = next((k for p, k in kinds.items() if s.reply.startswith(p)), None)
        if c.extra.get("kind") != want:
            return (f"serve replies {s.reply!r}; check should exit "
                    f"{'2 with kind ' + repr(want) if want else '0'}, not {c.detail}")
        if s.notice:
            return "serve sent the sender a notice about a message it refused"
        return None
    if c.action != s.action:
        return f"check: {c.action} ({c.detail}), serve: {s.action} ({s.detail})"
    if c.notice != s.notice:
        return f"sender notice: check says {c.notice}, serve sent {s.notice}"
    return None


# --------------------------------------------------------------------------------------------
# the test


def run_corpus(relay, config_name: str, kinds: list[str], fixtures, files, problems, tally):
    """Every fixture with every kind of sender through `relay` and its config's `check`."""
    jobs = [(f"m{i}-{kind}@{SENDER_DOMAINS[kind]}", kind, name, data)
            for kind in kinds for i, (name, data) in enumerate(fixtures)]

    def both(job):
        sender, _, name, data = job
        return check_side(relay, files[name], sender), transaction(relay.smtp_port, sender, data)

    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(both, jobs))
    # Every reply is in, and the relay answers only after the upstream took every copy and the
    # notice: the sink now holds everything these messages caused.
    by_sender = defaultdict(list)
    delivered = relay.upstream.messages()
    for m in delivered:
        by_sender[m.sender or (m.rcpts[0] if m.rcpts else "")].append(m)
    senders = {job[0] for job in jobs}
    strays = [m.path for m in delivered if (m.sender or (m.rcpts or [""])[0]) not in senders]
    if strays:
        problems.append(f"[{config_name}] the upstream got messages no test message explains: {strays}")
    for (sender, kind, name, data), (c, reply) in zip(jobs, results):
        where = f"[{config_name}, {kind}] {name}"
        try:
            s = serve_side(reply, sender, data, by_sender[sender])
        except AssertionError as e:
            problems.append(f"{where}: relay misbehaved: {e}")
            continue
        why = disagreement(c, s)
        if why:
            problems.append(f"{where}: {why}")
            continue
        label = c.action if c.action != "refused" else f"refused {c.reply[:9]}"
        if c.extra.get("mode") == "monitor" and c.extra.get("action") != "accept":
            label += f" (monitor: would {c.extra['action']})"
        tally[label] += 1


def test_check_agrees_with_serve_on_every_fixture(make_relay, tmp_path, capsys):
    fixtures = corpus()
    assert len(fixtures) >= 90, f"the corpus looks incomplete: {len(fixtures)} .eml files under tests/"
    files = {}
    for i, (name, data) in enumerate(fixtures):
        files[name] = tmp_path / f"{i:04d}.eml"
        files[name].write_bytes(data)

    problems: list[str] = []
    tally: Counter = Counter()
    for config_name, mode, kinds in RUNS:
        def configure(cfg, mode=mode):
            cfg["policy"]["mode"] = mode
            cfg["policy"]["rule"] = [dict(r) for r in RULES]
            cfg["server"]["max_connections"] = 4 * WORKERS

        relay = make_relay(mutate=configure, name=f"agree-{config_name}")
        run_corpus(relay, config_name, kinds, fixtures, files, problems, tally)
        assert relay.alive(), f"relay {config_name} died"

    runs = sum(len(r[2]) for r in RUNS)
    lines = [f"check = serve: {len(fixtures)} fixtures x {runs} (config, sender) runs = {len(fixtures) * runs}"
             f" messages; {sum(tally.values())} agree, {len(problems)} disagree"]
    lines += [f"  {n:5d}  {label}" for label, n in sorted(tally.items())]
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert not problems, f"{len(problems)} disagreement(s):\n" + "\n".join(problems)

    # The corpus and rules must really exercise every outcome, or agreement proves little.
    for needed in ("accept", "rewrite", "split", "refused 550 5.7.1", "refused 550 5.6.0", "refused 552 5.3.4"):
        assert any(k.startswith(needed) for k in tally), f"no fixture ended in {needed!r}: {dict(tally)}"
