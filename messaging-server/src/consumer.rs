//! The consumer loop both topics use: manual `assign()` of partitions at
//! the log's end, runs of ready records decoded and framed once, handed to
//! a [`Sink`] (the hub for user partitions, the channel hub for channels).

use crate::ending::Ending;
use crate::kafka::{framed_run, ready_run, stop_at, FramedRecord, LiveStream, TooNew};
use crate::metrics::{Metrics, PartitionLabel, Stage};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use protocol::record::RecordError;
use protocol::ServerFrame;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use service::etcd::AssignmentRx;
use service::kafka::to_kafka;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Where a consumer's records go.
pub trait Sink: Send + Sync + 'static {
    type Record;
    /// Whether its records are messages whose way through the server the
    /// stage histograms time (not the connection events).
    const TIMED: bool = true;
    fn decode(payload: &[u8]) -> Result<Self::Record, RecordError>;
    /// The frame a device gets (`replayed` false: live); `None` for a sink
    /// that sends no record as it is (presence sends states it derives).
    fn frame(
        record: &Self::Record,
        log_epoch: &str,
        offset: i64,
        replayed: bool,
    ) -> Option<ServerFrame>;
    /// Partitions start being delivered at these offsets, all at once.
    fn open(&self, starts: &[(u32, i64)]);
    /// `partition` is no longer served; its subscribers end with `close`.
    fn close(&self, partition: u32, close: Ending);
    /// Served partitions and the next offset of each.
    fn positions(&self) -> Vec<(u32, i64)>;
    /// Delivers a decoded run (in log order) and counts it.
    fn deliver(&self, run: &[FramedRecord<Self::Record>], metrics: &Metrics);
}

/// Partition changes for a consumer, from the ownership watcher.
#[derive(Debug)]
pub enum Ownership {
    Gain(u32),
    Lose(u32, Ending),
}

pub struct LogConsumer<S> {
    pub consumer: Arc<LiveStream>,
    pub topic: String,
    pub sink: Arc<S>,
    pub metrics: Metrics,
    /// The partition map; its log epoch goes into every cursor.
    pub assignment: AssignmentRx,
    /// Where to report lag (dashboards only), if anywhere.
    pub lag: Option<Family<PartitionLabel, Gauge>>,
}

impl<S: Sink> LogConsumer<S> {
    /// Consumes until cancelled, the ownership channel closes, or a record
    /// too new for this server stops it.
    pub async fn run(self, mut ctrl: mpsc::Receiver<Ownership>, cancel: CancellationToken) {
        let mut lag_tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                m = self.consumer.recv() => match m {
                    Ok(msg) => if let Some(too_new) = self.dispatch(&ready_run(&self.consumer, msg)) {
                        return stop_at(&too_new, &self.metrics);
                    },
                    Err(e) => {
                        warn!(topic = %self.topic, error = %e, "consume failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = lag_tick.tick(), if self.lag.is_some() => self.report_lag(),
                c = ctrl.recv() => match c {
                    Some(c) => self.apply(c).await,
                    None => return,
                },
                _ = cancel.cancelled() => return,
            }
        }
    }

    /// Delivers what `run` holds up to a record too new to read past.
    fn dispatch(&self, run: &[rdkafka::message::BorrowedMessage<'_>]) -> Option<TooNew> {
        let consumed = (std::time::Instant::now(), std::time::SystemTime::now());
        let (framed, too_new) =
            framed_run(run, &self.assignment, &self.metrics, S::decode, S::frame);
        self.sink.deliver(&framed, &self.metrics);
        if S::TIMED {
            self.time(run, consumed);
        }
        too_new
    }

    /// The broker's share (its records' timestamps to now, as the producer
    /// stamped them) and the time from consuming the run to every frame queued.
    fn time(
        &self,
        run: &[rdkafka::message::BorrowedMessage<'_>],
        consumed: (std::time::Instant, std::time::SystemTime),
    ) {
        use rdkafka::Message;
        let queued = consumed.0.elapsed().as_secs_f64();
        let now_ms = consumed
            .1
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        // Looked up once per run, not per record: this runs for every record.
        let (broker, queue) = (
            self.metrics.stage_histogram(Stage::Broker),
            self.metrics.stage_histogram(Stage::Queued),
        );
        self.metrics.run_records.observe(run.len() as f64);
        for m in run {
            if let Some(produced) = m.timestamp().to_millis() {
                broker.observe((now_ms - produced).max(0) as f64 / 1000.0);
            }
            queue.observe(queued);
        }
    }

    async fn apply(&self, change: Ownership) {
        match change {
            Ownership::Gain(p) => {
                if let Err(e) = self.gain(&[p]).await {
                    warn!(partition = p, error = %e, "failed to take partition; will retry on the next epoch");
                }
            }
            Ownership::Lose(p, close) => {
                self.sink.close(p, close);
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&self.topic, to_kafka(p));
                if let Err(e) = self.consumer.incremental_unassign(&tpl) {
                    warn!(partition = p, error = %e, "unassign failed");
                }
                info!(topic = %self.topic, partition = p, "released partition");
            }
        }
    }

    /// Starts reading `partitions` at the log's end: their subscribers may
    /// start at once, everything before the end replayed, everything after
    /// live. The broker's high watermark decides only where reading starts.
    pub async fn gain(&self, partitions: &[u32]) -> Result<(), KafkaError> {
        let (consumer, topic, ps) = (
            self.consumer.clone(),
            self.topic.clone(),
            partitions.to_vec(),
        );
        let starts = tokio::task::spawn_blocking(move || {
            ps.into_iter()
                .map(|p| {
                    let (_, high) =
                        consumer.fetch_watermarks(&topic, to_kafka(p), Duration::from_secs(5))?;
                    Ok((p, high))
                })
                .collect::<Result<Vec<_>, KafkaError>>()
        })
        .await
        .map_err(|_| KafkaError::Canceled)??;
        self.gain_at(starts)
    }

    /// Starts reading each partition at its given offset.
    pub fn gain_at(&self, starts: Vec<(u32, i64)>) -> Result<(), KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for (p, high) in &starts {
            tpl.add_partition_offset(&self.topic, to_kafka(*p), Offset::Offset(*high))?;
        }
        self.consumer.incremental_assign(&tpl)?;
        self.sink.open(&starts);
        for (p, start) in starts {
            info!(topic = %self.topic, partition = p, start, "serving partition");
        }
        Ok(())
    }

    /// The topic's partition count, from the broker's metadata.
    pub async fn partition_count(&self) -> Result<u32, KafkaError> {
        let (consumer, topic) = (self.consumer.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || {
            let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(5))?;
            let n = md.topics().first().map_or(0, |t| t.partitions().len());
            match u32::try_from(n) {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(KafkaError::MetadataFetch(
                    rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
                )),
            }
        })
        .await
        .map_err(|_| KafkaError::Canceled)?
    }

    fn report_lag(&self) {
        let Some(lag) = self.lag.clone() else {
            return;
        };
        let (consumer, topic) = (self.consumer.clone(), self.topic.clone());
        let positions = self.sink.positions();
        tokio::task::spawn_blocking(move || {
            lag.clear();
            for (p, next) in positions {
                match consumer.fetch_watermarks(&topic, to_kafka(p), Duration::from_secs(2)) {
                    Ok((_, high)) => {
                        let label = PartitionLabel { partition: p };
                        lag.get_or_create(&label).set((high - next).max(0));
                    }
                    Err(e) => tracing::debug!(partition = p, error = %e, "lag not measured"),
                }
            }
        });
    }
}
