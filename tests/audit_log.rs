//! Audit log behaviour from the outside: chain integrity under every kind of tampering,
//! restarts, rotation, torn tails, crashes (kill -9), group commit, unwritable logs, and the
//! `bccguard audit verify|query` command line.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bccguard::audit::{self, AuditEvent, AuditLog, Record, VerifyError, GENESIS};
use bccguard::config::{Action, AuditConfig, Mode, RecipientStorage};

const BIN: &str = env!("CARGO_BIN_EXE_bccguard");
const KILL9_ENV: &str = "BCCGUARD_TEST_AUDIT_KILL9_DIR";

/// On-disk temp dir (not tmpfs), so fsync costs what it costs in production.
fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn cfg_in(dir: &Path, recipients: RecipientStorage, rotate_bytes: u64) -> AuditConfig {
    AuditConfig {
        path: dir.join("log/audit.jsonl"),
        recipients,
        hmac_key_file: dir.join("keys/audit.key"),
        log_accepts: false,
        rotate_bytes,
        new_key: false,
    }
}

fn event(i: usize) -> AuditEvent {
    AuditEvent {
        session: format!("sess-{i}"),
        client: "192.0.2.10:40000".to_string(),
        auth_user: Some("alice".to_string()),
        sender: "alice@example.org".to_string(),
        message_id: Some(format!("<m{i}@example.org>")),
        rule: Some("many-external".to_string()),
        action: Action::Rewrite,
        mode: Mode::Enforce,
        reason: "6 external recipients were visible to each other".to_string(),
        visible: [
            format!("bob{i}@partner.example"),
            "Carol@Other.EXAMPLE".to_string(),
        ]
        .into_iter()
        .collect(),
        visible_external: 2,
        external_domains: 2,
        envelope_recipients: 2,
        upstream: Some("250 2.0.0 Ok: queued".to_string()),
        header_digest_original: audit::header_digest(b"To: x\r\n\r\n"),
        header_digest_forwarded: Some(audit::header_digest(
            b"To: undisclosed-recipients:;\r\n\r\n",
        )),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Opens the log, writes `n` records (numbered from `from`), closes it.
fn write_records(cfg: &AuditConfig, from: usize, n: usize) -> Vec<u64> {
    let log = AuditLog::open(cfg, "pv-1").unwrap();
    assert!(log.is_writable());
    let seqs = rt().block_on(async {
        let mut seqs = Vec::new();
        for i in from..from + n {
            seqs.push(log.record(event(i)).await.unwrap());
        }
        seqs
    });
    drop(log);
    seqs
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut s = lines.join("\n");
    s.push('\n');
    fs::write(path, s).unwrap();
}

fn broken(path: &Path) -> audit::ChainBreak {
    match audit::verify(path) {
        Err(VerifyError::Broken(b)) => b,
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

fn five(dir: &Path) -> PathBuf {
    let cfg = cfg_in(dir, RecipientStorage::Hmac, 0);
    write_records(&cfg, 1, 5);
    cfg.path
}

#[test]
fn intact_log_has_documented_fields_and_verifies() {
    let dir = tempdir();
    let path = five(dir.path());
    let ls = lines(&path);
    assert_eq!(ls.len(), 5);
    let first: Record = serde_json::from_str(&ls[0]).unwrap();
    assert_eq!(first.seq, 1);
    assert_eq!(first.prev, GENESIS);
    assert!(!first.would);
    assert_eq!(first.visible_count, 2);
    assert_eq!(first.recipients_mode, "hmac");
    assert_eq!(first.policy_version, "pv-1");
    assert!(
        first.time.ends_with('Z') && first.time.len() == 27,
        "{}",
        first.time
    );
    let rcpts = first.recipients.clone().unwrap();
    assert_eq!(rcpts.len(), 2);
    assert!(rcpts
        .iter()
        .all(|r| r.starts_with("hmac:") && r.len() == 69));
    // Not a second copy of the recipient list.
    let text = fs::read_to_string(&path).unwrap();
    assert!(!text.to_lowercase().contains("partner.example"));
    assert!(!text.to_lowercase().contains("carol"));
    assert!(text.contains("alice@example.org"), "sender is kept as-is");
    // The hash member is last and the field order is fixed.
    assert!(
        ls[0].starts_with("{\"time\":\"")
            && ls[0].contains(",\"seq\":1,\"kind\":\"record\",\"session\":")
    );
    assert!(ls[0].ends_with(&format!(",\"hash\":\"{}\"}}", first.hash)));
    let second: Record = serde_json::from_str(&ls[1]).unwrap();
    assert_eq!(second.prev, first.hash);

    let r = audit::verify(&path).unwrap();
    assert_eq!(r.records, 5);
    assert_eq!((r.first_seq, r.last_seq), (Some(1), Some(5)));
    assert!(r.starts_at_genesis());
    // Key file made on first start, private.
    let key = dir.path().join("keys/audit.key");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn tamper_edit_a_field_is_caught_at_that_record() {
    let dir = tempdir();
    let path = five(dir.path());
    let mut ls = lines(&path);
    ls[2] = ls[2].replace("\"visible_count\":2", "\"visible_count\":1");
    write_lines(&path, &ls);
    let b = broken(&path);
    assert_eq!((b.line, b.seq), (3, Some(3)), "{b}");
    assert!(b.what.contains("does not match its hash"), "{b}");
}

#[test]
fn tamper_edit_with_recomputed_hash_is_caught_by_the_next_record() {
    let dir = tempdir();
    let path = five(dir.path());
    let mut ls = lines(&path);
    let mut r: Record = serde_json::from_str(&ls[2]).unwrap();
    r.sender = "mallory@example.org".to_string();
    let line = r.seal().unwrap();
    ls[2] = String::from_utf8(line).unwrap().trim_end().to_string();
    write_lines(&path, &ls);
    let b = broken(&path);
    assert_eq!(b.line, 4, "{b}");
    assert!(b.what.contains("line 3"), "names the altered record: {b}");
}

#[test]
fn tamper_delete_a_record_is_caught() {
    let dir = tempdir();
    let path = five(dir.path());
    let mut ls = lines(&path);
    ls.remove(2);
    write_lines(&path, &ls);
    let b = broken(&path);
    assert_eq!((b.line, b.seq), (3, Some(4)), "{b}");
    assert!(b.what.contains("deleted"), "{b}");
}

#[test]
fn tamper_swap_two_records_is_caught() {
    let dir = tempdir();
    let path = five(dir.path());
    let mut ls = lines(&path);
    ls.swap(1, 2);
    write_lines(&path, &ls);
    let b = broken(&path);
    assert_eq!(b.line, 2, "{b}");
}

#[test]
fn tamper_insert_forged_record_is_caught_and_named() {
    let dir = tempdir();
    let path = five(dir.path());
    let mut ls = lines(&path);
    // A forger who knows the format: correct prev, fresh seq, valid own hash.
    let mut forged: Record = serde_json::from_str(&ls[1]).unwrap();
    forged.prev = forged.hash.clone();
    forged.seq = 3;
    forged.session = "forged".to_string();
    let line = forged.seal().unwrap();
    ls.insert(2, String::from_utf8(line).unwrap().trim_end().to_string());
    write_lines(&path, &ls);
    let b = broken(&path);
    assert_eq!((b.line, b.seq), (3, Some(3)), "{b}");
    assert!(b.what.contains("inserted"), "{b}");
}

#[test]
fn tamper_truncated_last_line_is_caught() {
    let dir = tempdir();
    let path = five(dir.path());
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, &text[..text.len() - 40]).unwrap();
    let b = broken(&path);
    assert_eq!(b.line, 5, "{b}");
    assert!(b.what.contains("incomplete"), "{b}");
}

#[test]
fn restart_keeps_the_chain() {
    let dir = tempdir();
    let cfg = cfg_in(dir.path(), RecipientStorage::Hmac, 0);
    assert_eq!(write_records(&cfg, 1, 3), [1, 2, 3]);
    assert_eq!(write_records(&cfg, 4, 2), [4, 5]);
    let r = audit::verify(&cfg.path).unwrap();
    assert_eq!((r.records, r.last_seq), (5, Some(5)));
    // Same key across restarts: the same address gets the same pseudonym.
    let ls = lines(&cfg.path);
    let a: Record = serde_json::from_str(&ls[0]).unwrap();
    let b: Record = serde_json::from_str(&ls[4]).unwrap();
    assert_eq!(a.recipients.unwrap()[1], b.recipients.unwrap()[1]);
}

#[test]
fn rotation_keeps_the_chain_across_files_and_restarts() {
    let dir = tempdir();
    let cfg = cfg_in(dir.path(), RecipientStorage::Hmac, 2000);
    write_records(&cfg, 1, 12);
    write_records(&cfg, 13, 12);
    let mut total = 24;
    if fs::metadata(&cfg.path).unwrap().len() == 0 {
        // Just rotated: give the current file a record so it has a chain start of its own.
        write_records(&cfg, 25, 1);
        total = 25;
    }
    let rotated = audit::rotated_files(&cfg.path).unwrap();
    assert!(rotated.len() >= 3, "rotated: {rotated:?}");
    let r = audit::verify(&cfg.path).unwrap();
    assert_eq!(
        (r.records, r.first_seq, r.last_seq),
        (total, Some(1), Some(total))
    );
    assert!(r.starts_at_genesis());
    assert_eq!(r.files.len(), rotated.len() + 1);

    // The current file alone (predecessors archived away) still verifies, from a known hash.
    let alone = tempdir();
    let copy = alone.path().join("audit.jsonl");
    fs::copy(&cfg.path, &copy).unwrap();
    let r1 = audit::verify(&copy).unwrap();
    assert!(!r1.starts_at_genesis());
    let out = Command::new(BIN)
        .args(["audit", "verify"])
        .arg(&copy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("continues from hash"));

    // A rotated file missing from the middle breaks the chain.
    fs::remove_file(&rotated[1].1).unwrap();
    let b = broken(&cfg.path);
    assert_eq!(b.line, 1, "{b}");
}

#[test]
fn records_cut_off_a_rotated_file_are_caught() {
    let dir = tempdir();
    let cfg = cfg_in(dir.path(), RecipientStorage::Hmac, 2000);
    write_records(&cfg, 1, 12);
    let rotated = audit::rotated_files(&cfg.path).unwrap();
    let first = &rotated[0].1;
    let mut ls = lines(first);
    ls.pop();
    write_lines(first, &ls);
    let b = broken(&cfg.path);
    assert_eq!(&b.file, first, "{b}");
}

#[test]
fn torn_last_line_is_moved_aside_on_open_and_the_chain_continues() {
    for junk in [
        &b"{\"time\":\"2024-05-01T10:00:00.0"[..],
        &b"\0\0\0\0\0\0\0\0"[..],
        &b"not json at all\n"[..],
    ] {
        let dir = tempdir();
        let cfg = cfg_in(dir.path(), RecipientStorage::Hmac, 0);
        write_records(&cfg, 1, 3);
        let mut bytes = fs::read(&cfg.path).unwrap();
        bytes.extend_from_slice(junk);
        fs::write(&cfg.path, &bytes).unwrap();
        assert!(audit::verify(&cfg.path).is_err());

        assert_eq!(write_records(&cfg, 4, 1), [4]);
        let r = audit::verify(&cfg.path).unwrap();
        assert_eq!((r.records, r.last_seq), (4, Some(4)));
        assert_eq!(r.torn.len(), 1, "torn fragment kept for inspection");
        assert_eq!(fs::read(&r.torn[0]).unwrap(), junk);
    }
}

#[test]
fn fifty_concurrent_records_share_fsyncs_and_stay_chained() {
    let dir = tempdir();
    let cfg = cfg_in(dir.path(), RecipientStorage::Hmac, 0);
    let log = Arc::new(AuditLog::open(&cfg, "pv").unwrap());
    let mut seqs = rt().block_on(async {
        let mut tasks = Vec::new();
        for i in 0..50 {
            let log = Arc::clone(&log);
            tasks.push(tokio::spawn(
                async move { log.record(event(i)).await.unwrap() },
            ));
        }
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        seqs
    });
    let fsyncs = log.fsync_count();
    let stats = log.stats();
    assert_eq!(stats.records, 50);
    assert_eq!(stats.last_seq, 50);
    println!("group commit: {fsyncs} fsyncs for 50 records");
    assert!(fsyncs < 50, "group commit: {fsyncs} fsyncs for 50 records");
    assert!(log.last_write_micros() > 0);
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs, (1..=50).collect::<Vec<u64>>());
    let r = audit::verify(&cfg.path).unwrap();
    assert_eq!(r.records, 50);
    let in_file: Vec<u64> = lines(&cfg.path)
        .iter()
        .map(|l| serde_json::from_str::<Record>(l).unwrap().seq)
        .collect();
    assert_eq!(
        in_file,
        (1..=50).collect::<Vec<u64>>(),
        "seq increases down the file"
    );
}

#[test]
fn unwritable_log_path_under_a_file_fails_records_and_recovers() {
    // Works as root too: nothing can create a directory entry under a regular file.
    let dir = tempdir();
    let mut cfg = cfg_in(dir.path(), RecipientStorage::Hmac, 0);
    let blocker = dir.path().join("blocker");
    fs::write(&blocker, "a file where the log directory should be").unwrap();
    cfg.path = blocker.join("audit.jsonl");
    let log = AuditLog::open(&cfg, "pv").expect("open must not fail for an unwritable log");
    assert!(!log.is_writable());
    let rt = rt();
    assert!(rt.block_on(log.record(event(1))).is_err());
    assert!(!log.is_writable());
    // Fixed by the admin: heals without a restart.
    fs::remove_file(&blocker).unwrap();
    fs::create_dir(&blocker).unwrap();
    assert!(rt.block_on(log.probe()));
    assert!(log.is_writable());
    assert_eq!(rt.block_on(log.record(event(2))).unwrap(), 1);
}

#[test]
fn log_path_that_is_a_directory_is_unwritable() {
    let dir = tempdir();
    let cfg = cfg_in(dir.path(), RecipientStorage::Hmac, 0);
    fs::create_dir_all(&cfg.path).unwrap();
    let log = AuditLog::open(&cfg, "pv").unwrap();
    assert!(!log.is_writable());
    let err = rt().block_on(log.record(event(1))).unwrap_err();
    assert!(err.to_string().contains("audit.jsonl"), "{err}");
}

#[test]
fn read_only_directory_makes_the_log_unwritable() {
    let dir = tempdir();
    let cfg = cfg_in(dir.path(), RecipientStorage::Plain, 0);
    let logdir = cfg.path.parent().unwrap().to_path_buf();
    fs::create_dir_all(&logdir).unwrap();
    fs::set_permissions(&logdir, fs::Permissions::from_mode(0o555)).unwrap();
    if fs::write(logdir.join("probe"), "x").is_ok() {
        fs::set_permissions(&logdir, fs::Permissions::from_mode(0o755)).unwrap();
        println!("skipped: running with privileges that ignore directory permissions (root?); the path-under-a-file test covers this case");
        return;
    }
    let log = AuditLog::open(&cfg, "pv").unwrap();
    assert!(!log.is_writable());
    let rt = rt();
    assert!(rt.block_on(log.record(event(1))).is_err());
    fs::set_permissions(&logdir, fs::Permissions::from_mode(0o755)).unwrap();
    assert!(rt.block_on(log.probe()));
    assert_eq!(rt.block_on(log.record(event(2))).unwrap(), 1);
}

#[test]
fn file_removed_while_open_is_noticed_and_the_chain_continues() {
    let dir = tempdir();
    let cfg = cfg_in(dir.path(), RecipientStorage::Hmac, 0);
    let log = AuditLog::open(&cfg, "pv").unwrap();
    let rt = rt();
    rt.block_on(log.record(event(1))).unwrap();
    let moved = dir.path().join("moved.jsonl");
    fs::rename(&cfg.path, &moved).unwrap();
    assert_eq!(rt.block_on(log.record(event(2))).unwrap(), 2);
    drop(log);
    // The new file continues from the moved one.
    let first: Record = serde_json::from_str(&lines(&cfg.path)[0]).unwrap();
    let old: Record = serde_json::from_str(&lines(&moved)[0]).unwrap();
    assert_eq!(first.prev, old.hash);
}

#[test]
fn second_writer_on_the_same_log_is_locked_out_until_the_first_closes() {
    let dir = tempdir();
    let cfg = cfg_in(dir.path(), RecipientStorage::Hmac, 0);
    let a = AuditLog::open(&cfg, "pv").unwrap();
    let b = AuditLog::open(&cfg, "pv").unwrap();
    assert!(a.is_writable());
    assert!(!b.is_writable());
    let rt = rt();
    let err = rt.block_on(b.record(event(1))).unwrap_err();
    assert!(err.to_string().contains("another process"), "{err}");
    rt.block_on(a.record(event(1))).unwrap();
    drop(a);
    assert!(rt.block_on(b.probe()));
    assert_eq!(rt.block_on(b.record(event(2))).unwrap(), 2);
}

#[test]
fn monitor_plain_and_none_modes() {
    let dir = tempdir();
    let rt = rt();
    let cfg = cfg_in(dir.path(), RecipientStorage::Plain, 0);
    let log = AuditLog::open(&cfg, "pv").unwrap();
    assert!(log.wants(Action::Rewrite, Mode::Monitor));
    assert!(!log.wants(Action::Accept, Mode::Enforce));
    let mut e = event(1);
    e.mode = Mode::Monitor;
    rt.block_on(log.record(e)).unwrap();
    log.set_policy_version("pv-2");
    let mut e = event(2);
    e.action = Action::Accept;
    e.mode = Mode::Monitor;
    rt.block_on(log.record(e)).unwrap();
    drop(log);
    let ls = lines(&cfg.path);
    let r1: Record = serde_json::from_str(&ls[0]).unwrap();
    let r2: Record = serde_json::from_str(&ls[1]).unwrap();
    assert!(r1.would);
    assert!(!r2.would, "accept is never a `would`");
    assert_eq!(r2.policy_version, "pv-2");
    assert_eq!(r1.recipients.unwrap()[0], "bob1@partner.example");

    let dir2 = tempdir();
    let mut cfg2 = cfg_in(dir2.path(), RecipientStorage::None, 0);
    cfg2.log_accepts = true;
    let log = AuditLog::open(&cfg2, "pv").unwrap();
    assert!(log.wants(Action::Accept, Mode::Enforce));
    rt.block_on(log.record(event(1))).unwrap();
    drop(log);
    let line = &lines(&cfg2.path)[0];
    assert!(!line.contains("\"recipients\":"), "{line}");
    assert!(line.contains("\"recipients_mode\":\"none\""));
    assert!(
        !dir2.path().join("keys/audit.key").exists(),
        "no key needed"
    );
    audit::verify(&cfg2.path).unwrap();
}

#[test]
fn invalid_key_file_is_a_config_error() {
    let dir = tempdir();
    let cfg = cfg_in(dir.path(), RecipientStorage::Hmac, 0);
    fs::create_dir_all(cfg.hmac_key_file.parent().unwrap()).unwrap();
    fs::write(&cfg.hmac_key_file, "not hex").unwrap();
    assert!(AuditLog::open(&cfg, "pv").is_err());
}

fn config_file(dir: &Path, cfg: &AuditConfig) -> PathBuf {
    let p = dir.join("bccguard.toml");
    let mode = match cfg.recipients {
        RecipientStorage::Hmac => "hmac",
        RecipientStorage::Plain => "plain",
        RecipientStorage::None => "none",
    };
    fs::write(
        &p,
        format!(
            r#"[server]
hostname = "relay.test"

[[listener]]
address = "127.0.0.1:2525"
tls = "none"
auth = "none"

[upstream]
address = "127.0.0.1:25"

[audit]
path = "{}"
recipients = "{mode}"
hmac_key_file = "{}"
rotate_bytes = {}
"#,
            cfg.path.display(),
            cfg.hmac_key_file.display(),
            cfg.rotate_bytes
        ),
    )
    .unwrap();
    p
}

fn bccguard(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_query_finds_pseudonymised_recipients_and_filters() {
    let dir = tempdir();
    // Small rotation so the query has to read rotated files too.
    let cfg = cfg_in(dir.path(), RecipientStorage::Hmac, 2000);
    write_records(&cfg, 1, 12);
    assert!(!audit::rotated_files(&cfg.path).unwrap().is_empty());
    let conf = config_file(dir.path(), &cfg);
    let conf = conf.to_str().unwrap();

    // bob3 is on record 3 only; the domain's case does not matter.
    let (code, out, err) = bccguard(&[
        "audit",
        "query",
        "--config",
        conf,
        "--recipient",
        "bob3@PARTNER.example",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let found: Vec<Record> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(found.len(), 1, "{out}");
    assert_eq!(found[0].session, "sess-3");

    // Carol is on every record. The local part keeps its case (as in SPEC: only the domain is
    // case-insensitive); the all-lower-case form is tried as well.
    let (_, out, _) = bccguard(&[
        "audit",
        "query",
        "--config",
        conf,
        "--recipient",
        "carol@other.example",
    ]);
    assert_eq!(out.lines().count(), 0, "{out}");
    let (_, out, _) = bccguard(&[
        "audit",
        "query",
        "--config",
        conf,
        "--recipient",
        "<Carol@other.example>",
    ]);
    assert_eq!(out.lines().count(), 12, "{out}");
    assert!(out
        .lines()
        .all(|l| l.contains(" rewrite ") && l.contains("sender=alice@example.org")));

    let (_, out, _) = bccguard(&[
        "audit",
        "query",
        "--config",
        conf,
        "--recipient",
        "nobody@partner.example",
    ]);
    assert_eq!(out.lines().count(), 0);
    let (_, out, _) = bccguard(&["audit", "query", "--config", conf, "--action", "reject"]);
    assert_eq!(out.lines().count(), 0);
    let (_, out, _) = bccguard(&[
        "audit",
        "query",
        "--config",
        conf,
        "--action",
        "rewrite",
        "--sender",
        "*@EXAMPLE.org",
    ]);
    assert_eq!(out.lines().count(), 12);
    let (_, out, _) = bccguard(&["audit", "query", "--config", conf, "--since", "2999-01-01"]);
    assert_eq!(out.lines().count(), 0);
    let (_, out, _) = bccguard(&[
        "audit",
        "query",
        "--config",
        conf,
        "--since",
        "2000-01-01T00:00:00Z",
        "--until",
        "2999-12-31",
    ]);
    assert_eq!(out.lines().count(), 12);
    let (code, _, err) = bccguard(&["audit", "query", "--config", conf, "--since", "someday"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--since"), "{err}");

    // verify through the config, then after tampering.
    let (code, out, err) = bccguard(&["audit", "verify", "--config", conf]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("12 records, chain intact, first seq 1, last seq 12"),
        "{out}"
    );
    assert!(out.contains("chain starts at genesis"), "{out}");
    let oldest = audit::rotated_files(&cfg.path).unwrap()[0].1.clone();
    let mut ls = lines(&oldest);
    ls[1] = ls[1].replace("\"rewrite\"", "\"accept\"");
    write_lines(&oldest, &ls);
    let (code, out, _) = bccguard(&["audit", "verify", "--config", conf]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("chain broken"), "{out}");
    assert!(
        out.contains(&format!(
            "{} line 2 (seq 2): content does not match",
            oldest.display()
        )),
        "{out}"
    );
}

#[test]
fn cli_verify_with_path_needs_no_config() {
    let dir = tempdir();
    let path = five(dir.path());
    let (code, out, err) = bccguard(&[
        "audit",
        "verify",
        "--config",
        "/nonexistent/bccguard.toml",
        path.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("5 records, chain intact, first seq 1, last seq 5"),
        "{out}"
    );
    let (code, _, _) = bccguard(&["audit", "verify", "--config", "/nonexistent/bccguard.toml"]);
    assert_eq!(code, Some(2));
    let (code, _, _) = bccguard(&[
        "audit",
        "verify",
        dir.path().join("missing.jsonl").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2));
}

/// Not a test on its own: the body of the child process `kill9_leaves_a_verifiable_log` kills.
#[test]
fn kill9_child_writer() {
    let Ok(dir) = std::env::var(KILL9_ENV) else {
        return;
    };
    let cfg = cfg_in(Path::new(&dir), RecipientStorage::Hmac, 64 * 1024);
    let log = Arc::new(AuditLog::open(&cfg, "pv").unwrap());
    rt().block_on(async {
        let mut tasks = Vec::new();
        for t in 0..8 {
            let log = Arc::clone(&log);
            tasks.push(tokio::spawn(async move {
                let mut i = t;
                loop {
                    let _ = log.record(event(i)).await;
                    i += 8;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

#[test]
fn kill9_leaves_a_verifiable_log() {
    let dir = tempdir();
    let cfg = cfg_in(dir.path(), RecipientStorage::Hmac, 64 * 1024);
    let exe = std::env::current_exe().unwrap();
    let mut before = 0;
    for round in 0..3 {
        let mut child = Command::new(&exe)
            .args([
                "kill9_child_writer",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(KILL9_ENV, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let seen = audit::verify(&cfg.path).map(|r| r.records).unwrap_or(0);
            if seen >= before + 200 || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // What the relay does on restart: open (repairing a torn tail), go on writing.
        let seq = write_records(&cfg, 10_000 * (round + 1), 1)[0];
        let r = audit::verify(&cfg.path).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(r.last_seq, Some(seq));
        assert!(
            r.records > before + 200,
            "round {round}: child wrote {} records",
            r.records
        );
        assert!(r.starts_at_genesis());
        before = r.records;
    }
}

#[test]
fn verify_while_the_relay_writes_and_rotates() {
    let dir = tempdir();
    let cfg = cfg_in(dir.path(), RecipientStorage::Hmac, 4000);
    let log = Arc::new(AuditLog::open(&cfg, "pv").unwrap());
    let rt = rt();
    let writer = {
        let log = Arc::clone(&log);
        rt.spawn(async move {
            for i in 0..600 {
                log.record(event(i)).await.unwrap();
            }
        })
    };
    assert!(audit::is_live(&cfg.path));
    let mut checks = 0;
    while !writer.is_finished() {
        if cfg.path.exists() {
            audit::verify(&cfg.path).unwrap_or_else(|e| panic!("live verify: {e}"));
            checks += 1;
        }
    }
    rt.block_on(writer).unwrap();
    drop(log);
    assert!(!audit::is_live(&cfg.path));
    assert_eq!(audit::verify(&cfg.path).unwrap().last_seq, Some(600));
    println!("{checks} live verifications");
}

// ---------------------------------------------------------------------------------------------
// Two-phase records, bounded size, key changes, full disk and immutable log (issue 11).

fn outcome(decision_seq: u64, result: audit::OutcomeResult) -> audit::AuditOutcome {
    audit::AuditOutcome {
        decision_seq,
        session: format!("sess-{decision_seq}"),
        upstream: Some("250 2.0.0 Ok: queued as ABC".to_string()),
        header_digest_forwarded: Some(audit::header_digest(b"To: undisclosed-recipients:;\r\n")),
        result,
    }
}

/// A split whose copy went to the spool: the decision's own outcome says `spooled`, the copy's
/// later delivery is one more outcome; `query` shows both, `verify` counts them; addresses that
/// upstream replies quote never reach the log.
#[test]
fn a_spooled_copy_settling_later_is_shown_with_its_decision() {
    let dir = tempdir();
    let cfg = cfg_in(dir.path(), RecipientStorage::Hmac, 0);
    let log = AuditLog::open(&cfg, "pv").unwrap();
    let rt = rt();
    let d = rt.block_on(log.record_decision(event(1))).unwrap();
    let mut own = outcome(d, audit::OutcomeResult::Spooled);
    own.upstream = Some("451 4.2.0 <bob1@partner.example>: try later".to_string());
    rt.block_on(log.record_outcome(own)).unwrap();
    let mut later = outcome(d, audit::OutcomeResult::Delivered);
    later.upstream = Some("spooled copy 0001: 250 2.0.0 Ok: queued as XYZ".to_string());
    rt.block_on(log.record_outcome(later)).unwrap();
    drop(log);
    assert!(!fs::read_to_string(&cfg.path).unwrap().contains("bob1@"));
    let r = audit::verify(&cfg.path).unwrap();
    assert_eq!((r.decisions, r.outcomes), (1, 2));
    assert!(r.decisions_without_outcome.is_empty());

    let conf = config_file(dir.path(), &cfg);
    let conf = conf.to_str().unwrap();
    let (code, out, err) = bccguard(&["audit", "query", "--config", conf, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let shown: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(shown["outcome"]["result"], "spooled");
    assert_eq!(
        shown["outcome"]["upstream"],
        "451 4.2.0 [address] try later"
    );
    assert_eq!(shown["later_outcomes"][0]["result"], "delivered");
    assert_eq!(
        shown["later_outcomes"][0]["upstream"],
        "spooled copy 0001: 250 2.0.0 Ok: queued as XYZ"
    );
    let (_, out, _) = bccguard(&["audit", "query", "--config", conf]);
    assert!(
        out.contains("outcome=spooled (seq 2)") && out.contains("later=delivered (seq 3)"),
        "{out}"
    );
}

#[test]
fn decisions_and_outcomes_chain_and_verify_lists_the_open_ones() {
    let dir = tempdir();
    let cfg = cfg_in(dir.path(), RecipientStorage::Hmac, 0);
    let log = AuditLog::open(&cfg, "pv").unwrap();
    let rt = rt();
    let d1 = rt.block_on(log.record_decision(event(1))).unwrap();
    let d2 = rt.block_on(log.record_decision(event(2))).unwrap();
    let r3 = rt.block_on(log.record(event(3))).unwrap();
    let o1 = rt
        .block_on(log.record_outcome(outcome(d1, audit::OutcomeResult::Delivered)))
        .unwrap();
    let d4 = rt.block_on(log.record_decision(event(4))).unwrap();
    let o4 = rt
        .block_on(log.record_outcome(outcome(d4, audit::OutcomeResult::Refused)))
        .unwrap();
    assert_eq!((d1, d2, r3, o1, d4, o4), (1, 2, 3, 4, 5, 6));
    drop(log);

    let ls = lines(&cfg.path);
    assert!(
        ls[0].contains(",\"seq\":1,\"kind\":\"decision\","),
        "{}",
        ls[0]
    );
    assert!(ls[2].contains("\"kind\":\"record\""), "{}", ls[2]);
    assert!(
        ls[3].contains(",\"seq\":4,\"kind\":\"outcome\",\"session\":\"sess-1\",\"decision_seq\":1,\"result\":\"delivered\","),
        "{}",
        ls[3]
    );
    let r = audit::verify(&cfg.path).unwrap();
    assert_eq!(
        (r.records, r.decisions, r.outcomes, r.one_shot),
        (6, 3, 2, 1)
    );
    assert_eq!(r.decisions_without_outcome, [2]);

    // An outcome edited to point elsewhere breaks the chain like any other edit.
    let conf = config_file(dir.path(), &cfg);
    let conf = conf.to_str().unwrap();
    let (code, out, err) = bccguard(&["audit", "verify", "--config", conf]);
    println!("{out}");
    assert_eq!(
        code,
        Some(0),
        "a missing outcome is reported, not a failure: {out}{err}"
    );
    assert!(
        out.contains("1 decisions without an outcome record: seq 2; the relay stopped or could not write the outcome after forwarding"),
        "{out}"
    );
    assert!(
        out.contains("3 decisions, 2 outcomes, 1 one-shot records"),
        "{out}"
    );

    // query shows each decision with its outcome, and no outcome line on its own.
    let (code, out, err) = bccguard(&["audit", "query", "--config", conf, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let shown: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(shown.len(), 4, "{out}");
    assert_eq!(shown[0]["kind"], "decision");
    assert_eq!(shown[0]["outcome"]["result"], "delivered");
    assert_eq!(shown[0]["outcome"]["seq"], 4);
    assert!(shown[1]["outcome"].is_null(), "{}", shown[1]);
    assert_eq!(shown[2]["kind"], "record");
    assert!(shown[2].get("outcome").is_none());
    assert_eq!(shown[3]["outcome"]["result"], "refused");
    let (_, out, _) = bccguard(&["audit", "query", "--config", conf]);
    let human: Vec<&str> = out.lines().collect();
    assert!(human[0].contains("outcome=delivered (seq 4)"), "{out}");
    assert!(human[1].contains("outcome=none"), "{out}");

    let mut ls = ls;
    ls[3] = ls[3].replace("\"decision_seq\":1", "\"decision_seq\":2");
    write_lines(&cfg.path, &ls);
    let b = broken(&cfg.path);
    assert_eq!(b.seq, Some(4), "{b}");
}

/// A size line of /proc/self/status (`VmRSS:`, `VmHWM:` = peak), KiB.
fn rss_kib(field: &str) -> u64 {
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn two_million_visible_addresses_make_a_bounded_record_that_survives_restart() {
    const N: usize = 2_000_000;
    let dir = tempdir();
    let cfg = cfg_in(dir.path(), RecipientStorage::Hmac, 0);
    let visible: Vec<String> = (0..N)
        .map(|i| format!("user{i}@dest{}.example", i % 7))
        .collect();
    let list_bytes: usize = visible.iter().map(|a| a.len()).sum();
    let mut e = event(1);
    e.visible = visible.iter().collect();
    e.visible_external = N;
    e.envelope_recipients = N;
    let log = AuditLog::open(&cfg, "pv").unwrap();
    let rt = rt();
    let key = audit::HmacKey::load(&cfg.hmac_key_file).unwrap();
    let first = e.visible[0].to_string();
    let hundred_and_first = e.visible[100].to_string();

    // Peak RSS from here on (echo 5 > clear_refs resets VmHWM; other tests share the process).
    let _ = fs::write("/proc/self/clear_refs", "5");
    let rss_before = rss_kib("VmRSS:");
    let started = Instant::now();
    // A small record sent meanwhile is not held up by the huge one's summary.
    let (seq, small_seq) = rt.block_on(async {
        let small = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            log.record(event(2)).await.unwrap()
        };
        let (big, small) = tokio::join!(log.record_decision(e), small);
        (big.unwrap(), small)
    });
    let took = started.elapsed();
    let peak = rss_kib("VmHWM:");
    assert!(
        small_seq < seq,
        "a small record waited for the huge one ({small_seq} > {seq})"
    );
    rt.block_on(log.record_outcome(outcome(seq, audit::OutcomeResult::Delivered)))
        .unwrap();
    drop(log); // close: the relay stops (SIGTERM)

    let size = fs::metadata(&cfg.path).unwrap().len();
    let ls = lines(&cfg.path);
    let record_size = ls[1].len() + 1;
    println!(
        "2,000,000 visible addresses ({list_bytes} bytes of addresses): record {record_size} bytes, \
         log {size} bytes, written in {took:?}; test process RSS {rss_before} KiB with the list, \
         peak {peak} KiB while recording (+{} KiB)",
        peak.saturating_sub(rss_before)
    );
    assert!(record_size <= audit::MAX_RECORD_BYTES, "{record_size}");
    let r: Record = serde_json::from_str(&ls[1]).unwrap();
    assert_eq!((r.seq, r.kind), (seq, audit::Kind::Decision));
    assert_eq!(r.visible_count, N);
    let summary = r.recipients_summary.clone().expect("summarised");
    assert_eq!(
        (summary.count, summary.listed),
        (N, audit::LISTED_WHEN_SUMMARISED)
    );
    // Its form is checked against a hand-made digest in the unit tests (audit::bound).
    assert!(summary.sha256.len() == 64 && summary.sha256.bytes().all(|b| b.is_ascii_hexdigit()));
    let listed = r.recipients.unwrap();
    assert_eq!(listed.len(), 100);
    assert_eq!(listed[0], key.pseudonym(&first));

    // Restart: nothing is moved aside, the chain goes on, verify counts the record.
    assert_eq!(write_records(&cfg, 3, 1), [4]);
    let v = audit::verify(&cfg.path).unwrap();
    assert_eq!(
        (v.records, v.decisions, v.outcomes, v.one_shot),
        (4, 1, 1, 2)
    );
    assert!(
        v.torn.is_empty(),
        "a complete record was moved aside: {:?}",
        v.torn
    );
    let (code, out, err) = bccguard(&["audit", "verify", cfg.path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("4 records, chain intact"), "{out}");

    // The listed pseudonyms are searchable; the rest are covered by the digest only.
    let conf = config_file(dir.path(), &cfg);
    let conf = conf.to_str().unwrap();
    let (_, out, _) = bccguard(&["audit", "query", "--config", conf, "--recipient", &first]);
    assert_eq!(out.lines().count(), 1, "{out}");
    let (_, out, err) = bccguard(&[
        "audit",
        "query",
        "--config",
        conf,
        "--recipient",
        &hundred_and_first,
    ]);
    assert_eq!(out.lines().count(), 0, "{out}");
    assert!(err.contains("1 record(s) list only the first 100"), "{err}");
}

#[test]
fn huge_free_text_and_plain_lists_are_cut_to_the_bound() {
    let dir = tempdir();
    let cfg = cfg_in(dir.path(), RecipientStorage::Plain, 0);
    let log = AuditLog::open(&cfg, "pv").unwrap();
    let mut e = event(1);
    e.message_id = Some(format!("<{}@example.org>", "x".repeat(300_000)));
    e.reason = "\u{1}".repeat(100_000); // escapes to six bytes each
    e.visible = (0..400)
        .map(|i| format!("{}{i}@example.net", "l".repeat(240)))
        .collect();
    let seq = rt().block_on(log.record(e)).unwrap();
    drop(log);
    let ls = lines(&cfg.path);
    println!(
        "record with 300 kB Message-ID, 600 kB escaped reason, 400 long addresses: {} bytes",
        ls[0].len() + 1
    );
    assert!(ls[0].len() < audit::MAX_RECORD_BYTES);
    let r: Record = serde_json::from_str(&ls[0]).unwrap();
    assert_eq!(r.seq, seq);
    assert!(r.message_id.unwrap().contains("bytes in all]"));
    assert_eq!(r.visible_count, 400);
    let s = r.recipients_summary.expect("summarised");
    assert_eq!(s.count, 400);
    assert_eq!(r.recipients.unwrap().len(), s.listed);
    audit::verify(&cfg.path).unwrap();
}

#[test]
fn a_complete_record_over_16_mib_is_never_cut_on_open() {
    // Logs written before records were bounded can hold such lines (issue 11 item 3).
    let dir = tempdir();
    let cfg = cfg_in(dir.path(), RecipientStorage::Hmac, 0);
    write_records(&cfg, 1, 1);
    let prev: Record = serde_json::from_str(&lines(&cfg.path)[0]).unwrap();
    let mut big = prev.clone();
    big.seq = 2;
    big.prev = prev.hash.clone();
    big.recipients = Some(vec![format!("hmac:{}", "ab".repeat(32)); 260_000]);
    big.visible_count = 260_000;
    let line = big.seal().unwrap();
    assert!(line.len() > 16 * 1024 * 1024, "{}", line.len());
    let mut bytes = fs::read(&cfg.path).unwrap();
    bytes.extend_from_slice(&line);
    fs::write(&cfg.path, &bytes).unwrap();

    assert_eq!(write_records(&cfg, 3, 1), [3]);
    let r = audit::verify(&cfg.path).unwrap();
    assert_eq!(r.records, 3);
    assert!(r.torn.is_empty(), "{:?}", r.torn);
    println!("a {} byte record was kept on reopen", line.len());
}

/// `AuditLog::open` must refuse `cfg`; its error text.
fn open_refused(cfg: &AuditConfig, why: &str) -> String {
    let err = match AuditLog::open(cfg, "pv") {
        Ok(_) => panic!("opened a log {why}"),
        Err(e) => format!("{e:#}"),
    };
    println!("{err}");
    err
}

/// `bccguard serve` on `cfg` must refuse to start; what it printed.
fn serve_refused(dir: &Path, cfg: &AuditConfig) -> String {
    let conf = config_file(dir, cfg);
    let out = Command::new(BIN)
        .args(["serve", "--config", conf.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(0), "{text}");
    text
}

#[test]
fn missing_key_file_refuses_open_unless_a_new_key_is_asked_for() {
    let dir = tempdir();
    let mut cfg = cfg_in(dir.path(), RecipientStorage::Hmac, 0);
    write_records(&cfg, 1, 3);
    let old_id = audit::HmacKey::load(&cfg.hmac_key_file).unwrap().key_id();
    fs::remove_file(&cfg.hmac_key_file).unwrap();

    assert!(matches!(
        audit::check_key_file(&cfg),
        Err(audit::AuditError::KeyMissing { .. })
    ));
    let err = open_refused(&cfg, "with records without its key");
    assert!(
        err.contains(&cfg.hmac_key_file.display().to_string()),
        "{err}"
    );
    assert!(err.contains("Restore the key file"), "{err}");
    assert!(
        err.contains("audit.new_key = true") && err.contains("BCCGUARD__AUDIT__NEW_KEY=true"),
        "{err}"
    );
    assert!(!cfg.hmac_key_file.exists(), "no key may be made silently");
    assert_eq!(
        audit::verify(&cfg.path).unwrap().records,
        3,
        "log untouched"
    );

    // Through the binary: `serve` refuses to start, naming the file.
    let text = serve_refused(dir.path(), &cfg);
    assert!(text.contains("audit.new_key"), "serve output: {text}");
    assert!(!cfg.hmac_key_file.exists());

    // Asked for explicitly: a new key, and a `key` line in the chain before the next record.
    cfg.new_key = true;
    audit::check_key_file(&cfg).unwrap();
    assert_eq!(write_records(&cfg, 4, 1), [5]);
    let new_key = audit::HmacKey::load(&cfg.hmac_key_file).unwrap();
    assert_ne!(new_key.key_id(), old_id);
    let ls = lines(&cfg.path);
    let key_line: audit::KeyRecord = serde_json::from_str(&ls[3]).unwrap();
    assert_eq!((key_line.seq, key_line.kind), (4, audit::Kind::Key));
    assert_eq!(key_line.key_id, new_key.key_id());
    assert!(!ls[3].contains(
        &fs::read_to_string(&cfg.hmac_key_file)
            .unwrap()
            .trim()
            .to_string()
    ));
    let r = audit::verify(&cfg.path).unwrap();
    assert_eq!((r.records, r.key_changes.clone()), (5, vec![4]));
    // Restarting with new_key still set and the key present: no second key line.
    assert_eq!(write_records(&cfg, 5, 1), [6]);

    // query --recipient says that older records were made under another key.
    let conf = config_file(dir.path(), &cfg);
    let conf = conf.to_str().unwrap();
    let (code, out, err) = bccguard(&[
        "audit",
        "query",
        "--config",
        conf,
        "--recipient",
        "Carol@other.example",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out.lines().count(),
        2,
        "records 5 and 6 match under the new key: {out}"
    );
    assert!(
        err.contains("3 record(s) (the last at seq 3) were made under another HMAC key"),
        "{err}"
    );
    let (_, out, _) = bccguard(&["audit", "verify", "--config", conf]);
    assert!(out.contains("HMAC key changed at seq 4"), "{out}");
}

/// A key file that now holds *another* key (a config-management run that made a fresh one, a
/// copy from the wrong host) is refused like a missing one; `audit.new_key` starts it on purpose
/// with a `key` line; a log from before stamps takes the key in force at its first start.
#[test]
fn replaced_key_file_refuses_open_unless_a_new_key_is_asked_for() {
    let dir = tempdir();
    let mut cfg = cfg_in(dir.path(), RecipientStorage::Hmac, 0);
    assert_eq!(write_records(&cfg, 1, 3), [1, 2, 3]);
    let stamp = dir.path().join("log/audit.jsonl.key-id");
    let old_id = audit::HmacKey::load(&cfg.hmac_key_file).unwrap().key_id();
    assert_eq!(fs::read_to_string(&stamp).unwrap().trim(), old_id);
    fs::write(&cfg.hmac_key_file, format!("{}\n", "ab".repeat(32))).unwrap();
    let new_id = audit::HmacKey::load(&cfg.hmac_key_file).unwrap().key_id();

    assert!(matches!(
        audit::check_key_file(&cfg),
        Err(audit::AuditError::KeyReplaced { .. })
    ));
    let err = open_refused(&cfg, "with records under another key");
    for part in [
        cfg.hmac_key_file.display().to_string(),
        stamp.display().to_string(),
        old_id[..16].to_string(),
        new_id[..16].to_string(),
        "Put the original key file back".to_string(),
        "audit.new_key = true".to_string(),
    ] {
        assert!(err.contains(&part), "{part:?} not in {err}");
    }
    assert_eq!(
        audit::verify(&cfg.path).unwrap().records,
        3,
        "log untouched"
    );

    // Through the binary: `serve` refuses to start, naming the file.
    let text = serve_refused(dir.path(), &cfg);
    assert!(text.contains("holds another key"), "serve output: {text}");

    // On purpose: a `key` line first, the stamp follows the new key, later starts are quiet.
    cfg.new_key = true;
    assert_eq!(write_records(&cfg, 4, 1), [5]);
    let key_line: audit::KeyRecord = serde_json::from_str(&lines(&cfg.path)[3]).unwrap();
    assert_eq!(
        (key_line.seq, key_line.key_id.as_str()),
        (4, new_id.as_str())
    );
    assert!(
        key_line.reason.contains("holds another key"),
        "{}",
        key_line.reason
    );
    assert_eq!(fs::read_to_string(&stamp).unwrap().trim(), new_id);
    cfg.new_key = false;
    assert_eq!(write_records(&cfg, 5, 1), [6]);

    // A log without a stamp (written before stamps existed) takes the key in force.
    fs::remove_file(&stamp).unwrap();
    assert_eq!(write_records(&cfg, 6, 1), [7]);
    assert_eq!(fs::read_to_string(&stamp).unwrap().trim(), new_id);
    assert_eq!(audit::verify(&cfg.path).unwrap().key_changes, [4]);
}

/// Unmounts (and for chattr: clears the flag) however the test ends.
struct Cleanup(Vec<Vec<String>>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for cmd in self.0.iter().rev() {
            let _ = Command::new(&cmd[0]).args(&cmd[1..]).status();
        }
    }
}

/// Sends `n` decisions from 20 concurrent tasks; returns (attempted, ok seqs, errors).
fn concurrent_decisions(log: &Arc<AuditLog>, n: usize) -> (usize, Vec<u64>, usize) {
    rt().block_on(async {
        let mut tasks = Vec::new();
        for t in 0..20 {
            let log = Arc::clone(log);
            tasks.push(tokio::spawn(async move {
                let mut ok = Vec::new();
                let mut err = 0;
                for i in (t..n).step_by(20) {
                    let mut e = event(i);
                    e.visible = (0..18)
                        .map(|k| format!("r{k}-{i}@partner.example"))
                        .collect();
                    match log.record_decision(e).await {
                        Ok(seq) => ok.push(seq),
                        Err(_) => err += 1,
                    }
                }
                (ok, err)
            }));
        }
        let mut ok = Vec::new();
        let mut err = 0;
        for t in tasks {
            let (o, e) = t.await.unwrap();
            ok.extend(o);
            err += e;
        }
        (n, ok, err)
    })
}

fn decisions_on_disk(path: &Path) -> Vec<u64> {
    let mut seqs = Vec::new();
    audit::for_each_record(path, |e| {
        let r = e.record.unwrap();
        if r.kind == audit::Kind::Decision {
            seqs.push(r.seq);
        }
    })
    .unwrap();
    seqs
}

#[test]
fn full_disk_never_acknowledges_a_decision_that_is_not_on_disk() {
    let dir = tempdir();
    let mnt = dir.path().join("tmpfs");
    fs::create_dir_all(&mnt).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&mnt)
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        println!("skipped: `mount -t tmpfs` refused ({status:?}); needs root");
        return;
    }
    let _umount = Cleanup(vec![vec!["umount".into(), mnt.display().to_string()]]);
    let mut cfg = cfg_in(dir.path(), RecipientStorage::Hmac, 0);
    cfg.path = mnt.join("audit.jsonl");
    let log = Arc::new(AuditLog::open(&cfg, "pv").unwrap());
    let (attempted, ok, errors) = concurrent_decisions(&log, 400);
    let fsyncs = log.fsync_count();
    drop(log);
    let on_disk = decisions_on_disk(&cfg.path);
    println!(
        "64 KiB tmpfs: {attempted} decisions attempted, {} Ok, {errors} Err, {} on disk, {fsyncs} fsyncs",
        ok.len(),
        on_disk.len()
    );
    assert_eq!(ok.len() + errors, attempted);
    assert!(errors > 0, "the disk never filled: test proves nothing");
    assert!(!ok.is_empty(), "nothing fitted: test proves nothing");
    let mut ok_sorted = ok.clone();
    ok_sorted.sort_unstable();
    assert_eq!(
        ok_sorted, on_disk,
        "every Ok is on disk, and nothing else is"
    );
    let r = audit::verify(&cfg.path).unwrap();
    assert_eq!(r.records as usize, ok.len());
}

#[test]
fn immutable_log_never_acknowledges_a_decision() {
    // On ext4 (the target dir): tmpfs lets an already open file be written after chattr +i.
    let dir = tempdir();
    let cfg = cfg_in(dir.path(), RecipientStorage::Hmac, 0);
    let log = Arc::new(AuditLog::open(&cfg, "pv").unwrap());
    let before = concurrent_decisions(&log, 20).1.len();
    assert_eq!(before, 20);
    let status = Command::new("chattr").arg("+i").arg(&cfg.path).status();
    if !matches!(status, Ok(s) if s.success()) {
        println!("skipped: `chattr +i` refused ({status:?}); needs root on ext4");
        return;
    }
    let guard = Cleanup(vec![vec![
        "chattr".into(),
        "-i".into(),
        cfg.path.display().to_string(),
    ]]);
    let (attempted, ok, errors) = concurrent_decisions(&log, 40);
    let on_disk = decisions_on_disk(&cfg.path);
    println!(
        "chattr +i: {attempted} decisions attempted, {} Ok, {errors} Err, {} on disk (20 before)",
        ok.len(),
        on_disk.len()
    );
    assert!(
        ok.is_empty(),
        "acknowledged {} decisions on an immutable log",
        ok.len()
    );
    assert_eq!(on_disk.len(), before);
    assert!(!log.is_writable());
    drop(guard);
    // Fixed by the admin: heals without a restart, the chain goes on.
    let rt = rt();
    assert!(rt.block_on(log.probe()));
    assert_eq!(rt.block_on(log.record_decision(event(99))).unwrap(), 21);
    drop(log);
    assert_eq!(audit::verify(&cfg.path).unwrap().records, 21);
}
