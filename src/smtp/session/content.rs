//! DATA and BDAT: the message content, received strictly (see [`crate::smtp::data`]), then
//! made into a [`Message`] once and handed to [`crate::deliver`] with one configuration
//! snapshot.

use std::time::Duration;

use super::{End, Flow, Io, Phase, Session};
use crate::deliver::{deliver, Job};
use crate::message::Message;
use crate::reply::Reply;
use crate::smtp::conn::ContentDeadline;
use crate::smtp::data::{ChunkChecker, DataError, DataReader, Feed};

impl<S: Io> Session<S> {
    fn content_deadline(&self) -> ContentDeadline {
        let server = &self.shared.cfg.server;
        ContentDeadline::new(
            Duration::from_secs(server.data_timeout_seconds),
            server.min_data_rate,
        )
    }

    /// Why content cannot be taken now, if it cannot.
    fn content_refusal(&self) -> Option<Reply> {
        match &self.phase {
            Phase::Mail(tx) if tx.envelope.recipients.is_empty() => {
                Some(Reply::new(554, (5, 5, 1), "No valid recipients"))
            }
            Phase::Mail(_) => None,
            _ => Some(Reply::new(503, (5, 5, 1), "Need MAIL and RCPT first")),
        }
    }

    pub(super) async fn data(&mut self) -> Result<Flow, End> {
        if let Phase::Mail(tx) = &self.phase {
            if tx.chunks.is_some() {
                return Ok(Reply::new(
                    503,
                    (5, 5, 1),
                    "DATA cannot follow BDAT in one transaction",
                )
                .into());
            }
        }
        if let Some(refusal) = self.content_refusal() {
            return Ok(refusal.into());
        }
        self.conn.queue(&Reply::bare(
            354,
            "Start mail input; end with <CRLF>.<CRLF>",
        ));
        let max = self.shared.cfg.server.max_message_size;
        let mut reader = DataReader::new(max);
        // Pre-size from the client's SIZE, but only up to 1 MiB: a declared size is a claim, and
        // a thousand idle clients each claiming the maximum must not reserve gigabytes.
        let declared = match &self.phase {
            Phase::Mail(tx) => tx.envelope.params.size,
            _ => 0,
        };
        let mut message = Vec::with_capacity(declared.clamp(4096, 1 << 20));
        let mut deadline = self.content_deadline();
        let mut in_flight = self.metrics().in_flight();
        loop {
            let before = message.len();
            let fed = reader.feed(&self.conn.input, &mut message);
            in_flight.add(message.len().saturating_sub(before));
            match fed {
                Feed::Done { consumed } => {
                    self.conn.input.drain(..consumed);
                    break;
                }
                Feed::More { consumed } => {
                    self.conn.input.drain(..consumed);
                }
            }
            if let Err(end) = self.conn.fill_content(&mut deadline).await {
                self.abort_transaction().await;
                return Err(end);
            }
        }
        if let Some(error) = reader.error() {
            return Ok(self.refuse_content(error).await.into());
        }
        let reply = self.finish_message(message).await;
        drop(in_flight);
        Ok(reply.into())
    }

    pub(super) async fn bdat(&mut self, chunk_size: usize, is_last: bool) -> Result<Flow, End> {
        let max = self.shared.cfg.server.max_message_size;
        let mut deadline = self.content_deadline();
        // The chunk follows the command whatever we answer: read it all to stay in step.
        let refusal = self.content_refusal();
        let mut pending = match &mut self.phase {
            Phase::Mail(tx) if refusal.is_none() => Some(tx.chunks.take().unwrap_or_else(|| {
                (
                    ChunkChecker::new(max),
                    Vec::new(),
                    self.shared.stages.metrics.in_flight(),
                )
            })),
            _ => None,
        };
        let mut remaining = chunk_size;
        while remaining > 0 {
            if self.conn.input.is_empty() {
                if let Err(end) = self.conn.fill_content(&mut deadline).await {
                    self.abort_transaction().await;
                    return Err(end);
                }
            }
            let take = remaining.min(self.conn.input.len());
            if let Some((checker, message, in_flight)) = pending.as_mut() {
                let before = message.len();
                checker.push(&self.conn.input[..take], message);
                in_flight.add(message.len().saturating_sub(before));
            }
            self.conn.input.drain(..take);
            remaining -= take;
        }
        // `pending` is there exactly when there was no refusal.
        let Some((mut checker, message, in_flight)) = pending else {
            return Ok(refusal
                .unwrap_or_else(|| Reply::new(503, (5, 5, 1), "Need MAIL and RCPT first"))
                .into());
        };
        if !is_last {
            // Errors are kept until the client finishes the message, then it is refused whole.
            if let Phase::Mail(tx) = &mut self.phase {
                tx.chunks = Some((checker, message, in_flight));
            }
            return Ok(Reply::new(250, (2, 0, 0), format!("{chunk_size} octets received")).into());
        }
        checker.finish();
        if let Some(error) = checker.error() {
            return Ok(self.refuse_content(error).await.into());
        }
        let reply = self.finish_message(message).await;
        drop(in_flight);
        Ok(reply.into())
    }

    /// A message that broke the DATA rules: refused, and nothing of it goes upstream.
    async fn refuse_content(&mut self, error: DataError) -> Reply {
        self.metrics().rejected(error.metric_label());
        self.abort_transaction().await;
        error.reply(self.shared.cfg.server.max_message_size)
    }

    /// The message is complete: build it once, deliver it with one configuration snapshot.
    async fn finish_message(&mut self, raw: Vec<u8>) -> Reply {
        let Phase::Mail(tx) = std::mem::replace(&mut self.phase, Phase::Ready) else {
            return Reply::new(503, (5, 5, 1), "Need MAIL and RCPT first");
        };
        if raw.is_empty() {
            // `BDAT 0 LAST` alone: there is no message to forward.
            self.phase = Phase::Mail(tx);
            self.abort_transaction().await;
            return Reply::new(554, (5, 6, 0), "Message refused: it is empty");
        }
        let live = self.shared.live();
        let client = self.client();
        let job = Job {
            client: &client,
            envelope: &tx.envelope,
            upstream_params: &tx.upstream_params,
        };
        let reply = deliver(
            &self.shared.stages,
            live.rules(),
            job,
            Message::parse(raw),
            &mut self.upstream,
        )
        .await;
        self.messages += 1;
        reply
    }
}
