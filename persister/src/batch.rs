//! A batch of consumed records turned into rows, written in one transaction
//! together with the next offset of every partition it covers.

use protocol::{Kind, Record};
use sqlx::PgPool;
use std::collections::BTreeMap;
use tracing::warn;

#[derive(Default)]
pub struct Batch {
    pub messages: Messages,
    pub deliveries: Deliveries,
    /// partition → next offset to consume.
    pub next: BTreeMap<i32, i64>,
    pub records: usize,
    pub skipped: usize,
    pub undecodable: usize,
}

#[derive(Default)]
pub struct Messages {
    ids: Vec<uuid::Uuid>,
    conversations: Vec<String>,
    senders: Vec<String>,
    devices: Vec<String>,
    bodies: Vec<String>,
    sent_at: Vec<i64>,
    partitions: Vec<i32>,
    offsets: Vec<i64>,
}

#[derive(Default)]
pub struct Deliveries {
    users: Vec<String>,
    partitions: Vec<i32>,
    offsets: Vec<i64>,
    ids: Vec<uuid::Uuid>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.next.is_empty()
    }

    pub fn add(&mut self, partition: i32, offset: i64, payload: &[u8]) {
        self.records += 1;
        self.next.insert(partition, offset + 1);
        let rec = match Record::decode(payload) {
            Ok(r) => r,
            Err(e) => {
                self.undecodable += 1;
                warn!(partition, offset, error = %e, "skipping undecodable record");
                return;
            }
        };
        if rec.kind == Kind::Ephemeral {
            self.skipped += 1;
            return;
        }
        let m = &mut self.messages;
        m.ids.push(rec.msg_id.0);
        m.conversations.push(rec.conversation_id.to_string());
        m.senders.push(rec.sender.to_string());
        m.devices.push(rec.sender_device.to_string());
        m.bodies.push(rec.body.get().to_owned());
        m.sent_at.push(rec.sent_at_ms);
        m.partitions.push(partition);
        m.offsets.push(offset);
        for user in &rec.recipients {
            let d = &mut self.deliveries;
            d.users.push(user.to_string());
            d.partitions.push(partition);
            d.offsets.push(offset);
            d.ids.push(rec.msg_id.0);
        }
    }

    pub fn rows(&self) -> usize {
        self.messages.ids.len()
    }

    /// Idempotent: a record written twice (by a restart or a second replica
    /// after a rebalance) changes nothing, and offsets only move forward.
    pub async fn write(&self, pool: &PgPool, topic: &str) -> Result<(), sqlx::Error> {
        let mut tx = pool.begin().await?;
        let m = &self.messages;
        sqlx::query(
            "INSERT INTO messages (msg_id, conversation_id, sender, sender_device, body, sent_at_ms, kafka_partition, kafka_offset) \
             SELECT id, c, s, d, b::json, t, p, o FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::int4[], $8::int8[]) \
             AS u(id, c, s, d, b, t, p, o) ON CONFLICT DO NOTHING",
        )
        .bind(&m.ids)
        .bind(&m.conversations)
        .bind(&m.senders)
        .bind(&m.devices)
        .bind(&m.bodies)
        .bind(&m.sent_at)
        .bind(&m.partitions)
        .bind(&m.offsets)
        .execute(&mut *tx)
        .await?;
        let d = &self.deliveries;
        sqlx::query(
            "INSERT INTO deliveries (user_id, kafka_partition, kafka_offset, msg_id) \
             SELECT * FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::uuid[]) ON CONFLICT DO NOTHING",
        )
        .bind(&d.users)
        .bind(&d.partitions)
        .bind(&d.offsets)
        .bind(&d.ids)
        .execute(&mut *tx)
        .await?;
        let (parts, nexts): (Vec<i32>, Vec<i64>) = self.next.iter().map(|(p, o)| (*p, *o)).unzip();
        sqlx::query(
            "INSERT INTO persister_offsets (topic, kafka_partition, next_offset) \
             SELECT $1, p, o FROM UNNEST($2::int4[], $3::int8[]) AS u(p, o) \
             ON CONFLICT (topic, kafka_partition) DO UPDATE SET next_offset = GREATEST(persister_offsets.next_offset, EXCLUDED.next_offset)",
        )
        .bind(topic)
        .bind(&parts)
        .bind(&nexts)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }
}

/// The stored next offset of each partition (0 when never written).
pub async fn stored_offsets(
    pool: &PgPool,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, i64>, sqlx::Error> {
    let rows: Vec<(i32, i64)> = sqlx::query_as("SELECT kafka_partition, next_offset FROM persister_offsets WHERE topic = $1 AND kafka_partition = ANY($2)")
        .bind(topic)
        .bind(partitions)
        .fetch_all(pool)
        .await?;
    let mut out: BTreeMap<i32, i64> = partitions.iter().map(|p| (*p, 0)).collect();
    out.extend(rows);
    Ok(out)
}
