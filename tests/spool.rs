//! The durable spool of split copies: retries with backoff, bounces (5xx, lifetime), restart,
//! crash leftovers, limits, flush, metrics; with a scripted in-process `CopySender`, and once
//! over real sockets into Postfix's smtp-sink through the relay's own `Upstream`.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bccguard::audit::AuditLog;
use bccguard::config::SpoolConfig;
use bccguard::config::{AuditConfig, RecipientStorage};
use bccguard::metrics::Metrics;
use bccguard::reply::Reply;
use bccguard::spool::{AuditLink, CopySender, Spool, SpoolError, SpoolJob};
use tokio::sync::watch;

/// One transaction the fake upstream saw.
#[derive(Debug, Clone)]
struct Sent {
    from: String,
    params: String,
    rcpt: String,
    data: Vec<u8>,
    accepted: bool,
}

type Answer = Result<Reply, String>;

/// Upstream whose answers are scripted per recipient (then 250 for ever), recording every try.
#[derive(Clone, Default)]
struct Fake {
    script: Arc<Mutex<HashMap<String, VecDeque<Answer>>>>,
    /// Answer for recipients with an exhausted script (default 250).
    always: Arc<Mutex<HashMap<String, Answer>>>,
    log: Arc<Mutex<Vec<Sent>>>,
}

fn ok() -> Result<Reply, String> {
    Ok(Reply::new(250, (2, 0, 0), "queued"))
}
fn temp() -> Result<Reply, String> {
    Ok(Reply::new(451, (4, 3, 0), "try later"))
}
fn perm() -> Result<Reply, String> {
    Ok(Reply::new(550, (5, 1, 1), "No such user"))
}
fn dropped() -> Result<Reply, String> {
    Err("connection lost".to_string())
}

impl Fake {
    fn script(&self, rcpt: &str, answers: Vec<Result<Reply, String>>) {
        self.script
            .lock()
            .unwrap()
            .insert(rcpt.to_string(), answers.into());
    }
    fn always(&self, rcpt: &str, answer: Result<Reply, String>) {
        self.always.lock().unwrap().insert(rcpt.to_string(), answer);
    }
    fn sent(&self) -> Vec<Sent> {
        self.log.lock().unwrap().clone()
    }
    fn accepted(&self) -> Vec<Sent> {
        self.sent().into_iter().filter(|s| s.accepted).collect()
    }
    fn tries_for(&self, rcpt: &str) -> usize {
        self.sent().iter().filter(|s| s.rcpt == rcpt).count()
    }
}

impl CopySender for Fake {
    async fn send_copy(
        &self,
        from: &str,
        params: &str,
        rcpt: &str,
        data: &[u8],
    ) -> Result<Reply, String> {
        let scripted = self
            .script
            .lock()
            .unwrap()
            .get_mut(rcpt)
            .and_then(|q| q.pop_front());
        let answer = scripted.unwrap_or_else(|| {
            self.always
                .lock()
                .unwrap()
                .get(rcpt)
                .cloned()
                .unwrap_or_else(ok)
        });
        self.log.lock().unwrap().push(Sent {
            from: from.to_string(),
            params: params.to_string(),
            rcpt: rcpt.to_string(),
            data: data.to_vec(),
            accepted: matches!(&answer, Ok(r) if r.is_positive()),
        });
        answer
    }
}

fn cfg(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        path: dir.join("spool"),
        backoff_initial_seconds: 1,
        backoff_max_seconds: 2,
        ..SpoolConfig::default()
    }
}

fn message(rcpt: &str) -> Vec<u8> {
    format!(
        "From: a@example.org\r\nTo: {rcpt}\r\nSubject: split copy\r\nMessage-ID: <m1@example.org>\r\n\r\n.line starting with a dot\r\nbody for {rcpt}\r\n"
    )
    .into_bytes()
}

fn job(from: &str, rcpt: &str) -> SpoolJob {
    SpoolJob {
        from: from.to_string(),
        params: " BODY=8BITMIME".to_string(),
        rcpt: rcpt.to_string(),
        data: message(rcpt),
        attempts: 3,
        last_error: Some("451 4.4.2 connection lost".to_string()),
        audit: None,
    }
}

struct Running {
    spool: Arc<Spool>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops the retry task and gives the Spool (and its folder lock) back for dropping.
    async fn stop(self) -> Arc<Spool> {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
        self.spool
    }
}

fn start<S: CopySender>(spool: Arc<Spool>, sender: S) -> Running {
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(spool.clone().run(sender, rx));
    Running { spool, stop, task }
}

async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn entry_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "copy"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn temporary_failures_back_off_then_deliver_once() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path());
    let spool = Arc::new(Spool::open(&c).unwrap());
    let fake = Fake::default();
    fake.script("b@example.net", vec![dropped(), temp()]);

    let enqueued_at = Instant::now();
    let id = spool
        .enqueue(job("a@example.org", "b@example.net"))
        .await
        .unwrap();
    // Durable before enqueue returned, and private.
    let files = entry_files(&c.path);
    assert_eq!(files.len(), 1);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&c.path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "spool folder mode {mode:o}");
    let listed = spool.list();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert_eq!(listed[0].attempts, 3, "tries made in the session count");

    let run = start(spool.clone(), fake.clone());
    // First spool try only after backoff_initial_seconds (1 s).
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(fake.sent().len(), 0, "tried before the initial backoff");
    wait_until("delivery", Duration::from_secs(10), || {
        !fake.accepted().is_empty()
    })
    .await;
    let took = enqueued_at.elapsed();
    // Tries at ~1 s, then +2 s, then +2 s (cap): not before ~5 s.
    assert!(
        took >= Duration::from_millis(4500),
        "delivered after {took:?}"
    );
    wait_until("spool empty", Duration::from_secs(2), || {
        spool.list().is_empty()
    })
    .await;
    assert!(
        entry_files(&c.path).is_empty(),
        "file not deleted after 250"
    );

    let sent = fake.sent();
    assert_eq!(sent.len(), 3, "{sent:?}");
    let last = &sent[2];
    assert_eq!(last.from, "a@example.org");
    assert_eq!(last.params, " BODY=8BITMIME");
    assert_eq!(
        last.data,
        message("b@example.net"),
        "bytes changed in the spool"
    );
    println!("3 tries, delivered {took:?} after spooling");
    run.stop().await;
}

#[tokio::test]
async fn permanent_failure_bounces_a_report_to_the_sender() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path());
    let spool = Arc::new(
        Spool::open(&c)
            .unwrap()
            .with_reporting_host("relay.example.org"),
    );
    let fake = Fake::default();
    fake.always("gone@example.net", perm());
    spool
        .enqueue(job("a@example.org", "gone@example.net"))
        .await
        .unwrap();
    spool
        .enqueue(job("a@example.org", "ok@example.net"))
        .await
        .unwrap();
    let run = start(spool.clone(), fake.clone());
    spool.flush();

    wait_until("report delivered", Duration::from_secs(10), || {
        fake.accepted().iter().any(|s| s.rcpt == "a@example.org")
    })
    .await;
    wait_until("spool empty", Duration::from_secs(2), || {
        spool.list().is_empty()
    })
    .await;
    assert_eq!(
        fake.tries_for("gone@example.net"),
        1,
        "a 5xx is not retried"
    );
    assert_eq!(fake.tries_for("ok@example.net"), 1);
    let reports: Vec<Sent> = fake
        .accepted()
        .into_iter()
        .filter(|s| s.rcpt == "a@example.org")
        .collect();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r.from, "", "reports come from the null sender");
    assert_eq!(r.params, "");
    let text = String::from_utf8(r.data.clone()).unwrap();
    assert!(text.contains("report-type=delivery-status"), "{text}");
    assert!(text.contains("From: \"Mail Delivery System\" <MAILER-DAEMON@relay.example.org>"));
    assert!(
        text.contains(
            "Final-Recipient: rfc822; gone@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("Subject: split copy"),
        "original header returned"
    );
    assert!(!text.contains("body for gone"), "the body is not returned");
    assert!(entry_files(&c.path).is_empty());
    run.stop().await;
}

/// A copy spooled by a split carries its message's audit decision: when it leaves the spool
/// (delivered, or bounced with a report) that is one more outcome of the decision, in the chain.
#[tokio::test]
async fn a_linked_copy_settling_later_is_an_outcome_of_its_decision() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path());
    let audit_cfg = AuditConfig {
        path: tmp.path().join("audit/audit.jsonl"),
        recipients: RecipientStorage::None,
        hmac_key_file: PathBuf::new(),
        log_accepts: false,
        rotate_bytes: 0,
        new_key: false,
    };
    let log = Arc::new(AuditLog::open(&audit_cfg, "pv").unwrap());
    let spool = Arc::new(Spool::open(&c).unwrap().with_audit(Arc::clone(&log)));
    let fake = Fake::default();
    // Real upstreams quote the recipient in the reply text: it must not reach the audit log.
    fake.script(
        "gone@example.net",
        vec![Ok(Reply::new(
            550,
            (5, 1, 1),
            "<gone@example.net>: Recipient address rejected",
        ))],
    );
    let link = |seq| {
        Some(AuditLink {
            decision_seq: seq,
            session: "sess-1".to_string(),
        })
    };
    let mut delivered = job("a@example.org", "b@example.net");
    delivered.audit = link(7);
    let mut bounced = job("a@example.org", "gone@example.net");
    bounced.audit = link(7);
    let unlinked = job("a@example.org", "c@example.net");
    let ids = [
        spool.enqueue(delivered).await.unwrap(),
        spool.enqueue(bounced).await.unwrap(),
        spool.enqueue(unlinked).await.unwrap(),
    ];
    let run = start(spool.clone(), fake.clone());
    wait_until("spool empty", Duration::from_secs(10), || {
        spool.list().is_empty()
    })
    .await;
    run.stop().await;
    wait_until("two outcomes on disk", Duration::from_secs(5), || {
        log.stats().records >= 2
    })
    .await;
    let outcomes: Vec<serde_json::Value> = std::fs::read_to_string(&audit_cfg.path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    println!("{outcomes:#?}");
    assert_eq!(
        outcomes.len(),
        2,
        "the unlinked copy and the report write nothing"
    );
    for (o, (id, result, says)) in outcomes.iter().zip([
        (&ids[0], "delivered", "250 2.0.0 queued"),
        (
            &ids[1],
            "refused",
            "queued: 550 5.1.1 [address] Recipient address rejected",
        ),
    ]) {
        assert_eq!(o["kind"], "outcome");
        assert_eq!(o["decision_seq"], 7);
        assert_eq!(o["session"], "sess-1");
        assert_eq!(o["result"], result);
        let upstream = o["upstream"].as_str().unwrap();
        assert!(
            upstream.starts_with(&format!("spooled copy {id}: ")),
            "{upstream}"
        );
        assert!(upstream.contains(says), "{upstream}");
        assert!(
            !upstream.contains("@example.net"),
            "no recipient in the log: {upstream}"
        );
    }
    assert!(bccguard::audit::verify(&audit_cfg.path).is_ok());
}

#[tokio::test]
async fn a_null_sender_copy_is_never_bounced() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path());
    let spool = Arc::new(Spool::open(&c).unwrap());
    let fake = Fake::default();
    fake.always("x@example.net", perm());
    spool.enqueue(job("", "x@example.net")).await.unwrap();
    let run = start(spool.clone(), fake.clone());
    spool.flush();
    wait_until("dropped", Duration::from_secs(5), || {
        spool.list().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = fake.sent();
    assert_eq!(sent.len(), 1, "only the one try, no report: {sent:?}");
    assert!(entry_files(&c.path).is_empty());
    run.stop().await;
}

#[tokio::test]
async fn lifetime_expiry_bounces_with_the_last_error() {
    let tmp = tempfile::tempdir().unwrap();
    let c = SpoolConfig {
        max_lifetime_seconds: 2,
        ..cfg(tmp.path())
    };
    let spool = Arc::new(Spool::open(&c).unwrap());
    let fake = Fake::default();
    fake.always("slow@example.net", temp());
    let t0 = Instant::now();
    spool
        .enqueue(job("a@example.org", "slow@example.net"))
        .await
        .unwrap();
    let run = start(spool.clone(), fake.clone());
    wait_until("expiry report", Duration::from_secs(10), || {
        fake.accepted().iter().any(|s| s.rcpt == "a@example.org")
    })
    .await;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "bounced before the lifetime: {took:?}"
    );
    // Due at 2 s, picked up within the 1 s tick; slack for a loaded machine.
    assert!(took < Duration::from_secs(8), "expiry late: {took:?}");
    wait_until("spool empty", Duration::from_secs(2), || {
        spool.list().is_empty()
    })
    .await;
    let report = fake
        .accepted()
        .into_iter()
        .find(|s| s.rcpt == "a@example.org")
        .unwrap();
    let text = String::from_utf8(report.data).unwrap();
    assert!(text.contains("Status: 5.4.7"), "{text}");
    assert!(text.contains("last error: 451 4.3.0 try later"), "{text}");
    println!(
        "{} tries, bounced {took:?} after spooling",
        fake.tries_for("slow@example.net")
    );
    run.stop().await;
}

#[tokio::test]
async fn entries_survive_a_restart_and_are_delivered_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path());
    let rcpts = ["r1@example.net", "r2@example.net", "r3@example.net"];
    {
        let spool = Spool::open(&c).unwrap();
        // One relay per folder.
        let second = Spool::open(&c).unwrap_err().to_string();
        assert!(
            second.contains("in use by another bccguard process"),
            "{second}"
        );
        for r in rcpts {
            spool.enqueue(job("a@example.org", r)).await.unwrap();
        }
    } // dropped: as if the process ended

    let fake = Fake::default();
    fake.script("r2@example.net", vec![dropped()]);
    let spool = Arc::new(Spool::open(&c).unwrap());
    let listed: Vec<String> = spool.list().into_iter().map(|e| e.rcpt).collect();
    assert_eq!(listed, rcpts);
    let run = start(spool.clone(), fake.clone());
    spool.flush();
    wait_until("all delivered", Duration::from_secs(10), || {
        fake.accepted().len() == 3
    })
    .await;
    wait_until("spool empty", Duration::from_secs(2), || {
        spool.list().is_empty()
    })
    .await;
    drop(run.stop().await);
    drop(spool);

    // Another restart: nothing comes back.
    let spool = Arc::new(Spool::open(&c).unwrap());
    assert!(spool.list().is_empty());
    let run = start(spool.clone(), fake.clone());
    spool.flush();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    run.stop().await;
    let mut got: Vec<String> = fake.accepted().into_iter().map(|s| s.rcpt).collect();
    got.sort();
    assert_eq!(got, rcpts, "each copy exactly once");
    for s in fake.accepted() {
        assert_eq!(s.data, message(&s.rcpt));
    }
}

#[tokio::test]
async fn crash_leftovers_are_cleaned_and_never_delivered_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path());
    {
        let spool = Spool::open(&c).unwrap();
        for r in ["good@example.net", "cut@example.net", "flipped@example.net"] {
            spool.enqueue(job("a@example.org", r)).await.unwrap();
        }
    }
    let files = entry_files(&c.path);
    assert_eq!(files.len(), 3);
    // kill -9 mid-write leaves a temp file; a torn final file (disk fault) is cut short; a
    // flipped bit in the message passes the cheap checks at start but not the hash at send time.
    std::fs::write(
        c.path.join(".0000000000001-00000000000000aa.tmp"),
        b"bccguard-spool 1\npartial",
    )
    .unwrap();
    let find = |needle: &str| {
        files
            .iter()
            .find(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).contains(needle))
            .unwrap()
            .clone()
    };
    let cut = find("cut@example.net");
    let raw = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &raw[..raw.len() - 40]).unwrap();
    let flipped = find("flipped@example.net");
    let mut raw = std::fs::read(&flipped).unwrap();
    let at = raw.len() - 80;
    raw[at] ^= 0x01;
    std::fs::write(&flipped, &raw).unwrap();

    let metrics = Arc::new(Metrics::new());
    let spool = Arc::new(Spool::open(&c).unwrap().with_metrics(metrics.clone()));
    assert!(
        !c.path.join(".0000000000001-00000000000000aa.tmp").exists(),
        "temp file left"
    );
    assert!(c
        .path
        .join("corrupt")
        .join(cut.file_name().unwrap())
        .exists());
    let listed: Vec<String> = spool.list().into_iter().map(|e| e.rcpt).collect();
    assert_eq!(listed, ["good@example.net", "flipped@example.net"]);

    let fake = Fake::default();
    let run = start(spool.clone(), fake.clone());
    spool.flush();
    wait_until("spool settled", Duration::from_secs(5), || {
        spool.list().is_empty()
    })
    .await;
    run.stop().await;
    let sent: Vec<String> = fake.sent().into_iter().map(|s| s.rcpt).collect();
    assert_eq!(sent, ["good@example.net"], "a damaged copy was sent");
    assert!(c
        .path
        .join("corrupt")
        .join(flipped.file_name().unwrap())
        .exists());
    let m = metrics.encode();
    assert!(
        m.contains("bccguard_spool_events_total{event=\"quarantined\"} 2"),
        "{m}"
    );
}

#[tokio::test]
async fn limits_refuse_instead_of_overfilling() {
    let tmp = tempfile::tempdir().unwrap();
    let c = SpoolConfig {
        max_entries: 2,
        ..cfg(tmp.path())
    };
    let spool = Spool::open(&c).unwrap();
    spool
        .enqueue(job("a@example.org", "1@example.net"))
        .await
        .unwrap();
    spool
        .enqueue(job("a@example.org", "2@example.net"))
        .await
        .unwrap();
    let err = spool
        .enqueue(job("a@example.org", "3@example.net"))
        .await
        .unwrap_err();
    assert!(matches!(err, SpoolError::Full { .. }), "{err}");
    assert_eq!(err.reply().code, 451);
    assert_eq!(entry_files(&c.path).len(), 2);

    let c2 = SpoolConfig {
        path: tmp.path().join("small"),
        max_bytes: 1500,
        ..cfg(tmp.path())
    };
    let small = Spool::open(&c2).unwrap();
    small
        .enqueue(job("a@example.org", "1@example.net"))
        .await
        .unwrap();
    let err = small
        .enqueue(job("a@example.org", "2@example.net"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("spool full"), "{err}");

    // Envelope text that would break the SMTP command line is refused, not stored.
    let mut bad = job("a@example.org", "x@example.net\r\nRCPT TO:<y@example.net>");
    bad.data = b"x".to_vec();
    assert!(matches!(
        small.enqueue(bad).await,
        Err(SpoolError::Invalid(_))
    ));
}

#[tokio::test]
async fn flush_trigger_file_retries_now_and_metrics_follow() {
    let tmp = tempfile::tempdir().unwrap();
    let c = SpoolConfig {
        backoff_initial_seconds: 3600,
        backoff_max_seconds: 3600,
        ..cfg(tmp.path())
    };
    let metrics = Arc::new(Metrics::new());
    let spool = Arc::new(Spool::open(&c).unwrap().with_metrics(metrics.clone()));
    spool
        .enqueue(job("a@example.org", "b@example.net"))
        .await
        .unwrap();
    spool
        .enqueue(job("a@example.org", "c@example.net"))
        .await
        .unwrap();
    assert_eq!(metrics.spool_entries(), 2);
    let m = metrics.encode();
    assert!(m.contains("bccguard_spool_entries 2"), "{m}");
    assert!(
        m.contains("bccguard_spool_events_total{event=\"enqueued\"} 2"),
        "{m}"
    );
    assert!(m.contains("bccguard_spool_oldest_age_seconds "), "{m}");
    let st = spool.status();
    assert_eq!(st.entries, 2);

    let fake = Fake::default();
    let run = start(spool.clone(), fake.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(fake.sent().is_empty(), "not due for an hour");
    // What `bccguard spool flush` does.
    std::fs::write(c.path.join("flush"), b"").unwrap();
    let t = Instant::now();
    wait_until("flushed", Duration::from_secs(5), || {
        fake.accepted().len() == 2
    })
    .await;
    println!("flush picked up after {:?}", t.elapsed());
    wait_until("trigger consumed", Duration::from_secs(3), || {
        !c.path.join("flush").exists()
    })
    .await;
    wait_until("gauge at 0", Duration::from_secs(3), || {
        metrics.spool_entries() == 0
    })
    .await;
    let m = metrics.encode();
    assert!(
        m.contains("bccguard_spool_events_total{event=\"delivered\"} 2"),
        "{m}"
    );
    assert!(m.contains("bccguard_spool_oldest_age_seconds 0"), "{m}");
    run.stop().await;
}

/// Fault test: 200 copies against an upstream that drops every 3rd transaction and defers every
/// 5th; counts acknowledged (enqueue Ok) against delivered.
#[tokio::test]
async fn flaky_upstream_loses_nothing_and_duplicates_nothing() {
    #[derive(Clone, Default)]
    struct Flaky {
        n: Arc<Mutex<u64>>,
        delivered: Arc<Mutex<HashMap<String, usize>>>,
    }
    impl CopySender for Flaky {
        async fn send_copy(&self, _: &str, _: &str, rcpt: &str, _: &[u8]) -> Result<Reply, String> {
            let n = {
                let mut n = self.n.lock().unwrap();
                *n += 1;
                *n
            };
            tokio::time::sleep(Duration::from_millis(2)).await;
            if n % 3 == 0 {
                return dropped();
            }
            if n % 5 == 0 {
                return temp();
            }
            *self
                .delivered
                .lock()
                .unwrap()
                .entry(rcpt.to_string())
                .or_default() += 1;
            ok()
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let c = SpoolConfig {
        parallel: 8,
        ..cfg(tmp.path())
    };
    let spool = Arc::new(Spool::open(&c).unwrap());
    let flaky = Flaky::default();
    let run = start(spool.clone(), flaky.clone());
    let mut acknowledged = 0;
    for i in 0..200 {
        if spool
            .enqueue(job("a@example.org", &format!("r{i}@example.net")))
            .await
            .is_ok()
        {
            acknowledged += 1;
        }
    }
    let t = Instant::now();
    while !spool.list().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(60), "spool did not drain");
        spool.flush();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run.stop().await;
    let delivered = flaky.delivered.lock().unwrap().clone();
    let dups = delivered.values().filter(|&&n| n > 1).count();
    println!(
        "acknowledged {acknowledged}, delivered {}, duplicates {dups}, upstream tries {}, drained in {:?}",
        delivered.len(),
        *flaky.n.lock().unwrap(),
        t.elapsed()
    );
    assert_eq!(acknowledged, 200);
    assert_eq!(delivered.len(), 200, "lost copies");
    assert_eq!(dups, 0);
}

// ------------------------------------------------------------------------------------------
// Over real sockets: the relay's Upstream delivering spooled copies into Postfix's smtp-sink.

const SMTP_SINK: &str = "/usr/sbin/smtp-sink";

struct Sink {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Sink {
    fn start(port: u16) -> Sink {
        use std::os::unix::fs::PermissionsExt;
        // smtp-sink drops to `nobody` before writing dumps, so the folder must be theirs to write.
        let dir = tempfile::Builder::new()
            .prefix("bccguard-spool-sink-")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut cmd = std::process::Command::new(SMTP_SINK);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            cmd.args(["-u", "nobody"]);
        }
        cmd.arg("-d")
            .arg(format!("{}/%Y%m%d%H%M%S.", dir.path().display()))
            .arg(format!("127.0.0.1:{port}"))
            .arg("100")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let child = cmd.spawn().expect("starting smtp-sink");
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "smtp-sink did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Sink { child, dir }
    }

    /// (recipient, message bytes as dumped) per delivered message.
    fn messages(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.dir.path()).unwrap() {
            let raw = std::fs::read(e.unwrap().path()).unwrap();
            let text = String::from_utf8_lossy(&raw);
            let rcpts: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("X-Rcpt-Args: <"))
                .filter_map(|l| l.split('>').next())
                .collect();
            if rcpts.len() != 1 {
                continue; // still being written
            }
            out.push((rcpts[0].to_string(), raw));
        }
        out
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A split of 18 recipients spooled while the upstream is down; it comes back after
/// `BCCGUARD_SPOOL_OUTAGE_SECS` (default 3; the README figure uses 30). Prints the drain time.
#[tokio::test]
async fn spool_drains_into_smtp_sink_after_an_outage() {
    if !Path::new(SMTP_SINK).exists() {
        eprintln!("SKIP: {SMTP_SINK} not installed (tests/install-deps installs postfix)");
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let outage: u64 = std::env::var("BCCGUARD_SPOOL_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let port = free_port();
    let upstream_cfg: bccguard::config::UpstreamConfig = toml::from_str(&format!(
        "address = \"127.0.0.1:{port}\"\ntls = \"none\"\ntimeout_seconds = 5\n"
    ))
    .unwrap();
    let upstream = bccguard::relay::Upstream::new(
        &upstream_cfg,
        "relay.test",
        bccguard::metrics::Observe::new(None),
    )
    .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    // BCCGUARD_SPOOL_BACKOFF_SECS=60 gives the shipped default (60 s doubling to 1 h).
    let backoff: u64 = std::env::var("BCCGUARD_SPOOL_BACKOFF_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let c = SpoolConfig {
        backoff_initial_seconds: backoff,
        backoff_max_seconds: (backoff * 4).min(3600),
        ..cfg(tmp.path())
    };
    let spool = Arc::new(Spool::open(&c).unwrap());
    let rcpts: Vec<String> = (0..18).map(|i| format!("r{i:02}@example.net")).collect();
    let t0 = Instant::now();
    for r in &rcpts {
        spool.enqueue(job("a@example.org", r)).await.unwrap();
    }
    let run = start(spool.clone(), upstream);
    tokio::time::sleep(Duration::from_secs(outage)).await;
    let deferred_during_outage: u32 = spool.list().iter().map(|e| e.attempts - 3).sum();
    assert_eq!(
        spool.list().len(),
        18,
        "nothing may leave while the upstream is down"
    );
    let up_at = Instant::now();
    let sink = Sink::start(port);
    wait_until(
        "18 copies at smtp-sink",
        Duration::from_secs(30 + 4 * backoff),
        || sink.messages().len() >= 18,
    )
    .await;
    let drained = up_at.elapsed();
    wait_until("spool empty", Duration::from_secs(5), || {
        spool.list().is_empty()
    })
    .await;
    run.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = sink.messages();
    let mut seen: Vec<String> = got.iter().map(|(r, _)| r.clone()).collect();
    seen.sort();
    assert_eq!(seen, rcpts, "each copy exactly once");
    for (r, raw) in &got {
        let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
        assert!(
            text.contains("X-Mail-Args: <a@example.org> BODY=8BITMIME"),
            "{text}"
        );
        let body = String::from_utf8_lossy(&message(r)).replace("\r\n", "\n");
        assert!(text.contains(&body), "copy for {r} changed: {text}");
    }
    println!(
        "spool bench: 18 copies, backoff {backoff} s, upstream down {outage} s \
         ({deferred_during_outage} failed tries), drained {drained:?} after it came back, {:?} in \
         all; 18/18 delivered once, 0 lost",
        t0.elapsed()
    );
}

/// GET `path` over a real socket; (status, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

#[tokio::test]
async fn healthz_reports_the_spool_and_fails_only_past_the_max_age() {
    use bccguard::metrics::{serve, ProbeHealth};
    let tmp = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(&cfg(tmp.path())).unwrap());
    // An upstream that accepts connections (implicit TLS: no greeting expected).
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let probe = |max_age: Option<Duration>| {
        let s = spool.clone();
        ProbeHealth::new(
            upstream.local_addr().unwrap().to_string(),
            Duration::from_secs(2),
            false,
            "audit.jsonl",
            Arc::new(|| true),
        )
        .spool(Arc::new(move || s.status()), max_age)
    };
    let metrics = Arc::new(Metrics::new());
    let (stop, rx) = watch::channel(false);
    let l1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a1, a2) = (l1.local_addr().unwrap(), l2.local_addr().unwrap());
    let t1 = tokio::spawn(serve(
        l1,
        metrics.clone(),
        Arc::new(probe(None)),
        rx.clone(),
    ));
    let t2 = tokio::spawn(serve(
        l2,
        metrics.clone(),
        Arc::new(probe(Some(Duration::from_secs(1)))),
        rx,
    ));

    assert_eq!(http_get(a1, "/healthz").await, (200, "ok\n".to_string()));
    spool
        .enqueue(job("a@example.org", "b@example.net"))
        .await
        .unwrap();
    let (status, body) = http_get(a1, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("ok\ndegraded: spool holds 1 copies for retry, oldest waiting"),
        "{body}"
    );
    assert_eq!(
        http_get(a2, "/healthz").await.0,
        200,
        "young copy: still ready"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = http_get(a2, "/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("spool: oldest copy waiting ")
            && body.contains(" s, over spool.health_max_age_seconds (1 s)"),
        "{body}"
    );
    assert_eq!(
        http_get(a1, "/healthz").await.0,
        200,
        "no max age: never fails"
    );
    stop.send(true).unwrap();
    t1.await.unwrap().unwrap();
    t2.await.unwrap().unwrap();
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bccguard"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn spool_list_and_flush_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path());
    let dir = c.path.to_str().unwrap().to_string();
    let (code, out, _) = cli(&["spool", "list", "--dir", &dir]);
    assert_eq!((code, out.contains("0 copies waiting")), (0, true), "{out}");

    let spool = Spool::open(&c).unwrap();
    let id = spool
        .enqueue(job("a@example.org", "b@example.net"))
        .await
        .unwrap();
    spool.enqueue(job("", "c@example.net")).await.unwrap();
    std::fs::write(c.path.join("9999999999999-0000000000000001.copy"), b"junk").unwrap();

    let (code, out, err) = cli(&["spool", "list", "--dir", &dir]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 copies waiting"), "{out}");
    assert!(
        out.contains(&format!("{id}  from a@example.org  to b@example.net")),
        "{out}"
    );
    assert!(out.contains("from <>  to c@example.net"), "{out}");
    assert!(
        out.contains("tries 3") && out.contains("last error: 451 4.4.2 connection lost"),
        "{out}"
    );
    assert!(
        err.contains("damaged spool file"),
        "damaged file not reported: {err}"
    );

    let (code, out, _) = cli(&["spool", "list", "--dir", &dir, "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["rcpt"], "b@example.net");
    assert_eq!(v[0]["id"], id.to_string());

    // The Spool in this process holds the folder lock, as a running relay would.
    let (code, out, _) = cli(&["spool", "flush", "--dir", &dir]);
    assert_eq!(code, 0);
    assert!(out.contains("flush requested"), "{out}");
    assert!(c.path.join("flush").exists());
    drop(spool);
    let (code, out, _) = cli(&["spool", "flush", "--dir", &dir]);
    assert_eq!(code, 0);
    assert!(out.contains("no relay is running"), "{out}");

    let (code, _, err) = cli(&["spool", "list", "--config", "/nonexistent/bccguard.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("--dir"), "{err}");
}

#[test]
fn spool_section_defaults_and_validation() {
    let tmp = tempfile::tempdir().unwrap();
    let base = "[server]\nhostname = \"relay.test\"\n[[listener]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n[upstream]\naddress = \"127.0.0.1:25\"\n";
    let path = tmp.path().join("bccguard.toml");
    std::fs::write(&path, base).unwrap();
    let c = bccguard::config::Config::load(&path).unwrap();
    // Relative to the config file's folder (SPEC 1).
    assert_eq!(c.spool.path, tmp.path().join("var/spool"));
    assert_eq!(c.spool.max_lifetime_seconds, 432_000);
    assert_eq!(
        (c.spool.backoff_initial_seconds, c.spool.backoff_max_seconds),
        (60, 3600)
    );

    std::fs::write(
        &path,
        format!("{base}[spool]\npath = \"/srv/spool\"\nbackoff_initial_seconds = 600\nbackoff_max_seconds = 60\n"),
    )
    .unwrap();
    let err = bccguard::config::Config::load(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("spool.backoff_max_seconds"), "{err}");
    std::fs::write(&path, format!("{base}[spool]\nmax_entries = 0\n")).unwrap();
    let err = bccguard::config::Config::load(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spool.max_entries") && err.contains("above 0"),
        "{err}"
    );
    std::fs::write(&path, format!("{base}[spool]\nmax_entrys = 5\n")).unwrap();
    assert!(
        bccguard::config::Config::load(&path).is_err(),
        "unknown key accepted"
    );
}

/// (recipient, DATA payload as received) per message an upstream kept.
type Kept = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A real-socket SMTP upstream that closes the connection without a reply after every `nth`
/// DATA payload (that copy is not kept), and records every message it accepted.
async fn dropping_upstream(nth: u64) -> (u16, Kept) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let kept: Kept = Arc::default();
    let datas = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let k = kept.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let kept = k.clone();
            let datas = datas.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                let _ = w.write_all(b"220 fault.test ESMTP\r\n").await;
                let mut rcpt = String::new();
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let cmd = line.to_ascii_uppercase();
                    let reply: &[u8] = if cmd.starts_with("EHLO") {
                        b"250-fault.test\r\n250 8BITMIME\r\n"
                    } else if cmd.starts_with("RCPT TO:<") {
                        rcpt = line[9..].split('>').next().unwrap_or("").to_string();
                        b"250 2.1.5 ok\r\n"
                    } else if cmd.starts_with("DATA") {
                        let _ = w.write_all(b"354 go\r\n").await;
                        let mut data = Vec::new();
                        while !data.ends_with(b"\r\n.\r\n") {
                            if r.read_until(b'\n', &mut data).await.unwrap_or(0) == 0 {
                                return;
                            }
                        }
                        let n = datas.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        if n.is_multiple_of(nth) {
                            return; // dropped: no reply, message not kept
                        }
                        kept.lock().unwrap().push((rcpt.clone(), data));
                        b"250 2.0.0 queued\r\n"
                    } else if cmd.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    if w.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, kept)
}

/// 20 split messages of 3 copies against an upstream dropping every 4th DATA, the relay
/// "restarted" (retry task stopped, spool dropped and reopened) in the middle of the drain:
/// every acknowledged copy arrives exactly once.
#[tokio::test]
async fn dropping_upstream_and_restart_mid_drain_lose_nothing() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (port, kept) = dropping_upstream(4).await;
    let upstream_cfg: bccguard::config::UpstreamConfig = toml::from_str(&format!(
        "address = \"127.0.0.1:{port}\"\ntls = \"none\"\ntimeout_seconds = 5\n"
    ))
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let c = SpoolConfig {
        parallel: 2,
        ..cfg(tmp.path())
    };
    let spool = Arc::new(Spool::open(&c).unwrap());
    let mut acknowledged = Vec::new();
    for m in 0..20 {
        for r in 0..3 {
            let rcpt = format!("m{m:02}r{r}@example.net");
            spool.enqueue(job("a@example.org", &rcpt)).await.unwrap();
            acknowledged.push(rcpt);
        }
    }
    let up = bccguard::relay::Upstream::new(
        &upstream_cfg,
        "relay.test",
        bccguard::metrics::Observe::new(None),
    )
    .unwrap();
    let run = start(spool.clone(), up);
    spool.flush();
    wait_until("part delivered", Duration::from_secs(20), || {
        kept.lock().unwrap().len() >= 20
    })
    .await;
    let before_restart = kept.lock().unwrap().len();
    drop(run.stop().await);
    drop(spool);

    let spool = Arc::new(Spool::open(&c).unwrap());
    let waiting_after_restart = spool.list().len();
    let up = bccguard::relay::Upstream::new(
        &upstream_cfg,
        "relay.test",
        bccguard::metrics::Observe::new(None),
    )
    .unwrap();
    let run = start(spool.clone(), up);
    let t = Instant::now();
    while !spool.list().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(60), "spool did not drain");
        spool.flush();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    run.stop().await;
    let kept = kept.lock().unwrap().clone();
    let mut got: Vec<String> = kept.iter().map(|(r, _)| r.clone()).collect();
    got.sort();
    let mut dups = got.clone();
    dups.dedup();
    let duplicates = got.len() - dups.len();
    println!(
        "fault+restart: acknowledged {}, delivered {} ({before_restart} before the restart, \
         {waiting_after_restart} waiting after it), duplicates {duplicates}, lost {}",
        acknowledged.len(),
        dups.len(),
        acknowledged.len() - dups.len()
    );
    assert_eq!(dups, acknowledged, "every acknowledged copy, none lost");
    assert_eq!(duplicates, 0);
    for (r, data) in &kept {
        let mut want = message(r);
        // Dot-stuffed on the wire, terminated by CRLF.CRLF.
        want = String::from_utf8(want)
            .unwrap()
            .replace("\r\n.", "\r\n..")
            .into_bytes();
        want.extend_from_slice(b".\r\n");
        assert_eq!(data, &want, "copy for {r} changed");
    }
}
