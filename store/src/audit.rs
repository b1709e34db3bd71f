//! Read-only questions the tests, the load tool and operators ask of the
//! stored data: was every acknowledged message persisted, exactly once?

use crate::{Store, StoreError};

/// How many rows the message tables hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub messages: i64,
    pub distinct_msg_ids: i64,
    pub deliveries: i64,
}

/// One recipient's row of a message found by a field of its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDelivery {
    /// The body field's value the message was found by.
    pub value: String,
    pub user: String,
    pub partition: i32,
    pub offset: i64,
}

impl Store {
    /// Row counts of the message tables.
    pub async fn counts(&self) -> Result<Counts, StoreError> {
        let (messages, distinct_msg_ids, deliveries): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM messages), (SELECT count(DISTINCT msg_id) FROM messages), \
             (SELECT count(*) FROM deliveries)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Counts {
            messages,
            distinct_msg_ids,
            deliveries,
        })
    }

    /// How many of `ids` have their message row.
    pub async fn count_stored(&self, ids: &[uuid::Uuid]) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM messages WHERE msg_id = ANY($1)")
            .bind(ids)
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    /// Every stored msg_id (one per row) sent by users whose id starts with `prefix`.
    pub async fn msg_ids_from(&self, prefix: &str) -> Result<Vec<uuid::Uuid>, StoreError> {
        let rows: Vec<(uuid::Uuid,)> =
            sqlx::query_as("SELECT msg_id FROM messages WHERE starts_with(sender, $1)")
                .bind(prefix)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// The delivery rows of the messages whose JSON body has `field` equal
    /// to one of `values` (a load tool's own message keys; scans every
    /// message, so not for a production database's hot path).
    pub async fn deliveries_by_body_field(
        &self,
        field: &str,
        values: &[String],
    ) -> Result<Vec<StoredDelivery>, StoreError> {
        let rows: Vec<(String, String, i32, i64)> = sqlx::query_as(
            "SELECT m.body->>$1, d.user_id, d.kafka_partition, d.kafka_offset \
             FROM messages m JOIN deliveries d USING (msg_id) WHERE m.body->>$1 = ANY($2)",
        )
        .bind(field)
        .bind(values)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(value, user, partition, offset)| StoredDelivery {
                value,
                user,
                partition,
                offset,
            })
            .collect())
    }

    /// Records the persister has committed, over every partition of every topic.
    pub async fn committed_records(&self) -> Result<i64, StoreError> {
        let (n,): (i64,) =
            sqlx::query_as("SELECT coalesce(sum(next_offset), 0)::int8 FROM persister_offsets")
                .fetch_one(&self.pool)
                .await?;
        Ok(n)
    }

    /// Closes the pool's connections (before PostgreSQL is stopped on purpose).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
