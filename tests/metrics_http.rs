//! The operations endpoint over a real TCP socket: /metrics content and content types,
//! /healthz readiness (200 vs 503 with reasons), 404/405, shutdown, and the ProbeHealth checks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bccguard::config::{Action, Mode};
use bccguard::metrics::{serve, Health, HealthFuture, Metrics, ProbeHealth, RejectReason, TlsSide};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Ready or not, as the test says.
struct Toggle {
    ready: AtomicBool,
}

impl Health for Toggle {
    fn check(&self) -> HealthFuture<'_> {
        Box::pin(async move {
            if self.ready.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("upstream unreachable: 127.0.0.1:1: connection refused; audit log not writable: /x".into())
            }
        })
    }
}

struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(metrics: Arc<Metrics>, health: Arc<dyn Health>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(serve(listener, metrics, health, rx));
    Server { addr, stop, task }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One raw HTTP/1.1 request with `Connection: close`; the body is read to EOF.
async fn request(addr: SocketAddr, method: &str, path: &str, accept: Option<&str>) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    if let Some(a) = accept {
        req.push_str(&format!("Accept: {a}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("response within 10 s")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("header/body separator");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

fn has_line(body: &str, line: &str) -> bool {
    body.lines().any(|l| l == line)
}

#[tokio::test]
async fn metrics_scrape_shows_what_was_counted() {
    let metrics = Arc::new(Metrics::new());
    let server = start(
        metrics.clone(),
        Arc::new(Toggle {
            ready: AtomicBool::new(true),
        }),
    )
    .await;

    metrics.message(Action::Rewrite, Some("x"), Mode::Enforce);
    metrics.message(Action::Rewrite, Some("x"), Mode::Enforce);
    metrics.message(Action::Reject, Some("mass"), Mode::Monitor);
    metrics.message(Action::Accept, None, Mode::Enforce);
    metrics.rejected("relay_denied".parse::<RejectReason>().unwrap());
    assert!("nonsense".parse::<RejectReason>().is_err());
    metrics.upstream_reply(250);
    metrics.upstream_reply(451);
    metrics.upstream_reply(554);
    metrics.upstream_outcome(None);
    metrics.tls_handshake(TlsSide::Inbound, true);
    metrics.tls_handshake(TlsSide::Upstream, false);
    metrics.audit_write(Duration::from_millis(3));
    let session = metrics.session_opened("127.0.0.1:2525");
    let held = metrics.hold_bytes(1234);

    let r = request(server.addr, "GET", "/metrics", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let b = &r.body;
    for line in [
        r#"bccguard_messages_total{action="rewrite",rule="x",mode="enforce"} 2"#,
        r#"bccguard_messages_total{action="reject",rule="mass",mode="monitor"} 1"#,
        r#"bccguard_messages_total{action="accept",rule="",mode="enforce"} 1"#,
        r#"bccguard_rejected_total{reason="relay_denied"} 1"#,
        // pre-created at 0 so alerts see the series before the first event
        r#"bccguard_rejected_total{reason="audit_unavailable"} 0"#,
        r#"bccguard_upstream_replies_total{class="2xx"} 1"#,
        r#"bccguard_upstream_replies_total{class="4xx"} 1"#,
        r#"bccguard_upstream_replies_total{class="5xx"} 1"#,
        r#"bccguard_upstream_replies_total{class="error"} 1"#,
        r#"bccguard_tls_handshakes_total{side="inbound",result="ok"} 1"#,
        r#"bccguard_tls_handshakes_total{side="upstream",result="failed"} 1"#,
        r#"bccguard_tls_handshakes_total{side="inbound",result="failed"} 0"#,
        r#"bccguard_sessions_total{listener="127.0.0.1:2525"} 1"#,
        "bccguard_sessions_active 1",
        "bccguard_inflight_bytes 1234",
        "bccguard_audit_write_seconds_count 1",
        r#"bccguard_audit_write_seconds_bucket{le="0.004"} 1"#,
        r#"bccguard_audit_write_seconds_bucket{le="0.002"} 0"#,
        "# TYPE bccguard_messages_total counter",
        &format!(
            r#"bccguard_build_info{{version="{}"}} 1"#,
            env!("CARGO_PKG_VERSION")
        ),
    ] {
        assert!(has_line(b, line), "missing line {line:?} in:\n{b}");
    }
    assert!(!b.contains("# EOF"), "0.0.4 text has no EOF marker");

    // Guards give back what they took.
    drop(session);
    drop(held);
    let r = request(server.addr, "GET", "/metrics", None).await;
    assert!(
        has_line(&r.body, "bccguard_sessions_active 0"),
        "{}",
        r.body
    );
    assert!(has_line(&r.body, "bccguard_inflight_bytes 0"), "{}", r.body);
    assert!(has_line(
        &r.body,
        r#"bccguard_sessions_total{listener="127.0.0.1:2525"} 1"#
    ));

    server.stop.send(true).unwrap();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn openmetrics_when_the_scraper_asks_for_it() {
    let metrics = Arc::new(Metrics::new());
    metrics.message(Action::Split, Some("s"), Mode::Enforce);
    let server = start(
        metrics,
        Arc::new(Toggle {
            ready: AtomicBool::new(true),
        }),
    )
    .await;
    let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let r = request(server.addr, "GET", "/metrics", Some(accept)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(r.body.ends_with("# EOF\n"), "{}", r.body);
    assert!(has_line(
        &r.body,
        r#"bccguard_messages_total{action="split",rule="s",mode="enforce"} 1"#
    ));
    // OpenMetrics names the family without _total.
    assert!(
        has_line(&r.body, "# TYPE bccguard_messages counter"),
        "{}",
        r.body
    );
    server.stop.send(true).unwrap();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn healthz_follows_readiness() {
    let toggle = Arc::new(Toggle {
        ready: AtomicBool::new(true),
    });
    let server = start(Arc::new(Metrics::new()), toggle.clone()).await;

    let r = request(server.addr, "GET", "/healthz", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "ok\n");

    toggle.ready.store(false, Ordering::SeqCst);
    let r = request(server.addr, "GET", "/healthz", None).await;
    assert_eq!(r.status, 503);
    assert!(
        r.body.contains("upstream unreachable: 127.0.0.1:1"),
        "{}",
        r.body
    );
    assert!(r.body.contains("audit log not writable"), "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));

    toggle.ready.store(true, Ordering::SeqCst);
    let r = request(server.addr, "GET", "/healthz?verbose=1", None).await;
    assert_eq!(r.status, 200);

    server.stop.send(true).unwrap();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn livez_stays_up_while_readyz_reports_an_outage() {
    let toggle = Arc::new(Toggle {
        ready: AtomicBool::new(false),
    });
    let server = start(Arc::new(Metrics::new()), toggle.clone()).await;
    // Upstream down: not ready (both names), but alive: a liveness probe must not restart us.
    let r = request(server.addr, "GET", "/readyz", None).await;
    assert_eq!(r.status, 503);
    assert!(r.body.contains("upstream unreachable"), "{}", r.body);
    assert_eq!(
        request(server.addr, "GET", "/healthz", None).await.status,
        503
    );
    let r = request(server.addr, "GET", "/livez", None).await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    toggle.ready.store(true, Ordering::SeqCst);
    assert_eq!(
        request(server.addr, "GET", "/readyz", None).await.status,
        200
    );
    server.stop.send(true).unwrap();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let server = start(
        Arc::new(Metrics::new()),
        Arc::new(Toggle {
            ready: AtomicBool::new(true),
        }),
    )
    .await;
    let r = request(server.addr, "GET", "/", None).await;
    assert_eq!(r.status, 404);
    let r = request(server.addr, "GET", "/metricsx", None).await;
    assert_eq!(r.status, 404);
    let r = request(server.addr, "POST", "/metrics", None).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    server.stop.send(true).unwrap();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_stops_the_server_and_closes_idle_connections() {
    let server = start(
        Arc::new(Metrics::new()),
        Arc::new(Toggle {
            ready: AtomicBool::new(true),
        }),
    )
    .await;
    // A keep-alive client that made one request and stays idle must not hold shutdown up.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut reader = BufReader::new(&mut idle);
    let mut status = String::new();
    reader.read_line(&mut status).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");

    server.stop.send(true).unwrap();
    let done = tokio::time::timeout(Duration::from_secs(3), server.task).await;
    done.expect("serve returns promptly after shutdown")
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "listener closed"
    );
    // The idle connection was closed by the server: reading reaches EOF.
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(3), reader.read_to_end(&mut rest))
        .await
        .expect("server closed the idle connection")
        .unwrap();
    let _ = n;
}

#[tokio::test]
async fn shutdown_already_signalled_returns_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (_tx, rx) = watch::channel(true);
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        serve(
            listener,
            Arc::new(Metrics::new()),
            Arc::new(Toggle {
                ready: AtomicBool::new(true),
            }),
            rx,
        ),
    )
    .await;
    r.expect("returns at once").unwrap();
}

/// A one-shot fake SMTP server that greets with `greeting` and records whether QUIT came.
async fn fake_mta(greeting: &'static str) -> (SocketAddr, tokio::task::JoinHandle<String>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(greeting.as_bytes()).await.unwrap();
        let mut got = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_string(&mut got)).await;
        got
    });
    (addr, task)
}

#[tokio::test]
async fn probe_health_ready_when_upstream_greets_and_audit_writable() {
    let (addr, mta) = fake_mta("220-mx.test ESMTP\r\n220 ready\r\n").await;
    let h = ProbeHealth::new(
        addr.to_string(),
        Duration::from_secs(3),
        true,
        "/var/lib/bccguard/audit.jsonl",
        Arc::new(|| true),
    );
    assert_eq!(h.check().await, Ok(()));
    assert_eq!(mta.await.unwrap(), "QUIT\r\n");
    // Cached: the fake MTA is gone, but the answer stands for a few seconds.
    assert_eq!(h.check().await, Ok(()));
}

#[tokio::test]
async fn probe_health_reports_each_problem() {
    // A port with nothing listening: bind, note the address, close.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let h = ProbeHealth::new(
        closed.to_string(),
        Duration::from_secs(3),
        true,
        "/data/audit.jsonl",
        Arc::new(|| false),
    )
    .cache_for(Duration::ZERO);
    let err = h.check().await.unwrap_err();
    assert!(
        err.starts_with(&format!("upstream unreachable: {closed}: ")),
        "{err}"
    );
    assert!(
        err.ends_with("; audit log not writable: /data/audit.jsonl"),
        "{err}"
    );

    let (addr, _mta) = fake_mta("554 5.3.2 go away\r\n").await;
    let h = ProbeHealth::new(
        addr.to_string(),
        Duration::from_secs(3),
        true,
        "a",
        Arc::new(|| true),
    );
    let err = h.check().await.unwrap_err();
    assert!(err.contains("greeted with `554 5.3.2 go away`"), "{err}");
}

#[tokio::test]
async fn probe_health_times_out_on_a_silent_upstream() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    // Accepts (via the backlog) but never greets.
    let h = ProbeHealth::new(
        addr.to_string(),
        Duration::from_millis(300),
        true,
        "a",
        Arc::new(|| true),
    );
    let err = h.check().await.unwrap_err();
    assert!(err.contains("no answer within"), "{err}");
    drop(l);
    // Without a greeting expected (implicit-TLS upstream), a connect is enough.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let h = ProbeHealth::new(
        l.local_addr().unwrap().to_string(),
        Duration::from_millis(300),
        false,
        "a",
        Arc::new(|| true),
    );
    assert_eq!(h.check().await, Ok(()));
}
