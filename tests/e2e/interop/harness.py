"""Interop harness: everything test_interop.py needs to run bccguard between real mail software.

Owns: a throw-away PKI (CA + server certificate for localhost/127.0.0.1), throw-away Postfix
instances (own config_directory, queue, data directory and log; master in the foreground, never
the system instance in /etc/postfix), the bccguard process with a generated config, a parser for
the Maildir files Postfix's virtual(8) stores, and runners for the outside clients (Python smtplib,
swaks, msmtp, curl). Stdlib only, and independent of conftest.py/helpers.py so the interop suite
keeps working whatever the other e2e files change.

Postfix instances must run as root (master starts its daemons as root and drops to `postfix`), so
the work directory lives under /tmp with mode 0755: Postfix's unprivileged daemons (smtpd reading
sasldb, virtual writing the Maildir as `nobody`) must be able to traverse it, which pytest's
tmp_path (mode 0700) does not allow.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# Shared with the rest of the e2e suite (tests/e2e/helpers.py), which is on sys.path under pytest.
from helpers import crlf, free_port, lf, merge_audit_outcomes, split_message, to_toml, wait_for_port  # noqa: E402
from helpers import wait_until as _wait_until  # noqa: E402


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.1, what: str = "condition"):
    """helpers.wait_until with the slower defaults real Postfix instances need."""
    return _wait_until(predicate, timeout, interval, what)


POSTFIX_MASTER = "/usr/lib/postfix/sbin/master"
POSTFIX_META = "/etc/postfix"  # read-only: postfix-files, dynamicmaps.cf shipped by the package
NOBODY_UID = 65534  # virtual(8) writes the Maildirs as this user (nobody/nogroup on Debian)
NOBODY_GID = 65534

# Short timeouts everywhere: a hanging peer must fail one test quickly, not stall the suite.
IO_TIMEOUT = 15.0
TOOL_TIMEOUT = 30.0


# --------------------------------------------------------------------------------------------
# small utilities


def make_workdir(prefix: str = "bccguard-interop-") -> Path:
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(d, 0o755)  # Postfix's unprivileged daemons must traverse it (see module comment)
    return d


def run(cmd: list[str], input: bytes | None = None, timeout: float = TOOL_TIMEOUT, env=None,
        check: bool = False) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited {r.returncode}\nstdout: {r.stdout.decode(errors='replace')}\n"
            f"stderr: {r.stderr.decode(errors='replace')}"
        )
    return r


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def tail(path: Path, n: int = 6000) -> str:
    """The last n characters of a log, without terminal colour codes."""
    try:
        return ANSI.sub("", path.read_text("utf-8", "replace"))[-n:]
    except FileNotFoundError:
        return "(no log)"


def missing_tools(names: list[str]) -> list[str]:
    out = []
    for n in names:
        if not (shutil.which(n) or os.path.exists(f"/usr/sbin/{n}") or os.path.exists(n)):
            out.append(n)
    return out


# --------------------------------------------------------------------------------------------
# PKI: a CA and one server certificate signed by it


@dataclass
class Pki:
    ca_cert: Path
    cert: Path  # leaf: CN=localhost, SAN DNS:localhost, IP:127.0.0.1, CA:FALSE, serverAuth
    key: Path


def make_pki(d: Path, name: str = "interop") -> Pki:
    """A CA plus a leaf certificate. rustls (bccguard's upstream client) refuses a self-signed
    CA:TRUE certificate used as a server certificate, so the server gets a proper leaf."""
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = d / f"{name}-ca.key", d / f"{name}-ca.pem"
    key, csr, cert = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem"
    ext = d / f"{name}.ext"
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3",
         "-subj", f"/CN=bccguard interop test CA {name}", "-keyout", str(ca_key), "-out", str(ca_cert),
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        check=True)
    run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-keyout", str(key), "-out", str(csr)], check=True)
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
    )
    run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
         "-CAcreateserial", "-days", "3", "-extfile", str(ext), "-out", str(cert)], check=True)
    for p in (key, ca_key):
        os.chmod(p, 0o600)
    # Postfix's smtpd reads its key as root before dropping privileges; nothing else needs it.
    return Pki(ca_cert=ca_cert, cert=cert, key=key)


# --------------------------------------------------------------------------------------------
# messages as Postfix stores them


def raw_fields(head: bytes) -> list[bytes]:
    """Header fields as raw byte strings (folded lines kept with their line ends)."""
    fields: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        elif line.strip():
            fields.append(line)
    return fields


def field_name(f: bytes) -> str:
    return f.split(b":", 1)[0].decode("ascii", "replace").strip().lower()


def field_value(f: bytes) -> str:
    v = f.split(b":", 1)[1] if b":" in f else b""
    return re.sub(r"\s+", " ", v.decode("utf-8", "replace")).strip()


TRACE_FIELDS = {"return-path", "delivered-to", "received", "x-original-to"}


@dataclass
class Stored:
    """One file of a Maildir written by Postfix virtual(8): LF line ends."""

    path: Path
    data: bytes

    @property
    def head(self) -> bytes:
        return split_message(self.data)[0]

    @property
    def body(self) -> bytes:
        return split_message(self.data)[1]

    @property
    def fields(self) -> list[bytes]:
        return raw_fields(self.head)

    def values(self, name: str) -> list[str]:
        return [field_value(f) for f in self.fields if field_name(f) == name.lower()]

    @property
    def delivered_to(self) -> str | None:
        v = self.values("Delivered-To")
        return v[0] if v else None

    def trace(self) -> list[bytes]:
        """The leading trace block (Return-Path, Delivered-To, Received ...), added in transit."""
        out = []
        for f in self.fields:
            if field_name(f) not in TRACE_FIELDS:
                break
            out.append(f)
        return out

    def content_fields(self) -> list[bytes]:
        """The header fields after the leading trace block: what the author's client wrote
        (after any policy edit)."""
        fs = self.fields
        return fs[len(self.trace()):]

    def contains(self, token: str) -> bool:
        return token.encode() in self.data


def read_maildir(base: Path) -> list[Stored]:
    out = []
    for sub in ("new", "cur"):
        d = base / sub
        if d.is_dir():
            for p in sorted(d.iterdir()):
                if p.is_file():
                    out.append(Stored(p, p.read_bytes()))
    return out


# --------------------------------------------------------------------------------------------
# throw-away Postfix instances

MASTER_CF = """\
{listen}:{port} inet n - n - - smtpd
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
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
tlsproxy  unix  -       -       n       -       0       tlsproxy
"""


class Postfix:
    """One throw-away Postfix instance under `root`: etc/ (main.cf, master.cf, maps), spool/,
    data/, mail/ (Maildir base), maillog (master's stdout; maillog_file = /dev/stdout).

    Every message for a domain in `mailbox_domains` ("*" = every domain) is stored in ONE Maildir,
    `mail/inbox/`, one file per recipient with a Delivered-To: line naming it."""

    def __init__(self, root: Path, name: str, hostname: str, mailbox_domains: str | None = None,
                 extra: dict | None = None):
        self.root = Path(root) / name
        self.name = name
        self.hostname = hostname
        self.port = free_port()
        self.etc = self.root / "etc"
        self.spool = self.root / "spool"
        self.data = self.root / "data"
        self.mail = self.root / "mail"
        self.log_path = self.root / "maillog"
        self.mailbox_domains = mailbox_domains
        self.extra = dict(extra or {})
        self.proc: subprocess.Popen | None = None

    # -- configuration
    def main_cf(self) -> dict:
        cf = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.spool),
            "data_directory": str(self.data),
            "meta_directory": POSTFIX_META,
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "syslog_name": f"postfix-{self.name}",
            "maillog_file": "/dev/stdout",
            "myhostname": self.hostname,
            "mydomain": self.hostname.split(".", 1)[-1],
            "myorigin": "$myhostname",
            "mydestination": "",
            "local_recipient_maps": "",
            "relay_domains": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_recipient_restrictions": "",
            "local_transport": "error:local delivery is disabled",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "append_dot_mydomain": "no",
            "notify_classes": "",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            # Loopback only: no DNS at all, /etc/hosts for names.
            "smtp_host_lookup": "native",
            "disable_dns_lookups": "yes",
            # Deliver at once, retry fast: tests wait seconds, not minutes.
            "queue_run_delay": "2s",
            "minimal_backoff_time": "2s",
            "maximal_backoff_time": "4s",
        }
        if self.mailbox_domains:
            cf.update({
                "virtual_mailbox_domains": f"regexp:{self.etc}/vdomains",
                "virtual_mailbox_base": str(self.mail),
                "virtual_mailbox_maps": f"regexp:{self.etc}/vmailbox",
                "virtual_uid_maps": f"static:{NOBODY_UID}",
                "virtual_gid_maps": f"static:{NOBODY_GID}",
            })
        cf.update(self.extra)
        return cf

    def write_config(self):
        for d in (self.etc, self.spool, self.data, self.mail):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        shutil.chown(self.data, "postfix")
        os.chmod(self.data, 0o700)
        shutil.chown(self.mail, NOBODY_UID, NOBODY_GID)
        os.chmod(self.mail, 0o755)
        (self.etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in self.main_cf().items()))
        (self.etc / "master.cf").write_text(MASTER_CF.format(listen="127.0.0.1", port=self.port))
        if self.mailbox_domains:
            if self.mailbox_domains == "*":
                pattern = "/./"
            else:
                pattern = "/^(" + "|".join(re.escape(d) for d in self.mailbox_domains.split()) + ")$/"
            (self.etc / "vdomains").write_text(f"{pattern} OK\n")
            # Everything into one Maildir (trailing slash = Maildir format).
            (self.etc / "vmailbox").write_text("/./ inbox/\n")

    # -- lifecycle
    def start(self) -> "Postfix":
        if not os.path.exists(POSTFIX_MASTER):
            raise RuntimeError(f"{POSTFIX_MASTER} not found: install the `postfix` package")
        self.write_config()
        # `postfix check` creates the queue directories with the right owners and checks main.cf.
        run(["postfix", "-c", str(self.etc), "check"], check=True, timeout=60)
        self._log = open(self.log_path, "ab")
        # -s: keep stdout, so maillog_file=/dev/stdout goes to our log file. Foreground, own
        # session: SIGTERM to this pid stops the whole instance.
        self.proc = subprocess.Popen([POSTFIX_MASTER, "-c", str(self.etc), "-s"], stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        try:
            wait_for_port(self.port, timeout=15.0, alive=lambda: self.proc.poll() is None)
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(f"postfix {self.name} did not start: {e}\n{tail(self.log_path)}") from None
        return self

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                # Our own instance only: its master and children share the session we created.
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        # master's children exit when master goes; give them a moment, then make sure.
        try:
            os.killpg(self.proc.pid, 0)
            time.sleep(0.5)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None
        self._log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- observations
    @property
    def log(self) -> str:
        return tail(self.log_path, 10**7)

    def mailbox(self) -> list[Stored]:
        return read_maildir(self.mail / "inbox")

    def stored_with(self, token: str) -> list[Stored]:
        return [m for m in self.mailbox() if m.contains(token)]

    def wait_stored(self, token: str, count: int, timeout: float = 20.0) -> list[Stored]:
        try:
            return wait_until(lambda: (m := self.stored_with(token)) and len(m) >= count and m, timeout,
                              what=f"{count} stored message(s) with {token} at postfix {self.name}")
        except TimeoutError as e:
            got = len(self.stored_with(token))
            raise AssertionError(f"{e} (have {got})\n--- {self.name} maillog ---\n{tail(self.log_path)}") from None

    def queue(self) -> list[dict]:
        """Messages in the queue (`postqueue -j`): active, deferred, hold, incoming."""
        r = run(["postqueue", "-c", str(self.etc), "-j"], check=True)
        return [json.loads(l) for l in r.stdout.decode().splitlines() if l.strip()]

    def sasl_user(self, user: str, password: str, realm: str):
        """Adds a Cyrus sasldb user and enables SMTP AUTH (PLAIN/LOGIN after STARTTLS) in smtpd."""
        # Debian's Postfix looks for $config_directory/sasl/smtpd.conf (patch 07_sasl_config) and
        # upstream Postfix for $cyrus_sasl_config_path/smtpd.conf: use one directory for both.
        sasl = self.etc / "sasl"
        sasl.mkdir(parents=True, exist_ok=True)
        db = sasl / "sasldb2"
        run(["saslpasswd2", "-p", "-c", "-f", str(db), "-u", realm, user], input=password.encode(), check=True)
        # smtpd reads the db after dropping to `postfix`.
        shutil.chown(db, "root", "postfix")
        os.chmod(db, 0o640)
        os.chmod(sasl, 0o755)
        (sasl / "smtpd.conf").write_text(
            f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nsasldb_path: {db}\nmech_list: PLAIN LOGIN\n"
        )
        self.extra.update({
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "cyrus",
            "smtpd_sasl_path": "smtpd",
            "cyrus_sasl_config_path": str(sasl),
            "smtpd_sasl_local_domain": realm,
            "smtpd_sasl_security_options": "noanonymous, noplaintext",
            "smtpd_sasl_tls_security_options": "noanonymous",
            "smtpd_tls_auth_only": "yes",
        })


# --------------------------------------------------------------------------------------------
# TOML writer (tomllib only reads)


# --------------------------------------------------------------------------------------------
# bccguard


def bccguard_binary() -> str:
    path = os.environ.get("BCCGUARD_BIN")
    if not path:
        path = str(Path(__file__).resolve().parents[3] / "target" / "debug" / "bccguard")
    return path


def make_users_file(binary: str, path: Path, user: str, password: str) -> Path:
    """The documented way: `bccguard passwd` reads the password on stdin and prints the hash."""
    r = run([binary, "passwd"], input=password.encode(), check=True, timeout=60)
    out = r.stdout.decode().strip()
    hash_ = out.split(":", 1)[1] if not out.startswith("$") and ":" in out else out
    if not hash_.startswith("$argon2"):
        raise RuntimeError(f"`bccguard passwd` printed no argon2 hash: {out!r}")
    path.write_text(f"{user}:{hash_}\n")
    return path


class Bccguard:
    """One `bccguard serve` with a config file written from a dict."""

    def __init__(self, binary: str, workdir: Path, config: dict, name: str = "bccguard"):
        self.binary = binary
        self.dir = Path(workdir) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.name = name
        self.config_path = self.dir / "bccguard.toml"
        self.log_path = self.dir / "bccguard.log"
        self.proc: subprocess.Popen | None = None

    def port(self, i: int) -> int:
        return int(self.config["listener"][i]["address"].rsplit(":", 1)[1])

    @property
    def audit_path(self) -> Path:
        return Path(self.config["audit"]["path"])

    def start(self) -> "Bccguard":
        self.config_path.write_text(to_toml(self.config))
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"), NO_COLOR="1")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.binary, "serve", "--config", str(self.config_path)],
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=self.dir, env=env,
                                     start_new_session=True)
        try:
            for i in range(len(self.config["listener"])):
                wait_for_port(self.port(i), timeout=15.0, alive=lambda: self.proc.poll() is None)
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(f"bccguard did not start: {e}\n{tail(self.log_path)}") from None
        return self

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(int(self.config["server"].get("shutdown_grace_seconds", 30)) + 5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        self._log.close()
        return code

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log(self) -> str:
        return tail(self.log_path, 10**7)

    def audit(self) -> list[dict]:
        """One entry per audited message (decisions merged with their outcome)."""
        try:
            text = self.audit_path.read_text("utf-8")
        except FileNotFoundError:
            return []
        return merge_audit_outcomes([json.loads(l) for l in text.splitlines() if l.strip()])

    def audit_for(self, token: str) -> list[dict]:
        return [r for r in self.audit() if token in (r.get("message_id") or "")]


# --------------------------------------------------------------------------------------------
# outside clients


@dataclass
class ClientResult:
    """What a client program reported: `ok` = it says the message was accepted."""

    client: str
    ok: bool
    returncode: int | None
    output: str  # everything the client printed (protocol traces where it has them)
    detail: dict = field(default_factory=dict)

    def __str__(self):
        return f"{self.client}: ok={self.ok} rc={self.returncode}\n{self.output[-4000:]}"


@dataclass
class Submission:
    sender: str
    rcpts: list[str]
    message: bytes  # CRLF line ends, as sent
    file: Path  # the same bytes on disk, for the command-line clients


def smtplib_send(port: int, sub: Submission, starttls: bool = False, auth: tuple[str, str] | None = None,
                 cafile: Path | None = None, implicit: bool = False,
                 mail_options: tuple[str, ...] = ()) -> ClientResult:
    """Python's smtplib (sendmail: EHLO, [STARTTLS, EHLO], [AUTH], MAIL, RCPT..., DATA)."""
    log: list[str] = []
    ctx = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    try:
        cls = smtplib.SMTP_SSL if implicit else smtplib.SMTP
        kw = {"context": ctx} if implicit else {}
        with cls("localhost", port, timeout=IO_TIMEOUT, local_hostname="client.sender.test", **kw) as s:
            s.ehlo()
            if starttls:
                code, text = s.starttls(context=ctx)
                log.append(f"STARTTLS {code} {text!r}")
                s.ehlo()
            if auth:
                code, text = s.login(*auth)
                log.append(f"AUTH {code} {text!r}")
            refused = s.sendmail(sub.sender, sub.rcpts, sub.message, mail_options=list(mail_options))
            log.append(f"sendmail refused={refused!r}")
        return ClientResult("smtplib", not refused, 0, "\n".join(log))
    except smtplib.SMTPResponseException as e:
        log.append(f"{type(e).__name__}: {e.smtp_code} {e.smtp_error!r}")
        return ClientResult("smtplib", False, e.smtp_code, "\n".join(log), {"code": e.smtp_code,
                                                                        "text": e.smtp_error.decode(errors="replace")})
    except smtplib.SMTPRecipientsRefused as e:
        log.append(f"SMTPRecipientsRefused: {e.recipients!r}")
        return ClientResult("smtplib", False, None, "\n".join(log))


def swaks_send(port: int, sub: Submission, extra: list[str] | None = None) -> ClientResult:
    # swaks always sends CRLF before the final ".": give it the message without its last line
    # end, or the upstream stores one extra empty line (swaks's doing, not the relay's).
    data = sub.file.with_suffix(".swaks")
    data.write_bytes(sub.message[:-2] if sub.message.endswith(b"\r\n") else sub.message)
    cmd = ["swaks", "--server", "127.0.0.1", "--port", str(port), "--helo", "client.sender.test",
           "--from", sub.sender, "--to", ",".join(sub.rcpts), "--data", f"@{data}",
           "--timeout", str(int(IO_TIMEOUT)), *(extra or [])]
    r = run(cmd)
    out = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
    return ClientResult("swaks", r.returncode == 0, r.returncode, out, {"cmd": cmd})


def msmtp_send(port: int, sub: Submission, workdir: Path, user: str, password: str, cafile: Path) -> ClientResult:
    """msmtp with STARTTLS (certificate verified against `cafile`) and AUTH, message on stdin."""
    pwfile = workdir / "msmtp.password"
    pwfile.write_text(password)
    os.chmod(pwfile, 0o600)
    cmd = ["msmtp", "--host=localhost", f"--port={port}", "--tls=on", "--tls-starttls=on",
           f"--tls-trust-file={cafile}", "--auth=on", f"--user={user}", f"--passwordeval=cat {pwfile}",
           "--domain=client.sender.test", f"--from={sub.sender}", f"--timeout={int(IO_TIMEOUT)}",
           "--debug", "--", *sub.rcpts]
    # --debug prints the dialogue on stdout (with AUTH data): fine for throw-away credentials.
    r = run(cmd, input=sub.message)
    out = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
    return ClientResult("msmtp", r.returncode == 0, r.returncode, out, {"cmd": cmd})


def curl_send(url: str, sub: Submission, extra: list[str] | None = None) -> ClientResult:
    """curl's SMTP: --mail-from, one --mail-rcpt per recipient, --upload-file (sent as is)."""
    cmd = ["curl", "-sS", "-v", "--max-time", str(int(IO_TIMEOUT)), url, "--mail-from", sub.sender]
    for r_ in sub.rcpts:
        cmd += ["--mail-rcpt", r_]
    cmd += ["--upload-file", str(sub.file), *(extra or [])]
    r = run(cmd)
    out = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
    return ClientResult("curl", r.returncode == 0, r.returncode, out, {"cmd": cmd})
