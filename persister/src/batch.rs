//! A batch of consumed records: the rows to write (`store::RowBatch`) and
//! the counts the metrics report.

use protocol::record::TooNew;
use protocol::{Kind, Record};
use store::RowBatch;
use tracing::warn;

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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(v: u32, n: u32) -> Vec<u8> {
        format!(
            r#"{{"v":{v},"msg_id":"6f1c3c1e-9a57-5d8e-8f1b-0e2b7c1a2b{n:02}","kind":"chat","conversation_id":"c1","sender":"a","sender_device":"d","recipients":["b"],"body":{{}},"sent_at_ms":0}}"#
        )
        .into_bytes()
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
