//! A batch of consumed records: the rows to write (`store::RowBatch`) and
//! the counts the metrics report.

use protocol::record::TooNew;
use protocol::{ConnectionEvent, Kind, Record};
use std::time::{Duration, Instant};
use store::RowBatch;
use tracing::warn;

/// When the pending batch is written: once it holds `max_records`, or once
/// its oldest record has waited `max_age` (so a quiet topic is still
/// persisted within `max_age`).
#[derive(Debug, Clone, Copy)]
pub struct FlushPolicy {
    pub max_records: usize,
    pub max_age: Duration,
}

/// Longest one poll of the consumer blocks, so shutdown is noticed.
const MAX_POLL: Duration = Duration::from_millis(100);

impl FlushPolicy {
    /// Whether a batch of `records`, the oldest added at `oldest`, is due.
    pub fn due(&self, records: usize, oldest: Option<Instant>, now: Instant) -> bool {
        records >= self.max_records
            || oldest.is_some_and(|t| now.saturating_duration_since(t) >= self.max_age)
    }

    /// How long the next poll may wait: until the batch is due by age.
    pub fn poll_wait(&self, oldest: Option<Instant>, now: Instant) -> Duration {
        let left = oldest.map_or(self.max_age, |t| {
            self.max_age
                .saturating_sub(now.saturating_duration_since(t))
        });
        left.min(MAX_POLL)
    }
}

#[derive(Default)]
pub struct Batch {
    pub rows: RowBatch,
    pub records: usize,
    pub skipped: usize,
    pub undecodable: usize,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Adds one consumed record. A record too new for this persister is
    /// refused, not skipped: the offsets written with the rows stop before
    /// it, so a persister that understands it writes it later.
    pub fn add(&mut self, partition: u32, offset: i64, payload: &[u8]) -> Result<(), TooNew> {
        let rec = match Record::decode(payload) {
            Ok(r) => r,
            Err(e) => {
                if let Some(too_new) = e.too_new_at(partition, offset) {
                    return Err(too_new);
                }
                self.records += 1;
                self.undecodable += 1;
                warn!(partition, offset, error = %e, "skipping undecodable record");
                self.rows.skip(partition, offset);
                return Ok(());
            }
        };
        self.records += 1;
        if rec.kind == Kind::Ephemeral {
            self.skipped += 1;
            self.rows.skip(partition, offset);
            return Ok(());
        }
        if let Err(e) = self.rows.add(partition, offset, &rec) {
            self.undecodable += 1;
            warn!(partition, offset, error = %e, "skipping a record the schema cannot hold");
            self.rows.skip(partition, offset);
        }
        Ok(())
    }

    /// Adds one connection event (`<topic>.events`); like a chat record, a
    /// newer version stops the partition and an unreadable one is passed over.
    pub fn add_event(&mut self, partition: u32, offset: i64, payload: &[u8]) -> Result<(), TooNew> {
        self.records += 1;
        let written = match ConnectionEvent::decode(payload) {
            Ok(e) => self
                .rows
                .events
                .add(partition, offset, &e)
                .map_err(|e| e.to_string()),
            Err(e) => {
                if let Some(too_new) = e.too_new_at(partition, offset) {
                    self.records -= 1;
                    return Err(too_new);
                }
                Err(e.to_string())
            }
        };
        if let Err(e) = written {
            self.undecodable += 1;
            warn!(partition, offset, error = %e, "skipping an unreadable connection event");
            self.rows.events.skip(partition, offset);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_due_when_full_or_old_and_a_poll_never_outwaits_it() {
        let policy = FlushPolicy {
            max_records: 3,
            max_age: Duration::from_millis(50),
        };
        let t0 = Instant::now();
        assert!(
            !policy.due(0, None, t0 + Duration::from_secs(60)),
            "nothing pending"
        );
        assert!(!policy.due(2, Some(t0), t0 + Duration::from_millis(49)));
        assert!(policy.due(3, Some(t0), t0), "full");
        assert!(
            policy.due(1, Some(t0), t0 + Duration::from_millis(50)),
            "old"
        );
        let wait = policy.poll_wait(Some(t0), t0 + Duration::from_millis(30));
        assert_eq!(wait, Duration::from_millis(20));
        assert_eq!(
            policy.poll_wait(Some(t0), t0 + Duration::from_secs(1)),
            Duration::ZERO
        );
        assert_eq!(policy.poll_wait(None, t0), Duration::from_millis(50));
        let slow = FlushPolicy {
            max_age: Duration::from_secs(10),
            ..policy
        };
        assert_eq!(slow.poll_wait(None, t0), MAX_POLL, "shutdown is noticed");
    }

    fn ephemeral() -> Vec<u8> {
        String::from_utf8(record(1, 9))
            .unwrap()
            .replace(r#""kind":"chat""#, r#""kind":"ephemeral""#)
            .into_bytes()
    }

    #[test]
    fn ephemeral_records_write_no_row_but_move_the_offset() {
        let mut b = Batch::default();
        b.add(3, 100, &record(1, 1)).unwrap();
        b.add(3, 101, &ephemeral()).unwrap();
        b.add(4, 7, &ephemeral()).unwrap();
        assert_eq!((b.records, b.skipped, b.undecodable), (3, 2, 0));
        assert_eq!(b.rows.rows(), 1);
        assert_eq!(b.rows.next_offset(3), Some(102));
        assert_eq!(
            b.rows.next_offset(4),
            Some(8),
            "a partition of only ephemeral records still advances"
        );
    }

    fn record(v: u32, n: u32) -> Vec<u8> {
        format!(
            r#"{{"v":{v},"msg_id":"6f1c3c1e-9a57-5d8e-8f1b-0e2b7c1a2b{n:02}","kind":"chat","conversation_id":"c1","sender":"a","sender_device":"d","recipients":["b"],"body":{{}},"sent_at_ms":0}}"#
        )
        .into_bytes()
    }

    fn event(v: u32, kind: &str) -> Vec<u8> {
        format!(
            r#"{{"v":{v},"event":"{kind}","user":"bob","device":"d","session":"00000000-0000-0000-0000-000000000001","server":"ms-1","incarnation":"00000000-0000-0000-0000-000000000002","at_ms":5,"reason":"drain"}}"#
        )
        .into_bytes()
    }

    #[test]
    fn connection_events_move_their_own_topic_position() {
        let mut b = Batch::default();
        b.add(0, 4, &record(1, 1)).unwrap();
        b.add_event(0, 9, &event(1, "connected")).unwrap();
        b.add_event(0, 10, b"poison").unwrap();
        b.add_event(0, 11, &event(1, "disconnected")).unwrap();
        assert_eq!(b.rows.next_offset(0), Some(5), "the users' topic");
        assert_eq!(b.rows.events.next_offset(0), Some(12), "the events topic");
        assert_eq!((b.records, b.undecodable), (4, 1));
        let refused = b.add_event(0, 12, &event(2, "connected"));
        assert_eq!(refused.map_err(|t| t.offset), Err(12));
        assert_eq!(b.rows.events.next_offset(0), Some(12));
    }

    #[test]
    fn a_record_too_new_is_refused_and_the_offset_stops_before_it() {
        let mut b = Batch::default();
        assert!(b.add(0, 10, &record(1, 1)).is_ok());
        assert!(b.add(0, 11, b"poison").is_ok());
        let refused = b.add(0, 12, &record(2, 3));
        assert_eq!(
            refused,
            Err(TooNew {
                partition: 0,
                offset: 12,
                version: 2
            })
        );
        // Rows of 10, poison 11 passed over, and the commit stops at 12.
        assert_eq!(b.rows.rows(), 1);
        assert_eq!(b.rows.next_offset(0), Some(12));
        assert_eq!((b.records, b.undecodable), (2, 1));
    }
}
