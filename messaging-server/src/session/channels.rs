//! `subscribe` and `unsubscribe`: the token's `channels` claim, the
//! per-connection limit, and recovery from a channel cursor — the missed
//! publications first, then `subscribed`, then the live stream.

use super::{Gone, Session};
use crate::channels::Subscriber;
use crate::frame::Text;
use crate::frame::{channel_message, encode};
use crate::metrics::RecoveredLabel;
use crate::state::AppState;
use axum::extract::ws::Message as WsMessage;
use futures_util::SinkExt;
use protocol::frames::{Handled, Subscribe, Subscribed, Unsubscribe, Unsubscribed};
use protocol::{
    ChannelName, ChannelRecord, Cursor, ErrorCode, FrameError, Kind, MsgId, ServerFrame,
};
use serde_json::value::RawValue;
use std::collections::HashSet;
use std::ops::Range;
use tokio::sync::mpsc;

/// One connection's subscriptions and the queue they deliver to.
#[derive(Default)]
pub(super) struct Subscriptions {
    conn: u64,
    queue: Option<mpsc::Sender<Text>>,
    channels: HashSet<ChannelName>,
}

impl Subscriptions {
    pub(super) fn attach(&mut self, conn: u64, queue: Option<mpsc::Sender<Text>>) {
        self.conn = conn;
        self.queue = queue;
    }

    /// Whether this connection is subscribed to `channel`.
    pub(super) fn has(&self, channel: &ChannelName) -> bool {
        self.channels.contains(channel)
    }

    /// The connection's id in the hub.
    pub(super) fn conn(&self) -> u64 {
        self.conn
    }

    /// Where its frames go (presence notices too).
    pub(super) fn queue(&self) -> Option<mpsc::Sender<Text>> {
        self.queue.clone()
    }
}

/// What a recovery read gave: the frames to send and the last offset in them.
struct Recovery {
    frames: Vec<Text>,
    last: i64,
    recovered: bool,
}

impl Session {
    /// `Ok(Err(e))`: refused with the connection kept.
    pub(super) async fn subscribe(
        &mut self,
        sub: Subscribe,
    ) -> Result<Result<(), FrameError>, Gone> {
        let refuse = |code, message: String| FrameError::new(sub.id.clone(), code, message);
        let channel = sub.channel.clone();
        if !protocol::channel::allowed(&self.who.channels, &channel) {
            let message = format!("the token's channels claim does not allow {channel}");
            return Ok(Err(refuse(ErrorCode::Forbidden, message)));
        }
        let max = self.state.config.max_channels_per_device;
        if !self.subs.channels.contains(&channel) && self.subs.channels.len() >= max {
            let message = format!("at most {max} channels per connection");
            return Ok(Err(refuse(ErrorCode::TooManyChannels, message)));
        }
        let (Some(partition), Some(queue)) = (
            self.state.channels.partition_of(&channel),
            self.subs.queue.clone(),
        ) else {
            return Ok(Err(refuse(
                ErrorCode::Unavailable,
                "channels are not open yet".into(),
            )));
        };
        let state = self.state.clone();
        let epoch = state.log_epoch();
        let from = sub
            .cursor
            .filter(|c| c.log_epoch == epoch)
            .map(|c| c.offset);
        // The recovery's reads wait on the broker (seconds when it is busy):
        // kept alive, like a resume's replay, so the client does not take
        // the silence for a dead server.
        let low = match from {
            Some(_) => match self.kept_alive(channel_catch_up(&state, partition)).await? {
                Ok(low) => Some(low),
                Err(e) => {
                    return Ok(Err(refuse(
                        ErrorCode::Unavailable,
                        format!("recovery unavailable: {e}"),
                    )))
                }
            },
            None => None,
        };
        let to = Subscriber {
            user: self.who.user.clone(),
            session: self.events.as_ref().map(|e| e.session()),
            conn: self.subs.conn,
            queue,
        };
        let Some(live_from) = self.state.channels.subscribe(&channel, to, from.is_some()) else {
            return Ok(Err(refuse(
                ErrorCode::Unavailable,
                "channels are not open yet".into(),
            )));
        };
        let recovery = match (from, low) {
            (Some(from), Some(low)) => match self
                .kept_alive(recover(
                    &state,
                    &channel,
                    partition,
                    from..live_from,
                    low,
                    &epoch,
                ))
                .await?
            {
                Ok(r) => r,
                Err(e) => {
                    self.state.channels.unsubscribe(&channel, self.subs.conn);
                    return Ok(Err(refuse(
                        ErrorCode::Unavailable,
                        format!("recovery unavailable: {e}"),
                    )));
                }
            },
            _ => Recovery {
                frames: Vec::new(),
                last: live_from - 1,
                recovered: false,
            },
        };
        if from.is_some() {
            let label = RecoveredLabel {
                recovered: recovery.recovered,
            };
            self.state
                .metrics
                .channel_recoveries
                .get_or_create(&label)
                .inc();
        }
        if self.subs.channels.insert(channel.clone()) {
            if let Some(events) = &mut self.events {
                events.subscribed(&channel);
            }
        }
        self.count_subscriptions();
        let last = recovery.last.max(live_from - 1);
        let buffered = self
            .state
            .channels
            .finish_recovery(&channel, self.subs.conn, last);
        let subscribed = ServerFrame::Subscribed(Subscribed {
            id: sub.id,
            channel,
            cursor: Cursor::new(epoch, last),
            recovered: recovery.recovered,
        });
        let mut out = recovery.frames;
        out.extend(encode(&subscribed).ok());
        out.extend(buffered);
        self.write_all(out).await.map(Ok)
    }

    /// `handled`: this connection's app is done with an anycast publication.
    /// Every server stops following it once the handled mark written here
    /// comes through the channel's partition; nothing is answered (a lost
    /// mark only means another subscriber gets it too).
    pub(super) fn handled(&self, h: Handled) -> Result<(), FrameError> {
        let refuse = |code, message: String| FrameError::new(h.id.clone(), code, message);
        if !self.subs.channels.contains(&h.channel) {
            let message = format!("this connection is not subscribed to {}", h.channel);
            return Err(refuse(ErrorCode::Forbidden, message));
        }
        let Some(partition) = self.state.channels.partition_of(&h.channel) else {
            return Err(refuse(
                ErrorCode::Unavailable,
                "channels are not open yet".into(),
            ));
        };
        self.state.anycast.handled_here(&h.msg_id);
        self.state.metrics.anycast_handled.inc();
        let mark = ChannelRecord {
            v: protocol::record::RECORD_VERSION,
            msg_id: MsgId(uuid::Uuid::new_v4()),
            kind: Kind::Ephemeral,
            channel: h.channel.clone(),
            sender: self.who.user.clone(),
            sender_device: self.device.clone(),
            body: RawValue::from_string("null".into())
                .map_err(|e| refuse(ErrorCode::Internal, e.to_string()))?,
            sent_at_ms: crate::events::now_ms(),
            anycast: false,
            key: None,
            handled: Some(h.msg_id),
        };
        let bytes = mark
            .encode()
            .map_err(|e| refuse(ErrorCode::Internal, e.to_string()))?;
        let record = [(partition, h.channel.to_string(), bytes)];
        let handed = self
            .state
            .producer
            .enqueue(&self.state.channel_topic, &record);
        let (msg_id, channel) = (h.msg_id, h.channel);
        tokio::spawn(async move {
            let acked = match handed {
                Ok(acks) => acks.wait().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = acked {
                tracing::warn!(%msg_id, %channel, error = %e, "handled mark not written; another subscriber may get it");
            }
        });
        Ok(())
    }

    pub(super) async fn unsubscribe(&mut self, un: Unsubscribe) -> Result<(), Gone> {
        self.state.channels.unsubscribe(&un.channel, self.subs.conn);
        if self.subs.channels.remove(&un.channel) {
            if let Some(events) = &mut self.events {
                events.unsubscribed(&un.channel);
            }
        }
        self.count_subscriptions();
        let frame = ServerFrame::Unsubscribed(Unsubscribed {
            id: un.id,
            channel: un.channel,
        });
        self.send_frame(&frame).await
    }

    /// Ends every subscription of the connection (it is closing).
    pub(super) fn drop_subscriptions(&mut self) {
        for channel in std::mem::take(&mut self.subs.channels) {
            self.state.channels.unsubscribe(&channel, self.subs.conn);
        }
        self.count_subscriptions();
    }

    fn count_subscriptions(&self) {
        let (channels, subscriptions) = self.state.channels.counts();
        self.state.metrics.channels.set(channels as i64);
        self.state
            .metrics
            .channel_subscriptions
            .set(subscriptions as i64);
    }

    async fn write_all(&mut self, frames: Vec<Text>) -> Result<(), Gone> {
        for f in frames {
            self.sink
                .feed(WsMessage::Text(f.into_ws()))
                .await
                .map_err(|_| Gone)?;
        }
        self.sink.flush().await.map_err(|_| Gone)
    }
}

/// Reads what the channel published in `missed` (after the cursor, before
/// the first live offset), if the log still holds all of it (from `low` on).
async fn recover(
    state: &AppState,
    channel: &ChannelName,
    partition: u32,
    missed: Range<i64>,
    low: i64,
    epoch: &str,
) -> Result<Recovery, crate::log_reader::ReadError> {
    let (from, live_from) = (missed.start, missed.end);
    if from + 1 < low || from >= live_from {
        // Trimmed by retention (or a cursor this log never gave out):
        // say so instead of leaving a silent gap.
        return Ok(Recovery {
            frames: Vec::new(),
            last: live_from - 1,
            recovered: false,
        });
    }
    let range = from + 1..live_from;
    let records = if range.is_empty() {
        Vec::new()
    } else {
        state.log.read_channel(partition, range, channel).await?
    };
    let mut frames = Vec::with_capacity(records.len());
    for (offset, r) in &records {
        frames.extend(encode(&channel_message(r, epoch, *offset, true)).ok());
    }
    state.metrics.replayed.inc_by(frames.len() as u64);
    Ok(Recovery {
        frames,
        last: live_from - 1,
        recovered: true,
    })
}

/// The channel partition's log start, once the channel consumer has passed
/// the log's end as of now (so nothing falls between the two).
async fn channel_catch_up(
    state: &AppState,
    partition: u32,
) -> Result<i64, rdkafka::error::KafkaError> {
    let (low, high) = state.log.channel_watermarks(partition).await?;
    state
        .channels
        .passes(partition, high, super::CATCH_UP_WAIT)
        .await;
    Ok(low)
}
