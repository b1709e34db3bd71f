//! The Kafka producer behind a supervisor: a fatal idempotent-producer error
//! (fencing, unknown producer id, out-of-order sequence) leaves a librdkafka
//! producer unusable for good, so it is detected, logged, and replaced by a
//! new one while sends answer `unavailable`. Produce work in flight is
//! bounded so an overloaded broker is met with early refusals, not with
//! sends queued until librdkafka's message timeout.

use crate::metrics::Metrics;
use polled::{Delivery, Polled};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How often the supervisor looks for a fatal error it was not told about.
const CHECK_EVERY: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why a record could not be handed to Kafka.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("server overloaded: {in_flight} records already waiting for the broker")]
    Overloaded { in_flight: usize },
    #[error("kafka producer is being replaced after a fatal error")]
    Restarting,
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

mod polled;

pub type KafkaProducer = Polled;

fn is_fatal(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal)
}

/// Settings for every producer the supervisor builds.
#[derive(Clone, Debug)]
pub struct ProducerSettings {
    pub brokers: String,
    /// Extra librdkafka settings, `key=value`.
    pub extra: Vec<String>,
    /// Records handed to the producer and not yet acknowledged, at most.
    pub max_in_flight: usize,
}

impl ProducerSettings {
    fn build(&self, wake: &Arc<Notify>) -> Result<KafkaProducer, KafkaError> {
        let mut c = ClientConfig::new();
        // linger.ms stays librdkafka's default (5 ms): a broker's cost is
        // mostly per produce request, so batching is what lets it keep up
        // (docs/benchmarks.md, "Choosing the broker").
        c.set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "10000")
            // Small produce requests must not wait for Nagle's algorithm
            // (up to a delayed-ACK period, 40 ms on Linux) on the way out.
            .set("socket.nagle.disable", "true");
        for (k, v) in self.extra.iter().filter_map(|kv| kv.split_once('=')) {
            c.set(k.trim(), v.trim());
        }
        Polled::create(&c, wake.clone())
    }
}

/// The one producer of a messaging server, replaced when it turns fatal.
pub struct Producers {
    settings: ProducerSettings,
    current: RwLock<Arc<KafkaProducer>>,
    healthy: tokio::sync::watch::Sender<bool>,
    wake: Arc<Notify>,
    in_flight: Arc<Semaphore>,
    metrics: Metrics,
}

/// Acks of one send's records; the in-flight permits are released with it.
pub struct Acks {
    acks: Vec<Delivery>,
    _permits: OwnedSemaphorePermit,
    gauge: prometheus_client::metrics::gauge::Gauge,
    count: i64,
}

impl Drop for Acks {
    fn drop(&mut self) {
        self.gauge.dec_by(self.count);
    }
}

impl Acks {
    /// Waits for every record's acknowledgement (acks=all).
    pub async fn wait(mut self) -> Result<(), KafkaError> {
        for ack in std::mem::take(&mut self.acks) {
            match ack.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(KafkaError::Canceled),
            }
        }
        Ok(())
    }
}

impl Producers {
    pub fn new(settings: ProducerSettings, metrics: Metrics) -> Result<Self, KafkaError> {
        let wake = Arc::new(Notify::new());
        let first = settings.build(&wake)?;
        metrics.producer_ready.set(1);
        Ok(Self {
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight)),
            settings,
            current: RwLock::new(Arc::new(first)),
            healthy: tokio::sync::watch::Sender::new(true),
            wake,
            metrics,
        })
    }

    /// False from a fatal error until its replacement exists.
    pub fn is_healthy(&self) -> bool {
        *self.healthy.borrow()
    }

    /// Sees every change of [`Producers::is_healthy`].
    pub fn health(&self) -> tokio::sync::watch::Receiver<bool> {
        self.healthy.subscribe()
    }

    fn current(&self) -> Arc<KafkaProducer> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Hands `records` (partition, key, payload) to the producer now, in
    /// order, or refuses all of them.
    pub fn enqueue(
        &self,
        topic: &str,
        records: &[(u32, String, Vec<u8>)],
    ) -> Result<Acks, ProduceError> {
        if !self.is_healthy() {
            return Err(ProduceError::Restarting);
        }
        let n = u32::try_from(records.len()).unwrap_or(u32::MAX);
        let permits = self
            .in_flight
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| ProduceError::Overloaded {
                in_flight: self.settings.max_in_flight - self.in_flight.available_permits(),
            })?;
        // The guard, not a clone: a clone could outlive a swap and make a
        // runtime thread pay for dropping the old producer.
        let producer = self.current.read().unwrap_or_else(|e| e.into_inner());
        let mut acks = Vec::with_capacity(records.len());
        for (partition, key, payload) in records {
            let (opaque, ack) = Polled::delivery();
            let rec = BaseRecord::with_opaque_to(topic, opaque)
                .partition(service::kafka::to_kafka(*partition))
                .key(key)
                .payload(payload);
            match producer.producer().send(rec) {
                Ok(()) => acks.push(ack),
                Err((e, _)) => {
                    if is_fatal(&e) {
                        self.wake.notify_one();
                    }
                    return Err(e.into());
                }
            }
        }
        let gauge = self.metrics.produce_in_flight.clone();
        let count = acks.len() as i64;
        gauge.inc_by(count);
        Ok(Acks {
            acks,
            _permits: permits,
            gauge,
            count,
        })
    }

    /// Tells the supervisor a send failed; it checks for a fatal state.
    pub fn report(&self, e: &KafkaError) {
        if e.rdkafka_error_code().is_some_and(is_fatal_cause) {
            self.wake.notify_one();
        }
    }

    /// Waits for what was produced to be acknowledged, up to `timeout`.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let p = self.current();
        tokio::task::spawn_blocking(move || p.producer().flush(timeout))
            .await
            .map_err(|_| KafkaError::Canceled)?
    }

    /// Replaces the producer whenever it reports a fatal error, until `stop`.
    pub async fn supervise(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(CHECK_EVERY) => {}
                _ = stop.cancelled() => return,
            }
            let fatal = self.current().producer().client().fatal_error();
            if let Some((code, reason)) = fatal {
                self.replace(code, reason, &stop).await;
            }
        }
    }

    async fn replace(&self, code: RDKafkaErrorCode, reason: String, stop: &CancellationToken) {
        error!(?code, %reason, "kafka producer is unusable; answering sends `unavailable` and building a new one");
        self.healthy.send_replace(false);
        self.metrics.producer_ready.set(0);
        let mut backoff = Duration::from_millis(100);
        let fresh = loop {
            match self.settings.build(&self.wake) {
                Ok(p) => break p,
                Err(e) => warn!(error = %e, "failed to build a new kafka producer; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        };
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|e| e.into_inner()),
            Arc::new(fresh),
        );
        // Dropping a producer purges and flushes for up to 500 ms: not on a
        // runtime thread. Its unacknowledged sends fail and answer `unavailable`.
        tokio::task::spawn_blocking(move || drop(old));
        self.metrics.producer_restarts.inc();
        self.metrics.producer_ready.set(1);
        self.healthy.send_replace(true);
        info!("kafka producer replaced; sends resume");
    }
}

/// Delivery errors that librdkafka turns into a fatal state for an
/// idempotent producer.
fn is_fatal_cause(c: RDKafkaErrorCode) -> bool {
    matches!(
        c,
        RDKafkaErrorCode::Fatal
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::UnknownProducerId
            | RDKafkaErrorCode::OutOfOrderSequenceNumber
            | RDKafkaErrorCode::InvalidProducerIdMapping
    )
}

#[cfg(test)]
mod tests;
