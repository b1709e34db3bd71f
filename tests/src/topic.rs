//! Reading a whole topic back, for tests that check what was written to it.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// One record as read: partition, offset, payload.
pub type Read = (u32, i64, Vec<u8>);

/// Every record of `partitions` partitions of `topic`, from the start to the
/// end as of the call, in offset order per partition.
pub async fn read_all(brokers: &str, topic: &str, partitions: u32) -> anyhow::Result<Vec<Read>> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || read_blocking(&brokers, &topic, partitions)).await?
}

fn read_blocking(brokers: &str, topic: &str, partitions: u32) -> anyhow::Result<Vec<Read>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "harness-read-all")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut ends = Vec::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let kp = service::kafka::to_kafka(p);
        let (_, high) = consumer.fetch_watermarks(topic, kp, Duration::from_secs(5))?;
        ends.push(high);
        tpl.add_partition_offset(topic, kp, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    let mut next = vec![0i64; ends.len()];
    let deadline = Instant::now() + Duration::from_secs(30);
    while next.iter().zip(&ends).any(|(n, e)| n < e) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{topic}: read {next:?} of {ends:?} in 30 s"
        );
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m?;
        let p = service::kafka::from_kafka(m.partition());
        if let Some(n) = next.get_mut(p as usize) {
            *n = m.offset() + 1;
        }
        out.push((p, m.offset(), m.payload().unwrap_or_default().to_vec()));
    }
    Ok(out)
}
