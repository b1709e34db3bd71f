//! Bounded log reads for resumes and channel recoveries.

use crate::coalesce::Coalescer;
use crate::metrics::{InProgress, RangeReads};
use protocol::record::RecordError;
use protocol::{ChannelName, ChannelRecord, Record, UserId};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use service::kafka::to_kafka;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

use crate::kafka::consumer_config;

/// Reads the log for resumes: watermarks through one long-lived client,
/// ranges through a short-lived consumer of their own. Concurrent requests
/// for one partition share one request to the broker (see `coalesce`), and
/// at most `READERS` range reads run at once.
pub struct LogReader {
    topic: String,
    channel_topic: String,
    events_topic: String,
    client: Arc<BaseConsumer>,
    marks: Arc<Coalescer<(String, u32), (), Marks>>,
    reads: Arc<Coalescer<u32, (Range<i64>, UserId), Read>>,
    readers: Arc<Readers>,
}

type Marks = Result<(i64, i64), KafkaError>;
type Read = Result<Vec<(i64, Record)>, ReadError>;

/// Why a range could not be read: the broker, or a record in it that this
/// server is too old to read past (never skipped: the reader's cursor would
/// pass a message it did not deliver).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    TooNew(#[from] crate::kafka::TooNew),
}

impl ReadError {
    /// The broker sent nothing of the range for `READ_STALL`: busy or
    /// unreachable, either way worth another try later.
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            Self::Kafka(KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::OperationTimedOut
            ))
        )
    }
}

/// A decoded record for a read: `Ok(None)` skips poison, `Err(version)`
/// stops at a record too new to read past.
fn readable<R>(decoded: Result<R, RecordError>) -> Result<Option<R>, u32> {
    match decoded {
        Ok(r) => Ok(Some(r)),
        Err(e) => e.too_new().map_or(Ok(None), Err),
    }
}

/// Range reads (each a short-lived librdkafka consumer) at once per server.
const READERS: usize = 4;

impl LogReader {
    /// `metrics` counts range reads waiting for a slot and reading, and
    /// times them.
    pub fn new(brokers: &str, topic: &str, metrics: RangeReads) -> Result<Self, KafkaError> {
        Ok(Self {
            topic: topic.to_owned(),
            channel_topic: protocol::channel_topic(topic),
            events_topic: protocol::events_topic(topic),
            client: Arc::new(consumer_config(brokers, "switchboard-resume").create()?),
            marks: Arc::default(),
            reads: Arc::default(),
            readers: Arc::new(Readers::new(brokers, metrics)),
        })
    }

    /// `(first offset still in the log, offset the next record will get)`.
    pub async fn watermarks(&self, partition: u32) -> Result<(i64, i64), KafkaError> {
        self.watermarks_of(&self.topic, partition).await
    }

    /// The same for a partition of the channel topic.
    pub async fn channel_watermarks(&self, partition: u32) -> Result<(i64, i64), KafkaError> {
        self.watermarks_of(&self.channel_topic, partition).await
    }

    /// The same for a partition of the events topic.
    pub async fn events_watermarks(&self, partition: u32) -> Result<(i64, i64), KafkaError> {
        self.watermarks_of(&self.events_topic, partition).await
    }

    async fn watermarks_of(&self, topic: &str, partition: u32) -> Marks {
        let client = self.client.clone();
        let op = move |(topic, partition): (String, u32), asked: Vec<()>| {
            let client = client.clone();
            async move {
                let marks = tokio::task::spawn_blocking(move || {
                    client.fetch_watermarks(&topic, to_kafka(partition), Duration::from_secs(5))
                })
                .await
                .unwrap_or(Err(KafkaError::Canceled));
                vec![marks; asked.len()]
            }
        };
        let key = (topic.to_owned(), partition);
        self.marks
            .call(key, (), op)
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }

    /// The chat records for `user` in `range` of `partition`, in order.
    /// Devices resuming on the same partition at once share one read of
    /// the union of their ranges.
    pub async fn read_range(&self, partition: u32, range: Range<i64>, user: &UserId) -> Read {
        let (topic, readers) = (self.topic.clone(), self.readers.clone());
        let op = move |partition: u32, asked: Vec<(Range<i64>, UserId)>| {
            let (topic, readers) = (topic.clone(), readers.clone());
            async move {
                let union = union(&asked);
                let pick = |bytes: &[u8]| {
                    readable(Record::decode(bytes))
                        .map(|r| r.filter(|r| r.kind == protocol::Kind::Chat))
                };
                match read_where(&readers, &topic, partition, union, pick).await {
                    Ok(records) => asked
                        .iter()
                        .map(|(range, user)| Ok(for_user(&records, range, user)))
                        .collect(),
                    Err(e) => vec![Err(e); asked.len()],
                }
            }
        };
        self.reads
            .call(partition, (range, user.clone()), op)
            .await
            .unwrap_or(Err(KafkaError::Canceled.into()))
    }

    /// The recoverable (chat) publications of `channel` in `range`, in order.
    pub async fn read_channel(
        &self,
        partition: u32,
        range: Range<i64>,
        channel: &ChannelName,
    ) -> Result<Vec<(i64, ChannelRecord)>, ReadError> {
        let channel = channel.clone();
        let pick = move |bytes: &[u8]| {
            readable(ChannelRecord::decode(bytes))
                .map(|r| r.filter(|r| r.recoverable() && r.channel == channel))
        };
        read_where(&self.readers, &self.channel_topic, partition, range, pick).await
    }
}

/// Consumers for range reads, kept between reads: making one per read costs
/// the broker a connection, metadata and version requests each time, which
/// in a reconnect storm is most of its work. At most `READERS` read at once.
pub(crate) struct Readers {
    brokers: String,
    idle: std::sync::Mutex<Vec<BaseConsumer>>,
    slots: Arc<Semaphore>,
    metrics: RangeReads,
}

impl Readers {
    pub(crate) fn new(brokers: &str, metrics: RangeReads) -> Self {
        Self {
            brokers: brokers.to_owned(),
            idle: std::sync::Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(READERS)),
            metrics,
        }
    }

    fn take(&self) -> Result<BaseConsumer, KafkaError> {
        let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
        match idle {
            Some(c) => Ok(c),
            None => consumer_config(&self.brokers, "switchboard-resume").create(),
        }
    }

    fn give_back(&self, c: BaseConsumer) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(c);
        }
    }
}

/// Reads `range` of `partition` and keeps what `pick` returns.
async fn read_where<T: Send + 'static>(
    readers: &Arc<Readers>,
    topic: &str,
    partition: u32,
    range: Range<i64>,
    pick: impl Fn(&[u8]) -> Result<Option<T>, u32> + Send + 'static,
) -> Result<Vec<(i64, T)>, ReadError> {
    let waiting = InProgress::of(&readers.metrics.steps, "slot_wait");
    let Ok(slot) = readers.slots.clone().acquire_owned().await else {
        return Err(KafkaError::Canceled.into());
    };
    drop(waiting);
    let (readers, topic) = (readers.clone(), topic.to_owned());
    // The slot and the count go with the read itself: a caller that stops
    // waiting does not end a blocking read, so it must not free its slot.
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let _reading = InProgress::of(&readers.metrics.steps, "reading");
        let started = Instant::now();
        let c = readers.take()?;
        let (from, span) = (range.start, range.end - range.start);
        let out = read_with(&c, &topic, partition, range, pick);
        let took = started.elapsed();
        readers.metrics.seconds.observe(took.as_secs_f64());
        readers.metrics.offsets.observe(span as f64);
        tracing::debug!(
            partition,
            from,
            span,
            kept = out.as_ref().map_or(0, Vec::len),
            took_ms = took.as_millis() as u64,
            ok = out.is_ok(),
            "log range read"
        );
        // A consumer that failed is dropped, not reused.
        if out.is_ok() && c.assign(&TopicPartitionList::new()).is_ok() {
            readers.give_back(c);
        }
        out
    })
    .await
    .map_err(|_| KafkaError::Canceled)?
}

fn read_with<T>(
    c: &BaseConsumer,
    topic: &str,
    partition: u32,
    range: Range<i64>,
    pick: impl Fn(&[u8]) -> Result<Option<T>, u32>,
) -> Result<Vec<(i64, T)>, ReadError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, to_kafka(partition), Offset::Offset(range.start))?;
    c.assign(&tpl)?;
    let wanted = Wanted {
        topic,
        partition,
        range,
    };
    read_polled(|t| c.poll(t), Instant::now, &wanted, pick)
}

/// Longest a range read waits for its next record. A slow broker that
/// keeps answering (a reconnect storm's reads queue there) is waited for;
/// one that has answered nothing for this long has failed the read.
const READ_STALL: Duration = Duration::from_secs(15);

/// What a range read keeps: records of this topic and partition in `range`.
struct Wanted<'a> {
    topic: &'a str,
    partition: u32,
    range: Range<i64>,
}

/// Polls until the end of the range, failing with `OperationTimedOut` when
/// no record of it arrives for `READ_STALL` (time from `now`).
fn read_polled<M: Message, T>(
    mut poll: impl FnMut(Duration) -> Option<Result<M, KafkaError>>,
    now: impl Fn() -> Instant,
    w: &Wanted<'_>,
    pick: impl Fn(&[u8]) -> Result<Option<T>, u32>,
) -> Result<Vec<(i64, T)>, ReadError> {
    let mut deadline = now() + READ_STALL;
    let mut out = Vec::new();
    while now() < deadline {
        let Some(m) = poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m?;
        // Never a record of an earlier read's assignment.
        if m.topic() != w.topic
            || m.partition() != to_kafka(w.partition)
            || m.offset() < w.range.start
        {
            continue;
        }
        if m.offset() >= w.range.end {
            return Ok(out);
        }
        deadline = now() + READ_STALL;
        match pick(m.payload().unwrap_or_default()) {
            Ok(Some(r)) => out.push((m.offset(), r)),
            Ok(None) => {}
            Err(version) => {
                let (partition, offset) = (w.partition, m.offset());
                return Err(crate::kafka::TooNew {
                    partition,
                    offset,
                    version,
                }
                .into());
            }
        }
        if m.offset() + 1 >= w.range.end {
            return Ok(out);
        }
    }
    Err(KafkaError::MessageConsumption(rdkafka::types::RDKafkaErrorCode::OperationTimedOut).into())
}

/// The smallest range covering every asked range.
fn union(asked: &[(Range<i64>, UserId)]) -> Range<i64> {
    let start = asked.iter().map(|(r, _)| r.start).min().unwrap_or(0);
    let end = asked.iter().map(|(r, _)| r.end).max().unwrap_or(start);
    start..end
}

/// `user`'s records of a shared read, within the range it asked for.
fn for_user(records: &[(i64, Record)], range: &Range<i64>, user: &UserId) -> Vec<(i64, Record)> {
    records
        .iter()
        .filter(|(offset, r)| range.contains(offset) && r.recipients.contains(user))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn user(s: &str) -> UserId {
        UserId::new(s).expect("valid user id")
    }

    /// A broker that answers one poll a second (on a clock of the test's
    /// own) with the next record of `partition`, or with nothing.
    struct SlowBroker {
        clock: std::cell::Cell<Instant>,
        next: std::cell::Cell<i64>,
        partition: i32,
        answers: bool,
    }

    impl SlowBroker {
        fn new(from: i64, partition: i32, answers: bool) -> Self {
            Self {
                clock: std::cell::Cell::new(Instant::now()),
                next: std::cell::Cell::new(from),
                partition,
                answers,
            }
        }

        fn poll(&self, _: Duration) -> Option<Result<rdkafka::message::OwnedMessage, KafkaError>> {
            self.clock.set(self.clock.get() + Duration::from_secs(1));
            if !self.answers {
                return None;
            }
            let offset = self.next.get();
            self.next.set(offset + 1);
            let payload = offset.to_string().into_bytes();
            let ts = rdkafka::Timestamp::NotAvailable;
            let m = rdkafka::message::OwnedMessage::new(
                Some(payload),
                None,
                "t".into(),
                ts,
                self.partition,
                offset,
                None,
            );
            Some(Ok(m))
        }

        fn read(&self, range: Range<i64>) -> Result<Vec<(i64, i64)>, ReadError> {
            let w = Wanted {
                topic: "t",
                partition: 3,
                range,
            };
            let pick = |b: &[u8]| Ok(std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()));
            read_polled(|t| self.poll(t), || self.clock.get(), &w, pick)
        }
    }

    #[test]
    fn a_range_read_waits_for_a_slow_broker_while_records_keep_coming() {
        let broker = SlowBroker::new(100, 3, true);
        let started = broker.clock.get();
        let got = broker
            .read(100..140)
            .expect("a slow read that progresses completes");
        let offsets: Vec<i64> = got.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, (100..140).collect::<Vec<_>>());
        assert!(got.iter().all(|(o, v)| o == v), "each record's own payload");
        // 40 s for the read: far past the stall limit, never past it between records.
        assert!(broker.clock.get() - started > READ_STALL * 2);
    }

    #[test]
    fn a_range_read_fails_busy_once_nothing_of_it_arrives_for_the_stall_limit() {
        for broker in [SlowBroker::new(0, 3, false), SlowBroker::new(0, 4, true)] {
            let started = broker.clock.get();
            let e = broker.read(0..10).expect_err("nothing of the range came");
            assert!(e.is_busy(), "{e}");
            let took = broker.clock.get() - started;
            assert!(
                took >= READ_STALL && took <= READ_STALL + Duration::from_secs(1),
                "{took:?}"
            );
        }
    }

    fn count(m: &RangeReads, read: &'static str) -> i64 {
        m.steps
            .get_or_create(&crate::metrics::ReadLabel { read })
            .get()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_range_read_keeps_its_slot_until_the_read_itself_ends() {
        // A "broker" that accepts and never answers: every read polls
        // until `READ_STALL`.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let broker = silent.local_addr().expect("addr").to_string();
        let steps = RangeReads::default();
        let readers = Arc::new(Readers::new(&broker, steps.clone()));
        let pick = |_: &[u8]| Ok(Some(()));
        let callers: Vec<_> = (0..READERS + 1)
            .map(|p| {
                let readers = readers.clone();
                tokio::spawn(async move { read_where(&readers, "t", p as u32, 0..1, pick).await })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while count(&steps, "reading") < READERS as i64 || count(&steps, "slot_wait") < 1 {
            assert!(Instant::now() < deadline, "reads never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            count(&steps, "reading"),
            READERS as i64,
            "never above the slots"
        );
        for caller in &callers {
            caller.abort();
        }
        for caller in callers {
            let _ = caller.await;
        }
        assert_eq!(
            count(&steps, "slot_wait"),
            0,
            "a caller gone no longer waits"
        );
        assert_eq!(
            (count(&steps, "reading"), readers.slots.available_permits()),
            (READERS as i64, 0),
            "the blocking reads go on without their callers, holding their slots"
        );
    }

    proptest! {
        #[test]
        fn a_shared_read_gives_each_device_exactly_its_range(
            ranges in proptest::collection::vec((0i64..50, 0i64..50), 1..8),
            to_alice in proptest::collection::vec(any::<bool>(), 60),
        ) {
            let asked: Vec<(Range<i64>, UserId)> = ranges
                .iter()
                .map(|(a, b)| (*a.min(b)..*a.max(b), user("alice")))
                .collect();
            let u = union(&asked);
            let records: Vec<(i64, Record)> = u
                .clone()
                .map(|o| {
                    let who = if to_alice[o as usize] { "alice" } else { "bob" };
                    (o, crate::hub::tests::record(protocol::Kind::Chat, "carol", "d", &[who]))
                })
                .collect();
            for (range, alice) in &asked {
                let mine = for_user(&records, range, alice);
                let want: Vec<i64> = range.clone().filter(|o| to_alice[*o as usize]).collect();
                let got: Vec<i64> = mine.iter().map(|(o, _)| *o).collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}
