//! The channel topic's sink: every partition of it, assigned from its end
//! at start, fanned out to local subscribers by the channel hub.

use super::ChannelHub;
use crate::consumer::{LogConsumer, Sink};
use crate::delivery::Overflow;
use crate::ending::Ending;
use crate::frame::channel_message;
use crate::hub::Hub;
use crate::kafka::FramedRecord;
use crate::metrics::Metrics;
use protocol::record::RecordError;
use protocol::{ChannelRecord, ServerFrame};
use service::Backoff;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Channel publications go to the channel hub; a connection whose queue
/// overflows is closed through the (user) hub that owns it.
pub struct ChannelSink {
    pub channels: std::sync::Arc<ChannelHub>,
    pub hub: std::sync::Arc<Hub>,
    /// Who each anycast publication goes to, from the presence channels'
    /// subscribed sessions.
    pub anycast: std::sync::Arc<crate::anycast::Anycast>,
    pub presence: std::sync::Arc<crate::presence::Presence>,
}

impl Sink for ChannelSink {
    type Record = ChannelRecord;

    fn decode(payload: &[u8]) -> Result<ChannelRecord, RecordError> {
        ChannelRecord::decode(payload)
    }

    fn frame(
        record: &ChannelRecord,
        log_epoch: &str,
        offset: i64,
        replayed: bool,
    ) -> Option<ServerFrame> {
        Some(channel_message(record, log_epoch, offset, replayed))
    }

    fn open(&self, starts: &[(u32, i64)]) {
        self.channels.open(starts);
    }

    /// Every server reads every channel partition: none is ever lost.
    fn close(&self, _: u32, _: Ending) {}

    fn positions(&self) -> Vec<(u32, i64)> {
        self.channels.positions()
    }

    fn deliver(&self, run: &[FramedRecord<ChannelRecord>], metrics: &Metrics) {
        let targets = self
            .anycast
            .route(run, |c| self.presence.channel_sessions(c));
        let d = self.channels.dispatch_batch(run, &targets);
        metrics.channel_deliveries.inc_by(d.delivered as u64);
        metrics.overflows.inc_by(d.overflowed.len() as u64);
        for (user, conn) in d.overflowed {
            self.hub
                .close_device(&user, conn, Ending::TooSlow(Overflow::Queue));
        }
    }
}

/// Assigns every partition of the channel topic at its end (retrying
/// until the topic is readable), then consumes until `stop`. A
/// subscription sees what is published from then on; older publications
/// come from recovery.
pub async fn run(consumer: LogConsumer<ChannelSink>, stop: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let opened = match consumer.partition_count().await {
            Ok(n) => consumer.gain(&(0..n).collect::<Vec<_>>()).await.map(|()| n),
            Err(e) => Err(e),
        };
        match opened {
            Ok(n) => {
                info!(topic = %consumer.topic, partitions = n, "serving channels");
                break;
            }
            Err(e) => {
                warn!(topic = %consumer.topic, error = %e, "channel topic not readable yet; retrying")
            }
        }
        if !backoff.wait(&stop).await {
            return;
        }
    }
    // Channel partitions never move: nothing sends ownership changes.
    let (_keep, never) = tokio::sync::mpsc::channel(1);
    consumer.run(never, stop).await;
}
