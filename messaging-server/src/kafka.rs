//! Kafka consumers: the live consumer (manual `assign()` of
//! exactly this server's partitions) and bounded log reads for resume.

use crate::frame::{encode, message};
use crate::hub::{Consumed, Hub};
use crate::metrics::Metrics;
use futures_util::FutureExt;
use protocol::{Record, ServerId};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use service::etcd::AssignmentRx;
use service::kafka::{from_kafka, to_kafka};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Most consumed records handed to the hub under one lock.
const MAX_RUN: usize = 512;

/// `first` and the records already waiting behind it (at most
/// [`MAX_RUN`]): dispatched together, a burst wakes each session once.
pub fn ready_run<'c>(
    consumer: &'c StreamConsumer,
    first: BorrowedMessage<'c>,
) -> Vec<BorrowedMessage<'c>> {
    let mut run = vec![first];
    while run.len() < MAX_RUN {
        match consumer.recv().now_or_never() {
            Some(Ok(m)) => run.push(m),
            Some(Err(e)) => {
                warn!(error = %e, "consume failed");
                break;
            }
            None => break,
        }
    }
    run
}

/// Resume reads wait briefly: they want what is there, now.
const RESUME_FETCH_WAIT: Duration = Duration::from_millis(5);

pub(crate) fn consumer_config(brokers: &str, group: &str) -> ClientConfig {
    service::kafka::consumer_config(brokers, group, RESUME_FETCH_WAIT)
}

pub type LiveStream = StreamConsumer;

/// `fetch_wait`: how long the broker may hold an empty fetch. Kafka answers
/// it as soon as a record arrives, so a long wait costs no latency there and
/// saves idle polling; nisshi re-reads at half the remaining wait, so there
/// it trades latency for broker CPU (docs/benchmarks.md, "Fetch wait on
/// nisshi").
pub fn live_consumer(
    brokers: &str,
    server_id: &ServerId,
    fetch_wait: Duration,
) -> Result<LiveStream, KafkaError> {
    let group = format!("switchboard-server-{server_id}");
    service::kafka::consumer_config(brokers, &group, fetch_wait).create()
}

/// The consumer of the channel topic (every partition, manual `assign()`).
pub fn channel_consumer(
    brokers: &str,
    server_id: &ServerId,
    fetch_wait: Duration,
) -> Result<LiveStream, KafkaError> {
    let group = format!("switchboard-channels-{server_id}");
    service::kafka::consumer_config(brokers, &group, fetch_wait).create()
}

pub use protocol::record::TooNew;

/// A consumed record, decoded and serialised once for every device it goes
/// to (cursor epoch from the partition map); `None`, counted and logged, if
/// it cannot be (poison); `Err` if it is too new to read past.
pub fn framed<R>(
    (partition, offset): (u32, i64),
    payload: &[u8],
    assignment: &AssignmentRx,
    metrics: &Metrics,
    decode: fn(&[u8]) -> Result<R, protocol::record::RecordError>,
    frame: fn(&R, &str, i64, bool) -> protocol::ServerFrame,
) -> Result<Option<(R, axum::extract::ws::Utf8Bytes)>, TooNew> {
    let record = match decode(payload) {
        Ok(r) => r,
        Err(e) => {
            if let Some(too_new) = e.too_new_at(partition, offset) {
                return Err(too_new);
            }
            metrics.decode_failures.inc();
            warn!(partition, offset, error = %e, "skipping undecodable record");
            return Ok(None);
        }
    };
    let epoch = assignment
        .borrow()
        .as_ref()
        .map(|a| a.log_epoch.clone())
        .unwrap_or_default();
    let framed = encode(&frame(&record, &epoch, offset, false))
        .map_err(|e| {
            metrics.decode_failures.inc();
            warn!(partition, offset, error = %e, "skipping a record that cannot be framed");
        })
        .ok();
    Ok(framed.map(|f| (record, f)))
}

/// A consumer (user or channel partitions) met a record too new for this
/// server: it ends, and as a supervised task that drains and stops the
/// server — its partitions go to servers that can read on, and no cursor
/// passes the record meanwhile.
pub fn stop_at(too_new: &TooNew, metrics: &Metrics) {
    error!(error = %too_new, "a record too new for this server; stopping");
    metrics.too_new_records.inc();
}

/// A decoded record at its (partition, offset), with its frame.
pub type FramedRecord<R> = ((u32, i64), R, axum::extract::ws::Utf8Bytes);

/// A consumed run's records that decode, each with its (partition, offset)
/// and its frame, in the run's order — up to the first record too new to
/// read past, which ends the run (nothing of its partition after it is
/// delivered).
pub fn framed_run<R>(
    run: &[BorrowedMessage<'_>],
    assignment: &AssignmentRx,
    metrics: &Metrics,
    decode: fn(&[u8]) -> Result<R, protocol::record::RecordError>,
    frame: fn(&R, &str, i64, bool) -> protocol::ServerFrame,
) -> (Vec<FramedRecord<R>>, Option<TooNew>) {
    let mut out = Vec::with_capacity(run.len());
    for m in run {
        let at = (from_kafka(m.partition()), m.offset());
        let payload = m.payload().unwrap_or_default();
        match framed(at, payload, assignment, metrics, decode, frame) {
            Ok(Some((record, framed))) => out.push((at, record, framed)),
            Ok(None) => {}
            Err(too_new) => return (out, Some(too_new)),
        }
    }
    (out, None)
}

/// Partition changes for the consumer task, from the ownership watcher.
#[derive(Debug)]
pub enum Ownership {
    Gain(u32),
    Lose(u32, crate::hub::Close),
}

pub struct LiveConsumer {
    pub consumer: Arc<LiveStream>,
    pub topic: String,
    pub hub: Arc<Hub>,
    pub metrics: Metrics,
    /// The partition map; its log epoch goes into every cursor.
    pub assignment: AssignmentRx,
}

impl LiveConsumer {
    pub async fn run(mut self, mut ctrl: mpsc::Receiver<Ownership>, cancel: CancellationToken) {
        let mut lag_tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                m = self.consumer.recv() => match m {
                    Ok(msg) => if let Some(too_new) = self.dispatch(&ready_run(&self.consumer, msg)) {
                        return stop_at(&too_new, &self.metrics);
                    },
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
                match consumer.fetch_watermarks(&topic, to_kafka(p), Duration::from_secs(2)) {
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

    /// Delivers what `run` holds up to a record too new to read past.
    fn dispatch(&self, run: &[BorrowedMessage<'_>]) -> Option<TooNew> {
        let (framed, too_new) = framed_run(
            run,
            &self.assignment,
            &self.metrics,
            Record::decode,
            message,
        );
        let batch: Vec<Consumed<'_>> = framed
            .iter()
            .map(|((partition, offset), record, frame)| Consumed {
                partition: *partition,
                offset: *offset,
                record,
                frame,
            })
            .collect();
        let d = self.hub.dispatch_batch(&batch);
        self.metrics.deliveries.inc_by(d.delivered as u64);
        self.metrics.overflows.inc_by(d.overflowed as u64);
        for c in &batch {
            self.metrics.set_position(c.partition, c.offset);
        }
        too_new
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
                tpl.add_partition(&self.topic, to_kafka(p));
                if let Err(e) = self.consumer.incremental_unassign(&tpl) {
                    warn!(partition = p, error = %e, "unassign failed");
                }
                info!(partition = p, "released partition");
            }
        }
    }

    /// Starts reading at the log's end: sessions of the partition may start
    /// at once, everything before `high` replayed, everything after live.
    async fn gain(&mut self, p: u32) -> Result<(), KafkaError> {
        let (consumer, topic) = (self.consumer.clone(), self.topic.clone());
        let (_, high) = tokio::task::spawn_blocking(move || {
            consumer.fetch_watermarks(&topic, to_kafka(p), Duration::from_secs(5))
        })
        .await
        .map_err(|_| KafkaError::Canceled)??;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, to_kafka(p), Offset::Offset(high))?;
        self.consumer.incremental_assign(&tpl)?;
        self.hub.open_partition(p, high);
        info!(partition = p, start = high, "serving partition");
        Ok(())
    }
}

pub use crate::log_reader::LogReader;
