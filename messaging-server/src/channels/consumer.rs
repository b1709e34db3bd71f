//! The channel consumer: manual `assign()` of every partition of the
//! channel topic, from its end, and the fan-out to local subscribers.

use super::{ChannelHub, Publication};
use crate::frame::channel_message;
use crate::hub::{Close, Hub};
use crate::kafka::{framed_run, ready_run, stop_at, TooNew};
use crate::metrics::Metrics;
use protocol::{ChannelRecord, CloseCode};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Offset, TopicPartitionList};
use service::etcd::AssignmentRx;
use service::Backoff;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub struct ChannelConsumer {
    pub consumer: Arc<StreamConsumer>,
    pub topic: String,
    pub channels: Arc<ChannelHub>,
    pub hub: Arc<Hub>,
    pub metrics: Metrics,
    /// The partition map; its log epoch goes into every channel cursor.
    pub assignment: AssignmentRx,
}

impl ChannelConsumer {
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match self.open().await {
                Ok(n) => {
                    info!(topic = %self.topic, partitions = n, "serving channels");
                    break;
                }
                Err(e) => {
                    warn!(topic = %self.topic, error = %e, "channel topic not readable yet; retrying")
                }
            }
            if !backoff.wait(&stop).await {
                return;
            }
        }
        loop {
            tokio::select! {
                m = self.consumer.recv() => match m {
                    Ok(msg) => if let Some(too_new) = self.dispatch(&ready_run(&self.consumer, msg)) {
                        return stop_at(&too_new, &self.metrics);
                    },
                    Err(e) => {
                        warn!(error = %e, "channel consume failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Assigns every partition at its high watermark: a subscription sees
    /// what is published from now on; older publications come from recovery.
    async fn open(&self) -> Result<usize, KafkaError> {
        let (consumer, topic) = (self.consumer.clone(), self.topic.clone());
        let starts = tokio::task::spawn_blocking(move || {
            let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(5))?;
            let n = md.topics().first().map_or(0, |t| t.partitions().len());
            if n == 0 {
                return Err(KafkaError::MetadataFetch(
                    rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
                ));
            }
            let mut starts = Vec::with_capacity(n);
            let mut tpl = TopicPartitionList::new();
            for p in 0..n {
                let p = i32::try_from(p).unwrap_or(i32::MAX);
                let (_, high) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(5))?;
                tpl.add_partition_offset(&topic, p, Offset::Offset(high))?;
                starts.push(high);
            }
            consumer.assign(&tpl)?;
            Ok(starts)
        })
        .await
        .map_err(|_| KafkaError::Canceled)??;
        let n = starts.len();
        self.channels.open(starts);
        Ok(n)
    }

    fn dispatch(&self, run: &[BorrowedMessage<'_>]) -> Option<TooNew> {
        let (framed, too_new) = framed_run(
            run,
            &self.assignment,
            &self.metrics,
            ChannelRecord::decode,
            channel_message,
        );
        let batch: Vec<Publication<'_>> = framed
            .iter()
            .map(|((partition, offset), record, frame)| Publication {
                partition: *partition,
                offset: *offset,
                channel: &record.channel,
                frame,
            })
            .collect();
        let d = self.channels.dispatch_batch(&batch);
        self.metrics.channel_deliveries.inc_by(d.delivered as u64);
        self.metrics.overflows.inc_by(d.overflowed.len() as u64);
        for (user, conn) in d.overflowed {
            let close = Close::new(CloseCode::TooSlow, "queue overflow");
            self.hub.close_device(&user, conn, close);
        }
        too_new
    }
}
