//! The welcome and, for a client with a cursor, the replay of what it
//! missed: first from PostgreSQL, then from Kafka, then the live records the
//! hub buffered meanwhile (each offset once).

use super::Close;
use super::{gone, Gone, Session};
use crate::frame::{encode, message, stored_message};
use crate::metrics::StartStep;
use crate::resume::{self, ResumePlan};
use crate::state::AppState;
use axum::extract::ws::{Message as WsMessage, Utf8Bytes};
use futures_util::{Sink, SinkExt, StreamExt};
use protocol::frames::{ErrorFrame, Synced, Welcome};
use protocol::{ClientFrame, CloseCode, Cursor, ErrorCode, Record, ServerFrame, UserId};
use std::future::Future;
use std::ops::Range;
use std::time::Duration;
use store::StoredMessage;
use tokio::sync::oneshot;

/// Where a registered device stands when its session starts.
#[derive(Debug, Clone)]
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
    pub(super) async fn resume(
        &mut self,
        start: &Start,
        handle: &mut crate::hub::DeviceHandle,
    ) -> Result<(), Close> {
        let id = handle.id;
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
        self.step(StartStep::Welcomed);
        if start.replay_from.is_none() {
            return Ok(());
        }
        let last = match self.replay(start, &plan, &mut handle.close).await {
            Ok(last) => last,
            Err(ReplayError::Gone) => return Err(gone(super::Gone)),
            Err(ReplayError::Ended(close)) => return Err(close),
            Err(ReplayError::Read(e)) => {
                return Err(self.retry_later(format!("resume failed: {e}")).await)
            }
        };
        self.state.metrics.resumes.inc();
        let synced = ServerFrame::Synced(Synced {
            cursor: start.cursor(),
        });
        self.send_frame(&synced).await.map_err(gone)?;
        self.step(StartStep::Synced);
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
        tracing::warn!(why = %message, "resume could not read what the device missed; told to reconnect");
        let err = ServerFrame::Error(ErrorFrame {
            id: None,
            code: ErrorCode::Unavailable,
            message,
        });
        let _ = self.send_frame(&err).await;
        Close::new(CloseCode::Draining, "resume unavailable, reconnect")
    }

    async fn plan(&self, start: &Start, after: i64) -> anyhow::Result<ResumePlan> {
        let source = StateSource(&self.state);
        let plan = plan(&source, start, after).await?;
        tracing::debug!(
            partition = start.partition,
            after,
            live_from = start.live_from,
            ?plan,
            "resume planned"
        );
        Ok(plan)
    }

    /// Sends the replay; returns the last offset it covered. A close the
    /// hub asks for meanwhile (moved, draining, its buffer overflowed) ends
    /// the wait for the reads at once.
    async fn replay(
        &mut self,
        start: &Start,
        plan: &ResumePlan,
        close: &mut oneshot::Receiver<crate::ending::Ending>,
    ) -> Result<i64, ReplayError> {
        let state = self.state.clone();
        let source = StateSource(&state);
        let user = self.who.user.clone();
        let read = or_closed(missed(&source, &user, start, plan), close);
        let missed = self
            .kept_alive(read)
            .await
            .map_err(|_| ReplayError::Gone)?
            .map_err(ReplayError::Ended)?
            .map_err(ReplayError::Read)?;
        for f in &missed.frames {
            self.send_frame(f).await.map_err(|_| ReplayError::Gone)?;
            state.metrics.replayed.inc();
        }
        Ok(missed.last)
    }
}

/// Where a resume reads what a device missed: PostgreSQL (what the
/// persister wrote, and how far) and the log.
pub(crate) trait ReplaySource: Sync {
    /// The first offset of `partition` still in the log.
    fn log_start(&self, partition: u32) -> impl Future<Output = anyhow::Result<i64>> + Send;
    /// The first offset of `partition` the persister has not written.
    fn persisted_next(&self, partition: u32) -> impl Future<Output = anyhow::Result<i64>> + Send;
    fn stored(
        &self,
        user: &UserId,
        partition: u32,
        range: Range<i64>,
    ) -> impl Future<Output = anyhow::Result<Vec<StoredMessage>>> + Send;
    fn logged(
        &self,
        user: &UserId,
        partition: u32,
        range: Range<i64>,
    ) -> impl Future<Output = anyhow::Result<Vec<(i64, Record)>>> + Send;
    /// Told each time a read failed busy and is tried again.
    fn waited(&self) {}
    /// Told each time a resume is planned from the log alone: the
    /// persister's position could not be read.
    fn planned_from_log(&self) {}
    /// The last persister position read for `partition` lately, if any.
    fn recent_persisted(&self, _partition: u32) -> Option<i64> {
        None
    }
}

/// How long a welcomed device's replay keeps retrying a read that failed
/// only because PostgreSQL's pool or the broker was busy. Such a failure
/// in a reconnect storm is the herd waiting its turn; sent away with 4006
/// the device would come back for the same read and join the queue again.
const REPLAY_PATIENCE: Duration = Duration::from_secs(60);

/// Pause before a busy read is tried again (its own wait was the backoff).
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// `read` again while it fails busy (`busy`), for `REPLAY_PATIENCE`.
async fn patiently<T, Fut>(
    source: &impl ReplaySource,
    mut read: impl FnMut() -> Fut,
) -> anyhow::Result<T>
where
    Fut: Future<Output = anyhow::Result<T>>,
{
    let until = tokio::time::Instant::now() + REPLAY_PATIENCE;
    loop {
        match read().await {
            Err(e) if busy(&e) && tokio::time::Instant::now() + RETRY_PAUSE < until => {
                source.waited();
                tracing::debug!(why = %e, "a replay read was busy; trying again");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            out => return out,
        }
    }
}

/// A failure that says "wait your turn", not "it is broken".
fn busy(e: &anyhow::Error) -> bool {
    e.downcast_ref::<store::StoreError>()
        .is_some_and(store::StoreError::is_busy)
        || e.downcast_ref::<crate::log_reader::ReadError>()
            .is_some_and(crate::log_reader::ReadError::is_busy)
}

pub(crate) struct StateSource<'a>(pub(crate) &'a AppState);

impl ReplaySource for StateSource<'_> {
    async fn log_start(&self, partition: u32) -> anyhow::Result<i64> {
        Ok(self.0.log.watermarks(partition).await?.0)
    }

    async fn persisted_next(&self, partition: u32) -> anyhow::Result<i64> {
        self.0.persisted.next(partition).await
    }

    async fn stored(
        &self,
        user: &UserId,
        partition: u32,
        range: Range<i64>,
    ) -> anyhow::Result<Vec<StoredMessage>> {
        // Replays take at most their share of the pool; the rest queue here
        // (kept alive), not in the pool, where sends wait only `DB_WAIT`.
        let waiting = self.0.metrics.replay_read("store_wait");
        let _turn = self.0.replay_reads.acquire().await?;
        drop(waiting);
        let _reading = self.0.metrics.replay_read("store_read");
        let store = self.0.members.store();
        Ok(store.deliveries(user, partition, range).await?)
    }

    async fn logged(
        &self,
        user: &UserId,
        partition: u32,
        range: Range<i64>,
    ) -> anyhow::Result<Vec<(i64, Record)>> {
        let _reading = self.0.metrics.replay_read("log_read");
        Ok(self.0.log.read_range(partition, range, user).await?)
    }

    fn waited(&self) {
        self.0.metrics.replay_retries.inc();
    }

    fn planned_from_log(&self) {
        self.0.metrics.log_only_plans.inc();
    }

    fn recent_persisted(&self, partition: u32) -> Option<i64> {
        self.0.persisted.recent(partition)
    }
}

/// The resume plan for a device whose cursor is at `after`: from the store
/// up to what the persister wrote, the rest from the log; from the log
/// alone when PostgreSQL does not answer and the log still holds the gap.
pub(super) async fn plan(
    source: &impl ReplaySource,
    start: &Start,
    after: i64,
) -> anyhow::Result<ResumePlan> {
    let log_start = match start.log_start {
        Some(low) => low,
        None => source.log_start(start.partition).await?,
    };
    match source.persisted_next(start.partition).await {
        Ok(next) => Ok(resume::plan(after, next, log_start, start.live_from)),
        // As while PostgreSQL is down: the log, if it still holds the gap;
        // else the last position read, if any (a lower bound).
        Err(e) => match resume::plan_from_log(after, log_start, start.live_from) {
            Some(plan) => {
                source.planned_from_log();
                tracing::debug!(partition = start.partition, after, error = %e, "resume planned from the log alone");
                Ok(plan)
            }
            None => match source.recent_persisted(start.partition) {
                Some(next) => Ok(resume::plan(after, next, log_start, start.live_from)),
                None => Err(anyhow::anyhow!(
                    "the messages to replay are only in PostgreSQL, which does not answer: {e}"
                )),
            },
        },
    }
}

/// What a device missed: its replay's frames in offset order (stored
/// rows, then log records, each marked `replay`) and the last offset they
/// cover (-1: none).
#[derive(Debug)]
pub(super) struct Missed {
    pub frames: Vec<ServerFrame>,
    pub last: i64,
}

/// Longest a welcomed device waits for all of its replay's reads: each
/// may wait `REPLAY_PATIENCE`, plus room for the reads themselves. Past it
/// the device is sent away (4006) to resume afresh — a replay stalled on
/// anything must not leave a connected device that never gets `synced`
/// (docs/benchmarks.md, "a resume that stalls after its welcome").
const REPLAY_DEADLINE: Duration = Duration::from_secs(150);

/// Reads what `plan` says `user` missed, within `REPLAY_DEADLINE`.
pub(super) async fn missed(
    source: &impl ReplaySource,
    user: &UserId,
    start: &Start,
    plan: &ResumePlan,
) -> anyhow::Result<Missed> {
    let read = read_missed(source, user, start, plan);
    match tokio::time::timeout(REPLAY_DEADLINE, read).await {
        Ok(missed) => missed,
        Err(_) => Err(anyhow::anyhow!(
            "the replay's reads took more than {} s",
            REPLAY_DEADLINE.as_secs()
        )),
    }
}

async fn read_missed(
    source: &impl ReplaySource,
    user: &UserId,
    start: &Start,
    plan: &ResumePlan,
) -> anyhow::Result<Missed> {
    let (partition, log_epoch) = (start.partition, start.log_epoch.as_str());
    let mut out = Missed {
        frames: Vec::new(),
        last: -1,
    };
    if let Some(range) = plan.from_store.clone() {
        let rows = patiently(source, || source.stored(user, partition, range.clone())).await?;
        for row in rows {
            out.frames.push(stored_message(&row, log_epoch, true)?);
        }
        out.last = range.end - 1;
    }
    if let Some(range) = plan.from_log.clone() {
        let records = patiently(source, || source.logged(user, partition, range.clone())).await?;
        for (offset, r) in records {
            out.frames.push(message(&r, log_epoch, offset, true));
        }
        out.last = range.end - 1;
    }
    Ok(out)
}

/// Client frames read during a replay or a channel's recovery, for the
/// live loop to handle next.
pub(super) type Early = Vec<Utf8Bytes>;

/// The most frames kept for the live loop; beyond that the socket is left
/// unread until the replay ends (TCP pushes back on the client).
const EARLY_MAX: usize = 64;

/// Awaits `work` (a replay's or a channel recovery's reads) while keeping
/// the connection alive: a
/// WebSocket ping every `every`, the client's `ping` answered, and its other
/// frames kept in `early`. The client has been welcomed and counts silence
/// from then on (protocol.md "Liveness": two intervals); a read that waits
/// on a busy broker or PostgreSQL for longer must not look like a dead
/// server, or the client reconnects and asks for the same replay again — in
/// a reconnect herd, a loop that feeds itself. A failed read of the socket
/// ends the session like a client gone.
pub(super) async fn keepalive<S, R, E, F>(
    (sink, stream): (&mut S, &mut R),
    early: &mut Early,
    every: Duration,
    work: F,
) -> Result<F::Output, Gone>
where
    S: Sink<WsMessage> + Unpin,
    R: futures_util::Stream<Item = Result<WsMessage, E>> + Unpin,
    F: Future,
{
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return Ok(out),
            _ = tick.tick() => {
                sink.send(WsMessage::Ping(Default::default())).await.map_err(|_| Gone)?;
            }
            m = stream.next(), if early.len() < EARLY_MAX => match m {
                Some(Ok(WsMessage::Text(t))) => match ClientFrame::parse(&t) {
                    Ok(ClientFrame::Ping(p)) => {
                        if let Ok(pong) = encode(&ServerFrame::Pong(p)) {
                            sink.send(WsMessage::Text(pong.into_ws())).await.map_err(|_| Gone)?;
                        }
                    }
                    _ => early.push(t),
                },
                Some(Ok(WsMessage::Close(_)) | Err(_)) | None => return Err(Gone),
                Some(Ok(_)) => {}
            }
        }
    }
}

impl Session {
    /// Awaits `work`, a read that must not borrow the session, with the
    /// connection kept alive meanwhile (`keepalive`); the client's frames
    /// read meanwhile wait in `early` for the live loop.
    pub(super) async fn kept_alive<F: Future>(&mut self, work: F) -> Result<F::Output, Gone> {
        let every = self.state.config.ping_interval;
        let socket = (&mut self.sink, &mut self.stream);
        keepalive(socket, &mut self.early, every, work).await
    }
}

/// `work`, unless the hub asks for the session's close first.
async fn or_closed<T>(
    work: impl Future<Output = T>,
    close: &mut oneshot::Receiver<crate::ending::Ending>,
) -> Result<T, Close> {
    tokio::select! {
        out = work => Ok(out),
        c = close => Err(super::live::asked(c)),
    }
}

enum ReplayError {
    Gone,
    Read(anyhow::Error),
    Ended(Close),
}

#[cfg(test)]
mod tests;
