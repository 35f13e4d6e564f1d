"""Helpers for bccguard's end-to-end tests: free ports, a TOML writer, the upstreams (Postfix
smtp-sink and a small scriptable Python SMTP server), the bccguard process wrapper, and a raw SMTP
client that lets tests send exactly the bytes they mean (pipelining, smuggling, BDAT, STARTTLS).

Everything here is stdlib-only so the suite runs on Debian's python3 + python3-pytest.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
MESSAGES = HERE / "messages"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"

# Short timeouts everywhere: a hanging relay must fail a test quickly, not stall the suite.
IO_TIMEOUT = 8.0


# --------------------------------------------------------------------------------------------
# small utilities


_ports_given: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind :0, read it, close) and that this process has not
    handed out before: the kernel may offer a just-closed port again, and two listeners of one
    config given the same port refuse to start."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0, alive=None) -> None:
    """Waits until something accepts TCP connections on host:port.

    `alive` is an optional callable returning False when the process we wait for has died, so a
    crashed relay fails at once with its log instead of after the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None and not alive():
            raise RuntimeError(f"process died before {host}:{port} accepted connections")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing accepted connections on {host}:{port} within {timeout}s")
            time.sleep(0.05)


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.05, what: str = "condition"):
    """Polls `predicate` until it returns something truthy; returns that value or raises."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def crlf(data: bytes | str) -> bytes:
    """LF (or mixed) line ends → CRLF, so fixture files can be stored with plain LF."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def load_message(name: str, **subst) -> bytes:
    """A fixture message from tests/e2e/messages, with {placeholders} filled and CRLF line ends."""
    text = (MESSAGES / name).read_text("utf-8")
    if subst:
        text = text.format(**subst)
    return crlf(text)


def make_message(headers: list[tuple[str, str]], body: str = "Hello.\n") -> bytes:
    lines = [f"{k}: {v}" for k, v in headers]
    return crlf("\n".join(lines) + "\n\n" + body)


def external_addresses(n: int, domain_count: int = 3) -> list[str]:
    """n distinct external addresses spread over `domain_count` outside domains."""
    return [f"person{i:02d}@partner{i % domain_count}.example.net" for i in range(n)]


def fold_address_list(addrs: list[str]) -> str:
    """An address list folded over several lines, as mail clients write long Cc fields."""
    return ",\n ".join(addrs)


# --------------------------------------------------------------------------------------------
# message parsing (header fields of a raw message)


def split_message(data: bytes) -> tuple[bytes, bytes]:
    """(header section incl. its final line end, body) for LF or CRLF data."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = data.find(sep)
        if i >= 0:
            return data[: i + len(sep) // 2], data[i + len(sep) :]
    return data, b""


def header_fields(data: bytes) -> list[tuple[str, str]]:
    """[(name, unfolded value)] of a message's header section, in order."""
    head, _ = split_message(data)
    fields: list[list[str]] = []
    for line in lf(head).decode("utf-8", "replace").split("\n"):
        if not line:
            continue
        if line[0] in " \t" and fields:
            fields[-1][1] += " " + line.strip()
        elif ":" in line:
            name, value = line.split(":", 1)
            fields.append([name, value.strip()])
    return [(n, v) for n, v in fields]


def header_values(data: bytes, name: str) -> list[str]:
    return [v for n, v in header_fields(data) if n.lower() == name.lower()]


def strip_first_received(data: bytes) -> bytes:
    """The message without its first header field, which must be a Received: field (the one
    bccguard prepends). Continuation lines go with it."""
    assert data[:9].lower() == b"received:", f"message does not start with a Received: field: {data[:200]!r}"
    lines = data.splitlines(keepends=True)
    i = 1
    while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
        i += 1
    return b"".join(lines[i:])


# --------------------------------------------------------------------------------------------
# TOML writer (tomllib only reads)


def _toml_scalar(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (str, Path)):
        return json.dumps(str(v))  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(_toml_scalar(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def _is_table_list(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def to_toml(cfg: dict) -> str:
    out: list[str] = []

    def table(path: str, d: dict, header: str | None):
        if header is not None:
            out.append("")
            out.append(header)
        for k, v in d.items():
            if v is None or isinstance(v, dict) or _is_table_list(v):
                continue
            out.append(f"{k} = {_toml_scalar(v)}")
        for k, v in d.items():
            sub = f"{path}.{k}" if path else k
            if isinstance(v, dict):
                table(sub, v, f"[{sub}]")
            elif _is_table_list(v):
                for item in v:
                    table(sub, item, f"[[{sub}]]")

    table("", cfg, None)
    return "\n".join(out).lstrip("\n") + "\n"


# --------------------------------------------------------------------------------------------
# upstream 1: Postfix smtp-sink, dumping each message to a file


@dataclass
class Delivered:
    """One message as the upstream received it."""

    sender: str
    rcpts: list[str]
    data: bytes  # smtp-sink: LF line ends (its dump format); PyUpstream: exact bytes, CRLF
    mail_args: str = ""
    path: str = ""

    @property
    def lf(self) -> bytes:
        return lf(self.data)

    def headers(self) -> list[tuple[str, str]]:
        return header_fields(self.data)

    def header(self, name: str) -> list[str]:
        return header_values(self.data, name)

    @property
    def body(self) -> bytes:
        return split_message(self.lf)[1]


def _addr_arg(text: str) -> str:
    token = text.strip().split(" ", 1)[0] if text.strip() else ""
    return token[1:-1] if token.startswith("<") and token.endswith(">") else token


def parse_sink_dump(raw: bytes, path: str = "") -> Delivered:
    """Parses one smtp-sink `-d` dump: X-Client-Addr/X-Client-Proto/[X-Helo-Args]/X-Mail-Args/
    X-Rcpt-Args* lines, smtp-sink's own three-line Received: field, the message (smtp-sink has
    already undone dot-stuffing), then one empty line smtp-sink appends."""
    lines = raw.split(b"\n")
    sender, rcpts, mail_args = "", [], ""
    i = 0
    while i < len(lines) and lines[i].startswith(b"X-"):
        name, _, value = lines[i].decode("utf-8", "replace").partition(":")
        value = value.strip()
        if name == "X-Mail-Args":
            mail_args = value
            sender = _addr_arg(value)
        elif name == "X-Rcpt-Args":
            rcpts.append(_addr_arg(value))
        i += 1
    if i < len(lines) and lines[i].startswith(b"Received:"):
        i += 1
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            i += 1
    else:
        raise AssertionError(f"unexpected smtp-sink dump format in {path}: {raw[:300]!r}")
    message = b"\n".join(lines[i:])
    # smtp-sink ends the dump with one empty line of its own.
    if message.endswith(b"\n\n"):
        message = message[:-1]
    return Delivered(sender=sender, rcpts=rcpts, data=message, mail_args=mail_args, path=path)


class SmtpSink:
    """Postfix smtp-sink listening on 127.0.0.1:port and dumping each message into a directory."""

    def __init__(self, workdir: Path, port: int | None = None):
        # smtp-sink drops to `-u nobody` before writing dumps (it must, as root), so the dump
        # directory must be reachable and writable by nobody. pytest's tmp dirs are 0700, hence a
        # directory of our own under /tmp, removed again by `cleanup()`.
        import tempfile

        self.dir = Path(tempfile.mkdtemp(prefix="bccguard-e2e-sink-"))
        os.chmod(self.dir, 0o777)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        Path(workdir).mkdir(parents=True, exist_ok=True)
        self.log_path = Path(workdir) / "sink.log"

    def start(self) -> "SmtpSink":
        if not os.path.exists(SMTP_SINK):
            raise RuntimeError(f"{SMTP_SINK} not found: install the `postfix` package (tests/run does)")
        cmd = [SMTP_SINK]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]  # required when started as root
        cmd += ["-d", f"{self.dir}/%Y%m%d%H%M%S.", f"127.0.0.1:{self.port}", "100"]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(self.port, alive=lambda: self.proc.poll() is None)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(3)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def messages(self, settle: float = 0.0) -> list[Delivered]:
        """Parsed dumps, oldest first. `settle` waits first, for "nothing arrived" checks where a
        late or aborted upstream transaction could still be in flight."""
        if settle:
            time.sleep(settle)
        files = [p for p in self.dir.iterdir() if p.is_file()]
        files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [parse_sink_dump(p.read_bytes(), str(p)) for p in files]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Delivered]:
        return wait_until(
            lambda: (m := self.messages()) and len(m) >= count and m,
            timeout,
            what=f"{count} message(s) at smtp-sink",
        )


# --------------------------------------------------------------------------------------------
# upstream 2: a scriptable SMTP server (exact bytes, per-recipient rejects, DATA failures)


async def read_data(reader: asyncio.StreamReader) -> bytes | None:
    """The content of one DATA transfer up to CRLF.CRLF, dot-unstuffed; None when the peer closed
    the connection first."""
    chunks = []
    while True:
        dline = await reader.readline()
        if not dline:
            return None
        if dline == b".\r\n":
            return b"".join(chunks)
        chunks.append(dline[1:] if dline.startswith(b".") else dline)


class PyUpstream:
    """A tiny SMTP server on asyncio streams, in its own thread.

    - RCPT for a local part starting with "reject" gets `550 5.1.1 No such user`; "tempfail" gets
      `450 4.2.1 Mailbox busy`; "baddata" is accepted at RCPT but its DATA gets `550 5.7.1`;
      "tempdata" is accepted at RCPT but its DATA gets `451 4.3.0` until `tempdata_ok` is set.
    - `data_reply` (if set) replaces the reply at the end of DATA, e.g. "554 5.7.0 Upstream says no".
    - Messages keep their exact bytes (CRLF, dot-stuffing undone)."""

    def __init__(self, data_reply: str | None = None, ehlo_extensions=None):
        self.port = free_port()
        self.data_reply = data_reply
        self.tempdata_ok = False
        self.ehlo_extensions = ehlo_extensions or [
            "PIPELINING",
            "SIZE 104857600",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
        ]
        self.delivered: list[Delivered] = []
        self.transcript: list[bytes] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._count = 0

    def start(self) -> "PyUpstream":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("PyUpstream did not start")
        return self

    def _run(self):
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)

        async def main():
            self._server = await asyncio.start_server(self._session, "127.0.0.1", self.port, limit=1 << 20)
            self._ready.set()
            async with self._server:
                await self._server.serve_forever()

        try:
            self._loop.run_until_complete(main())
        except (asyncio.CancelledError, RuntimeError):
            pass

    def stop(self):
        if self._loop and self._server:
            def close():
                self._server.close()
                for t in asyncio.all_tasks(self._loop):
                    t.cancel()
            self._loop.call_soon_threadsafe(close)
        if self._thread:
            self._thread.join(3)

    def messages(self, settle: float = 0.0) -> list[Delivered]:
        if settle:
            time.sleep(settle)
        with self._lock:
            return list(self.delivered)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Delivered]:
        return wait_until(
            lambda: (m := self.messages()) and len(m) >= count and m,
            timeout,
            what=f"{count} message(s) at the Python upstream",
        )

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        async def reply(text: str):
            writer.write(text.encode() + b"\r\n")
            await writer.drain()

        sender, rcpts = None, []
        try:
            await reply("220 py-upstream ESMTP ready")
            while True:
                line = await reader.readline()
                if not line:
                    return
                with self._lock:
                    self.transcript.append(line)
                cmd = line.rstrip(b"\r\n").decode("utf-8", "replace")
                verb = cmd.split(" ", 1)[0].upper()
                if verb in ("EHLO", "HELO"):
                    if verb == "HELO":
                        await reply("250 py-upstream")
                    else:
                        exts = ["py-upstream"] + self.ehlo_extensions
                        text = "\r\n".join(
                            f"250{'-' if i < len(exts) - 1 else ' '}{e}" for i, e in enumerate(exts)
                        )
                        await reply(text)
                elif verb == "MAIL":
                    m = re.match(r"(?i)MAIL FROM:\s*<([^>]*)>", cmd)
                    sender, rcpts = (m.group(1) if m else ""), []
                    await reply("250 2.1.0 Sender ok")
                elif verb == "RCPT":
                    m = re.match(r"(?i)RCPT TO:\s*<([^>]*)>", cmd)
                    addr = m.group(1) if m else ""
                    local = addr.split("@", 1)[0].lower()
                    if sender is None:
                        await reply("503 5.5.1 Need MAIL first")
                    elif local.startswith("reject"):
                        await reply(f"550 5.1.1 No such user <{addr}>")
                    elif local.startswith("tempfail"):
                        await reply("450 4.2.1 Mailbox busy, try later")
                    else:
                        rcpts.append(addr)
                        await reply("250 2.1.5 Recipient ok")
                elif verb == "DATA":
                    if sender is None or not rcpts:
                        await reply("554 5.5.1 No valid recipients")
                        continue
                    await reply("354 Go ahead")
                    data = await read_data(reader)
                    if data is None:
                        return
                    if any(r.split("@", 1)[0].lower().startswith("baddata") for r in rcpts):
                        # Accepted at RCPT, refused for the content: a per-copy failure in a split.
                        await reply("550 5.7.1 Content refused for this mailbox")
                    elif not self.tempdata_ok and any(
                        r.split("@", 1)[0].lower().startswith("tempdata") for r in rcpts
                    ):
                        # A temporary per-copy failure: the split copy goes to the spool.
                        await reply("451 4.3.0 Temporary failure for this mailbox, try later")
                    elif self.data_reply:
                        await reply(self.data_reply)
                    else:
                        with self._lock:
                            self._count += 1
                            self.delivered.append(Delivered(sender=sender, rcpts=list(rcpts), data=data))
                        await reply(f"250 2.0.0 Ok: queued as PY{self._count}")
                    sender, rcpts = None, []
                elif verb == "RSET":
                    sender, rcpts = None, []
                    await reply("250 2.0.0 Ok")
                elif verb == "NOOP":
                    await reply("250 2.0.0 Ok")
                elif verb == "QUIT":
                    await reply("221 2.0.0 Bye")
                    return
                else:
                    await reply("502 5.5.2 Command not implemented")
        except (ConnectionError, asyncio.CancelledError, asyncio.IncompleteReadError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass


# --------------------------------------------------------------------------------------------
# raw SMTP client


class ConnectionClosed(Exception):
    pass


@dataclass
class Reply:
    code: int
    lines: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    @property
    def status(self) -> str | None:
        """Enhanced status code (e.g. "5.7.1") of the first line, if any."""
        m = re.match(r"([245]\.\d{1,3}\.\d{1,3})\b", self.lines[0] if self.lines else "")
        return m.group(1) if m else None

    @property
    def keywords(self) -> list[str]:
        """EHLO keywords (upper-case first word of each line after the first)."""
        return [l.split(" ", 1)[0].upper() for l in self.lines[1:] if l]

    def keyword_line(self, kw: str) -> str | None:
        for l in self.lines[1:]:
            if l.split(" ", 1)[0].upper() == kw:
                return l
        return None

    def __repr__(self):
        return f"Reply({self.code}, {self.lines!r})"


def client_tls_context(cafile: Path | None = None) -> ssl.SSLContext:
    if cafile:
        ctx = ssl.create_default_context(cafile=str(cafile))
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class RawClient:
    """Line-level SMTP client: send any bytes, read whole (multi-line) replies."""

    def __init__(self, port: int, host: str = "127.0.0.1", source: str | None = None,
                 timeout: float = IO_TIMEOUT, tls: bool = False, greeting: bool = True):
        self.sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.buf = b""
        if tls:
            self.wrap_tls()
        self.banner = self.reply() if greeting else None

    # -- I/O
    def send(self, data: bytes | str):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionClosed(f"connection closed by server (pending {self.buf!r})")
        self.buf += chunk

    def read_line(self) -> bytes:
        while b"\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\n", 1)
        return line + b"\n"

    def reply(self) -> Reply:
        lines, code = [], None
        while True:
            line = self.read_line()
            text = line.rstrip(b"\r\n").decode("utf-8", "replace")
            if len(text) < 3 or not text[:3].isdigit():
                raise AssertionError(f"not an SMTP reply line: {line!r}")
            code = int(text[:3])
            lines.append(text[4:])
            if text[3:4] != "-":
                return Reply(code, lines)

    def cmd(self, line: str | bytes) -> Reply:
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.reply()

    def pending(self, wait: float = 0.5) -> bytes:
        """Whatever the server sends within `wait` seconds (b"" if nothing); for "no extra reply"
        checks. Returns b"<closed>" appended if the server closed."""
        old = self.sock.gettimeout()
        self.sock.settimeout(wait)
        got = self.buf
        self.buf = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    got += b"<closed>"
                    break
                got += chunk
        except (socket.timeout, TimeoutError, ssl.SSLError, BlockingIOError):
            pass
        except OSError:
            got += b"<closed>"
        finally:
            try:
                self.sock.settimeout(old)
            except OSError:
                pass
        return got

    # -- protocol helpers
    def ehlo(self, name: str = "client.example.org") -> Reply:
        r = self.cmd(f"EHLO {name}")
        assert r.code == 250, f"EHLO failed: {r}"
        return r

    def wrap_tls(self, cafile: Path | None = None):
        assert not self.buf, f"server sent bytes before the TLS handshake: {self.buf!r}"
        self.sock = client_tls_context(cafile).wrap_socket(self.sock, server_hostname="localhost")

    def starttls(self):
        r = self.cmd("STARTTLS")
        assert r.code == 220, f"STARTTLS refused: {r}"
        self.wrap_tls()

    def auth_plain(self, user: str, password: str) -> Reply:
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return self.cmd(f"AUTH PLAIN {token}")

    def data(self, message: bytes) -> Reply:
        """DATA with proper dot-stuffing and terminator; returns the final reply."""
        r = self.cmd("DATA")
        assert r.code == 354, f"DATA refused: {r}"
        self.send(dot_stuff(message) + b".\r\n")
        return self.reply()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def dot_stuff(message: bytes) -> bytes:
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    out = re.sub(rb"(?m)^\.", b"..", message)
    return out


def send_mail(port: int, sender: str, rcpts: list[str], message: bytes, source: str | None = None,
              starttls: bool = False, auth: tuple[str, str] | None = None,
              timeout: float | None = None) -> dict:
    """One transaction over a raw client. Returns the replies: {"mail": Reply, "rcpt": [Reply],
    "data": Reply | None}; "data" is None when no recipient was accepted (DATA not sent)."""
    with RawClient(port, source=source, timeout=timeout or IO_TIMEOUT) as c:
        c.ehlo()
        if starttls:
            c.starttls()
            c.ehlo()
        if auth:
            r = c.auth_plain(*auth)
            assert r.code == 235, f"AUTH failed: {r}"
        out = {"mail": c.cmd(f"MAIL FROM:<{sender}>"), "rcpt": [], "data": None}
        if out["mail"].code != 250:
            return out
        for r in rcpts:
            out["rcpt"].append(c.cmd(f"RCPT TO:<{r}>"))
        if any(r.code == 250 for r in out["rcpt"]):
            r = c.cmd("DATA")
            if r.code != 354:
                out["data"] = r
            else:
                c.send(dot_stuff(message) + b".\r\n")
                out["data"] = c.reply()
        try:
            c.cmd("QUIT")
        except (ConnectionClosed, OSError):
            pass
        return out


# --------------------------------------------------------------------------------------------
# the audit log


def merge_audit_outcomes(lines: list[dict]) -> list[dict]:
    """One entry per audited message, in log order: one-shot records (`kind` "record", or no kind in
    logs written before kinds existed) as they are, and each decision with its outcome folded in
    (`upstream` and `header_digest_forwarded` from the outcome, the outcome itself under "outcome",
    None while there is none; outcomes written later for spooled copies under "later_outcomes").
    Outcome and key lines are not entries of their own."""
    outcomes, later = {}, {}
    for l in lines:
        if l.get("kind") == "outcome":
            if l["decision_seq"] in outcomes:
                later.setdefault(l["decision_seq"], []).append(l)
            else:
                outcomes[l["decision_seq"]] = l
    merged = []
    for l in lines:
        kind = l.get("kind", "record")
        if kind == "record":
            merged.append(l)
        elif kind == "decision":
            entry = dict(l)
            o = outcomes.get(l["seq"])
            entry["outcome"] = o
            entry["later_outcomes"] = later.get(l["seq"], [])
            if o is not None:
                entry["upstream"] = o.get("upstream")
                entry["header_digest_forwarded"] = o.get("header_digest_forwarded")
            merged.append(entry)
    return merged


# --------------------------------------------------------------------------------------------
# the bccguard process


class Relay:
    """One `bccguard serve` process with its own config file, log and audit log."""

    def __init__(self, binary: str, workdir: Path, config: dict, upstream=None,
                 log_format: str | None = None, env: dict | None = None, name: str = "relay"):
        self.binary = binary
        self.workdir = Path(workdir)
        self.config = config
        self.upstream = upstream  # SmtpSink or PyUpstream (may be None)
        self.log_format = log_format
        self.env = env or {}
        self.name = name
        self.config_path = self.workdir / f"{name}.toml"
        self.log_path = self.workdir / f"{name}.stderr"
        self.proc: subprocess.Popen | None = None
        self.exit_code: int | None = None
        self.stopped_by_test = False

    # -- derived addresses
    def _listener(self, pred) -> dict | None:
        for l in self.config.get("listener", []):
            if pred(l):
                return l
        return None

    @staticmethod
    def _port(listener: dict | None) -> int | None:
        return int(listener["address"].rsplit(":", 1)[1]) if listener else None

    @property
    def smtp_port(self) -> int:
        """First listener: plain/STARTTLS, auth optional (clients in relay_networks relay freely)."""
        return self._port(self.config["listener"][0])

    @property
    def submission_port(self) -> int | None:
        """A STARTTLS listener with auth = "required"."""
        return self._port(self._listener(lambda l: l.get("tls") == "starttls" and l.get("auth") == "required"))

    @property
    def tls_port(self) -> int | None:
        """The implicit-TLS listener."""
        return self._port(self._listener(lambda l: l.get("tls") == "implicit"))

    @property
    def metrics_url(self) -> str | None:
        m = self.config.get("metrics")
        return f"http://{m['address']}" if m else None

    @property
    def audit_path(self) -> Path:
        return Path(self.config["audit"]["path"])

    # -- lifecycle
    def write_config(self, config: dict | None = None):
        if config is not None:
            self.config = config
        self.config_path.write_text(to_toml(self.config))

    def start(self, wait: bool = True) -> "Relay":
        self.write_config()
        cmd = [self.binary]
        if self.log_format:
            cmd += ["--log-format", self.log_format]
        cmd += ["serve", "--config", str(self.config_path)]
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("NO_COLOR", "1")  # plain log text for assertions and failure reports
        env.update(self.env)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=self._log, cwd=self.workdir, env=env,
                                     start_new_session=True)
        if wait:
            try:
                for l in self.config.get("listener", []):
                    wait_for_port(self._port(l), alive=self.alive)
            except (RuntimeError, TimeoutError) as e:
                code = self.proc.poll()
                self.kill()
                self.proc = None  # reported here; teardown need not report it again
                raise AssertionError(
                    f"bccguard serve did not come up ({e}; exit code {code}).\n"
                    f"command: {' '.join(cmd)}\n--- log ---\n{self.log[-4000:]}"
                ) from None
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def send_signal(self, sig):
        assert self.alive(), f"bccguard is not running (exit {self.proc.poll() if self.proc else None})"
        os.kill(self.proc.pid, sig)

    def reload(self, config: dict, wait: float = 1.5) -> str:
        """Rewrites the config file and sends SIGHUP. Returns the log text written since.

        Waits until the log mentions a reload (any line with "reload", case-insensitive) or
        `wait` seconds, whichever is first."""
        before = len(self.log)
        self.write_config(config)
        self.send_signal(signal.SIGHUP)
        try:
            wait_until(lambda: re.search(r"(?i)reload", self.log[before:]), timeout=wait, what="reload log line")
            time.sleep(0.1)
        except TimeoutError:
            pass
        return self.log[before:]

    def stop(self, sig=signal.SIGTERM, timeout: float | None = None) -> int:
        """Signals and waits for the exit; returns the exit code. Raises if it does not exit in
        shutdown_grace_seconds + 3 s."""
        if self.proc is None:
            return self.exit_code
        if timeout is None:
            timeout = float(self.config.get("server", {}).get("shutdown_grace_seconds", 30)) + 3
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        try:
            self.exit_code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(3)
            raise AssertionError(f"bccguard did not exit within {timeout}s of {sig!r}; killed it")
        return self.exit_code

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(3)

    # -- observations
    def dumps(self, settle: float = 0.0) -> list[Delivered]:
        return self.upstream.messages(settle) if self.upstream else []

    def audit_lines(self) -> list[dict]:
        """Every line of the audit log as written: decisions, outcomes, one-shot records, key changes."""
        try:
            text = self.audit_path.read_text("utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(l) for l in text.splitlines() if l.strip()]

    def audit_records(self) -> list[dict]:
        """One entry per audited message (see `merge_audit_outcomes`)."""
        return merge_audit_outcomes(self.audit_lines())

    def wait_audit(self, count: int, timeout: float = 3.0) -> list[dict]:
        return wait_until(lambda: (r := self.audit_records()) and len(r) >= count and r, timeout,
                          what=f"{count} audit record(s)")

    def cli(self, *args: str, input: bytes | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
        """Runs `bccguard ARGS` (offline commands) and returns the completed process."""
        return subprocess.run([self.binary, *args], input=input, capture_output=True, timeout=timeout,
                              cwd=self.workdir)

    def metrics(self) -> str:
        return http_get(self.metrics_url + "/metrics")[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


# --------------------------------------------------------------------------------------------
# upstream 3: a fault-injecting SMTP server (for tests/e2e/test_faults.py and bench/)


class FaultUpstream(PyUpstream):
    """A PyUpstream that misbehaves on purpose at the end of DATA, the moment a relay can least
    afford it:

    - `drop_every` N: every Nth end of DATA (counted over all sessions) closes the connection
      without a reply; the message is *not* kept (so a retry that delivers it is not a duplicate).
    - `reply_delay` D: the reply to the end of DATA comes D seconds late; the message is kept
      *before* the wait, as a real server queues first and answers afterwards (so a client that
      gives up and resends makes a visible duplicate).

    - `down_after` N: right after the Nth kept message the server goes down (listener closed,
      every connection aborted: connection refused from then on) until `set_down(False)`.

    Every kept copy is recorded in `delivered` with its envelope; `data_ends` and `dropped`
    count what happened."""

    def __init__(self, drop_every: int = 0, reply_delay: float = 0.0, down_after: int = 0, **kw):
        super().__init__(**kw)
        self.drop_every = drop_every
        self.reply_delay = reply_delay
        self.down_after = down_after
        # Set by a test: go down right after keeping the next copy to a recipient with this prefix.
        self.down_after_rcpt_prefix: str | None = None
        self.data_ends = 0
        self.dropped = 0
        self.down_since: float | None = None
        self._writers: set = set()

    def _run(self):
        # Unlike PyUpstream, the loop outlives the listener, so the server can go down and up.
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)

        async def listen():
            self._server = await asyncio.start_server(self._session, "127.0.0.1", self.port, limit=1 << 20)

        self._loop.run_until_complete(listen())
        self._ready.set()
        self._loop.run_forever()

    def stop(self):
        if self._loop and self._loop.is_running():
            async def shutdown():
                self._server.close()
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            try:
                asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(3)
            except Exception:  # noqa: BLE001 - stopping must go on
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(3)

    def _go_down(self):
        self.down_since = time.monotonic()
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()

    def set_down(self, down: bool):
        """Takes the server down (connection refused) or brings it up again on the same port."""

        async def change():
            if down:
                self._go_down()
            elif self.down_since is not None:
                self._server = await asyncio.start_server(self._session, "127.0.0.1", self.port, limit=1 << 20)
                self.down_since = None

        asyncio.run_coroutine_threadsafe(change(), self._loop).result(5)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        async def reply(text: str):
            writer.write(text.encode() + b"\r\n")
            await writer.drain()

        sender, rcpts = None, []
        self._writers.add(writer)
        try:
            await reply("220 fault-upstream ESMTP ready")
            while True:
                line = await reader.readline()
                if not line:
                    return
                cmd = line.rstrip(b"\r\n").decode("utf-8", "replace")
                verb = cmd.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    exts = ["fault-upstream"] + self.ehlo_extensions
                    await reply("\r\n".join(
                        f"250{'-' if i < len(exts) - 1 else ' '}{e}" for i, e in enumerate(exts)))
                elif verb == "HELO":
                    await reply("250 fault-upstream")
                elif verb == "MAIL":
                    m = re.match(r"(?i)MAIL FROM:\s*<([^>]*)>", cmd)
                    sender, rcpts = (m.group(1) if m else ""), []
                    await reply("250 2.1.0 Sender ok")
                elif verb == "RCPT":
                    m = re.match(r"(?i)RCPT TO:\s*<([^>]*)>", cmd)
                    rcpts.append(m.group(1) if m else "")
                    await reply("250 2.1.5 Recipient ok")
                elif verb == "DATA":
                    if sender is None or not rcpts:
                        await reply("554 5.5.1 No valid recipients")
                        continue
                    await reply("354 Go ahead")
                    data = await read_data(reader)
                    if data is None:
                        return
                    with self._lock:
                        self.data_ends += 1
                        drop = self.drop_every and self.data_ends % self.drop_every == 0
                        if drop:
                            self.dropped += 1
                        else:
                            self._count += 1
                            n = self._count
                            self.delivered.append(
                                Delivered(sender=sender, rcpts=list(rcpts), data=data))
                    if drop:
                        return  # `finally` closes the connection: no reply at all
                    if self.reply_delay:
                        await asyncio.sleep(self.reply_delay)
                    await reply(f"250 2.0.0 Ok: queued as F{n}")
                    kept_for = list(rcpts)
                    sender, rcpts = None, []
                    if self.down_after and n == self.down_after:
                        self._go_down()
                        return
                    prefix = self.down_after_rcpt_prefix
                    if prefix and any(r.startswith(prefix) for r in kept_for):
                        # Mid-split on purpose: this copy is out, the message's next ones are not.
                        self.down_after_rcpt_prefix = None
                        self._go_down()
                        return
                elif verb == "RSET":
                    sender, rcpts = None, []
                    await reply("250 2.0.0 Ok")
                elif verb == "NOOP":
                    await reply("250 2.0.0 Ok")
                elif verb == "QUIT":
                    await reply("221 2.0.0 Bye")
                    return
                else:
                    await reply("502 5.5.2 Command not implemented")
        except (ConnectionError, asyncio.CancelledError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            try:
                writer.close()
            except Exception:
                pass
