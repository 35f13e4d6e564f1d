#!/usr/bin/env python3
"""idle_conns.py - resident memory of an SMTP relay holding N idle client connections.

Part of bench/run (not a test). Starts Postfix's smtp-sink as the upstream and the relay
under test (--spawn, same placeholders as relay-bench: {sink}, {host}, {port}, {work}),
measures the relay's resident set at rest, then opens N connections, reads each greeting,
sends EHLO and reads the reply, and holds all of them open for --hold seconds while
sampling /proc/PID/status (VmRSS) every 0.1 s. Prints one line:

  idle-conns: conns=N held=H failed=F baseline_rss_kb=.. peak_rss_kb=.. added_kb=..
              per_conn_kb=.. main_hwm_kb=.. open_s=.. target=HOST:PORT load1=..

Everything it starts it stops by PID (SIGTERM, then SIGKILL); the scratch directory is
removed. Exit status 0 when every connection got its greeting and EHLO reply, 1 if not,
2 on a setup error.
"""
import argparse
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


def rss_kb(pid, key="VmRSS"):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def wait_listen(port, seconds, proc):
    end = time.time() + seconds
    while time.time() < end:
        # Probe via /proc/net/tcp so the check itself opens no session on the relay.
        if port_in_listen_state(port):
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def port_in_listen_state(port):
    want = ":%04X" % port
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    # state 0A = LISTEN
                    if parts[1].endswith(want) and parts[3] == "0A":
                        return True
        except OSError:
            pass
    return False


def read_reply(sock, buf):
    """Reads one SMTP reply (multi-line aware); returns (code, rest_of_buffer)."""
    while True:
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if len(line) >= 4 and line[3:4] == b"-":
                continue
            return int(line[:3]), buf
        chunk = sock.recv(4096)
        if not chunk:
            raise OSError("connection closed")
        buf += chunk


def stop(proc, grace=10):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spawn", required=True, help="relay command (placeholders as relay-bench)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=2530)
    ap.add_argument("--sink-port", type=int, default=2525)
    ap.add_argument("-n", "--conns", type=int, default=1000)
    ap.add_argument("--hold", type=float, default=5.0, help="seconds to hold all connections")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds at rest before the baseline")
    ap.add_argument("--helo", default="client.bench.example")
    ap.add_argument("--timeout", type=float, default=30.0, help="per greeting/EHLO, seconds")
    ap.add_argument("--label", default="")
    args = ap.parse_args()

    # One descriptor per connection here, and as many in the relay (which inherits the limit).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, args.conns * 2 + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < args.conns + 64:
        print("idle-conns: descriptor limit %d is too low for %d connections" % (want, args.conns),
              file=sys.stderr)
        return 2
    for p in (args.port, args.sink_port):
        if port_in_listen_state(p):
            print("idle-conns: port %d is already in use" % p, file=sys.stderr)
            return 2

    work = tempfile.mkdtemp(prefix="idle-conns.", dir=os.environ.get("RELAY_BENCH_TMP", "/var/tmp"))
    os.chmod(work, 0o755)
    sink = relay = None
    socks = []
    try:
        sink_cmd = ["smtp-sink", "-c", "-m", "256"]
        if os.getuid() == 0:
            sink_cmd += ["-u", "nobody"]
        sink_cmd += ["127.0.0.1:%d" % args.sink_port, "1024"]
        sink = subprocess.Popen(sink_cmd, stdout=subprocess.DEVNULL,
                                stderr=open(os.path.join(work, "sink.err"), "w"),
                                stdin=subprocess.DEVNULL, start_new_session=True)
        if not wait_listen(args.sink_port, 10, sink):
            print("idle-conns: smtp-sink did not start", file=sys.stderr)
            return 2
        cmd = (args.spawn.replace("{sink}", "127.0.0.1:%d" % args.sink_port)
               .replace("{sink_host}", "127.0.0.1").replace("{sink_port}", str(args.sink_port))
               .replace("{host}", args.host).replace("{port}", str(args.port))
               .replace("{work}", work))
        print("idle-conns: spawning: %s" % cmd, file=sys.stderr)
        log = open(os.path.join(work, "spawn.log"), "w")
        # exec keeps the relay's PID equal to the one we sample.
        relay = subprocess.Popen(["bash", "-c", "exec " + cmd], stdout=log, stderr=log,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        if not wait_listen(args.port, 60, relay):
            print("idle-conns: relay is not listening on %d" % args.port, file=sys.stderr)
            log.close()
            sys.stderr.write(open(os.path.join(work, "spawn.log")).read()[-2000:])
            return 2
        time.sleep(args.settle)
        baseline = rss_kb(relay.pid)
        load1 = open("/proc/loadavg").read().split()[0]

        peak = baseline
        failed = 0
        t0 = time.time()
        for i in range(args.conns):
            try:
                s = socket.create_connection((args.host, args.port), timeout=args.timeout)
                code, buf = read_reply(s, b"")
                if code != 220:
                    raise OSError("greeting %d" % code)
                s.sendall(b"EHLO " + args.helo.encode() + b"\r\n")
                code, _ = read_reply(s, buf)
                if code != 250:
                    raise OSError("EHLO %d" % code)
                socks.append(s)
            except (OSError, ValueError) as e:
                failed += 1
                if failed <= 3:
                    print("idle-conns: connection %d: %s" % (i, e), file=sys.stderr)
            if i % 50 == 0:
                peak = max(peak, rss_kb(relay.pid))
        open_s = time.time() - t0
        end = time.time() + args.hold
        while time.time() < end:
            peak = max(peak, rss_kb(relay.pid))
            time.sleep(0.1)
        hwm = rss_kb(relay.pid, "VmHWM")
        held = len(socks)
        if relay.poll() is not None:
            print("idle-conns: relay died", file=sys.stderr)
            return 1
        added = peak - baseline
        line = ("idle-conns: conns=%d held=%d failed=%d baseline_rss_kb=%d peak_rss_kb=%d added_kb=%d "
                "per_conn_kb=%.1f main_hwm_kb=%d open_s=%.2f target=%s:%d load1=%s"
                % (args.conns, held, failed, baseline, peak, added,
                   added / held if held else 0.0, hwm, open_s, args.host, args.port, load1))
        if args.label:
            line += " label=" + args.label
        print(line)
        return 0 if failed == 0 else 1
    finally:
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
        stop(relay)
        stop(sink, 5)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
