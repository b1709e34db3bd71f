//! The persister against a real broker and PostgreSQL: exactly once across
//! crashes, shared partitions, poison records, history pagination.

use harness::{free_port, wait_until, Infra, Process};
use protocol::{ClientMsgId, ConversationId, DeviceId, Kind, MsgId, Record, UserId};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::Store;

const PARTITIONS: i32 = 4;

fn record(i: usize, kind: Kind) -> anyhow::Result<Record> {
    let sender = UserId::new(format!("s{}", i % 7))?;
    Ok(Record {
        v: 1,
        msg_id: MsgId::derive(&sender, &ClientMsgId::new(format!("m{i}"))?),
        kind,
        conversation_id: ConversationId::new("load")?,
        sender,
        sender_device: DeviceId::new("d")?,
        recipients: vec![
            UserId::new(format!("a{}", i % 50))?,
            UserId::new(format!("b{}", i % 50))?,
        ],
        body: RawValue::from_string(format!("{{\"i\":{i}}}"))?,
        sent_at_ms: i as i64,
    })
}

/// Produces `chat` chat records, some ephemeral ones and poison records;
/// returns the end offset of each partition.
async fn produce(infra: &Infra, topic: &str, chat: usize) -> anyhow::Result<BTreeMap<i32, i64>> {
    produce_range(infra, topic, 0..chat).await
}

async fn produce_range(
    infra: &Infra,
    topic: &str,
    chat: std::ops::Range<usize>,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &infra.kafka)
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .create()?;
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    for i in chat {
        payloads.push(record(i, Kind::Chat)?.encode()?);
        if i % 20 == 0 {
            payloads.push(record(i + 1_000_000, Kind::Ephemeral)?.encode()?);
        }
        if i % 3000 == 0 {
            payloads.push(b"{not a record".to_vec());
        }
    }
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    for chunk in payloads.chunks(2000) {
        let sends = chunk.iter().enumerate().map(|(i, payload)| {
            let p = p.clone();
            async move {
                let rec = FutureRecord::to(topic)
                    .partition(i as i32 % PARTITIONS)
                    .key("k")
                    .payload(payload);
                p.send(rec, Duration::from_secs(30))
                    .await
                    .map_err(|(e, _)| e)
            }
        });
        for d in futures_util::future::join_all(sends).await {
            let d = d?;
            let end = ends.entry(d.partition).or_default();
            *end = (*end).max(d.offset + 1);
        }
    }
    Ok(ends)
}

fn persister(infra: &Infra, topic: &str, db: &str, port: u16) -> anyhow::Result<Process> {
    Process::spawn(
        "persister",
        &[
            ("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}")),
            ("SWITCHBOARD_KAFKA_BROKERS", infra.kafka.clone()),
            ("SWITCHBOARD_TOPIC", topic.to_owned()),
            ("SWITCHBOARD_GROUP_ID", format!("{topic}-persister")),
            ("SWITCHBOARD_DATABASE_URL", db.to_owned()),
            ("SWITCHBOARD_BATCH_MAX", "300".into()),
            ("SWITCHBOARD_BATCH_MS", "20".into()),
        ],
    )
}

/// Row counts, or all -1 while PostgreSQL does not answer.
async fn counts(db: &Store) -> store::Counts {
    db.counts().await.unwrap_or(store::Counts {
        messages: -1,
        distinct_msg_ids: -1,
        deliveries: -1,
    })
}

async fn committed(db: &Store) -> i64 {
    db.committed_records().await.unwrap_or(-1)
}

async fn assigned(port: u16) -> f64 {
    let base = format!("http://127.0.0.1:{port}");
    harness::metric(&base, "switchboard_persister_assigned_partitions").await
}

pub async fn exactly_once_across_kills_and_replicas(infra: Arc<Infra>) -> anyhow::Result<()> {
    let topic = infra.unique("persist");
    infra.create_user_topics(&topic, PARTITIONS).await?;
    let db = infra.database("persist").await?;
    let pool = Store::connect(&db).await?;
    let total = 10_000;
    let started = Instant::now();
    let ends = produce(&infra, &topic, total).await?;
    eprintln!(
        "    produced {total} chat records (+ephemeral, +poison) in {:?}",
        started.elapsed()
    );

    let port = free_port()?;
    let mut p = persister(&infra, &topic, &db, port)?;
    for threshold in [1500, 4000, 6500] {
        wait_until("rows arrive", Duration::from_secs(90), || async {
            counts(&pool).await.messages >= threshold
        })
        .await?;
        p.kill().await?;
        p = persister(&infra, &topic, &db, port)?;
    }
    let port2 = free_port()?;
    let p2 = persister(&infra, &topic, &db, port2)?;
    let shared = std::sync::atomic::AtomicBool::new(false);
    let want: i64 = ends.values().sum();
    let reached = wait_until(
        "both replicas shared the partitions and reached the end of each",
        Duration::from_secs(120),
        || async {
            if assigned(port).await > 0.0 && assigned(port2).await > 0.0 {
                shared.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            shared.load(std::sync::atomic::Ordering::Relaxed) && committed(&pool).await == want
        },
    )
    .await;
    let shared = shared.into_inner();
    anyhow::ensure!(
        committed(&pool).await == want,
        "persister did not reach the end of every partition (poison stalled it?)"
    );
    anyhow::ensure!(shared, "the two replicas never shared the partitions");
    reached?;
    let store::Counts {
        messages,
        distinct_msg_ids: distinct,
        deliveries,
    } = counts(&pool).await;
    anyhow::ensure!(
        messages == total as i64 && distinct == messages,
        "messages {messages}, distinct {distinct}, want {total}"
    );
    anyhow::ensure!(
        deliveries == 2 * total as i64,
        "deliveries {deliveries}, want {}",
        2 * total
    );
    p.kill().await?;
    p2.terminate().await?;
    Ok(())
}

/// PostgreSQL goes away mid-stream and comes back: the persister keeps
/// running, retries, and ends with every row exactly once.
pub async fn recovers_by_itself_after_a_postgres_outage(infra: Arc<Infra>) -> anyhow::Result<()> {
    let (pg, db) = infra.private_postgres("outage-pg").await?;
    let topic = infra.unique("outage");
    infra.create_user_topics(&topic, PARTITIONS).await?;
    produce_range(&infra, &topic, 0..2000).await?;
    let mut p = persister(&infra, &topic, &db, free_port()?)?;
    let pool = Store::connect(&db).await?;
    wait_until(
        "rows before the outage",
        Duration::from_secs(60),
        || async { counts(&pool).await.messages >= 500 },
    )
    .await?;
    pool.close().await;
    pg.stop().await?;
    let ends = produce_range(&infra, &topic, 2000..4000).await?;
    // The outage lasts while the persister consumes what was just produced.
    tokio::time::sleep(Duration::from_secs(3)).await;
    anyhow::ensure!(p.is_running(), "the persister exited during the outage");
    pg.start().await?;
    let pool = Store::connect(&db).await?;
    let want: i64 = ends.values().sum();
    wait_until(
        "the persister catches up after the outage",
        Duration::from_secs(90),
        || async { committed(&pool).await == want },
    )
    .await?;
    let c = counts(&pool).await;
    let (messages, distinct) = (c.messages, c.distinct_msg_ids);
    anyhow::ensure!(
        messages == 4000 && distinct == 4000,
        "messages {messages}, distinct {distinct}, want 4000"
    );
    p.terminate().await?;
    Ok(())
}
