//! The persister's position in each partition, committed with its rows.

use crate::{db_partition, Store, StoreError};
use std::collections::BTreeMap;

impl Store {
    /// First offset of `partition` the persister has not committed (0 if none).
    pub async fn persisted_next(&self, topic: &str, partition: u32) -> Result<i64, StoreError> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT next_offset FROM persister_offsets WHERE topic = $1 AND kafka_partition = $2",
        )
        .bind(topic)
        .bind(db_partition(partition)?)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map_or(0, |r| r.0))
    }

    /// The stored next offset of each partition (0 when never written).
    pub async fn stored_offsets(
        &self,
        topic: &str,
        partitions: &[u32],
    ) -> Result<BTreeMap<u32, i64>, StoreError> {
        let parts = partitions
            .iter()
            .map(|p| db_partition(*p))
            .collect::<Result<Vec<i32>, _>>()?;
        let rows: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT kafka_partition, next_offset FROM persister_offsets \
             WHERE topic = $1 AND kafka_partition = ANY($2)",
        )
        .bind(topic)
        .bind(&parts)
        .fetch_all(&self.pool)
        .await?;
        let mut out: BTreeMap<u32, i64> = partitions.iter().map(|p| (*p, 0)).collect();
        out.extend(rows.into_iter().map(|(p, o)| (p.unsigned_abs(), o)));
        Ok(out)
    }
}
