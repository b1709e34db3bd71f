//! What a topic holds, for benchmarks that report Kafka bytes per message.

use std::time::{Duration, Instant};

/// Records and payload bytes in a topic, all partitions.
#[derive(Debug, Default, Clone, Copy)]
pub struct TopicBytes {
    pub records: u64,
    pub bytes: u64,
}

/// Reads the whole topic once and adds up its records' payloads.
pub async fn topic_bytes(brokers: &str, topic: &str) -> anyhow::Result<TopicBytes> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message as _;
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer =
            service::kafka::consumer_config(&brokers, "bench-bytes", Duration::from_millis(50))
                .create()?;
        let md = c.fetch_metadata(Some(&topic), Duration::from_secs(5))?;
        let parts = md.topics().first().map_or(0, |t| t.partitions().len());
        let mut total = TopicBytes::default();
        for p in 0..parts {
            let p = i32::try_from(p)?;
            let (low, high) = c.fetch_watermarks(&topic, p, Duration::from_secs(5))?;
            if high <= low {
                continue;
            }
            let mut tpl = rdkafka::TopicPartitionList::new();
            tpl.add_partition_offset(&topic, p, rdkafka::Offset::Offset(low))?;
            c.assign(&tpl)?;
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut next = low;
            while next < high && Instant::now() < deadline {
                if let Some(m) = c.poll(Duration::from_millis(200)) {
                    let m = m?;
                    total.records += 1;
                    total.bytes += m.payload().map_or(0, <[u8]>::len) as u64;
                    next = m.offset() + 1;
                }
            }
        }
        anyhow::Ok(total)
    })
    .await?
}
