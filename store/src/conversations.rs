//! Conversations and their members.

use crate::{Store, StoreError};
use protocol::{ConversationId, UserId};

impl Store {
    /// Members of a group conversation; `None` if it does not exist.
    pub async fn members(&self, id: &ConversationId) -> Result<Option<Vec<UserId>>, StoreError> {
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT c.conversation_id, m.user_id FROM conversations c \
             LEFT JOIN conversation_members m USING (conversation_id) WHERE c.conversation_id = $1",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok((!rows.is_empty()).then(|| {
            rows.into_iter()
                .filter_map(|(_, u)| u.and_then(|u| UserId::new(u).ok()))
                .collect()
        }))
    }

    /// Creates a conversation; `false` if the id is taken.
    pub async fn create_conversation(
        &self,
        id: &ConversationId,
        creator: &UserId,
        members: &[UserId],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let created = sqlx::query(
            "INSERT INTO conversations (conversation_id, created_by) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(id.as_str())
        .bind(creator.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if created {
            let users: Vec<&str> = members.iter().map(UserId::as_str).collect();
            sqlx::query(
                "INSERT INTO conversation_members (conversation_id, user_id) \
                 SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
            )
            .bind(id.as_str())
            .bind(&users)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(created)
    }

    pub async fn add_member(&self, id: &ConversationId, user: &UserId) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO conversation_members (conversation_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(id.as_str())
        .bind(user.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// `false` if the user was not a member.
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
        Ok(n > 0)
    }

    /// The user's group conversations with their members, by id.
    pub async fn conversations_of(
        &self,
        user: &UserId,
    ) -> Result<Vec<(ConversationId, Vec<UserId>)>, StoreError> {
        let rows: Vec<(String, Vec<String>)> = sqlx::query_as(
            "SELECT m.conversation_id, array_agg(all_m.user_id ORDER BY all_m.user_id) \
             FROM conversation_members m JOIN conversation_members all_m USING (conversation_id) \
             WHERE m.user_id = $1 GROUP BY m.conversation_id ORDER BY m.conversation_id",
        )
        .bind(user.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, members)| {
                let members = members
                    .into_iter()
                    .map(UserId::new)
                    .collect::<Result<_, _>>()
                    .map_err(|e| StoreError::Row(format!("conversation {id}: {e}")))?;
                let id = ConversationId::new(id.as_str())
                    .map_err(|e| StoreError::Row(format!("conversation {id}: {e}")))?;
                Ok((id, members))
            })
            .collect()
    }

    /// Which of `others` are `user`'s contacts: members of a group
    /// conversation with `user`, or users who have written to `user` in
    /// their direct conversation (a stranger's DM makes nobody a contact of
    /// the stranger).
    pub async fn contacts_among(
        &self,
        user: &UserId,
        others: &[UserId],
    ) -> Result<std::collections::HashSet<UserId>, StoreError> {
        let names: Vec<&str> = others.iter().map(UserId::as_str).collect();
        let dms: Vec<String> = others
            .iter()
            .map(|o| ConversationId::direct(user, o).to_string())
            .collect();
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT other.user_id FROM conversation_members me \
             JOIN conversation_members other USING (conversation_id) \
             WHERE me.user_id = $1 AND other.user_id = ANY($2) \
             UNION \
             SELECT DISTINCT sender FROM messages WHERE conversation_id = ANY($3) AND sender = ANY($2)",
        )
        .bind(user.as_str())
        .bind(&names)
        .bind(&dms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(u,)| UserId::new(u).ok())
            .collect())
    }
}
