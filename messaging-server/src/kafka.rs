//! Kafka clients of the server's consumers (the loop is
//! [`crate::consumer`]), a consumed run decoded and framed once, and the
//! user topic's sink: the hub.

use crate::consumer::Sink;
use crate::delivery::Entry;
use crate::ending::Ending;
use crate::frame::{encode, message, Text};
use crate::hub::Hub;
use crate::metrics::Metrics;
use futures_util::FutureExt;
use protocol::{Record, ServerFrame, ServerId};
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Message};
use service::etcd::AssignmentRx;
use service::kafka::from_kafka;
use std::time::Duration;
use tracing::{error, warn};

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
/// `role`: `server` (the users' topic), `channels`, `events` — each its own
/// consumer with manual `assign()` (the group id is never joined).
pub fn live_consumer(
    role: &str,
    brokers: &str,
    server_id: &ServerId,
    fetch_wait: Duration,
) -> Result<LiveStream, KafkaError> {
    let group = format!("switchboard-{role}-{server_id}");
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
    frame: fn(&R, &str, i64, bool) -> Option<protocol::ServerFrame>,
) -> Result<Option<(R, crate::frame::Text)>, TooNew> {
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
    let Some(server_frame) = frame(&record, &epoch, offset, false) else {
        return Ok(Some((record, Text::empty())));
    };
    let framed = encode(&server_frame)
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
pub type FramedRecord<R> = Entry<R, crate::frame::Text>;

/// A consumed run's records that decode, each with its (partition, offset)
/// and its frame, in the run's order — up to the first record too new to
/// read past, which ends the run (nothing of its partition after it is
/// delivered).
pub fn framed_run<R>(
    run: &[BorrowedMessage<'_>],
    assignment: &AssignmentRx,
    metrics: &Metrics,
    decode: fn(&[u8]) -> Result<R, protocol::record::RecordError>,
    frame: fn(&R, &str, i64, bool) -> Option<protocol::ServerFrame>,
) -> (Vec<FramedRecord<R>>, Option<TooNew>) {
    let mut out = Vec::with_capacity(run.len());
    for m in run {
        let at = (from_kafka(m.partition()), m.offset());
        let payload = m.payload().unwrap_or_default();
        match framed(at, payload, assignment, metrics, decode, frame) {
            Ok(Some((record, frame))) => out.push(Entry {
                partition: at.0,
                offset: at.1,
                record,
                frame,
            }),
            Ok(None) => {}
            Err(too_new) => return (out, Some(too_new)),
        }
    }
    (out, None)
}

/// The user topic's records go to the hub: each to its recipients' devices.
impl Sink for Hub {
    type Record = Record;

    fn decode(payload: &[u8]) -> Result<Record, protocol::record::RecordError> {
        Record::decode(payload)
    }

    fn frame(record: &Record, log_epoch: &str, offset: i64, replayed: bool) -> Option<ServerFrame> {
        Some(message(record, log_epoch, offset, replayed))
    }

    fn open(&self, starts: &[(u32, i64)]) {
        for (p, start) in starts {
            self.open_partition(*p, *start);
        }
    }

    fn close(&self, partition: u32, close: Ending) {
        self.close_partition(partition, |_| close.clone());
    }

    fn positions(&self) -> Vec<(u32, i64)> {
        Hub::positions(self)
    }

    fn deliver(&self, run: &[FramedRecord<Record>], metrics: &Metrics) {
        let d = self.dispatch_batch(run);
        metrics.deliveries.inc_by(d.delivered as u64);
        metrics.overflows.inc_by(d.overflowed as u64);
        for c in run {
            metrics.set_position(c.partition, c.offset);
        }
    }
}

pub use crate::log_reader::LogReader;
