//! STARTTLS (RFC 3207): upgrade in place, then forget everything learnt in cleartext.

use super::{End, Flow, Io, Phase, Session};
use crate::reply::Reply;

impl<S: Io> Session<S> {
    pub(super) async fn starttls(&mut self) -> Result<Flow, End> {
        if !self.starttls_offered() {
            let text = if self.conn.is_tls() {
                "TLS already active"
            } else {
                "STARTTLS not available on this port"
            };
            return Ok(Reply::new(503, (5, 5, 1), text).into());
        }
        let Some(acceptor) = self.shared.live().tls.clone() else {
            return Ok(
                Reply::new(454, (4, 7, 0), "TLS not available due to temporary reason").into(),
            );
        };
        self.conn
            .queue(&Reply::new(220, (2, 0, 0), "Ready to start TLS"));
        let upgraded = self.conn.start_tls(&acceptor, self.command_timeout()).await;
        self.metrics().tls_handshake(upgraded.is_ok());
        upgraded?;
        if let Some(resumed) = self.conn.tls_resumed() {
            self.metrics().tls_session(resumed);
        }
        // RFC 3207 4.2: forget everything learnt before TLS.
        self.abort_transaction().await;
        self.phase = Phase::Greeted;
        self.helo = None;
        self.esmtp = false;
        self.auth_user = None;
        // Nothing to answer: the client speaks first after the handshake.
        Ok(Flow::Silent)
    }
}
