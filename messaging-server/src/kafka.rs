//! Kafka consumers: the live consumer (manual `assign()` of
//! exactly this server's partitions) and bounded log reads for resume.

use crate::frame::live_frame;
use crate::hub::Hub;
use crate::metrics::Metrics;
use protocol::{Record, UserId};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

fn consumer_config(brokers: &str, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        // assign() needs a group id, but offsets are never committed.
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "5")
        .set("enable.partition.eof", "false");
    c
}

pub type LiveStream = StreamConsumer;

pub fn live_consumer(brokers: &str, server_id: &str) -> Result<LiveStream, KafkaError> {
    consumer_config(brokers, &format!("switchboard-server-{server_id}")).create()
}

/// Partition changes for the consumer task, from the ownership watcher.
#[derive(Debug)]
pub enum Ownership {
    Gain(u32),
    Lose(u32, crate::hub::Close),
    LoseAll(crate::hub::Close),
}

pub struct LiveConsumer {
    pub consumer: Arc<LiveStream>,
    pub topic: String,
    pub hub: Arc<Hub>,
    pub metrics: Metrics,
    pub log_epoch: Arc<std::sync::RwLock<String>>,
}

impl LiveConsumer {
    pub async fn run(mut self, mut ctrl: mpsc::Receiver<Ownership>, cancel: CancellationToken) {
        let mut lag_tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                m = self.consumer.recv() => match m {
                    Ok(msg) => {
                        let (p, o) = (msg.partition() as u32, msg.offset());
                        self.dispatch(p, o, msg.payload().unwrap_or_default());
                    }
                    Err(e) => {
                        warn!(error = %e, "consume failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = lag_tick.tick() => self.report_lag(),
                c = ctrl.recv() => match c {
                    Some(c) => self.apply(c).await,
                    None => return,
                },
                _ = cancel.cancelled() => return,
            }
        }
    }

    /// Lag for dashboards only: the broker's high watermark is never used
    /// for delivery decisions.
    fn report_lag(&self) {
        let (consumer, topic, metrics) = (
            self.consumer.clone(),
            self.topic.clone(),
            self.metrics.clone(),
        );
        let positions = self.hub.positions();
        tokio::task::spawn_blocking(move || {
            metrics.lag.clear();
            for (p, next) in positions {
                match consumer.fetch_watermarks(&topic, p as i32, Duration::from_secs(2)) {
                    Ok((_, high)) => {
                        let label = crate::metrics::PartitionLabel { partition: p };
                        metrics.lag.get_or_create(&label).set((high - next).max(0));
                    }
                    Err(e) => tracing::debug!(partition = p, error = %e, "lag not measured"),
                }
            }
            tracing::debug!("lag measured");
        });
    }

    fn dispatch(&self, partition: u32, offset: i64, payload: &[u8]) {
        let record = match Record::decode(payload) {
            Ok(r) => r,
            Err(e) => {
                self.metrics.decode_failures.inc();
                warn!(partition, offset, error = %e, "skipping undecodable record");
                return;
            }
        };
        let epoch = self.log_epoch.read().map(|e| e.clone()).unwrap_or_default();
        let frame = live_frame(&record, &epoch, offset);
        let d = self.hub.dispatch(partition, offset, &record, &frame);
        self.metrics.deliveries.inc_by(d.delivered as u64);
        self.metrics.overflows.inc_by(d.overflowed as u64);
        self.metrics.set_position(partition, offset);
    }

    async fn apply(&mut self, change: Ownership) {
        match change {
            Ownership::Gain(p) => {
                if let Err(e) = self.gain(p).await {
                    warn!(partition = p, error = %e, "failed to take partition; will retry on the next epoch");
                }
            }
            Ownership::Lose(p, close) => {
                self.hub.close_partition(p, |_| close.clone());
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&self.topic, p as i32);
                if let Err(e) = self.consumer.incremental_unassign(&tpl) {
                    warn!(partition = p, error = %e, "unassign failed");
                }
                info!(partition = p, "released partition");
            }
            Ownership::LoseAll(close) => {
                self.hub.close_all(|_, _| close.clone());
                if let Err(e) = self.consumer.unassign() {
                    warn!(error = %e, "unassign failed");
                }
            }
        }
    }

    /// Starts reading at the log's end: sessions of the partition may start
    /// at once, everything before `high` replayed, everything after live.
    async fn gain(&mut self, p: u32) -> Result<(), KafkaError> {
        let (consumer, topic) = (self.consumer.clone(), self.topic.clone());
        let (_, high) = tokio::task::spawn_blocking(move || {
            consumer.fetch_watermarks(&topic, p as i32, Duration::from_secs(5))
        })
        .await
        .map_err(|_| KafkaError::Canceled)??;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, p as i32, Offset::Offset(high))?;
        self.consumer.incremental_assign(&tpl)?;
        self.hub.open_partition(p, high);
        info!(partition = p, start = high, "serving partition");
        Ok(())
    }
}

/// First offset still in the log for `partition`.
pub async fn log_start(brokers: &str, topic: &str, partition: u32) -> Result<i64, KafkaError> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = consumer_config(&brokers, "switchboard-resume").create()?;
        c.fetch_watermarks(&topic, partition as i32, Duration::from_secs(5))
            .map(|(low, _)| low)
    })
    .await
    .map_err(|_| KafkaError::Canceled)?
}

/// Reads `range` of `partition` and returns the chat records for `user`.
pub async fn read_range(
    brokers: &str,
    topic: &str,
    partition: u32,
    range: std::ops::Range<i64>,
    user: &UserId,
) -> Result<Vec<(i64, Record)>, KafkaError> {
    let (brokers, topic, user) = (brokers.to_owned(), topic.to_owned(), user.clone());
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = consumer_config(&brokers, "switchboard-resume").create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, partition as i32, Offset::Offset(range.start))?;
        c.assign(&tpl)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut out = Vec::new();
        while Instant::now() < deadline {
            let Some(m) = c.poll(Duration::from_millis(100)) else {
                continue;
            };
            let m = m?;
            if m.offset() >= range.end {
                return Ok(out);
            }
            if let Ok(r) = Record::decode(m.payload().unwrap_or_default()) {
                if r.kind == protocol::Kind::Chat && r.recipients.contains(&user) {
                    out.push((m.offset(), r));
                }
            }
            if m.offset() + 1 >= range.end {
                return Ok(out);
            }
        }
        Err(KafkaError::MessageConsumption(
            rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
        ))
    })
    .await
    .map_err(|_| KafkaError::Canceled)?
}
