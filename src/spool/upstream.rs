//! [`CopySender`] for the relay's [`Upstream`]: one spooled copy as one upstream transaction
//! (`Upstream::send_single`, a fresh connection each try), the session pooled afterwards. Lives
//! here (not in `relay/`) so the relay's code is untouched; `serve` only needs
//! [`start_for_serve`].

use crate::relay::Upstream;
use crate::reply::Reply;

use super::CopySender;

impl CopySender for Upstream {
    async fn send_copy(
        &self,
        from: &str,
        params: &str,
        rcpt: &str,
        data: &[u8],
    ) -> Result<Reply, String> {
        let mut held = None;
        let result = self
            .send_single(&mut held, from, params, rcpt, &[data])
            .await;
        // send_single leaves no transaction open (RSET after a refused RCPT) and drops a
        // session that failed, so what is left may serve the next copy.
        if let Some(session) = held {
            self.checkin(session);
        }
        result.map_err(|e| e.to_string())
    }
}
/// Everything `serve` needs: opens `[spool]` (taking its lock), attaches metrics and the report
/// host name, and starts the retry task on `upstream` until `shutdown`. Await the handle at
/// shutdown so tries in flight can finish (at most a few seconds).
pub fn start_for_serve(
    cfg: &crate::config::Config,
    upstream: Upstream,
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    audit: std::sync::Arc<crate::audit::AuditLog>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(std::sync::Arc<super::Spool>, tokio::task::JoinHandle<()>)> {
    use anyhow::Context;
    let mut spool = super::Spool::open(&cfg.spool)
        .with_context(|| format!("opening the spool {}", cfg.spool.path.display()))?
        .with_reporting_host(&cfg.server.hostname)
        .with_audit(audit);
    if let Some(m) = metrics {
        spool = spool.with_metrics(m);
    }
    let spool = std::sync::Arc::new(spool);
    let task = tokio::spawn(spool.clone().run(upstream, shutdown));
    Ok((spool, task))
}
