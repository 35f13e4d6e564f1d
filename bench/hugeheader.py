#!/usr/bin/env python3
"""bench row `hugeheader`: one message of about 25 MB whose header shows about 2 million external
addresses in To/Cc (generated), sent through the release relay under a `rewrite` rule, N copies in
parallel (one connection each). Measures the relay's peak RSS (VmHWM from /proc, the kernel's own
high-water mark of the one process) against its idle RSS and the message size, and how long
another client waits meanwhile (a NOOP every 50 ms on its own connection: `noop_max_ms`). Prints
one `hugeheader:` result line (key=value) on stdout.

    bench/hugeheader.py --bin target/release/bccguard --parallel 1
    bench/hugeheader.py --parallel 4
    bench/hugeheader.py --shape domains          (see SHAPES; default plain)
    bench/hugeheader.py --shape encoded --generate-only   (write the message, print its path)

Shapes (--shape): what the header holds, each about --size bytes in the same CRLF layout (From,
Subject, Message-ID, To, Cc, blank line, one body line; the entries split in halves between To
and Cc, folded lines of at most ~900 octets). Every shape's entries are distinct addresses, so
the relay should count exactly `addresses=` of them (`bccguard check --json FILE`: visible_count).
  plain    `b36(i/10)@x(i%10).io`, 70 per line, `, ` (the original row; default, same bytes)
  domains  `a@b36(i).io`: every address its own domain, ~2.2 M outside domains
  encoded  plain's addresses; every 10th is `=?utf-8?q?Jo=2C_Smith?= <addr>` (an encoded comma:
           the relay also reads the field as decoding readers do) and one entry per field is
           `Smith\\, John <addr>` (a `\\` outside quotes: read as an escape too)
  lenient  plain's addresses separated by `; ` (not RFC 5322: read leniently)
  group    plain's addresses, each field one group: `To: list: a, b, ... ;`
  names    `"Person i" <pi@x.io>`: a quoted display name on every address (~0.8 M addresses)

Upstream: Postfix smtp-sink without dumps (it only answers 250). A fresh relay per run, so the
high-water mark belongs to this run alone. The message is cached in /var/tmp, one file per
shape and size (plain keeps its original name). While the message is in flight the relay's RSS
is sampled; above --max-rss-mb (default 3072) the relay is killed, so a shape that balloons
cannot take the shared box down with it (the line then says rss_cap_hit=1, codes=killed)."""

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


SHAPES = ("plain", "domains", "encoded", "lenient", "group", "names")
LINE_BUDGET = 900  # octets of entries per folded header line (shapes other than plain)


def plain_addr(i: int) -> str:
    return f"{b36(i // 10)}@x{i % 10}.io"


def entry(shape: str, i: int) -> str:
    """The i-th list entry of `shape` (one distinct address each)."""
    if shape == "domains":
        return f"a@{b36(i)}.io"
    if shape == "names":
        return f'"Person {i}" <p{i}@x.io>'
    if shape == "encoded" and i % 10 == 9:
        return f"=?utf-8?q?Jo=2C_Smith?= <{plain_addr(i)}>"
    return plain_addr(i)


def generate(path: Path, target: int, shape: str = "plain") -> int:
    """Writes the message (CRLF) to `path`; returns the number of visible addresses."""
    sep = "; " if shape == "lenient" else ", "
    lines, n, size = [], 0, 0
    while size < target - 200:
        if shape == "plain":  # the original generator: 70 per line, same bytes as before shapes
            addrs = [plain_addr(i) for i in range(n, n + 70)]
            n += 70
        else:
            addrs, used = [], 0
            while True:
                e = entry(shape, n)
                if addrs and used + len(sep) + len(e) > LINE_BUDGET:
                    break
                used += (len(sep) if addrs else 0) + len(e)
                addrs.append(e)
                n += 1
        lines.append(addrs)
        size += sum(map(len, addrs)) + len(sep) * (len(addrs) - 1) + 4
    half = len(lines) // 2
    fields = [lines[:half], lines[half:]]
    if shape == "encoded":  # one `\` outside quotes per field, in the middle of it
        for f in fields:
            line = f[len(f) // 2]
            addr = line[0].rsplit("<", 1)[-1].rstrip(">")
            line[0] = f"Smith\\, John <{addr}>"
    fold = sep.rstrip() + "\r\n "
    bodies = [fold.join(sep.join(line) for line in f) for f in fields]
    if shape == "group":
        bodies = [f"list: {b} ;" for b in bodies]
    head = (
        "From: sender@corp.example\r\nSubject: huge header bench\r\nMessage-ID: <huge@corp.example>\r\n"
        "To: " + bodies[0] + "\r\n"
        "Cc: " + bodies[1] + "\r\n"
    )
    path.write_bytes(head.encode() + b"\r\nHello.\r\n")
    return n


def message_path(size: int, shape: str) -> Path:
    if shape == "plain":  # the name from before shapes, so an existing cache stays valid
        return Path(f"/var/tmp/bccguard-hugeheader-{size}.eml")
    return Path(f"/var/tmp/bccguard-hugeheader-{shape}-{size}.eml")


def status_kb(pid: int, key: str) -> int:
    m = re.search(rf"^{key}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


def watch_rss(pid: int, cap_kb: int, done: threading.Event, watch: dict):
    """Samples the relay's RSS every 20 ms until `done`; SIGKILLs it above `cap_kb` (0: never)."""
    while not done.wait(0.02):
        try:
            rss = status_kb(pid, "VmRSS")
        except OSError:
            return
        watch["peak_kb"] = max(watch["peak_kb"], rss)
        if cap_kb and rss > cap_kb:
            watch["capped"] = True
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return


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


def probe(port: int, done: threading.Event, result: dict) -> None:
    """Another client's view while the huge messages are in flight: one NOOP round trip every
    50 ms on its own connection; records the slowest (a relay whose workers are all busy parsing
    stops answering everyone)."""
    try:
        with RawClient(port, timeout=600) as c:
            c.ehlo()
            while not done.is_set():
                t = time.monotonic()
                c.cmd("NOOP")
                result["max_ms"] = max(result["max_ms"], (time.monotonic() - t) * 1000)
                result["n"] += 1
                time.sleep(0.05)
    except Exception as e:  # noqa: BLE001 - reported in the result line
        result["error"] = type(e).__name__


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=str(HERE.parent / "target" / "release" / "bccguard"))
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--size", type=int, default=25_000_000)
    ap.add_argument("--label", default=None)
    ap.add_argument("--shape", choices=SHAPES, default="plain", help="what the header holds (see above)")
    ap.add_argument("--generate-only", action="store_true",
                    help="write (or find) the cached message, print its path and address count, exit")
    ap.add_argument("--max-rss-mb", type=int, default=3072,
                    help="kill the relay when its RSS passes this while the message is in flight (0: never)")
    ap.add_argument("--heaptrack", metavar="OUT", help="run the relay under `heaptrack -o OUT` (where the peak is)")
    a = ap.parse_args()
    suffix = "" if a.shape == "plain" else f"-{a.shape}"
    label = a.label or f"hugeheader{a.parallel}{suffix}/bccguard/1"

    msg_path = message_path(a.size, a.shape)
    count_path = msg_path.with_suffix(".count")
    if not msg_path.exists() or not count_path.exists():
        count_path.write_text(str(generate(msg_path, a.size, a.shape)))
    addresses = int(count_path.read_text())
    if a.generate_only:
        print(f"{msg_path} shape={a.shape} size={msg_path.stat().st_size} addresses={addresses}")
        return 0
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
    # The relay runs in `work`: a relative --bin means relative to here.
    binary = os.path.abspath(a.bin) if os.sep in a.bin else a.bin
    rc = 1
    relay = None
    try:
        relay = subprocess.Popen(wrap + [binary, "serve", "--config", str(work / "relay.toml")], stdout=log,
                                 stderr=log, cwd=work, start_new_session=True, env={**os.environ, "RUST_LOG": "info"})
        pid = relay.pid
        wait_for_port(sink_port, alive=lambda: sink.poll() is None)
        wait_for_port(port, alive=lambda: relay.poll() is None)
        time.sleep(0.3)
        if a.heaptrack:  # the relay is heaptrack's child: measure the relay, not the wrapper
            time.sleep(1.0)
            pid = int(subprocess.run(["pgrep", "-P", str(relay.pid), "-f", "serve"], capture_output=True,
                                     text=True).stdout.split()[0])
        idle = status_kb(pid, "VmRSS")
        out: list = [None] * a.parallel
        done = threading.Event()
        watch = {"peak_kb": 0, "capped": False}
        watcher = threading.Thread(target=watch_rss, args=(pid, a.max_rss_mb * 1024, done, watch))
        watcher.start()
        probed = {"max_ms": 0.0, "n": 0, "error": None}
        sending = threading.Event()
        prober = threading.Thread(target=probe, args=(port, sending, probed))
        prober.start()
        t0 = time.monotonic()
        threads = [threading.Thread(target=send, args=(port, data, out, i)) for i in range(a.parallel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        sending.set()
        prober.join()
        hwm = status_kb(pid, "VmHWM")
        done.set()
        watcher.join()
        hwm = max(hwm, watch["peak_kb"])  # killed by the cap: its status has no VmHWM any more
        if watch["capped"]:
            out = [("killed", o[1]) for o in out]
        size_kb = len(raw) / 1024
        codes = [o[0] for o in out]
        audit_bytes = (work / "audit.jsonl").stat().st_size if (work / "audit.jsonl").exists() else 0
        rc = 0 if all(c == 250 for c in codes) else 1
        print(f"hugeheader: label={label} shape={a.shape} parallel={a.parallel} size={len(raw)} "
              f"addresses={addresses} rss_cap_hit={int(watch['capped'])} "
              f"codes={','.join(map(str, codes))} wall_s={wall:.1f} "
              f"max_reply_s={max(o[1] for o in out):.1f} idle_rss_kb={idle} main_hwm_kb={hwm} "
              f"hwm_x_size={hwm / size_kb:.2f} added_x_size_per_msg={(hwm - idle) / size_kb / a.parallel:.2f} "
              f"audit_bytes={audit_bytes} noop_max_ms={probed['max_ms']:.0f} noops={probed['n']} "
              f"noop_error={probed['error'] or '-'} load1={os.getloadavg()[0]:.2f} rc={rc}")
        sys.stdout.flush()
    finally:
        if a.heaptrack and relay is not None and pid != relay.pid:
            try:  # under heaptrack the relay is the wrapper's child: stop it, the wrapper follows
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in (relay, sink):
            if p is not None and p.poll() is None:
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
