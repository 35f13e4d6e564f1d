"""pytest fixtures for bccguard's end-to-end suite.

`relay` starts Postfix smtp-sink as the upstream and bccguard with a generated config (temp dir,
free ports, self-signed certificate, one user) and stops both afterwards, asserting a graceful exit.
`make_relay(...)` builds variants (other config, the Python upstream, no upstream, env overrides).

The default relay has three listeners:
  listener[0] smtp_port        STARTTLS offered, auth optional; relay_networks = 127.0.0.1/32 only,
                               so a client bound to 127.0.0.2 is "outside" and must AUTH to relay
  listener[1] submission_port  STARTTLS, auth required
  listener[2] tls_port         implicit TLS, auth required
and a sender-selected policy (see POLICY_RULES) so one instance shows rewrite, split and reject.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import PyUpstream, Relay, SmtpSink, free_port

USER = "alice"
PASSWORD = "correct horse battery staple"
MAX_MESSAGE_SIZE = 100_000
MAX_RECIPIENTS = 50
SHUTDOWN_GRACE = 3
REJECT_TEXT = "Too many outside addresses are visible to each other: put them in Bcc and send the message again."

POLICY_RULES = [
    {"name": "split-sender", "senders": ["splitter@example.org"], "min_visible_external": 6, "action": "split"},
    {"name": "reject-sender", "senders": ["rejecter@example.org"], "min_visible_external": 6, "action": "reject",
     "message": REJECT_TEXT},
    {"name": "many-external", "min_visible_external": 6, "action": "rewrite"},
]

GROUPS = ("relay", "policy", "audit", "ops")


def pytest_configure(config):
    for g in GROUPS:
        config.addinivalue_line("markers", f"{g}: end-to-end tests of the {g} issue")
    # test_interop.py (real Postfix peers) lives beside this suite and uses its own harness.
    config.addinivalue_line("markers", "interop: interoperability with real mail software (tests/e2e/interop)")


# --------------------------------------------------------------------------------------------
# session-wide material


@pytest.fixture(scope="session")
def bccguard_bin() -> str:
    path = os.environ.get("BCCGUARD_BIN")
    if not path:
        root = Path(__file__).resolve().parents[2]
        path = str(root / "target" / "debug" / "bccguard")
    path = os.path.abspath(path)  # relays run with their own working directory
    if not os.access(path, os.X_OK):
        pytest.fail(f"bccguard binary not found at {path}: run `cargo build` or set BCCGUARD_BIN", pytrace=False)
    return path


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bccguard-e2e")


@pytest.fixture(scope="session")
def tls_material(session_dir) -> dict:
    """Self-signed certificate for localhost / 127.0.0.1 (clients can verify it with cafile=cert)."""
    cert, key = session_dir / "cert.pem", session_dir / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return {"certificate": str(cert), "private_key": str(key)}


@pytest.fixture(scope="session")
def users_file(session_dir, bccguard_bin) -> str:
    """A users file made the documented way: `echo -n PASSWORD | bccguard passwd` prints the hash;
    the line is `user:` + that output."""
    r = subprocess.run([bccguard_bin, "passwd"], input=PASSWORD.encode(), capture_output=True, timeout=60)
    if r.returncode != 0:
        pytest.fail(f"`bccguard passwd` failed ({r.returncode}): {r.stderr.decode(errors='replace')}", pytrace=False)
    out = r.stdout.decode().strip()
    # Accept either a bare PHC hash or a ready-made "user:hash" line.
    hash_ = out.split(":", 1)[1] if not out.startswith("$") and ":" in out else out
    assert hash_.startswith("$argon2"), f"`bccguard passwd` printed no argon2 hash: {out!r}"
    path = session_dir / "users"
    path.write_text(f"# test users\n{USER}:{hash_}\n")
    path.chmod(0o600)  # as deployed; readable by others only earns a warning
    return str(path)


# --------------------------------------------------------------------------------------------
# config


def base_config(workdir: Path, upstream_port: int, tls: dict, users: str) -> dict:
    var = workdir / "var"
    var.mkdir(exist_ok=True)
    return {
        "server": {
            "hostname": "bccguard.test",
            "max_message_size": MAX_MESSAGE_SIZE,
            "max_recipients": MAX_RECIPIENTS,
            "relay_networks": ["127.0.0.1/32"],
            "max_connections": 50,
            "command_timeout_seconds": 30,
            "data_timeout_seconds": 30,
            "shutdown_grace_seconds": SHUTDOWN_GRACE,
        },
        "listener": [
            {"address": f"127.0.0.1:{free_port()}", "tls": "starttls", "auth": "optional"},
            {"address": f"127.0.0.1:{free_port()}", "tls": "starttls", "auth": "required"},
            {"address": f"127.0.0.1:{free_port()}", "tls": "implicit", "auth": "required"},
        ],
        "tls": dict(tls),
        "auth": {"users_file": users},
        "upstream": {"address": f"127.0.0.1:{upstream_port}", "tls": "none", "timeout_seconds": 5},
        "policy": {
            "mode": "enforce",
            "internal_domains": ["example.org"],
            "include_subdomains": True,
            "rewrite_to": "undisclosed",
            "rule": copy.deepcopy(POLICY_RULES),
        },
        "audit": {
            "path": str(var / "audit.jsonl"),
            "recipients": "hmac",
            "hmac_key_file": str(var / "audit.key"),
            "log_accepts": False,
        },
        "metrics": {"address": f"127.0.0.1:{free_port()}"},
    }


# --------------------------------------------------------------------------------------------
# process fixtures


class Harness:
    """Starts relays and upstreams for one test and guarantees they are stopped afterwards."""

    def __init__(self, workdir: Path, binary: str, tls: dict, users: str):
        self.workdir = workdir
        self.binary = binary
        self.tls = tls
        self.users = users
        self.relays: list[Relay] = []
        self.upstreams: list = []
        self.cleanups: list = []
        self._n = 0

    def sink(self, start: bool = True) -> SmtpSink:
        self._n += 1
        s = SmtpSink(self.workdir / f"sink{self._n}")
        self.upstreams.append(s)
        return s.start() if start else s

    def py_upstream(self, **kw) -> PyUpstream:
        u = PyUpstream(**kw).start()
        self.upstreams.append(u)
        return u

    def config(self, upstream_port: int | None = None, workdir: Path | None = None) -> dict:
        return base_config(workdir or self.workdir, upstream_port or free_port(), self.tls, self.users)

    def relay(self, mutate=None, upstream="sink", config: dict | None = None, log_format=None,
              env=None, start: bool = True, name: str | None = None) -> Relay:
        """upstream: "sink" (new smtp-sink), "py" (new PyUpstream), None (nothing listening), or an
        upstream object. `mutate(cfg)` edits the generated config in place before start."""
        if upstream == "sink":
            upstream = self.sink()
        elif upstream == "py":
            upstream = self.py_upstream()
        self._n += 1
        name = name or f"relay{self._n}"
        rdir = self.workdir / name
        rdir.mkdir(exist_ok=True)
        cfg = config or self.config(upstream.port if upstream is not None else None, workdir=rdir)
        if mutate:
            mutate(cfg)
        r = Relay(self.binary, rdir, cfg, upstream=upstream, log_format=log_format, env=env, name=name)
        self.relays.append(r)
        return r.start() if start else r

    def close(self) -> list[str]:
        problems = []
        for r in self.relays:
            if r.proc is None or r.stopped_by_test:
                continue
            code = r.proc.poll()
            if code is not None:
                problems.append(f"{r.name}: bccguard exited during the test with code {code}\n{r.log[-3000:]}")
                continue
            try:
                r.stop()
            except AssertionError as e:
                problems.append(f"{r.name}: {e}")
        for u in self.upstreams:
            try:
                getattr(u, "cleanup", u.stop)()
            except Exception as e:  # noqa: BLE001 - cleanup must go on
                problems.append(f"stopping upstream: {e}")
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                problems.append(f"cleanup: {e}")
        return problems


@pytest.fixture
def harness(request, tmp_path, bccguard_bin, tls_material, users_file):
    h = Harness(tmp_path, bccguard_bin, tls_material, users_file)
    request.node._bccguard_harness = h
    yield h
    problems = h.close()
    if problems:
        pytest.fail("teardown: " + "\n".join(problems), pytrace=False)


@pytest.fixture
def make_relay(harness):
    return harness.relay


@pytest.fixture
def relay(harness) -> Relay:
    """The default relay in front of a fresh smtp-sink."""
    return harness.relay()


@pytest.fixture
def py_relay(harness) -> Relay:
    """The default relay in front of the scriptable Python upstream (exact bytes, RCPT rejects)."""
    return harness.relay(upstream="py")


@pytest.fixture
def credentials():
    return USER, PASSWORD


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the tail of every relay log of the test to the report."""
    outcome = yield
    rep = outcome.get_result()
    h = getattr(item, "_bccguard_harness", None)
    if h and rep.failed:
        for r in h.relays:
            rep.sections.append((f"{r.name} log ({r.log_path})", r.log[-6000:] or "(empty)"))


def require_tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if not path:
        pytest.fail(f"`{name}` is not installed: run tests/run, which installs the test tools", pytrace=False)
    return path
