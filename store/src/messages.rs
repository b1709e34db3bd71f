//! Stored chat messages: history pages and a user's deliveries for resume.

use crate::{db_partition, Store, StoreError};
use protocol::{ConversationId, UserId};

/// A stored chat message, as history and replay return it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredMessage {
    pub msg_id: uuid::Uuid,
    pub conversation_id: String,
    pub sender: String,
    pub sender_device: String,
    /// The JSON body as text, exactly as the sender wrote it.
    pub body: String,
    pub sent_at_ms: i64,
    pub kafka_offset: i64,
}

impl Store {
    /// Newest first, strictly before the `(sent_at_ms, msg_id)` key when given.
    pub async fn history(
        &self,
        id: &ConversationId,
        before: Option<(i64, uuid::Uuid)>,
        limit: i64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let (at, mid) = before.unwrap_or((i64::MAX, uuid::Uuid::max()));
        let rows = sqlx::query_as::<_, StoredMessage>(
            "SELECT msg_id, conversation_id, sender, sender_device, body::text AS body, sent_at_ms, kafka_offset \
             FROM messages WHERE conversation_id = $1 AND (sent_at_ms, msg_id) < ($2, $3) \
             ORDER BY sent_at_ms DESC, msg_id DESC LIMIT $4",
        )
        .bind(id.as_str())
        .bind(at)
        .bind(mid)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// The user's messages in `partition` with offsets in `range`, in order.
    pub async fn deliveries(
        &self,
        user: &UserId,
        partition: u32,
        range: std::ops::Range<i64>,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let rows = sqlx::query_as::<_, StoredMessage>(
            "SELECT m.msg_id, m.conversation_id, m.sender, m.sender_device, m.body::text AS body, m.sent_at_ms, d.kafka_offset \
             FROM deliveries d JOIN messages m USING (msg_id) \
             WHERE d.user_id = $1 AND d.kafka_partition = $2 AND d.kafka_offset >= $3 AND d.kafka_offset < $4 \
             ORDER BY d.kafka_offset",
        )
        .bind(user.as_str())
        .bind(db_partition(partition)?)
        .bind(range.start)
        .bind(range.end)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }
}
