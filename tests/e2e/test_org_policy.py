"""Organisation policy (issue 15) through the relay: conditions on who sent it (AUTH user, From:
address, groups from a list, a file and a real OpenLDAP slapd), the directory going down mid-run
(last good answer used, /healthz and metrics say so), audited overrides and translated notices."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PASSWORD, USER
from helpers import (
    crlf,
    external_addresses,
    fold_address_list,
    free_port,
    http_get,
    load_message,
    send_mail,
    to_toml,
    wait_for_port,
    wait_until,
)

pytestmark = pytest.mark.policy

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "config" / "templates"

EXTERNAL8 = external_addresses(8)
BASE = "dc=example,dc=org"
PRESS_DN = f"cn=press,ou=groups,{BASE}"


def cc_message(tag: str, sender: str, cc=EXTERNAL8, extra: str = "") -> bytes:
    raw = load_message("cc_external.eml", sender=sender, cc=fold_address_list(cc), tag=tag)
    if extra:
        raw = crlf(extra) + raw
    return raw


def by_tag(msgs, tag: str):
    """The delivered message made by cc_message(tag, ...) (the sink does not keep arrival order)."""
    [m] = [m for m in msgs if f"<cc-{tag}@example.org>".encode() in m.data]
    return m


def shown(m) -> bool:
    """Whether the delivered copy still shows the Cc list unchanged."""
    return bool(m.header("Cc")) and m.header("To") != ["undisclosed-recipients:;"]


# --------------------------------------------------------------------------------------------
# a real OpenLDAP slapd, foreground on 127.0.0.1, config and data in a temp dir


class Slapd:
    ADMIN = f"cn=admin,{BASE}"
    SECRET = "directory-secret"

    def __init__(self, workdir: Path, tls: dict | None = None):
        self.dir = workdir
        self.tls = tls
        self.tls_port = free_port() if tls else None
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"ldap://127.0.0.1:{self.port}/"
        self.proc = None
        self.password_file = self.dir / "bind.pw"
        self.password_file.write_text(self.SECRET + "\n")
        self.password_file.chmod(0o600)

    def start(self, load: bool = True) -> "Slapd":
        slapd = shutil.which("slapd") or "/usr/sbin/slapd"
        if not Path(slapd).exists():
            pytest.skip("slapd not installed (tests/install-deps installs it)")
        db = self.dir / "db"
        db.mkdir(exist_ok=True)
        conf = self.dir / "slapd.conf"
        conf.write_text(
            "include /etc/ldap/schema/core.schema\n"
            "include /etc/ldap/schema/cosine.schema\n"
            "include /etc/ldap/schema/inetorgperson.schema\n"
            "modulepath /usr/lib/ldap\nmoduleload back_mdb\nmoduleload memberof\n"
            f"pidfile {self.dir / 'slapd.pid'}\n"
            f"database mdb\nsuffix \"{BASE}\"\nrootdn \"{self.ADMIN}\"\nrootpw {self.SECRET}\n"
            f"directory {db}\noverlay memberof\n"
        )
        urls = [self.url]
        if self.tls:
            # Global TLS settings go before `database`; slapd reads the key as this user.
            text = conf.read_text()
            conf.write_text(f"TLSCertificateFile {self.tls['certificate']}\n"
                            f"TLSCertificateKeyFile {self.tls['private_key']}\n" + text)
            urls.append(f"ldaps://127.0.0.1:{self.tls_port}/")
        self.log = open(self.dir / "slapd.log", "ab")
        # -d keeps slapd in the foreground (no system daemon, stopped by the test).
        self.proc = subprocess.Popen([slapd, "-f", str(conf), "-h", " ".join(urls), "-d", "0"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, timeout=10, alive=lambda: self.proc.poll() is None)
        if load:
            self.add(LDIF)
        return self

    def add(self, ldif: str):
        r = subprocess.run(["ldapadd", "-x", "-H", self.url, "-D", self.ADMIN, "-w", self.SECRET],
                           input=ldif.encode(), capture_output=True, timeout=20)
        assert r.returncode == 0, r.stderr.decode(errors="replace")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()


def person(uid: str, mail: str) -> str:
    return (f"dn: uid={uid},ou=people,{BASE}\nobjectClass: inetOrgPerson\nuid: {uid}\n"
            f"cn: {uid}\nsn: {uid}\nmail: {mail}\n\n")


LDIF = (
    f"dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n"
    f"dn: ou=people,{BASE}\nobjectClass: organizationalUnit\nou: people\n\n"
    f"dn: ou=groups,{BASE}\nobjectClass: organizationalUnit\nou: groups\n\n"
    + person("pat", "pat@example.org")
    + person("bob", "bob@example.org")
    # alice's directory mail differs from the address she sends with: only her login (uid) matches.
    + person("alice", "alice.smith@example.org")
    + f"dn: {PRESS_DN}\nobjectClass: groupOfNames\ncn: press\n"
      f"member: uid=pat,ou=people,{BASE}\nmember: uid=alice,ou=people,{BASE}\n\n"
    + f"dn: cn=board,ou=groups,{BASE}\nobjectClass: groupOfNames\ncn: board\n"
      f"member: uid=bob,ou=people,{BASE}\n\n"
)


@pytest.fixture
def slapd(harness, tmp_path):
    s = Slapd(tmp_path / "slapd").start()
    harness.cleanups.append(s.stop)
    return s


def directory_config(s: Slapd, ttl: int = 1) -> dict:
    return {"name": "corp", "url": s.url, "bind_dn": s.ADMIN, "bind_password_file": str(s.password_file),
            "base_dn": BASE, "mail_attribute": "mail", "login_attribute": "uid",
            "ttl_seconds": ttl, "timeout_seconds": 2}


def with_org_rules(rules: list, groups: dict | None = None, directories: list | None = None):
    def mutate(cfg):
        cfg["policy"]["rule"] = rules + cfg["policy"]["rule"]
        if groups:
            cfg["policy"]["groups"] = groups
        if directories:
            cfg["policy"]["directory"] = directories
    return mutate


# --------------------------------------------------------------------------------------------
# conditions on who sent it


def test_auth_user_condition(make_relay):
    relay = make_relay(with_org_rules([
        {"name": "alice-may-show", "auth_users": [USER], "action": "accept"}]))
    # Authenticated as alice: her rule lets the Cc list through.
    r = send_mail(relay.submission_port, "alice@example.org", EXTERNAL8,
                  cc_message("auth-yes", "alice@example.org"), starttls=True, auth=(USER, PASSWORD))
    assert r["data"].code == 250, r
    # Same envelope sender without AUTH: the rule does not apply (a sender address is not a login).
    r = send_mail(relay.smtp_port, "alice@example.org", EXTERNAL8, cc_message("auth-no", "alice@example.org"))
    assert r["data"].code == 250, r
    msgs = relay.upstream.wait_for(2)
    first, second = by_tag(msgs, "auth-yes"), by_tag(msgs, "auth-no")
    assert shown(first), first.header("To")
    assert not shown(second) and second.header("Cc") == []


def test_from_header_conditions(make_relay):
    relay = make_relay(with_org_rules([
        {"name": "sales-reject", "from_header": ["*@sales.example.org"], "min_visible_external": 3,
         "action": "reject", "message": "Sales: use the CRM mailing tool."},
        {"name": "newsletter-ok", "except_from_header": ["*@sales.example.org"],
         "senders": ["news@example.org"], "action": "accept"}]))
    # Envelope sender is ordinary, but From: is sales: the From: rule refuses.
    r = send_mail(relay.smtp_port, "bounce@example.org", EXTERNAL8, cc_message("from-sales", "ann@Sales.example.org"))
    assert r["data"].code == 550 and "CRM" in r["data"].text, r
    r = send_mail(relay.smtp_port, "news@example.org", EXTERNAL8, cc_message("from-news", "news@example.org"))
    assert r["data"].code == 250, r
    [m] = relay.upstream.wait_for(1)
    assert shown(m)


def test_groups_from_list_and_file(make_relay, tmp_path):
    board = tmp_path / "board.txt"
    board.write_text("# board members\nchair@example.org\n*@board.example.org\n")
    relay = make_relay(with_org_rules(
        [{"name": "board-split", "sender_groups": ["board"], "min_visible_external": 3, "action": "split"},
         {"name": "pr-by-from", "sender_groups": ["pr"], "sender_groups_of": "from_header", "action": "accept"},
         {"name": "outsiders-refused", "except_sender_groups": ["board", "pr"], "senders": ["*@example.org"],
          "action": "reject", "message": "Not on the board."}],
        groups={"board": {"file": str(board)}, "pr": ["pr@example.org"]}))
    r = send_mail(relay.smtp_port, "x@board.example.org", EXTERNAL8[:3], cc_message("g-file", "x@board.example.org",
                                                                                   cc=EXTERNAL8[:3]))
    assert r["data"].code == 250, r
    copies = relay.upstream.wait_for(3)
    assert sorted(len(m.rcpts) for m in copies) == [1, 1, 1], "split: one copy per recipient"
    r = send_mail(relay.smtp_port, "robot@example.org", EXTERNAL8, cc_message("g-from", "pr@example.org"))
    assert r["data"].code == 250, r
    m = by_tag(relay.upstream.wait_for(4), "g-from")
    assert shown(m)
    # except_sender_groups: a sender in neither group is refused, a board member (file) is not.
    r = send_mail(relay.smtp_port, "z@example.org", EXTERNAL8[:2], cc_message("g-out", "z@example.org", cc=EXTERNAL8[:2]))
    assert r["data"].code == 550 and "Not on the board." in r["data"].text, r
    r = send_mail(relay.smtp_port, "chair@example.org", EXTERNAL8[:2], cc_message("g-except", "chair@example.org",
                                                                                 cc=EXTERNAL8[:2]))
    assert r["data"].code == 250, r


# --------------------------------------------------------------------------------------------
# groups from a real directory


def press_rules(s: Slapd, ttl: int = 1):
    return with_org_rules(
        [{"name": "press-may-show", "sender_groups": ["press"], "sender_groups_of": "any", "action": "accept"}],
        groups={"press": {"ldap": "corp", "filter": f"(memberOf={PRESS_DN})"}},
        directories=[directory_config(s, ttl)])


def test_group_resolved_from_slapd(make_relay, slapd):
    relay = make_relay(press_rules(slapd))
    r = send_mail(relay.smtp_port, "pat@example.org", EXTERNAL8, cc_message("ldap-pat", "pat@example.org"))
    assert r["data"].code == 250, r
    r = send_mail(relay.smtp_port, "bob@example.org", EXTERNAL8, cc_message("ldap-bob", "bob@example.org"))
    assert r["data"].code == 250, r
    msgs = relay.upstream.wait_for(2)
    pat, bob = by_tag(msgs, "ldap-pat"), by_tag(msgs, "ldap-bob")
    assert shown(pat), "a press member's message goes out as written"
    assert not shown(bob), "a non-member is rewritten by the default rule"
    # The login name from the directory's uid attribute counts too (sender_groups_of = "any").
    r = send_mail(relay.submission_port, "alice@example.org", EXTERNAL8,
                  cc_message("ldap-login", "alice@example.org"), starttls=True, auth=(USER, PASSWORD))
    assert r["data"].code == 250, r
    assert shown(by_tag(relay.upstream.wait_for(3), "ldap-login"))
    # Without the login, the same addresses are not in the group.
    r = send_mail(relay.smtp_port, "alice@example.org", EXTERNAL8, cc_message("ldap-nologin", "alice@example.org"))
    assert r["data"].code == 250, r
    assert not shown(by_tag(relay.upstream.wait_for(4), "ldap-nologin"))
    metrics = relay.metrics()
    assert 'bccguard_directory_up{directory="corp"} 1' in metrics, metrics
    status, body = http_get(relay.metrics_url + "/healthz")
    assert status == 200 and "directory" not in body, body


def test_directory_down_mid_run_keeps_last_good_answer(make_relay, slapd):
    relay = make_relay(press_rules(slapd))
    r = send_mail(relay.smtp_port, "pat@example.org", EXTERNAL8, cc_message("down-1", "pat@example.org"))
    assert r["data"].code == 250, r
    assert shown(relay.upstream.wait_for(1)[0])

    slapd.stop()
    wait_until(lambda: "directory 'corp' unreachable" in http_get(relay.metrics_url + "/healthz")[1],
               timeout=15, what="/healthz to note the directory is down")
    status, body = http_get(relay.metrics_url + "/healthz")
    assert status == 200, "a directory outage degrades, it does not stop the relay"
    assert "last good answer" in body, body
    metrics = relay.metrics()
    assert 'bccguard_directory_up{directory="corp"} 0' in metrics
    failures = [l for l in metrics.splitlines() if l.startswith('bccguard_directory_failures_total{directory="corp"}')]
    assert failures and float(failures[0].split()[-1]) >= 1, failures

    # Still served from the last good answer: pat is in press, bob is not.
    r = send_mail(relay.smtp_port, "pat@example.org", EXTERNAL8, cc_message("down-2", "pat@example.org"))
    assert r["data"].code == 250, r
    r = send_mail(relay.smtp_port, "bob@example.org", EXTERNAL8, cc_message("down-3", "bob@example.org"))
    assert r["data"].code == 250, r
    msgs = relay.upstream.wait_for(3)
    assert shown(by_tag(msgs, "down-2")) and not shown(by_tag(msgs, "down-3"))

    # A reload while the directory is down keeps the last good answer too.
    relay.reload(relay.config)
    r = send_mail(relay.smtp_port, "pat@example.org", EXTERNAL8, cc_message("down-4", "pat@example.org"))
    assert r["data"].code == 250, r
    assert shown(by_tag(relay.upstream.wait_for(4), "down-4")), "last good answer lost on reload"
    wait_until(lambda: "last good answer" in http_get(relay.metrics_url + "/healthz")[1], timeout=10,
               what="/healthz to still note the outage after the reload")

    # Back up: the note goes away.
    slapd.start(load=False)
    wait_until(lambda: "directory" not in http_get(relay.metrics_url + "/healthz")[1],
               timeout=15, what="/healthz to recover")


# --------------------------------------------------------------------------------------------
# audited override


def override_config(cfg):
    cfg["policy"]["groups"] = {"committee": ["chair@example.org"]}
    cfg["policy"]["override"] = {"enabled": True, "users": [USER], "groups": ["committee"],
                                 "identity": "any", "subject_tag": "show-recipients"}


def decision_records(relay) -> list[dict]:
    return [r for r in relay.audit_lines() if r.get("kind", "decision") == "decision"]


def test_allowed_override_goes_out_unchanged_without_marker_and_is_audited(make_relay):
    relay = make_relay(override_config)
    msg = cc_message("ovr-ok", "alice@example.org",
                     extra="X-Bccguard-Override: committee members, all know each other\n")
    r = send_mail(relay.submission_port, "alice@example.org", EXTERNAL8, msg, starttls=True, auth=(USER, PASSWORD))
    assert r["data"].code == 250, r
    [m] = relay.upstream.wait_for(1)
    assert shown(m), "an allowed override delivers the Cc list as written"
    assert m.header("X-Bccguard-Override") == [], "the marker never leaves the relay"
    assert b"all know each other" not in m.data
    [rec] = wait_until(lambda: decision_records(relay) or None, timeout=5, what="audit record")
    assert rec["action"] == "accept" and rec["rule"] == "many-external", rec
    assert "Overridden by alice (reason: committee members, all know each other)" in rec["reason"], rec
    assert rec["auth_user"] == USER

    # A subject tag from a group member works the same; the tag is removed from the Subject.
    msg = cc_message("ovr-subj", "chair@example.org").replace(
        b"Subject: Invitation", b"Subject: [show-recipients: board circular] Invitation")
    r = send_mail(relay.smtp_port, "chair@example.org", EXTERNAL8, msg)
    assert r["data"].code == 250, r
    m = by_tag(relay.upstream.wait_for(2), "ovr-subj")
    assert shown(m)
    assert m.header("Subject") == ["Invitation to our partner day (e2e)"], m.header("Subject")


def test_override_from_someone_not_allowed_is_ignored_and_audited(make_relay):
    relay = make_relay(override_config)
    msg = cc_message("ovr-no", "bob@example.org", extra="X-Bccguard-Override: I know better\n")
    r = send_mail(relay.smtp_port, "bob@example.org", EXTERNAL8, msg)
    assert r["data"].code == 250, r
    [m] = relay.upstream.wait_for(1)
    assert not shown(m) and m.header("To") == ["undisclosed-recipients:;"], "the rule still applies"
    assert m.header("X-Bccguard-Override") == [], "an ignored marker is stripped too"
    [rec] = wait_until(lambda: decision_records(relay) or None, timeout=5, what="audit record")
    assert rec["action"] == "rewrite", rec
    assert "Override request ignored: bob@example.org may not override" in rec["reason"], rec

    # Allowed user but no reason: ignored as well.
    msg = cc_message("ovr-empty", "alice@example.org", extra="X-Bccguard-Override:  \n")
    r = send_mail(relay.submission_port, "alice@example.org", EXTERNAL8, msg, starttls=True, auth=(USER, PASSWORD))
    assert r["data"].code == 250, r
    assert not shown(by_tag(relay.upstream.wait_for(2), "ovr-empty"))
    recs = wait_until(lambda: len(decision_records(relay)) == 2 and decision_records(relay), timeout=5,
                      what="second audit record")
    assert "no reason given" in recs[1]["reason"], recs[1]


# --------------------------------------------------------------------------------------------
# notices in the sender's language


def notices_config(cfg):
    cfg["policy"]["groups"] = {"deutsch": ["hans@example.org"]}
    cfg["policy"]["notices"] = {"templates": str(TEMPLATES), "default_language": "en",
                                "language": [{"lang": "de", "groups": ["deutsch"], "domains": ["example.de"]}]}
    cfg["policy"]["rule"] = [
        {"name": "too-many", "senders": ["*@example.de", "*@example.com"], "min_visible_external": 6,
         "action": "reject"},
        {"name": "hide-and-tell", "min_visible_external": 6, "action": "rewrite", "notify_sender": True},
    ]


def test_reject_in_the_senders_language(make_relay):
    relay = make_relay(notices_config)
    r = send_mail(relay.smtp_port, "anna@example.de", EXTERNAL8, cc_message("de-reject", "anna@example.de"))
    final = r["data"]
    assert final.code == 550 and final.status == "5.7.1", final
    text = " ".join(final.text.split())
    assert ("Nachricht nicht gesendet: Sie wuerde 8 externen Empfaengern die Adressen der anderen zeigen "
            "(Regel 'too-many' erlaubt weniger als 6). Setzen Sie die Empfaenger in Bcc") in text, text
    # The same rule for a sender without a configured language: the English template.
    r = send_mail(relay.smtp_port, "joe@example.com", EXTERNAL8, cc_message("en-reject", "joe@example.com"))
    text = " ".join(r["data"].text.split())
    assert r["data"].code == 550 and "Message not sent: it would show 8 outside recipients" in text, text
    assert relay.dumps(settle=0.3) == []


def test_sender_notice_from_the_german_template(make_relay):
    relay = make_relay(notices_config)
    r = send_mail(relay.smtp_port, "hans@example.org", EXTERNAL8, cc_message("de-notice", "hans@example.org"))
    assert r["data"].code == 250, r
    msgs = relay.upstream.wait_for(2)
    [notice] = [m for m in msgs if m.rcpts == ["hans@example.org"]]
    assert notice.header("Subject") == ["Ihre Nachricht wurde mit geschuetzten Empfaengern versendet"]
    body = notice.body.decode("utf-8")
    assert "Betreff: Invitation to our partner day (e2e)" in body, body
    assert "Beim nächsten Mal: Setzen Sie die Empfänger in Bcc" in body, body
    for addr in EXTERNAL8:
        assert addr not in body


def test_config_check_refuses_unknown_placeholder(make_relay, tmp_path):
    relay = make_relay(notices_config, start=False)
    bad_templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES, bad_templates)
    (bad_templates / "de" / "reject.txt").write_text("Nicht gesendet: {anzahl} Empfaenger\n")
    cfg = relay.config
    cfg["policy"]["notices"]["templates"] = str(bad_templates)
    path = tmp_path / "bad.toml"
    path.write_text(to_toml(cfg))
    p = relay.cli("config", "check", "--config", str(path))
    out = (p.stdout + p.stderr).decode(errors="replace")
    assert p.returncode != 0, out
    assert "{anzahl}" in out and "de/reject.txt" in out, out
    # The shipped templates pass.
    cfg["policy"]["notices"]["templates"] = str(TEMPLATES)
    path.write_text(to_toml(cfg))
    p = relay.cli("config", "check", "--config", str(path))
    assert p.returncode == 0, (p.stdout + p.stderr).decode(errors="replace")


# --------------------------------------------------------------------------------------------
# explain


def test_check_explain_names_matched_rule_conditions_and_skipped_rules(make_relay, tmp_path):
    relay = make_relay(with_org_rules(
        [{"name": "board-may-show", "sender_groups": ["board"], "sender_groups_of": "auth_user", "action": "accept"}],
        groups={"board": ["carol"]}))
    msg = tmp_path / "m.eml"
    msg.write_bytes(cc_message("explain", "bob@example.org"))
    p = relay.cli("check", "--config", str(relay.config_path), "--explain", "--json", "--auth-user", "bob", str(msg))
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    trace = {t["rule"]: t for t in out["explain"]}
    assert trace["board-may-show"]["result"] == "skipped"
    assert trace["board-may-show"]["conditions"] == [
        {"condition": "authenticated user is in group 'board' (tested bob)", "held": False}]
    assert trace["split-sender"]["result"] == "skipped"
    assert "envelope sender is splitter@example.org (it is bob@example.org)" in trace["split-sender"]["why"]
    assert trace["many-external"]["result"] == "matched"
    assert {"condition": "6 or more outside addresses (counted 8)", "held": True} in trace["many-external"]["conditions"]
    assert out["rule"] == "many-external"
    # As carol the board rule matches and the later rules are not reached.
    p = relay.cli("check", "--config", str(relay.config_path), "--explain", "--auth-user", "carol", str(msg))
    text = p.stdout.decode()
    assert "1. 'board-may-show': matched (every condition held)" in text, text
    assert "'many-external': not reached (rule 'board-may-show' matched first)" in text, text

    # The audit record of the relayed message names the rule and the conditions that held.
    r = send_mail(relay.smtp_port, "bob@example.org", EXTERNAL8, cc_message("explain-audit", "bob@example.org"))
    assert r["data"].code == 250, r
    [rec] = relay.wait_audit(1)
    assert rec["rule"] == "many-external"
    assert "rule 'many-external' (6 or more outside addresses) hides them" in rec["reason"], rec


def ca_and_leaf(d: Path) -> dict:
    """A test CA and a localhost certificate it signed (webpki refuses a self-signed CA as a leaf)."""
    d.mkdir(parents=True, exist_ok=True)
    run = lambda *a: subprocess.run(list(a), check=True, capture_output=True, timeout=60, cwd=d)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bccguard test CA",
        "-keyout", "ca.key", "-out", "ca.pem")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", "leaf.key", "-out", "leaf.csr")
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    run("openssl", "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "ext.cnf", "-out", "leaf.pem")
    return {"certificate": str(d / "leaf.pem"), "private_key": str(d / "leaf.key"), "ca": str(d / "ca.pem")}


@pytest.mark.parametrize("transport", ["ldaps", "starttls"])
def test_group_from_slapd_over_tls(make_relay, harness, tmp_path, transport):
    pki = ca_and_leaf(tmp_path / "pki")
    s = Slapd(tmp_path / "slapd-tls", tls=pki).start()
    harness.cleanups.append(s.stop)
    d = directory_config(s)
    d["ca_file"] = pki["ca"]
    if transport == "ldaps":
        d["url"] = f"ldaps://localhost:{s.tls_port}"
    else:
        d["url"] = f"ldap://localhost:{s.port}"
        d["starttls"] = True

    def mutate(cfg):
        press_rules(s)(cfg)
        cfg["policy"]["directory"] = [d]
    relay = make_relay(mutate)
    r = send_mail(relay.smtp_port, "pat@example.org", EXTERNAL8, cc_message("tls-pat", "pat@example.org"))
    assert r["data"].code == 250, r
    assert shown(relay.upstream.wait_for(1)[0]), "the group was read over " + transport
    assert 'bccguard_directory_up{directory="corp"} 1' in relay.metrics()

    # A certificate from another CA is refused: the lookup fails instead of trusting it.
    other = ca_and_leaf(tmp_path / "other-pki")
    d["ca_file"] = other["ca"]
    relay2 = make_relay(mutate)
    wait_until(lambda: "certificate" in http_get(relay2.metrics_url + "/healthz")[1], timeout=10,
               what="/healthz to name the certificate problem")


def test_config_check_validates_directory_settings(make_relay, tmp_path):
    relay = make_relay(start=False)
    cfg = relay.config
    pw = tmp_path / "pw"
    pw.write_text("x\n")
    base = {"name": "corp", "base_dn": BASE, "bind_dn": "cn=relay," + BASE, "bind_password_file": str(pw)}
    cases = [
        ({"url": "ldap://dc1.example.org"}, "starttls"),                       # bind password in clear text
        ({"url": "http://dc1.example.org"}, "ldaps://"),
        ({"url": "ldaps://dc1.example.org", "bind_password_file": str(tmp_path / "missing")}, "bind_password_file"),
        ({"url": "ldaps://dc1.example.org", "ttl_seconds": 0}, "ttl_seconds"),
    ]
    path = tmp_path / "dir.toml"
    for override, expect in cases:
        cfg["policy"]["directory"] = [{**base, **override}]
        path.write_text(to_toml(cfg))
        p = relay.cli("config", "check", "--config", str(path))
        out = (p.stdout + p.stderr).decode(errors="replace")
        assert p.returncode != 0 and expect in out and "policy.directory[" in out, (override, out)
    # A group naming a directory that does not exist, and a bad filter.
    cfg["policy"]["directory"] = [{**base, "url": "ldaps://127.0.0.1:9", "timeout_seconds": 1}]
    for group, expect in [({"ldap": "nope", "filter": "(cn=x)"}, "no [[policy.directory]] is named 'nope'"),
                          ({"ldap": "corp", "filter": "cn=x"}, "in parentheses")]:
        cfg["policy"]["groups"] = {"press": group}
        path.write_text(to_toml(cfg))
        p = relay.cli("config", "check", "--config", str(path))
        out = (p.stdout + p.stderr).decode(errors="replace")
        assert p.returncode != 0 and expect in out, out
