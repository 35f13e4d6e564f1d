#!/usr/bin/env python3
"""bench row `spool`: a split of N recipients (default 18) while the upstream goes down after the
first K copies (default 6) and stays down for D seconds (default 30), then comes back. Measures the
client's reply, how long after the upstream came back the spool was empty, and whether every copy
arrived exactly once. Prints one `spool-drain:` result line (key=value) on stdout.

    bench/spool_drain.py --bin target/release/bccguard [--down 30] [--backoff-initial 60] [--flush]

The upstream is tests/e2e/helpers.FaultUpstream (asyncio, in this process): it accepts K copies,
then closes its listener and every connection (connection refused, as a crashed or stopped MTA),
and listens again on the same port after D seconds. The relay is the release binary with its own
config (split rule, spool in a scratch folder, spool backoff as given; default = the product
default, 60 s doubling up to 3600 s). Everything runs on 127.0.0.1; started processes are stopped
by PID."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "e2e"))
from helpers import FaultUpstream, RawClient, dot_stuff, free_port, make_message, to_toml, wait_for_port  # noqa: E402


def relay_config(work: Path, port: int, upstream: int, backoff_initial: int | None) -> dict:
    spool = {"path": str(work / "spool")}
    if backoff_initial is not None:
        spool.update(backoff_initial_seconds=backoff_initial, backoff_max_seconds=max(backoff_initial, 3600))
    return {
        "server": {"hostname": "bccguard.bench.invalid", "relay_networks": ["127.0.0.0/8"],
                   "max_recipients": 1000, "shutdown_grace_seconds": 5},
        "listener": [{"address": f"127.0.0.1:{port}", "tls": "none", "auth": "none"}],
        "upstream": {"address": f"127.0.0.1:{upstream}", "tls": "none", "timeout_seconds": 30},
        "policy": {"mode": "enforce", "internal_domains": ["corp.example"], "include_subdomains": True,
                   "rewrite_to": "undisclosed",
                   "rule": [{"name": "split-external", "min_visible_external": 6, "action": "split",
                             "notify_sender": False}]},
        "audit": {"path": str(work / "audit.jsonl"), "recipients": "hmac",
                  "hmac_key_file": str(work / "audit.key"), "log_accepts": False},
        "spool": spool,
    }


def spool_len(binary: str, config: Path) -> int:
    out = subprocess.run([binary, "spool", "list", "--config", str(config), "--json"],
                         capture_output=True, text=True, timeout=10)
    if out.returncode != 0:
        raise RuntimeError(f"spool list failed: {out.stderr}")
    return len(json.loads(out.stdout))


def send(port: int, sender: str, rcpts: list[str], msg: bytes) -> int:
    """One transaction; the reply code after the end of DATA. The relay retries failing copies
    in-session before it answers, so the wait is long."""
    with RawClient(port, timeout=300) as c:
        c.ehlo()
        assert c.cmd(f"MAIL FROM:<{sender}>").code == 250
        for r in rcpts:
            assert c.cmd(f"RCPT TO:<{r}>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(dot_stuff(msg) + b".\r\n")
        code = c.reply().code
        c.cmd("QUIT")
        return code


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=str(HERE.parent / "target" / "release" / "bccguard"))
    ap.add_argument("--recipients", type=int, default=18)
    ap.add_argument("--through", type=int, default=6, help="copies accepted before the upstream goes down")
    ap.add_argument("--down", type=float, default=30.0, help="seconds the upstream stays down")
    ap.add_argument("--backoff-initial", type=int, default=None, help="spool backoff (default: product default)")
    ap.add_argument("--flush", action="store_true", help="run `bccguard spool flush` as soon as the upstream is up")
    ap.add_argument("--max-wait", type=float, default=600.0)
    ap.add_argument("--label", default="spool/bccguard/1")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bccguard-spool-bench-"))
    up = FaultUpstream(down_after=a.through).start()
    port = free_port()
    cfg_path = work / "relay.toml"
    cfg_path.write_text(to_toml(relay_config(work, port, up.port, a.backoff_initial)))
    log = open(work / "relay.log", "wb")
    relay = subprocess.Popen([a.bin, "serve", "--config", str(cfg_path)], stdout=log, stderr=log,
                             cwd=work, start_new_session=True, env={**os.environ, "RUST_LOG": "info"})
    rc = 1
    try:
        wait_for_port(port, alive=lambda: relay.poll() is None)
        rcpts = [f"person{i:02d}@partner{i % 3}.example.net" for i in range(a.recipients)]
        msg = make_message([("From", "sender@corp.example"), ("To", ", ".join(rcpts[: a.recipients // 2])),
                            ("Cc", ", ".join(rcpts[a.recipients // 2:])), ("Subject", "spool bench")])
        t0 = time.monotonic()
        code = send(port, "sender@corp.example", rcpts, msg)
        reply_s = time.monotonic() - t0
        spooled = spool_len(a.bin, cfg_path)
        # The upstream went down after `through` copies; it comes back `down` seconds after that.
        down_at = up.down_since or time.monotonic()
        time.sleep(max(0.0, down_at + a.down - time.monotonic()))
        up.set_down(False)
        up_at = time.monotonic()
        if a.flush:
            subprocess.run([a.bin, "spool", "flush", "--config", str(cfg_path)], capture_output=True, timeout=10)
        drained = None
        while time.monotonic() - up_at < a.max_wait:
            if spool_len(a.bin, cfg_path) == 0:
                drained = time.monotonic() - up_at
                break
            time.sleep(0.2)
        time.sleep(0.5)
        got = Counter(x for d in up.messages() for x in d.rcpts)
        lost = [x for x in rcpts if got[x] == 0]
        dups = sum(n - 1 for n in got.values() if n > 1)
        ok = code == 250 and drained is not None and not lost and dups == 0
        rc = 0 if ok else 1
        print(f"spool-drain: label={a.label} rcpts={a.recipients} through_before_down={a.through} "
              f"reply={code} reply_s={reply_s:.2f} spooled={spooled} down_s={a.down:.0f} "
              f"backoff_initial={a.backoff_initial if a.backoff_initial is not None else 'default(60)'} "
              f"flush={'yes' if a.flush else 'no'} "
              f"drain_after_up_s={'%.2f' % drained if drained is not None else 'NOT-DRAINED'} "
              f"total_s={time.monotonic() - t0:.1f} delivered={sum(got.values())} distinct={len(got)} "
              f"lost={len(lost)} duplicates={dups} rc={rc}")
        sys.stdout.flush()
    finally:
        if relay.poll() is None:
            relay.send_signal(signal.SIGTERM)
            try:
                relay.wait(15)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait(5)
        up.stop()
        log.close()
        if rc == 0:
            subprocess.run(["rm", "-rf", str(work)])
        else:
            print(f"spool_drain: kept {work} (relay.log) for inspection", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
