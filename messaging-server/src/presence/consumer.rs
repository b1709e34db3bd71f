//! The events topic's sink: every partition of `<topic>.events`, started
//! where the persister's stored sessions end, applied to the presence table.

use super::Presence;
use crate::channels::ChannelHub;
use crate::consumer::{LogConsumer, Sink};
use crate::delivery::Overflow;
use crate::ending::Ending;
use crate::hub::Hub;
use crate::kafka::FramedRecord;
use crate::metrics::Metrics;
use protocol::record::RecordError;
use protocol::{ConnectionEvent, EventKind, ServerFrame};
use service::Backoff;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::Store;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub struct PresenceSink {
    pub presence: Arc<Presence>,
    pub hub: Arc<Hub>,
    /// Local subscribers of presence channels get join/leave through it.
    pub channels: Arc<ChannelHub>,
    /// Told when a channel's subscribers change.
    pub anycast: Arc<crate::anycast::Anycast>,
}

impl PresenceSink {
    /// Closes watchers that could not take a notice (nothing after a gap).
    pub fn close_overflowed(&self, watchers: super::Overflowed) {
        for (user, conn) in watchers {
            self.hub
                .close_device(&user, conn, Ending::TooSlow(Overflow::Queue));
        }
    }
}

impl Sink for PresenceSink {
    type Record = ConnectionEvent;
    const TIMED: bool = false;

    fn decode(payload: &[u8]) -> Result<ConnectionEvent, RecordError> {
        ConnectionEvent::decode(payload)
    }

    fn frame(_: &ConnectionEvent, _: &str, _: i64, _: bool) -> Option<ServerFrame> {
        None
    }

    fn open(&self, _: &[(u32, i64)]) {}

    /// Every server reads every events partition: none is ever lost.
    fn close(&self, _: u32, _: Ending) {}

    fn positions(&self) -> Vec<(u32, i64)> {
        self.presence.positions()
    }

    fn deliver(&self, run: &[FramedRecord<ConnectionEvent>], _: &Metrics) {
        let now = Instant::now();
        for r in run {
            let applied = self.presence.apply(r.partition, r.offset, &r.record, now);
            self.close_overflowed(applied.overflowed);
            for (channel, frame) in applied.notices {
                self.close_overflowed(self.channels.notify(&channel, &frame));
            }
        }
        if run.iter().any(|r| r.record.event != EventKind::Connected) {
            self.anycast.subscribers_changed();
        }
    }
}

/// Loads the sessions the store holds open and the events topic's stored
/// positions (positions first: events between the two reads are applied
/// twice, which changes nothing), assigns every partition there, then
/// consumes until `stop`; offline notices are sent as their grace ends.
pub async fn run(consumer: LogConsumer<PresenceSink>, store: Store, stop: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    while let Err(e) = start(&consumer, &store).await {
        warn!(topic = %consumer.topic, error = %e, "presence not loaded yet; retrying");
        if !backoff.wait(&stop).await {
            return;
        }
    }
    let sink = consumer.sink.clone();
    let expiry = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            while !stop.is_cancelled() {
                tokio::select! {
                    _ = tick.tick() => sink.close_overflowed(sink.presence.expire(Instant::now())),
                    _ = stop.cancelled() => {}
                }
            }
        }
    });
    let (_keep, never) = tokio::sync::mpsc::channel(1);
    consumer.run(never, stop).await;
    let _ = expiry.await;
}

async fn start(consumer: &LogConsumer<PresenceSink>, store: &Store) -> anyhow::Result<()> {
    let n = consumer.partition_count().await?;
    let all: Vec<u32> = (0..n).collect();
    let stored = store.stored_offsets(&consumer.topic, &all).await?;
    let open = store.open_sessions(&all).await?;
    let subscriptions = store.open_subscriptions().await?;
    let sessions = open.len();
    let subs = subscriptions
        .into_iter()
        .filter_map(|(s, u, c)| Some((s, u, protocol::ChannelName::new(c).ok()?)));
    consumer.sink.presence.load_subscriptions(subs);
    consumer.sink.presence.load(
        open.into_iter().map(|s| (s.user, s.session)),
        stored.clone(),
    );
    consumer.gain_at(stored.into_iter().collect())?;
    info!(topic = %consumer.topic, partitions = n, sessions, "presence loaded");
    Ok(())
}
