#!/usr/bin/env python3
"""bench row `hugeheader`: one message of about 25 MB whose header shows about 2 million external
addresses in To/Cc (generated), sent through the release relay under a `rewrite` rule, N copies in
parallel (one connection each). Measures the relay's peak RSS (VmHWM from /proc, the kernel's own
high-water mark of the one process) against its idle RSS and the message size. Prints one
`hugeheader:` result line (key=value) on stdout.

    bench/hugeheader.py --bin target/release/bccguard --parallel 1
    bench/hugeheader.py --parallel 4

Upstream: Postfix smtp-sink without dumps (it only answers 250). A fresh relay per run, so the
high-water mark belongs to this run alone. The message is cached in /var/tmp."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "e2e"))
from helpers import RawClient, dot_stuff, free_port, to_toml, wait_for_port  # noqa: E402

B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def b36(n: int) -> str:
    s = ""
    while True:
        n, r = divmod(n, 36)
        s = B36[r] + s
        if not n:
            return s


def generate(path: Path, target: int) -> int:
    """Writes the message (CRLF) to `path`; returns the number of visible addresses."""
    per_line = 70
    lines, n, size = [], 0, 0
    while size < target - 200:
        addrs = [f"{b36(i // 10)}@x{i % 10}.io" for i in range(n, n + per_line)]
        n += per_line
        line = ", ".join(addrs)
        lines.append(line)
        size += len(line) + 4
    half = len(lines) // 2
    head = (
        "From: sender@corp.example\r\nSubject: huge header bench\r\nMessage-ID: <huge@corp.example>\r\n"
        "To: " + ",\r\n ".join(lines[:half]) + "\r\n"
        "Cc: " + ",\r\n ".join(lines[half:]) + "\r\n"
    )
    path.write_bytes(head.encode() + b"\r\nHello.\r\n")
    return n


def status_kb(pid: int, key: str) -> int:
    m = re.search(rf"^{key}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


def send(port: int, data: bytes, out: list, i: int):
    t0 = time.monotonic()
    try:
        with RawClient(port, timeout=600) as c:
            c.ehlo()
            c.cmd("MAIL FROM:<sender@corp.example>")
            c.cmd(f"RCPT TO:<someone{i}@x1.io>")
            c.cmd("DATA")
            c.send(data)
            out[i] = (c.reply().code, time.monotonic() - t0)
    except Exception as e:  # noqa: BLE001 - reported in the result line
        out[i] = (f"error:{type(e).__name__}", time.monotonic() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=str(HERE.parent / "target" / "release" / "bccguard"))
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--size", type=int, default=25_000_000)
    ap.add_argument("--label", default=None)
    ap.add_argument("--heaptrack", metavar="OUT", help="run the relay under `heaptrack -o OUT` (where the peak is)")
    a = ap.parse_args()
    label = a.label or f"hugeheader{a.parallel}/bccguard/1"

    msg_path = Path(f"/var/tmp/bccguard-hugeheader-{a.size}.eml")
    count_path = msg_path.with_suffix(".count")
    if not msg_path.exists() or not count_path.exists():
        count_path.write_text(str(generate(msg_path, a.size)))
    addresses = int(count_path.read_text())
    raw = msg_path.read_bytes()
    data = dot_stuff(raw) + b".\r\n"

    work = Path(tempfile.mkdtemp(prefix="bccguard-huge-bench-"))
    sink_port, port = free_port(), free_port()
    sink_cmd = [shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"]
    if os.geteuid() == 0:
        sink_cmd += ["-u", "nobody"]
    sink = subprocess.Popen(sink_cmd + [f"127.0.0.1:{sink_port}", "100"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    cfg = {
        "server": {"hostname": "bccguard.bench.invalid", "relay_networks": ["127.0.0.0/8"],
                   "max_message_size": 32 * 1024 * 1024, "data_timeout_seconds": 600,
                   "command_timeout_seconds": 600, "shutdown_grace_seconds": 5},
        "listener": [{"address": f"127.0.0.1:{port}", "tls": "none", "auth": "none"}],
        "upstream": {"address": f"127.0.0.1:{sink_port}", "tls": "none", "timeout_seconds": 60},
        "policy": {"mode": "enforce", "internal_domains": ["corp.example"], "include_subdomains": True,
                   "rewrite_to": "undisclosed",
                   "rule": [{"name": "many-external", "min_visible_external": 6, "action": "rewrite",
                             "notify_sender": False}]},
        "audit": {"path": str(work / "audit.jsonl"), "recipients": "hmac",
                  "hmac_key_file": str(work / "audit.key"), "log_accepts": False},
        "spool": {"path": str(work / "spool")},
    }
    (work / "relay.toml").write_text(to_toml(cfg))
    log = open(work / "relay.log", "wb")
    wrap = ["heaptrack", "-o", a.heaptrack] if a.heaptrack else []
    relay = subprocess.Popen(wrap + [a.bin, "serve", "--config", str(work / "relay.toml")], stdout=log, stderr=log,
                             cwd=work, start_new_session=True, env={**os.environ, "RUST_LOG": "info"})
    rc = 1
    pid = relay.pid
    try:
        wait_for_port(sink_port, alive=lambda: sink.poll() is None)
        wait_for_port(port, alive=lambda: relay.poll() is None)
        time.sleep(0.3)
        if a.heaptrack:  # the relay is heaptrack's child: measure the relay, not the wrapper
            time.sleep(1.0)
            pid = int(subprocess.run(["pgrep", "-P", str(relay.pid), "-f", "serve"], capture_output=True,
                                     text=True).stdout.split()[0])
        idle = status_kb(pid, "VmRSS")
        out: list = [None] * a.parallel
        t0 = time.monotonic()
        threads = [threading.Thread(target=send, args=(port, data, out, i)) for i in range(a.parallel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        hwm = status_kb(pid, "VmHWM")
        size_kb = len(raw) / 1024
        codes = [o[0] for o in out]
        audit_bytes = (work / "audit.jsonl").stat().st_size if (work / "audit.jsonl").exists() else 0
        rc = 0 if all(c == 250 for c in codes) else 1
        print(f"hugeheader: label={label} parallel={a.parallel} size={len(raw)} addresses={addresses} "
              f"codes={','.join(map(str, codes))} wall_s={wall:.1f} "
              f"max_reply_s={max(o[1] for o in out):.1f} idle_rss_kb={idle} main_hwm_kb={hwm} "
              f"hwm_x_size={hwm / size_kb:.2f} added_x_size_per_msg={(hwm - idle) / size_kb / a.parallel:.2f} "
              f"audit_bytes={audit_bytes} load1={os.getloadavg()[0]:.2f} rc={rc}")
        sys.stdout.flush()
    finally:
        if a.heaptrack and pid != relay.pid:
            try:  # under heaptrack the relay is the wrapper's child: stop it, the wrapper follows
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in (relay, sink):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        log.close()
        if rc == 0:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"hugeheader: kept {work} (relay.log) for inspection", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
