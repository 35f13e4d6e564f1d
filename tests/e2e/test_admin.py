"""An admin adopts it (issue 14): the README's quick start, run as written against a copy of the
shipped config in a scratch folder (so relative paths must resolve against the config file), and
the operator commands an admin reaches for: `config check`, `config show`, `/livez`, `audit report`."""

from __future__ import annotations

import json
import re
import shlex
import signal
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers import http_get, wait_for_port, wait_until

ROOT = Path(__file__).resolve().parents[2]


def _sh_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def _commands(block: str) -> list[str]:
    """Shell commands of a README block: continuation lines joined, comments dropped."""
    out, cur = [], ""
    for line in block.splitlines():
        code = re.sub(r"\s+#.*$", "", line).rstrip()
        if code.endswith("\\"):
            cur += code[:-1] + " "
            continue
        cur += code
        if cur.strip():
            out.append(cur.strip())
        cur = ""
    return out


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # As servers bind: a closed connection in TIME_WAIT does not make the port busy.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_readme_quick_start_verbatim(tmp_path, bccguard_bin):
    if not all(_port_free(p) for p in (2525, 2526, 9025)):
        pytest.skip("the quick start's fixed ports 2525/2526/9025 are in use")
    blocks = _sh_blocks((ROOT / "README.md").read_text())
    serve = _commands(blocks[0])[0]
    assert serve.startswith("cargo run --release -- serve --config config/bccguard.toml"), serve
    demo = _commands(blocks[1])
    # A scratch copy of the repository's config folder: its audit log lands in scratch/config/var.
    scratch = tmp_path / "scratch"
    (scratch / "config").mkdir(parents=True)
    (scratch / "config/bccguard.toml").write_text((ROOT / "config/bccguard.toml").read_text())
    # smtp-sink drops to user nobody: its folder must be reachable by nobody (pytest's is not).
    sink_dir = Path(tempfile.mkdtemp(prefix="bccguard-quickstart-")) / "sink"
    sink_dir.parent.chmod(0o755)
    demo = [c.replace("/tmp/sink", str(sink_dir)) for c in demo]

    args = shlex.split(serve)[shlex.split(serve).index("--") + 1:]
    relay = subprocess.Popen([bccguard_bin, *args], cwd=scratch, stderr=subprocess.PIPE,
                             env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "RUST_LOG": "info"})
    sink = None
    try:
        wait_for_port(2525, timeout=15, alive=lambda: relay.poll() is None)
        mkdir, sink_cmd, swaks, cat = demo
        subprocess.run(mkdir, shell=True, check=True)
        assert sink_cmd.endswith("&")
        sink = subprocess.Popen(shlex.split(sink_cmd[:-1]))
        wait_for_port(2526, timeout=10)
        r = subprocess.run(swaks, shell=True, capture_output=True, timeout=30)
        assert r.returncode == 0, r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
        wait_until(lambda: len(list(sink_dir.iterdir())) >= 2, timeout=10, what="message and notice at the sink")
        shown = subprocess.run(cat, shell=True, capture_output=True, timeout=10).stdout.decode(errors="replace")
        assert "To: undisclosed-recipients:;" in shown, shown
        assert "Cc: b@one.example" not in shown, shown
        # Relative to the config file's folder, not the current one.
        audit = scratch / "config/var/audit.jsonl"
        assert audit.exists(), list(scratch.rglob("*"))
        # The decision line (an outcome line follows it; a key line may precede it).
        decisions = [r for r in map(json.loads, audit.read_text().splitlines()) if "action" in r]
        assert [(r["action"], r["rule"]) for r in decisions] == [("rewrite", "many-external")], decisions

        status, body = http_get("http://127.0.0.1:9025/livez")
        assert (status, body) == (200, "ok\n")
        status, _ = http_get("http://127.0.0.1:9025/readyz")
        assert status == 200

        # From another folder, through the config file: the same log.
        p = subprocess.run([bccguard_bin, "audit", "report", "--config", str(scratch / "config/bccguard.toml"),
                            "--since", "1h", "--json"], capture_output=True, timeout=30, cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        report = json.loads(p.stdout)
        assert report["records"] == 1 and report["by_rule"][0]["rule"] == "many-external", report
    finally:
        if sink is not None:
            sink.terminate()
            sink.wait(timeout=10)
        shutil.rmtree(sink_dir.parent, ignore_errors=True)
        relay.send_signal(signal.SIGTERM)
        _, err = relay.communicate(timeout=40)
    log = err.decode(errors="replace")
    assert relay.returncode == 0, log
    # The policy is one log line, and no Rust enum names leak into fields.
    policy_lines = [l for l in log.splitlines() if "policy loaded" in l]
    assert len(policy_lines) == 1 and "Rules (the first that matches wins" in policy_lines[0], log
    assert "tls=None" not in log and "auth=None" not in log, log


def test_config_show_and_check_from_elsewhere(tmp_path, bccguard_bin):
    p = subprocess.run([bccguard_bin, "config", "show", "--config", str(ROOT / "config/bccguard.toml")],
                       capture_output=True, timeout=30, cwd=tmp_path,
                       env={"BCCGUARD__POLICY__MODE": "MONITOR", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert 'mode = "monitor"    # env BCCGUARD__POLICY__MODE' in out, out
    assert f'path = "{ROOT / "config/var/audit.jsonl"}"' in out, out
