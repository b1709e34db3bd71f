//! The welcome and, for a client with a cursor, the replay of what it
//! missed: first from PostgreSQL, then from Kafka, then the live records the
//! hub buffered meanwhile (each offset once).

use super::Close;
use super::{gone, Session};
use crate::frame::{message, stored_message};
use crate::resume::{self, ResumePlan};
use protocol::frames::{ErrorFrame, Synced, Welcome};
use protocol::{CloseCode, Cursor, ErrorCode, ServerFrame};

/// Where a registered device stands when its session starts.
pub(super) struct Start {
    pub partition: u32,
    /// The assignment epoch the session started under.
    pub epoch: u64,
    pub log_epoch: String,
    /// The cursor's offset, when the client has one of this log epoch.
    pub replay_from: Option<i64>,
    /// The first offset still in the log, read with the seam (resumes only).
    pub log_start: Option<i64>,
    /// The first offset the device receives live.
    pub live_from: i64,
}

impl Start {
    fn cursor(&self) -> Cursor {
        Cursor::new(self.log_epoch.as_str(), self.live_from - 1)
    }
}

impl Session {
    /// Welcome, replay, synced. A failure to read what the client missed
    /// is never a gap: the client is told to come back with the same cursor.
    pub(super) async fn resume(&mut self, start: &Start, id: u64) -> Result<(), Close> {
        let plan = match start.replay_from {
            Some(after) => self
                .plan(start, after)
                .await
                .map_err(|e| format!("resume unavailable: {e}")),
            None => Ok(ResumePlan::fresh()),
        };
        let plan = match plan {
            Ok(plan) => plan,
            Err(message) => return Err(self.retry_later(message).await),
        };
        let welcome = ServerFrame::Welcome(Welcome {
            user_id: self.who.user.clone(),
            device_id: self.device.clone(),
            server_id: self.state.info.server_id.clone(),
            partition: start.partition,
            epoch: start.epoch,
            resumed: plan.resumed,
            cursor: start.cursor(),
            token_exp: Some(self.who.exp),
            ping_ms: u64::try_from(self.state.config.ping_interval.as_millis()).ok(),
        });
        self.send_frame(&welcome).await.map_err(gone)?;
        if start.replay_from.is_none() {
            return Ok(());
        }
        let last = match self.replay(start, &plan).await {
            Ok(last) => last,
            Err(ReplayError::Gone) => return Err(gone(super::Gone)),
            Err(ReplayError::Read(e)) => {
                return Err(self.retry_later(format!("resume failed: {e}")).await)
            }
        };
        self.state.metrics.resumes.inc();
        let synced = ServerFrame::Synced(Synced {
            cursor: start.cursor(),
        });
        self.send_frame(&synced).await.map_err(gone)?;
        let buffered =
            self.state
                .hub
                .finish_replay(&self.who.user, id, last.max(start.live_from - 1));
        for f in buffered {
            self.send_text(f).await.map_err(gone)?;
        }
        Ok(())
    }

    /// A transient failure during resume must not turn into "resumed: false"
    /// (a gap for the client): the client is told why and to reconnect, and
    /// retries with the same cursor.
    pub(super) async fn retry_later(&mut self, message: String) -> Close {
        let err = ServerFrame::Error(ErrorFrame {
            id: None,
            code: ErrorCode::Unavailable,
            message,
        });
        let _ = self.send_frame(&err).await;
        Close::new(CloseCode::Draining, "resume unavailable, reconnect")
    }

    async fn plan(&self, start: &Start, after: i64) -> anyhow::Result<ResumePlan> {
        let (state, partition) = (&self.state, start.partition);
        let log_start = match start.log_start {
            Some(low) => low,
            None => state.log.watermarks(partition).await?.0,
        };
        let store = state.members.store();
        let plan = match store.persisted_next(state.topic(), partition).await {
            Ok(next) => resume::plan(after, next, log_start, start.live_from),
            // PostgreSQL is down: Kafka may still hold the whole gap.
            Err(e) => {
                resume::plan_from_log(after, log_start, start.live_from).ok_or_else(|| {
                    anyhow::anyhow!(
                        "the messages to replay are only in PostgreSQL, which does not answer: {e}"
                    )
                })?
            }
        };
        tracing::debug!(
            partition,
            after,
            log_start,
            live_from = start.live_from,
            ?plan,
            "resume planned"
        );
        Ok(plan)
    }

    /// Sends the replay; returns the last offset it covered.
    async fn replay(&mut self, start: &Start, plan: &ResumePlan) -> Result<i64, ReplayError> {
        let state = self.state.clone();
        let (partition, log_epoch) = (start.partition, start.log_epoch.as_str());
        let mut last = -1;
        if let Some(range) = plan.from_store.clone() {
            let rows = state
                .members
                .store()
                .deliveries(&self.who.user, partition, range.clone())
                .await
                .map_err(|e| ReplayError::Read(e.into()))?;
            for row in rows {
                let f = stored_message(&row, log_epoch, true)
                    .map_err(|e| ReplayError::Read(e.into()))?;
                self.send_frame(&f).await.map_err(|_| ReplayError::Gone)?;
                state.metrics.replayed.inc();
            }
            last = range.end - 1;
        }
        if let Some(range) = plan.from_log.clone() {
            let records = state
                .log
                .read_range(partition, range.clone(), &self.who.user)
                .await
                .map_err(|e| ReplayError::Read(e.into()))?;
            for (offset, r) in records {
                let f = message(&r, log_epoch, offset, true);
                self.send_frame(&f).await.map_err(|_| ReplayError::Gone)?;
                state.metrics.replayed.inc();
            }
            last = range.end - 1;
        }
        Ok(last)
    }
}

enum ReplayError {
    Gone,
    Read(anyhow::Error),
}
