#!/usr/bin/env python3
"""tls_auth.py - one authenticated-submission benchmark run (STARTTLS + AUTH PLAIN, one message
per connection), for bench/run's tls rows. smtp-source speaks neither TLS nor AUTH, so the load
comes from examples/smtp_tls_load.rs.

  tls_auth.py --system bccguard|postfix|direct --messages N --concurrency C [--no-resume]
              --client PATH [--bccguard PATH] [--label L]

bccguard: a STARTTLS listener with auth = "required" (127.0.0.1:2531), users file with one
argon2id user, forwarding to smtp-sink; its metrics (127.0.0.1:9931) give the credential cache
and TLS resumption counts. postfix: a throw-away Postfix whose submission service
(127.0.0.1:2532) requires STARTTLS and Cyrus SASL (sasldb, as tests/e2e/interop/harness.py
builds it) and relays to the same sink; stock TLS settings plus Debian's default session cache.
direct: the load client straight into smtp-sink, no TLS, no AUTH (the floor for added latency).

Prints one line: `tls-bench: label=.. messages=.. ok=.. msgs_per_s=.. cpu_ms_per_msg=.. ...`.
CPU is the system under test's whole process tree (shared procstat.py), from before the load
until the sink holds every message. Everything runs on 127.0.0.1 and is stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HARNESS = Path(os.environ.get("HARNESS", "/work/shared/bench"))
SINK_PORT, BCCGUARD_PORT, POSTFIX_PORT, METRICS_PORT = 2525, 2531, 2532, 9931
USER, PASSWORD, REALM = "alice", "bench password 1", "bench.invalid"


def wait_listen(port: int, proc: subprocess.Popen | None, timeout: float = 60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before port {port} listened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def cpu_of(pid: int) -> float:
    out = subprocess.run([sys.executable, str(HARNESS / "procstat.py"), "snapshot", str(pid)],
                         capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"cpu_s=([0-9.]+)", out)
    return float(m.group(1)) if m else 0.0


def stop(proc: subprocess.Popen | None):
    """SIGTERM to the process, then SIGKILL to its own session (we started it with one)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


class Sink:
    def __init__(self, work: Path, concurrency: int):
        self.count_path = work / "sink.count"
        args = ["smtp-sink", "-c", "-m", str(max(256, concurrency * 4))]
        if os.getuid() == 0:
            args += ["-u", "nobody"]
        self.proc = subprocess.Popen(args + [f"127.0.0.1:{SINK_PORT}", "1024"],
                                     stdout=open(self.count_path, "wb"), stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        wait_listen(SINK_PORT, self.proc, 10)

    def count(self) -> int:
        try:
            with open(self.count_path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 200))
                tail = f.read().decode(errors="replace")
        except OSError:
            return 0
        m = re.findall(r"mesg=(\d+)", tail)
        return int(m[-1]) if m else 0


def start_bccguard(binary: str, work: Path, pki: tuple[Path, Path]) -> subprocess.Popen:
    h = subprocess.run([binary, "passwd"], input=PASSWORD.encode(), capture_output=True, check=True)
    (work / "users").write_text(f"{USER}:{h.stdout.decode().strip()}\n")
    (work / "bccguard.toml").write_text(f"""
[server]
hostname = "bccguard.bench.invalid"
relay_networks = []
max_connections = 1100

[[listener]]
address = "127.0.0.1:{BCCGUARD_PORT}"
tls = "starttls"
auth = "required"

[tls]
certificate = "{pki[0]}"
private_key = "{pki[1]}"

[auth]
users_file = "{work / 'users'}"

# The load client logs in as alice and sends as sender@client.bench.example: alice owns it.
[auth.senders]
alice = ["*@client.bench.example"]

[upstream]
address = "127.0.0.1:{SINK_PORT}"
tls = "none"
timeout_seconds = 60

[policy]
mode = "enforce"
internal_domains = ["corp.example"]

[[policy.rule]]
name = "many-external"
min_visible_external = 6
action = "rewrite"

[audit]
path = "{work / 'audit.jsonl'}"
recipients = "hmac"
hmac_key_file = "{work / 'audit.key'}"

[metrics]
address = "127.0.0.1:{METRICS_PORT}"
""")
    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    p = subprocess.Popen([binary, "serve", "--config", str(work / "bccguard.toml")],
                         stdout=open(work / "bccguard.log", "wb"), stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    wait_listen(BCCGUARD_PORT, p)
    return p


MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_tls_auth_only=yes
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def start_postfix(work: Path, pki: tuple[Path, Path]) -> subprocess.Popen:
    root = work / "postfix"
    etc, spool, data, sasl = root / "etc", root / "spool", root / "data", root / "etc" / "sasl"
    for d in (etc, spool, data, sasl):
        d.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    os.chmod(root, 0o755)
    shutil.chown(data, "postfix")
    os.chmod(data, 0o700)
    db = sasl / "sasldb2"
    subprocess.run(["saslpasswd2", "-p", "-c", "-f", str(db), "-u", REALM, USER],
                   input=PASSWORD.encode(), check=True, capture_output=True)
    shutil.chown(db, "root", "postfix")
    os.chmod(db, 0o640)
    os.chmod(sasl, 0o755)
    (sasl / "smtpd.conf").write_text(
        f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nsasldb_path: {db}\nmech_list: PLAIN LOGIN\n")
    # The key must be readable by smtpd after it drops privileges: give Postfix its own copy.
    key = etc / "key.pem"
    shutil.copy(pki[1], key)
    os.chmod(key, 0o600)
    main = {
        "compatibility_level": "3.6", "queue_directory": spool, "data_directory": data,
        "meta_directory": "/etc/postfix", "mail_owner": "postfix", "setgid_group": "postdrop",
        "myhostname": REALM, "mydomain": REALM, "myorigin": "$myhostname", "mydestination": "",
        "inet_interfaces": "127.0.0.1", "inet_protocols": "ipv4", "mynetworks": "127.0.0.0/8",
        "smtpd_relay_restrictions": "permit_mynetworks, reject", "smtpd_recipient_restrictions": "",
        "relayhost": f"[127.0.0.1]:{SINK_PORT}", "local_transport": "error:local delivery is disabled",
        "alias_maps": "", "alias_database": "", "biff": "no", "smtp_tls_security_level": "none",
        "maillog_file": "/dev/stdout", "notify_classes": "",
        "smtpd_tls_cert_file": pki[0], "smtpd_tls_key_file": key, "smtpd_tls_security_level": "may",
        # Debian's stock main.cf: a server-side session cache (tickets are on by default).
        "smtpd_tls_session_cache_database": f"btree:{data}/smtpd_scache",
        "smtpd_sasl_type": "cyrus", "smtpd_sasl_path": "smtpd", "cyrus_sasl_config_path": sasl,
        "smtpd_sasl_local_domain": REALM, "smtpd_sasl_security_options": "noanonymous, noplaintext",
        "smtpd_sasl_tls_security_options": "noanonymous",
    }
    (etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
    (etc / "master.cf").write_text(MASTER_CF.format(port=POSTFIX_PORT))
    subprocess.run(["postfix", "-c", str(etc), "check"], check=True, capture_output=True, timeout=60)
    p = subprocess.Popen(["/usr/lib/postfix/sbin/master", "-c", str(etc), "-s"],
                         stdout=open(work / "postfix.log", "wb"), stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    wait_listen(POSTFIX_PORT, p)
    return p


def metric(name: str) -> str:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5).read().decode()
    except OSError:
        return "-"
    m = re.search(r"^" + re.escape(name) + r" (\S+)$", text, re.M)
    return m.group(1) if m else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--system", required=True, choices=["bccguard", "postfix", "direct"])
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--client", required=True)
    ap.add_argument("--bccguard", default="target/release/bccguard")
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bccguard-tlsbench.", dir="/var/tmp"))
    sink = sut = None
    try:
        cert, key = work / "cert.pem", work / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", str(key),
                        "-out", str(cert)], check=True, capture_output=True, timeout=60)
        os.chmod(cert, 0o644)
        sink = Sink(work, a.concurrency)
        if a.system == "bccguard":
            sut, port = start_bccguard(a.bccguard, work, (cert, key)), BCCGUARD_PORT
        elif a.system == "postfix":
            sut, port = start_postfix(work, (cert, key)), POSTFIX_PORT
        else:
            port = SINK_PORT
        client = [a.client, "--target", f"127.0.0.1:{port}", "--messages", str(a.messages),
                  "--concurrency", str(a.concurrency), "--recipients", "1"]
        if a.system == "direct":
            client += ["--tls", "none"]
        else:
            client += ["--tls", "starttls", "--user", USER, "--password", PASSWORD]
        if a.no_resume:
            client.append("--no-resume")
        base = sink.count()
        cpu0 = cpu_of(sut.pid) if sut else 0.0
        t0 = time.monotonic()
        r = subprocess.run(client, capture_output=True, text=True, timeout=900)
        deadline = time.monotonic() + 120
        while sink.count() - base < a.messages and time.monotonic() < deadline:
            time.sleep(0.02)
        e2e = time.monotonic() - t0
        got = sink.count() - base
        cpu = (cpu_of(sut.pid) - cpu0) if sut else 0.0
        load = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "tls-load: FAILED"
        kv = dict(re.findall(r"(\w+)=(\S+)", load))
        line = (f"tls-bench: label={a.label} system={a.system} messages={a.messages} ok={got} "
                f"concurrency={a.concurrency} resume={0 if a.no_resume else 1} "
                f"e2e_seconds={e2e:.3f} e2e_msgs_per_s={got / e2e:.1f} "
                f"accepted_msgs_per_s={kv.get('msgs_per_s', '-')} p50_ms={kv.get('p50_ms', '-')} "
                f"p99_ms={kv.get('p99_ms', '-')} client_resumed={kv.get('resumed', '-')} "
                f"client_cpu_ms_per_msg={kv.get('client_cpu_ms_per_msg', '-')} "
                f"cpu_ms_per_msg={cpu * 1000 / max(a.messages, 1):.3f}")
        if a.system == "bccguard":
            line += (" cache_hits=" + metric('bccguard_auth_cache_total{result="hit"}')
                     + " cache_misses=" + metric('bccguard_auth_cache_total{result="miss"}')
                     + " tls_resumed=" + metric('bccguard_tls_inbound_sessions_total{kind="resumed"}')
                     + " tls_full=" + metric('bccguard_tls_inbound_sessions_total{kind="full"}'))
        print(line + f" load1={os.getloadavg()[0]:.2f}", flush=True)
        if r.returncode != 0 or got != a.messages:
            sys.stderr.write(r.stderr[-2000:])
            for log in ("bccguard.log", "postfix.log"):
                if (work / log).exists():
                    sys.stderr.write(f"--- {log} ---\n" + (work / log).read_text(errors="replace")[-3000:])
            return 1
        return 0
    finally:
        stop(sut)
        if sink:
            stop(sink.proc)
        if not os.environ.get("KEEP"):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
