//! A librdkafka producer served by its own polling thread.
//!
//! rdkafka's `FutureProducer` polls every 100 ms, and its poll turns the
//! last sub-millisecond of each wait into a zero-millisecond wait, so it
//! spins through that millisecond: about 1% of a core per idle server
//! (docs/benchmarks.md, "Fan-out vs NATS"). This thread waits a second at a
//! time instead — a delivery report still wakes it at once — and answers
//! each record's acknowledgement through a oneshot channel.

use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryResult, ProducerContext};
use rdkafka::ClientConfig;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, Notify};
use tracing::{error, warn};

/// How long one poll may wait for an event; it bounds how long a dropped
/// producer's thread lives on.
const POLL_WAIT: Duration = Duration::from_secs(1);

/// One record's acknowledgement (acks=all) or why it failed.
pub type Delivery = oneshot::Receiver<Result<(), KafkaError>>;

/// Delivery reports to their waiting sends; fatal errors to the supervisor.
pub struct Context {
    wake: Arc<Notify>,
}

impl rdkafka::ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        if super::is_fatal(&error) {
            error!(%error, reason, "kafka producer hit a fatal error");
            self.wake.notify_one();
        } else {
            warn!(%error, reason, "kafka producer error");
        }
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = Box<oneshot::Sender<Result<(), KafkaError>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: Self::DeliveryOpaque) {
        // The send may have given up waiting; nobody to tell then.
        let _ = ack.send(result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone()));
    }
}

pub type Base = BaseProducer<Context>;

/// The producer and its polling thread; dropping it stops the thread, which
/// then drops the producer (a purge and a flush of up to 500 ms) off the
/// async runtime.
pub struct Polled {
    producer: Arc<Base>,
    stop: Arc<AtomicBool>,
}

impl Polled {
    /// `wake` is notified when librdkafka reports a fatal error.
    pub fn create(config: &ClientConfig, wake: Arc<Notify>) -> Result<Self, KafkaError> {
        let producer: Arc<Base> = Arc::new(config.create_with_context(Context { wake })?);
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (producer.clone(), stop.clone());
        std::thread::Builder::new()
            .name("kafka-producer-poll".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    p.poll(POLL_WAIT);
                }
            })
            .map_err(|e| KafkaError::ClientCreation(format!("no polling thread: {e}")))?;
        Ok(Self { producer, stop })
    }

    pub fn producer(&self) -> &Base {
        &self.producer
    }

    /// A record's opaque and the receiver of its acknowledgement.
    pub fn delivery() -> (Box<oneshot::Sender<Result<(), KafkaError>>>, Delivery) {
        let (tx, rx) = oneshot::channel();
        (Box::new(tx), rx)
    }
}

impl Drop for Polled {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
