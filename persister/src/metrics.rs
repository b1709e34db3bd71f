use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub partition: u32,
}

#[derive(Clone)]
pub struct Metrics {
    pub records: Counter,
    pub rows: Counter,
    pub skipped_ephemeral: Counter,
    pub decode_failures: Counter,
    pub write_failures: Counter,
    pub batch_records: Histogram,
    pub transaction_seconds: Histogram,
    pub lag: Family<PartitionLabel, Gauge>,
    pub assigned_partitions: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            records: Counter::default(),
            rows: Counter::default(),
            skipped_ephemeral: Counter::default(),
            decode_failures: Counter::default(),
            write_failures: Counter::default(),
            batch_records: Histogram::new(exponential_buckets(1.0, 2.0, 18)),
            transaction_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            lag: Family::default(),
            assigned_partitions: Gauge::default(),
        }
    }
}

impl Metrics {
    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("switchboard_persister");
        r.register(
            "records",
            "Records consumed and committed",
            self.records.clone(),
        );
        r.register(
            "rows",
            "Message rows written (before de-duplication)",
            self.rows.clone(),
        );
        r.register(
            "skipped_ephemeral",
            "Ephemeral records skipped",
            self.skipped_ephemeral.clone(),
        );
        r.register(
            "decode_failures",
            "Records that could not be decoded (skipped)",
            self.decode_failures.clone(),
        );
        r.register(
            "write_failures",
            "Failed transactions (retried)",
            self.write_failures.clone(),
        );
        r.register(
            "batch_records",
            "Records per transaction",
            self.batch_records.clone(),
        );
        r.register(
            "transaction_seconds",
            "Time per batch transaction",
            self.transaction_seconds.clone(),
        );
        r.register(
            "lag",
            "Records behind the log end, per partition",
            self.lag.clone(),
        );
        r.register(
            "assigned_partitions",
            "Partitions this replica owns in the group",
            self.assigned_partitions.clone(),
        );
    }
}
