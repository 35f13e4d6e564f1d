//! Issue 14.8 metrics scraped over a real TCP socket: reload count and duration, the TLS
//! certificate expiry gauge (read from a real certificate file), the upstream latency histogram;
//! and that the same calls are no-ops when metrics are off.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bccguard::config::TlsConfig;
use bccguard::metrics::{serve, Health, HealthFuture, Metrics, Observe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

struct Ready;

impl Health for Ready {
    fn check(&self) -> HealthFuture<'_> {
        Box::pin(async { Ok(()) })
    }
}

async fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("response within 10 s")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// The value of the exact series `series` (name and labels), if exported.
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

/// A self-signed certificate valid for `days` days, made with the openssl command line.
fn certificate(dir: &std::path::Path, days: u32) -> TlsConfig {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-days",
            &days.to_string(),
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl on PATH");
    assert!(status.success());
    TlsConfig {
        certificate: cert,
        private_key: key,
        session_ticket_lifetime_seconds: 0,
    }
}

#[tokio::test]
async fn reload_certificate_expiry_and_upstream_latency_are_exported() {
    let metrics = Arc::new(Metrics::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(serve(listener, metrics.clone(), Arc::new(Ready), rx));

    let body = scrape(addr).await;
    // Present at 0 from the start, so alerts on failed reloads see a series.
    assert_eq!(
        value(&body, r#"bccguard_reloads_total{result="ok"}"#),
        Some(0.0)
    );
    assert_eq!(
        value(&body, r#"bccguard_reloads_total{result="failed"}"#),
        Some(0.0)
    );
    assert!(!body.contains("bccguard_tls_certificate_expiry_timestamp_seconds{"));
    assert_eq!(
        value(&body, "bccguard_upstream_latency_seconds_count"),
        Some(0.0)
    );

    let observe = Observe::new(Some(metrics.clone()));
    observe.reload(true, Duration::from_millis(250));
    observe.reload(false, Duration::from_millis(1500));
    observe.upstream_latency(Duration::from_millis(3));
    observe.upstream_latency(Duration::from_millis(1500));
    let dir = tempfile::tempdir().unwrap();
    let tls = certificate(dir.path(), 30);
    observe.tls_certificate(Some(&tls));

    let body = scrape(addr).await;
    assert_eq!(
        value(&body, r#"bccguard_reloads_total{result="ok"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(&body, r#"bccguard_reloads_total{result="failed"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(&body, "bccguard_last_reload_duration_seconds"),
        Some(1.5)
    );
    let series = format!(
        "bccguard_tls_certificate_expiry_timestamp_seconds{{file=\"{}\"}}",
        tls.certificate.display()
    );
    let expiry = value(&body, &series).unwrap_or_else(|| panic!("{series} in\n{body}"));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    let in_30_days = now + 30.0 * 86_400.0;
    assert!(
        (expiry - in_30_days).abs() < 300.0,
        "{expiry} vs {in_30_days}"
    );
    assert_eq!(
        value(&body, "bccguard_upstream_latency_seconds_count"),
        Some(2.0)
    );
    let sum = value(&body, "bccguard_upstream_latency_seconds_sum").unwrap();
    assert!((sum - 1.503).abs() < 1e-9, "{sum}");
    // 3 ms falls in the 4 ms bucket (1, 2, 4, ... ms); 1.5 s only from 2.048 s up.
    assert_eq!(
        value(
            &body,
            r#"bccguard_upstream_latency_seconds_bucket{le="0.004"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &body,
            r#"bccguard_upstream_latency_seconds_bucket{le="1.024"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &body,
            r#"bccguard_upstream_latency_seconds_bucket{le="2.048"}"#
        ),
        Some(2.0)
    );

    // TLS switched off on reload: no stale expiry left behind.
    observe.tls_certificate(None);
    let body = scrape(addr).await;
    assert!(value(&body, &series).is_none(), "{body}");

    let _ = stop.send(true);
    task.await.unwrap().unwrap();
}

#[test]
fn observe_without_metrics_is_a_no_op() {
    let off = Observe::default();
    off.reload(true, Duration::from_secs(1));
    off.upstream_latency(Duration::from_secs(1));
    off.tls_certificate(Some(&TlsConfig {
        certificate: "/nonexistent/cert.pem".into(),
        private_key: "/nonexistent/key.pem".into(),
        session_ticket_lifetime_seconds: 0,
    }));
}
