//! The operations HTTP endpoint: `GET /metrics` (Prometheus text, or OpenMetrics when the scraper
//! asks for it), `GET /readyz` (200 "ok" when ready, 503 with the reasons otherwise; `/healthz`
//! is the same) and `GET /livez` (200 whenever the process can answer at all). A liveness probe
//! must use `/livez`: an upstream outage makes the relay unready, and restarting it would not help.
//! Plain HTTP/1.1 on a separate port, meant for loopback or a private network.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::health::Health;
use super::{Metrics, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE};

/// Scrapers and probes are few; more connections than this at once are closed unanswered, so a
/// misbehaving client cannot use the endpoint to exhaust file descriptors.
const MAX_CONNECTIONS: usize = 64;
/// A slow client must send its request head within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A health check that hangs longer than this answers 503.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
/// After shutdown, connections still open get this long to finish their response.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown` becomes `true` (or its sender
/// is dropped). Returns once open connections have finished (at most a few seconds later).
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<dyn Health>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut tasks = JoinSet::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(64 * 1024);
    let http = Arc::new(http);

    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break; // sender gone: nobody can ever ask us to keep running
                }
                continue;
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "metrics endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "metrics endpoint: too many connections, closing");
                    continue;
                };
                let metrics = metrics.clone();
                let health = health.clone();
                let http = http.clone();
                let mut stop = shutdown.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    let service = service_fn(move |req| {
                        let metrics = metrics.clone();
                        let health = health.clone();
                        async move { Ok::<_, Infallible>(respond(req, &metrics, health.as_ref()).await) }
                    });
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    let result = tokio::select! {
                        r = conn.as_mut() => r,
                        // The borrow guard wait_for returns is not Send: drop it inside.
                        _ = async { let _ = stop.wait_for(|stop| *stop).await; } => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "metrics endpoint: connection error");
                    }
                });
            }
        }
    }

    drop(listener);
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tasks.abort_all();
    }
    Ok(())
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Prometheus asks for OpenMetrics first in its Accept header; curl and older scrapers do not.
fn wants_openmetrics(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

async fn respond(
    req: Request<Incoming>,
    metrics: &Metrics,
    health: &dyn Health,
) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz" | "/livez") {
        return text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: try /metrics, /readyz (= /healthz) or /livez\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "method not allowed\n",
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    if path == "/metrics" {
        return if wants_openmetrics(&req) {
            text(
                StatusCode::OK,
                OPENMETRICS_CONTENT_TYPE,
                metrics.encode_openmetrics(),
            )
        } else {
            text(
                StatusCode::OK,
                PROMETHEUS_TEXT_CONTENT_TYPE,
                metrics.encode(),
            )
        };
    }
    if path == "/livez" {
        // Answering at all is the proof: the runtime is not wedged.
        return text(StatusCode::OK, PLAIN, "ok\n");
    }
    match tokio::time::timeout(HEALTH_TIMEOUT, health.check()).await {
        Ok(Ok(())) => {
            let mut body = String::from("ok\n");
            for note in health.notes() {
                body.push_str(&note);
                body.push('\n');
            }
            text(StatusCode::OK, PLAIN, body)
        }
        Ok(Err(why)) => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, format!("{why}\n")),
        Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            format!(
                "health check did not finish within {} s\n",
                HEALTH_TIMEOUT.as_secs()
            ),
        ),
    }
}
