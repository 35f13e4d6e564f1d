//! [`CopySender`] for the relay's [`Upstream`]: one spooled copy as one upstream transaction,
//! on a pooled session when a fresh one is idle. Lives here (not in `relay/`) so the relay's
//! code is untouched; the relay only needs to pass its `Upstream` to [`super::Spool::run`].

use crate::relay::{Upstream, UpstreamError, UpstreamSession};
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
        // A pooled session may have been closed by the upstream meanwhile: one fresh retry.
        let mut session = self.checkout().await.map_err(|e| e.to_string())?;
        let first = mail_from(&mut session, from, params).await;
        let (mut session, reply) = match first {
            Ok(r) => (session, r),
            Err(_) => {
                let mut fresh = self.connect().await.map_err(|e| e.to_string())?;
                let r = mail_from(&mut fresh, from, params)
                    .await
                    .map_err(|e| e.to_string())?;
                (fresh, r)
            }
        };
        if !reply.is_positive() {
            return finish(self, session, reply).await;
        }
        let reply = session.rcpt_to(rcpt).await.map_err(|e| e.to_string())?;
        if !reply.is_positive() {
            return finish(self, session, reply).await;
        }
        let reply = session.data(&[data]).await.map_err(|e| e.to_string())?;
        self.checkin(session);
        Ok(reply)
    }
}

async fn mail_from(
    session: &mut UpstreamSession,
    from: &str,
    params: &str,
) -> Result<Reply, UpstreamError> {
    session.mail_from(from, params).await
}

/// The transaction ended early with `reply`: reset it so the session can be pooled again.
async fn finish(
    upstream: &Upstream,
    mut session: UpstreamSession,
    reply: Reply,
) -> Result<Reply, String> {
    if session.rset().await.is_ok() {
        upstream.checkin(session);
    }
    Ok(reply)
}

/// Everything `serve` needs: opens `[spool]` (taking its lock), attaches metrics and the report
/// host name, and starts the retry task on `upstream` until `shutdown`. Await the handle at
/// shutdown so tries in flight can finish (at most a few seconds).
pub fn start_for_serve(
    cfg: &crate::config::Config,
    upstream: Upstream,
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(std::sync::Arc<super::Spool>, tokio::task::JoinHandle<()>)> {
    use anyhow::Context;
    let mut spool = super::Spool::open(&cfg.spool)
        .with_context(|| format!("opening the spool {}", cfg.spool.path.display()))?
        .with_reporting_host(&cfg.server.hostname);
    if let Some(m) = metrics {
        spool = spool.with_metrics(m);
    }
    let spool = std::sync::Arc::new(spool);
    let task = tokio::spawn(spool.clone().run(upstream, shutdown));
    Ok((spool, task))
}
