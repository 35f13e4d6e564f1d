"""AUTH flooding (issue 12 item 2): 600 attacker connections guessing passwords must neither blow
up the relay's memory or threads nor lock out a legitimate user on another address.

The attackers come from 20 loopback addresses (127.0.1.1-20, 30 connections each) and guess the
password of `alice` (half of them) or of made-up users. The legitimate clients are outside
relay_networks, so they must AUTH to relay: alice from 127.0.0.3, where she logged in before the
flood (her account gets blocked by the attack, her usual address must not be), and bob from
127.0.0.4, logging in for the first time (a full argon2 check queued behind the attackers').
Cleartext AUTH on loopback keeps 600 Python TLS handshakes out of the figure: argon2 is the point.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import subprocess
import threading
import time

import pytest

from conftest import PASSWORD, USER
from helpers import RawClient, http_get, make_message, wait_until

pytestmark = pytest.mark.relay

ATTACKER_IPS = [f"127.0.1.{i}" for i in range(1, 21)]
PER_IP = 30
LEGIT_IP = "127.0.0.3"
NEW_USER, NEW_USER_IP, NEW_PASSWORD = "bob", "127.0.0.4", "bob's own password"
RSS_LIMIT_MB = 200


def proc_status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) // 1024  # kB -> MB
            elif key == "Threads":
                out[key] = int(value)
    return out


class Sampler(threading.Thread):
    """Peak RSS and thread count of the relay while the flood runs."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.stop_flag = pid, threading.Event()
        self.max_rss = self.max_threads = 0

    def run(self):
        while not self.stop_flag.is_set():
            try:
                s = proc_status(self.pid)
            except OSError:
                return
            self.max_rss = max(self.max_rss, s["VmRSS"])
            self.max_threads = max(self.max_threads, s["Threads"])
            time.sleep(0.05)


async def attacker(port: int, source: str, n: int, stats: dict, hold: asyncio.Event):
    """Connects, then guesses until the relay closes the connection; keeps it open until `hold`."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    except OSError:
        stats["connect_failed"] += 1
        return
    stats["connected"] += 1

    async def reply() -> int:
        while True:
            line = await asyncio.wait_for(reader.readline(), 120)
            if not line:
                raise ConnectionError("closed")
            if line[3:4] != b"-":
                return int(line[:3])

    try:
        if await reply() != 220:
            return
        writer.write(b"EHLO attacker.example\r\n")
        await reply()
        for attempt in range(5):
            user = USER if n % 2 else f"user{n}"
            token = base64.b64encode(f"\0{user}\0guess-{n}-{attempt}".encode()).decode()
            writer.write(f"AUTH PLAIN {token}\r\n".encode())
            stats["sent"] += 1
            code = await reply()
            stats[code] = stats.get(code, 0) + 1
            if code == 235:
                stats["broke_in"] += 1
    except (ConnectionError, asyncio.TimeoutError, OSError, ValueError):
        pass
    stats["finished"] += 1
    await hold.wait()
    writer.close()


def run_flood(port: int, stats: dict, started: threading.Event, release: threading.Event):
    async def main():
        hold = asyncio.Event()
        tasks = [asyncio.create_task(attacker(port, ip, i * PER_IP + j, stats, hold))
                 for i, ip in enumerate(ATTACKER_IPS) for j in range(PER_IP)]
        while stats["sent"] < len(tasks) and stats["connect_failed"] == 0:
            await asyncio.sleep(0.05)
        started.set()
        while not release.is_set():
            await asyncio.sleep(0.05)
        hold.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    asyncio.run(main())


def login_and_send(port: int, source: str, user: str, password: str, subject: str) -> tuple[float, float]:
    """AUTH PLAIN and one message; returns (login seconds, login + message seconds)."""
    t0 = time.monotonic()
    with RawClient(port, source=source, timeout=60) as c:
        c.ehlo()
        r = c.auth_plain(user, password)
        login_s = time.monotonic() - t0
        assert r.code == 235, f"{user}: legitimate login failed during the flood: {r}"
        assert c.cmd(f"MAIL FROM:<{user}@example.org>").code == 250
        assert c.cmd("RCPT TO:<carol@outside.example.com>").code == 250
        msg = make_message([("From", f"{user}@example.org"), ("To", "carol@outside.example.com"),
                            ("Subject", subject)])
        d = c.data(msg)
        assert d.code == 250, f"{user}: legitimate message refused during the flood: {d}"
    return login_s, time.monotonic() - t0


def test_auth_flood_keeps_memory_bounded_and_legit_client_served(make_relay, bccguard_bin, users_file,
                                                                 tmp_path):
    r = subprocess.run([bccguard_bin, "passwd"], input=NEW_PASSWORD.encode(), capture_output=True,
                       timeout=60, check=True)
    users = tmp_path / "users"
    users.write_text(open(users_file).read() + f"{NEW_USER}:{r.stdout.decode().strip()}\n")

    def mutate(cfg):
        cfg["server"]["max_connections"] = 1000
        cfg["server"]["command_timeout_seconds"] = 120
        cfg["auth"]["users_file"] = str(users)
        cfg["listener"][0].update(tls="none", auth="optional", allow_cleartext_auth=True)
    relay = make_relay(mutate=mutate)
    port = relay.smtp_port
    # alice's usual address: one login before the attack.
    login_and_send(port, LEGIT_IP, USER, PASSWORD, "before the flood")
    pid = relay.proc.pid
    before = proc_status(pid)
    sampler = Sampler(pid)
    sampler.start()

    stats = {"connected": 0, "connect_failed": 0, "sent": 0, "finished": 0, "broke_in": 0}
    started, release = threading.Event(), threading.Event()
    flood = threading.Thread(target=run_flood, args=(port, stats, started, release), daemon=True)
    flood.start()
    try:
        assert started.wait(60), f"attackers did not all get to AUTH: {stats}"
        # Every attacker has an AUTH in flight: now the legitimate users log in and send.
        new_login_s, new_total_s = login_and_send(port, NEW_USER_IP, NEW_USER, NEW_PASSWORD, "first login")
        wait_until(lambda: "temporarily blocked" in relay.log and 'blocked="user"' in relay.log,
                   timeout=60, what="the attacked account to be blocked")
        login_s, legit_s = login_and_send(port, LEGIT_IP, USER, PASSWORD, "during the flood")
        wait_until(lambda: stats["finished"] >= stats["connected"], timeout=120,
                   what=f"attackers to be answered: {stats}")
    finally:
        release.set()
        flood.join(30)
        sampler.stop_flag.set()
        sampler.join(5)
    peak = proc_status(pid)
    hwm = max(peak["VmHWM"], sampler.max_rss)
    print(f"\nAUTH flood: {stats['connected']} attacker connections from {len(ATTACKER_IPS)} addresses, "
          f"{stats['sent']} AUTH attempts; replies: "
          f"{ {k: v for k, v in stats.items() if isinstance(k, int)} }")
    print(f"relay RSS before {before['VmRSS']} MB, peak (VmHWM) {hwm} MB; threads before "
          f"{before['Threads']}, peak {sampler.max_threads}")
    print(f"first login of {NEW_USER} during the flood: login {new_login_s*1000:.0f} ms, login+message "
          f"{new_total_s*1000:.0f} ms; {USER} (attacked, blocked account) from her usual address: "
          f"login {login_s*1000:.0f} ms, login+message {legit_s*1000:.0f} ms")
    assert stats["connected"] == len(ATTACKER_IPS) * PER_IP, stats
    assert stats["broke_in"] == 0
    assert hwm < RSS_LIMIT_MB, f"relay peak RSS {hwm} MB during the flood (limit {RSS_LIMIT_MB})"
    # Hash threads are bounded by the cores; tokio's workers and a few helpers come on top.
    limit = before["Threads"] + (os.cpu_count() or 2) + 8
    assert sampler.max_threads <= limit, f"{sampler.max_threads} threads during the flood (limit {limit})"
    # Attack addresses got blocked: most attempts were refused without a hash (454 4.7.0).
    assert stats.get(454, 0) > stats["sent"] // 2, stats
    _, metrics = http_get(relay.metrics_url + "/metrics")
    blocked = re.search(r'^bccguard_auth_attempts_total\{result="blocked"\} (\d+)', metrics, re.M)
    assert blocked and int(blocked.group(1)) == stats.get(454, 0), metrics
    assert "authentication failed" in relay.log and "client=127.0.1." in relay.log
