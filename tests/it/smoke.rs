//! The infrastructure is real: produce and consume through the broker, a
//! round trip through etcd, and a query on PostgreSQL.

use harness::Infra;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub async fn broker_etcd_and_postgres_answer(infra: Arc<Infra>) -> anyhow::Result<()> {
    let topic = infra.unique("smoke");
    infra.create_topic(&topic, 2).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &infra.kafka)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()?;
    let delivered = producer
        .send(
            FutureRecord::to(&topic)
                .partition(1)
                .key("k")
                .payload("hello"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    anyhow::ensure!(
        delivered.partition == 1,
        "wrong partition {}",
        delivered.partition
    );

    let brokers = infra.kafka.clone();
    let got = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "smoke")
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 1, Offset::Beginning)?;
        consumer.assign(&tpl)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                return Ok(String::from_utf8_lossy(m?.payload().unwrap_or_default()).into_owned());
            }
        }
        anyhow::bail!("no record consumed within 30s")
    })
    .await??;
    anyhow::ensure!(got == "hello", "consumed {got:?}");

    let mut etcd = service::etcd::connect(&infra.etcd_endpoints()).await?;
    let key = format!("/{}/k", infra.unique("smoke"));
    etcd.put(key.as_str(), "v", None).await?;
    let resp = etcd.get(key.as_str(), None).await?;
    anyhow::ensure!(resp.kvs().first().map(|kv| kv.value()) == Some(b"v".as_slice()));

    let db = store::Store::connect(&infra.database("smoke").await?).await?;
    let never = tokio_util::sync::CancellationToken::new();
    anyhow::ensure!(db.migrate(&never).await, "migrations did not run");
    let counts = db.counts().await?;
    anyhow::ensure!(counts.messages == 0 && counts.deliveries == 0, "{counts:?}");
    Ok(())
}
