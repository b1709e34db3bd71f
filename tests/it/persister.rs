//! The persister against a real broker and PostgreSQL: exactly once across
//! crashes, shared partitions, poison records, history pagination.

use harness::{free_port, wait_until, Infra, Process};
use protocol::{ClientMsgId, ConversationId, DeviceId, Kind, MsgId, Record, UserId};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::value::RawValue;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
        payloads.push(record(i, Kind::Chat)?.encode());
        if i % 20 == 0 {
            payloads.push(record(i + 1_000_000, Kind::Ephemeral)?.encode());
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

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .map(|r| r.0)
        .unwrap_or(-1)
}

async fn assigned(port: u16) -> i64 {
    let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("switchboard_persister_assigned_partitions "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

pub async fn exactly_once_across_kills_and_replicas(infra: Arc<Infra>) -> anyhow::Result<()> {
    let topic = infra.unique("persist");
    infra.create_topic(&topic, PARTITIONS).await?;
    let db = infra.database("persist").await?;
    let pool = PgPool::connect(&db).await?;
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
            count(&pool, "SELECT count(*) FROM messages").await >= threshold
        })
        .await?;
        p.kill().await?;
        p = persister(&infra, &topic, &db, port)?;
    }
    let port2 = free_port()?;
    let p2 = persister(&infra, &topic, &db, port2)?;
    let mut shared = false;
    let offsets_sql = "SELECT coalesce(sum(next_offset), 0)::int8 FROM persister_offsets";
    let want: i64 = ends.values().sum();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        shared |= assigned(port).await > 0 && assigned(port2).await > 0;
        if count(&pool, offsets_sql).await == want && shared {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::ensure!(
        count(&pool, offsets_sql).await == want,
        "persister did not reach the end of every partition (poison stalled it?)"
    );
    anyhow::ensure!(shared, "the two replicas never shared the partitions");
    let messages = count(&pool, "SELECT count(*) FROM messages").await;
    let distinct = count(&pool, "SELECT count(DISTINCT msg_id) FROM messages").await;
    let deliveries = count(&pool, "SELECT count(*) FROM deliveries").await;
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
    infra.create_topic(&topic, PARTITIONS).await?;
    produce_range(&infra, &topic, 0..2000).await?;
    let mut p = persister(&infra, &topic, &db, free_port()?)?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&db)
        .await?;
    wait_until(
        "rows before the outage",
        Duration::from_secs(60),
        || async { count(&pool, "SELECT count(*) FROM messages").await >= 500 },
    )
    .await?;
    pool.close().await;
    pg.stop().await?;
    let ends = produce_range(&infra, &topic, 2000..4000).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    anyhow::ensure!(p.is_running(), "the persister exited during the outage");
    pg.start().await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&db)
        .await?;
    let want: i64 = ends.values().sum();
    wait_until(
        "the persister catches up after the outage",
        Duration::from_secs(90),
        || async {
            count(
                &pool,
                "SELECT coalesce(sum(next_offset), 0)::int8 FROM persister_offsets",
            )
            .await
                == want
        },
    )
    .await?;
    let (messages, distinct) = (
        count(&pool, "SELECT count(*) FROM messages").await,
        count(&pool, "SELECT count(DISTINCT msg_id) FROM messages").await,
    );
    anyhow::ensure!(
        messages == 4000 && distinct == 4000,
        "messages {messages}, distinct {distinct}, want 4000"
    );
    p.terminate().await?;
    Ok(())
}
