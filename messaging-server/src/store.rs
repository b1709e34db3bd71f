//! PostgreSQL: conversations and members (cached), history, resume rows.

use protocol::{ConversationId, UserId};
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a member list is trusted; changes made here invalidate at once.
const MEMBER_TTL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Db(#[from] sqlx::Error),
}

pub type Members = Arc<Vec<UserId>>;

/// A stored chat message, as history and replay return it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredMessage {
    pub msg_id: uuid::Uuid,
    pub conversation_id: String,
    pub sender: String,
    pub sender_device: String,
    pub body: String,
    pub sent_at_ms: i64,
    pub kafka_offset: i64,
}

pub struct Store {
    pub pool: PgPool,
    cache: Mutex<HashMap<ConversationId, (Option<Members>, Instant)>>,
}

impl Store {
    pub fn connect_lazy(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy(url)?;
        Ok(Self {
            pool,
            cache: Mutex::new(HashMap::new()),
        })
    }

    fn cached(&self, id: &ConversationId) -> Option<Option<Members>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(id)
            .filter(|(_, at)| at.elapsed() < MEMBER_TTL)
            .map(|(m, _)| m.clone())
    }

    pub fn invalidate(&self, id: &ConversationId) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Members of a conversation; `None` if it does not exist.
    pub async fn members(&self, id: &ConversationId) -> Result<Option<Members>, StoreError> {
        if let Some((a, b)) = id.direct_members() {
            return Ok(Some(Arc::new(vec![a, b])));
        }
        if let Some(hit) = self.cached(id) {
            return Ok(hit);
        }
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT c.conversation_id, m.user_id FROM conversations c \
             LEFT JOIN conversation_members m USING (conversation_id) WHERE c.conversation_id = $1",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?;
        let members = (!rows.is_empty()).then(|| {
            Arc::new(
                rows.into_iter()
                    .filter_map(|(_, u)| u.and_then(|u| UserId::new(u).ok()))
                    .collect(),
            )
        });
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(id.clone(), (members.clone(), Instant::now()));
        Ok(members)
    }

    /// Creates a conversation; `false` if the id is taken.
    pub async fn create_conversation(
        &self,
        id: &ConversationId,
        creator: &UserId,
        members: &[UserId],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let created = sqlx::query("INSERT INTO conversations (conversation_id, created_by) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(id.as_str())
            .bind(creator.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if created {
            let users: Vec<&str> = members.iter().map(UserId::as_str).collect();
            sqlx::query("INSERT INTO conversation_members (conversation_id, user_id) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING")
                .bind(id.as_str())
                .bind(&users)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.invalidate(id);
        Ok(created)
    }

    pub async fn add_member(&self, id: &ConversationId, user: &UserId) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO conversation_members (conversation_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(id.as_str())
            .bind(user.as_str())
            .execute(&self.pool)
            .await?;
        self.invalidate(id);
        Ok(())
    }

    pub async fn remove_member(
        &self,
        id: &ConversationId,
        user: &UserId,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "DELETE FROM conversation_members WHERE conversation_id = $1 AND user_id = $2",
        )
        .bind(id.as_str())
        .bind(user.as_str())
        .execute(&self.pool)
        .await?
        .rows_affected();
        self.invalidate(id);
        Ok(n > 0)
    }

    /// The user's group conversations with their members.
    pub async fn conversations_of(
        &self,
        user: &UserId,
    ) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        let rows: Vec<(String, Vec<String>)> = sqlx::query_as(
            "SELECT m.conversation_id, array_agg(all_m.user_id ORDER BY all_m.user_id) \
             FROM conversation_members m JOIN conversation_members all_m USING (conversation_id) \
             WHERE m.user_id = $1 GROUP BY m.conversation_id ORDER BY m.conversation_id",
        )
        .bind(user.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

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

    /// First offset of `partition` the persister has not committed.
    pub async fn persisted_next(&self, topic: &str, partition: u32) -> Result<i64, StoreError> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT next_offset FROM persister_offsets WHERE topic = $1 AND kafka_partition = $2",
        )
        .bind(topic)
        .bind(partition as i32)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.0).unwrap_or(0))
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
        .bind(partition as i32)
        .bind(range.start)
        .bind(range.end)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }
}
