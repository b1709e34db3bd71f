//! A batch of consumed records: the rows to write (`store::RowBatch`) and
//! the counts the metrics report.

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

    pub fn add(&mut self, partition: u32, offset: i64, payload: &[u8]) {
        self.records += 1;
        let rec = match Record::decode(payload) {
            Ok(r) => r,
            Err(e) => {
                self.undecodable += 1;
                warn!(partition, offset, error = %e, "skipping undecodable record");
                self.rows.skip(partition, offset);
                return;
            }
        };
        if rec.kind == Kind::Ephemeral {
            self.skipped += 1;
            self.rows.skip(partition, offset);
            return;
        }
        if let Err(e) = self.rows.add(partition, offset, &rec) {
            self.undecodable += 1;
            warn!(partition, offset, error = %e, "skipping a record the schema cannot hold");
            self.rows.skip(partition, offset);
        }
    }
}
