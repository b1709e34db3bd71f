//! The consumer-group loop. It runs on its own thread: rebalance callbacks
//! fire inside `poll`, and they must block to write the pending batch (on
//! revoke) and to read the stored offsets (on assign) before anything else
//! is consumed.

use crate::batch::{Batch, FlushPolicy};
use crate::metrics::{Metrics, PartitionLabel};
use crate::Config;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use store::{Store, StoreError};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub struct Ctx {
    pub store: Store,
    pub topic: String,
    pub handle: Handle,
    pub metrics: Metrics,
    pub cancel: CancellationToken,
    pub pending: Mutex<Batch>,
    /// Test-only fault hook (`Faults::fail("consumer")` panics the loop).
    pub faults: service::supervise::Faults,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let events = protocol::events_topic(&self.topic);
                let mut count = 0;
                for topic in [&self.topic, &events] {
                    let parts: Vec<u32> = tpl
                        .elements_for_topic(topic)
                        .iter()
                        .map(|e| service::kafka::from_kafka(e.partition()))
                        .collect();
                    let offsets = self.retry("read stored offsets", || {
                        self.store.stored_offsets(topic, &parts)
                    });
                    for (p, next) in offsets.unwrap_or_default() {
                        let p = service::kafka::to_kafka(p);
                        let _ = tpl.set_partition_offset(topic, p, Offset::Offset(next));
                    }
                    info!(%topic, partitions = ?parts, "assigned; resuming from the offsets stored in PostgreSQL");
                    if *topic == self.topic {
                        count = parts.len();
                    }
                }
                self.metrics.assigned_partitions.set(count as i64);
                if let Err(e) = consumer.assign(tpl) {
                    warn!(error = %e, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.flush();
                self.metrics.assigned_partitions.set(0);
                if let Err(e) = consumer.unassign() {
                    warn!(error = %e, "unassign failed");
                }
            }
            other => warn!(error = ?other, "rebalance error"),
        }
    }

    fn pre_rebalance(&self, _: &BaseConsumer<Self>, _: &Rebalance<'_>) {}
}

impl Ctx {
    /// Retries `op` with backoff until it works or shutdown: an outage
    /// stalls consumption (back-pressure) instead of losing anything.
    fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.handle.block_on(op()) {
                Ok(v) => return Some(v),
                Err(e) => {
                    self.metrics.write_failures.inc();
                    warn!(error = %e, retry_in = ?delay, "failed to {what}; PostgreSQL unavailable?");
                }
            }
            if self.cancel.is_cancelled() {
                return None;
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Writes the pending batch (rows and offsets in one transaction).
    pub fn flush(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.is_empty() {
            return;
        }
        let started = Instant::now();
        if self
            .retry("write a batch", || {
                self.store.write_batch(&self.topic, &pending.rows)
            })
            .is_none()
        {
            return;
        }
        let m = &self.metrics;
        m.transaction_seconds
            .observe(started.elapsed().as_secs_f64());
        m.batch_records.observe(pending.records as f64);
        m.records.inc_by(pending.records as u64);
        m.rows.inc_by(pending.rows.rows() as u64);
        m.skipped_ephemeral.inc_by(pending.skipped as u64);
        m.decode_failures.inc_by(pending.undecodable as u64);
        *pending = Batch::default();
    }
}

/// How long the broker may hold an empty fetch. The persister writes in
/// batches and nobody waits on it (resume reads the log past what it has
/// written), so it does not pay for low latency: a broker that polls its
/// storage for a waiting fetch (nisshi: a read of every partition at half
/// the remaining wait, again and again) spends CPU in proportion to the
/// number of waits (docs/benchmarks.md, "Fetch wait on nisshi").
const FETCH_WAIT: Duration = Duration::from_millis(100);

pub fn create(config: &Config, group: &str, ctx: Ctx) -> KafkaResult<BaseConsumer<Ctx>> {
    let consumer: BaseConsumer<Ctx> =
        service::kafka::consumer_config(&config.kafka.brokers, group, FETCH_WAIT)
            .set("session.timeout.ms", "10000")
            .create_with_context(ctx)?;
    let events = protocol::events_topic(&config.kafka.topic);
    let topics = [config.kafka.topic.as_str(), events.as_str()];
    wait_for_topics(&consumer, &topics);
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// Waits (until cancelled) for `topics` to exist: a group subscribed to a
/// topic the broker does not have yet would only see it at librdkafka's
/// next metadata refresh, minutes later (the coordinator leader creates
/// them, maybe after we start).
fn wait_for_topics(consumer: &BaseConsumer<Ctx>, topics: &[&str]) {
    let mut delay = Duration::from_millis(100);
    let exists = |t: &str| {
        consumer
            .fetch_metadata(Some(t), Duration::from_secs(2))
            .is_ok_and(|md| {
                md.topics()
                    .iter()
                    .any(|m| m.error().is_none() && !m.partitions().is_empty())
            })
    };
    while !consumer.context().cancel.is_cancelled() {
        let missing: Vec<&str> = topics.iter().copied().filter(|t| !exists(t)).collect();
        if missing.is_empty() {
            return;
        }
        info!(?missing, "waiting for the topics to be created");
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Why consuming ended before shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error(transparent)]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    TooNew(#[from] protocol::record::TooNew),
}

/// Consumes until cancelled, writing a batch when it is full or old
/// enough. A consumer librdkafka refuses to create ends it (and the process).
pub fn run_until_cancelled(ctx: Ctx, config: &Config) -> Result<(), ConsumeError> {
    let group = &config.group_id;
    info!(%group, "joining the consumer group");
    let cancel = ctx.cancel.clone();
    let consumer = create(config, group, ctx).inspect_err(|_| cancel.cancel())?;
    let ctx = consumer.context();
    let policy = FlushPolicy {
        max_records: config.batch_max,
        max_age: config.batch_wait,
    };
    let mut oldest: Option<Instant> = None;
    let mut lag_checked = Instant::now();
    while !ctx.cancel.is_cancelled() {
        if ctx.faults.failed("consumer") {
            panic!("injected fault in task consumer");
        }
        match consumer.poll(policy.poll_wait(oldest, Instant::now())) {
            Some(Ok(m)) => {
                let mut pending = ctx.pending.lock().unwrap_or_else(|e| e.into_inner());
                let partition = service::kafka::from_kafka(m.partition());
                let payload = m.payload().unwrap_or_default();
                let added = if m.topic() == ctx.topic {
                    pending.add(partition, m.offset(), payload)
                } else {
                    pending.add_event(partition, m.offset(), payload)
                };
                drop(pending);
                if let Err(too_new) = added {
                    // What came before it is written; then the consumer
                    // stops (and the process, supervised, exits non-zero)
                    // rather than commit an offset past it.
                    error!(error = %too_new, "a record too new for this persister; stopping");
                    ctx.flush();
                    return Err(ConsumeError::TooNew(too_new));
                }
                oldest.get_or_insert_with(Instant::now);
            }
            Some(Err(e)) => warn!(error = %e, "consume failed"),
            None => {}
        }
        let records = ctx.pending.lock().map_or(0, |p| p.records);
        if policy.due(records, oldest, Instant::now()) {
            ctx.flush();
            oldest = None;
        }
        if lag_checked.elapsed() > Duration::from_secs(5) {
            report_lag(&consumer, &high_watermarks(&consumer, &config.kafka.topic));
            lag_checked = Instant::now();
        }
    }
    ctx.flush();
    Ok(())
}

/// High watermark of every partition of the topic, fetched once per check
/// for the lag metric (never for what is written).
fn high_watermarks(consumer: &BaseConsumer<Ctx>, topic: &str) -> BTreeMap<i32, i64> {
    let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(1)) else {
        return BTreeMap::new();
    };
    md.topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .filter_map(|p| {
            let (_, h) = consumer
                .fetch_watermarks(topic, p, Duration::from_millis(500))
                .ok()?;
            Some((p, h))
        })
        .collect()
}

/// Lag of this replica's partitions, for the dashboards.
fn report_lag(consumer: &BaseConsumer<Ctx>, high: &BTreeMap<i32, i64>) {
    let Ok(positions) = consumer.position() else {
        return;
    };
    let metrics = &consumer.context().metrics;
    for e in positions.elements() {
        let (Offset::Offset(pos), Some(h)) = (e.offset(), high.get(&e.partition())) else {
            continue;
        };
        metrics
            .lag
            .get_or_create(&PartitionLabel {
                partition: service::kafka::from_kafka(e.partition()),
            })
            .set((h - pos).max(0));
    }
}
