//! The persister's unit of work: message and delivery rows of many records,
//! written in one transaction with the next offset of every partition.

use crate::{db_partition, Store, StoreError};
use protocol::Record;
use std::collections::BTreeMap;

/// Rows in column form (one `UNNEST` insert per table).
#[derive(Debug, Default)]
pub struct RowBatch {
    messages: MessageColumns,
    deliveries: DeliveryColumns,
    /// partition → next offset to consume.
    next: BTreeMap<u32, i64>,
    /// Rows of the connection events (`<topic>.events`).
    pub events: crate::sessions::EventBatch,
}

#[derive(Debug, Default)]
struct MessageColumns {
    ids: Vec<uuid::Uuid>,
    conversations: Vec<String>,
    senders: Vec<String>,
    devices: Vec<String>,
    bodies: Vec<String>,
    sent_at: Vec<i64>,
    partitions: Vec<i32>,
    offsets: Vec<i64>,
}

#[derive(Debug, Default)]
struct DeliveryColumns {
    users: Vec<String>,
    partitions: Vec<i32>,
    offsets: Vec<i64>,
    ids: Vec<uuid::Uuid>,
}

impl RowBatch {
    /// Nothing consumed since the last write.
    pub fn is_empty(&self) -> bool {
        self.next.is_empty() && self.events.is_empty()
    }

    /// Message rows so far.
    pub fn rows(&self) -> usize {
        self.messages.ids.len()
    }

    /// Moves the partition's position past `offset` without a row (an
    /// ephemeral or undecodable record).
    /// The offset this batch commits for `partition`, if it holds any of it.
    pub fn next_offset(&self, partition: u32) -> Option<i64> {
        self.next.get(&partition).copied()
    }

    pub fn skip(&mut self, partition: u32, offset: i64) {
        self.next.insert(partition, offset + 1);
    }

    /// Adds a chat record: its message row and one delivery row per recipient.
    pub fn add(&mut self, partition: u32, offset: i64, rec: &Record) -> Result<(), StoreError> {
        let p = db_partition(partition)?;
        self.skip(partition, offset);
        let m = &mut self.messages;
        m.ids.push(rec.msg_id.0);
        m.conversations.push(rec.conversation_id.to_string());
        m.senders.push(rec.sender.to_string());
        m.devices.push(rec.sender_device.to_string());
        m.bodies.push(rec.body.get().to_owned());
        m.sent_at.push(rec.sent_at_ms);
        m.partitions.push(p);
        m.offsets.push(offset);
        let d = &mut self.deliveries;
        for user in &rec.recipients {
            d.users.push(user.to_string());
            d.partitions.push(p);
            d.offsets.push(offset);
            d.ids.push(rec.msg_id.0);
        }
        Ok(())
    }
}

impl Store {
    /// Idempotent: a record written twice (by a restart or a second replica
    /// after a rebalance) changes nothing, and offsets only move forward.
    pub async fn write_batch(&self, topic: &str, batch: &RowBatch) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let m = &batch.messages;
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
        let d = &batch.deliveries;
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
        write_offsets(&mut tx, topic, &batch.next).await?;
        batch.events.write(&mut tx).await?;
        let events = protocol::events_topic(topic);
        write_offsets(&mut tx, &events, &batch.events.next).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The next offset of each partition, in the batch's transaction; never
/// moves back (a replica replaying an old batch after a rebalance).
async fn write_offsets(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    topic: &str,
    next: &BTreeMap<u32, i64>,
) -> Result<(), StoreError> {
    if next.is_empty() {
        return Ok(());
    }
    let mut parts = Vec::with_capacity(next.len());
    for p in next.keys() {
        parts.push(db_partition(*p)?);
    }
    let nexts: Vec<i64> = next.values().copied().collect();
    sqlx::query(
        "INSERT INTO persister_offsets (topic, kafka_partition, next_offset) \
         SELECT $1, p, o FROM UNNEST($2::int4[], $3::int8[]) AS u(p, o) \
         ON CONFLICT (topic, kafka_partition) DO UPDATE \
         SET next_offset = GREATEST(persister_offsets.next_offset, EXCLUDED.next_offset)",
    )
    .bind(topic)
    .bind(&parts)
    .bind(&nexts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
