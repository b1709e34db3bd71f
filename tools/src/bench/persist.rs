//! Rows per second from the topic into PostgreSQL.

use crate::bench::Env;
use crate::procstat::cpu_seconds;
use harness::{free_port, Process};
use protocol::{ClientMsgId, ConversationId, DeviceId, Kind, MsgId, Record, UserId};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 8;

fn record(i: usize) -> anyhow::Result<Vec<u8>> {
    let sender = UserId::new(format!("s{}", i % 1000))?;
    Ok(Record {
        v: 1,
        msg_id: MsgId::derive(&sender, &ClientMsgId::new(format!("p{i}"))?),
        kind: Kind::Chat,
        conversation_id: ConversationId::new(format!("room{}", i % 100))?,
        sender,
        sender_device: DeviceId::new("phone")?,
        recipients: vec![UserId::new(format!("r{}", i % 5000))?],
        body: serde_json::value::RawValue::from_string(format!(
            "{{\"text\":\"message number {i}\"}}"
        ))?,
        sent_at_ms: i as i64,
    }
    .encode()?)
}

pub async fn persist(infra: Arc<Env>, records: usize, batch_max: usize) -> anyhow::Result<()> {
    let topic = infra.unique("persist_bench");
    infra.create_user_topics(&topic, PARTITIONS).await?;
    let db = infra.database("persist_bench").await?;
    // Normal producer batching: the persister reads from offset 0, a batch start.
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &infra.kafka)
        .set("linger.ms", "5")
        .create()?;
    let t = Instant::now();
    for chunk in (0..records).collect::<Vec<_>>().chunks(20_000) {
        let payloads: Vec<Vec<u8>> = chunk.iter().map(|i| record(*i)).collect::<Result<_, _>>()?;
        let sends = payloads.iter().enumerate().map(|(k, payload)| {
            let p = p.clone();
            let topic = topic.clone();
            async move {
                let r = FutureRecord::to(&topic)
                    .partition(k as i32 % PARTITIONS)
                    .key("k")
                    .payload(payload);
                p.send(r, Duration::from_secs(60)).await.map_err(|(e, _)| e)
            }
        });
        for r in futures_util::future::join_all(sends).await {
            r?;
        }
    }
    println!(
        "produced {records} records in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let port = free_port()?;
    let env = [
        ("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}")),
        ("SWITCHBOARD_KAFKA_BROKERS", infra.kafka.clone()),
        ("SWITCHBOARD_TOPIC", topic.clone()),
        ("SWITCHBOARD_GROUP_ID", format!("{topic}-p")),
        ("SWITCHBOARD_DATABASE_URL", db.clone()),
        ("SWITCHBOARD_BATCH_MAX", batch_max.to_string()),
        ("SWITCHBOARD_BATCH_MS", "100".into()),
    ];
    let proc_ = Process::spawn("persister", &env)?;
    let pool = store::Store::connect(&db).await?;
    let count = || async { pool.committed_records().await.unwrap_or(0) };
    // Time from the first committed batch, so the consumer-group join is not counted.
    let deadline = Instant::now() + Duration::from_secs(120);
    while count().await == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (start, c0, done0) = (
        Instant::now(),
        proc_.pid().and_then(cpu_seconds).unwrap_or(0.0),
        count().await,
    );
    while count().await < records as i64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = proc_.pid().and_then(cpu_seconds).unwrap_or(0.0) - c0;
    let done = count().await - done0;
    println!("persister: {done} records in {secs:.2} s = {:.0} messages/s (batch max {batch_max}), persister CPU {cpu:.2} s", done as f64 / secs);
    let rows = pool.counts().await?.messages;
    println!("message rows: {rows} (expected {records})");
    let _ = proc_.terminate().await;
    Ok(())
}
