//! The coordinator makes sure the topic and its log epoch exist, so that a
//! fresh stack works without a separate set-up step.

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use protocol::EtcdLayout;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use std::time::Duration;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("kafka unavailable: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("failed to create topic {topic}: {code}")]
    Create {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("topic {0} has no partitions in the broker's metadata")]
    Missing(String),
    #[error("etcd unavailable: {0}")]
    Etcd(#[from] etcd_client::Error),
}

/// Creates the topic if needed and returns its real partition count.
pub async fn ensure_topic(
    brokers: &str,
    topic: &str,
    partitions: u32,
    replication: i32,
) -> Result<u32, TopicError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("socket.timeout.ms", "5000")
        .create()?;
    let new = NewTopic::new(
        topic,
        service::kafka::to_kafka(partitions),
        TopicReplication::Fixed(replication),
    );
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics([&new], &opts).await? {
        match result {
            Ok(t) => info!(topic = %t, partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(TopicError::Create { topic: t, code }),
        }
    }
    let topic_owned = topic.to_owned();
    let count = tokio::task::spawn_blocking(move || {
        let md = admin
            .inner()
            .fetch_metadata(Some(&topic_owned), Duration::from_secs(5))?;
        Ok::<usize, rdkafka::error::KafkaError>(
            md.topics()
                .first()
                .map(|t| t.partitions().len())
                .unwrap_or(0),
        )
    })
    .await
    .map_err(|_| TopicError::Missing(topic.to_owned()))??;
    if count == 0 {
        return Err(TopicError::Missing(topic.to_owned()));
    }
    let count = u32::try_from(count).unwrap_or(u32::MAX);
    if count != partitions {
        warn!(
            topic,
            configured = partitions,
            actual = count,
            "topic exists with another partition count; using the topic's"
        );
    }
    Ok(count)
}

/// Writes a fresh log epoch once (create-if-absent) and returns the stored one.
pub async fn ensure_log_epoch(
    client: &mut Client,
    layout: &EtcdLayout,
) -> Result<String, TopicError> {
    let key = layout.log_epoch_key();
    let fresh = uuid::Uuid::new_v4().simple().to_string();
    let txn = Txn::new()
        .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.as_str(), fresh.as_str(), None)])
        .or_else([TxnOp::get(key.as_str(), None)]);
    let resp = client.txn(txn).await?;
    if resp.succeeded() {
        info!(log_epoch = %fresh, "wrote a new log epoch");
        return Ok(fresh);
    }
    for op in resp.op_responses() {
        if let etcd_client::TxnOpResponse::Get(g) = op {
            if let Some(kv) = g.kvs().first() {
                return Ok(String::from_utf8_lossy(kv.value()).into_owned());
            }
        }
    }
    Err(TopicError::Missing(key))
}
