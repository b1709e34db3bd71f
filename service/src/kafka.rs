//! librdkafka consumer settings, spelled once for the messaging server's
//! live and resume consumers and the persister's group consumer.

use rdkafka::ClientConfig;
use std::time::Duration;

/// A consumer that never commits offsets to Kafka: the messaging server
/// positions itself from watermarks, the persister from PostgreSQL.
pub fn consumer_config(brokers: &str, group: &str, fetch_wait: Duration) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        // assign() needs a group id even though nothing is committed.
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", fetch_wait.as_millis().to_string())
        .set("enable.partition.eof", "false")
        // Fetch requests leave at once instead of waiting on Nagle's algorithm.
        .set("socket.nagle.disable", "true");
    c
}

/// Our partition number as librdkafka spells it. Partition counts are
/// validated far below `i32::MAX`, so the conversion is exact.
pub fn to_kafka(partition: u32) -> i32 {
    i32::try_from(partition).unwrap_or(i32::MAX)
}

/// librdkafka's partition number as ours (never negative for a real record).
pub fn from_kafka(partition: i32) -> u32 {
    partition.unsigned_abs()
}
