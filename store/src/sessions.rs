//! Sessions and last_seen, from the connection events (`<topic>.events`):
//! the persister's rows, and what the messaging server reads back.

use crate::{db_partition, Store, StoreError};
use protocol::{ConnectionEvent, DeviceId, EventKind, ServerId, UserId};
use sqlx::{Postgres, Transaction};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Connection events in column form, with the next offset of each
/// partition of the events topic.
#[derive(Debug, Default)]
pub struct EventBatch {
    opened: Opened,
    closed: Closed,
    /// (session, channel) → subscribed after this batch (the last event wins).
    subs: BTreeMap<(Uuid, String), bool>,
    pub(crate) next: BTreeMap<u32, i64>,
}

#[derive(Debug, Default)]
struct Opened {
    ids: Vec<Uuid>,
    users: Vec<String>,
    devices: Vec<String>,
    servers: Vec<String>,
    incarnations: Vec<Uuid>,
    partitions: Vec<i32>,
    at: Vec<i64>,
}

#[derive(Debug, Default)]
struct Closed {
    ids: Vec<Uuid>,
    users: Vec<String>,
    at: Vec<i64>,
    reasons: Vec<String>,
}

impl EventBatch {
    pub fn is_empty(&self) -> bool {
        self.next.is_empty()
    }

    /// The offset this batch commits for `partition`, if it holds any of it.
    pub fn next_offset(&self, partition: u32) -> Option<i64> {
        self.next.get(&partition).copied()
    }

    /// Moves the partition's position past `offset` without a row.
    pub fn skip(&mut self, partition: u32, offset: i64) {
        self.next.insert(partition, offset + 1);
    }

    /// A `connected` opens a session row, a `disconnected` closes it and
    /// moves the user's last_seen; (un)subscriptions leave no row.
    pub fn add(
        &mut self,
        partition: u32,
        offset: i64,
        e: &ConnectionEvent,
    ) -> Result<(), StoreError> {
        let p = db_partition(partition)?;
        self.skip(partition, offset);
        match e.event {
            EventKind::Connected => {
                let o = &mut self.opened;
                o.ids.push(e.session);
                o.users.push(e.user.to_string());
                o.devices.push(e.device.to_string());
                o.servers.push(e.server.to_string());
                o.incarnations.push(e.incarnation);
                o.partitions.push(p);
                o.at.push(e.at_ms);
            }
            EventKind::Disconnected => {
                let c = &mut self.closed;
                c.ids.push(e.session);
                c.users.push(e.user.to_string());
                c.at.push(e.at_ms);
                let reason = e.reason.map_or("", protocol::DisconnectReason::as_str);
                c.reasons.push(reason.to_owned());
            }
            EventKind::Subscribed | EventKind::Unsubscribed => {
                if let Some(channel) = &e.channel {
                    let on = e.event == EventKind::Subscribed;
                    self.subs.insert((e.session, channel.to_string()), on);
                }
            }
        }
        Ok(())
    }

    /// Writes the rows in `tx`. Idempotent: a session opened twice is one
    /// row, a close only closes an open row, last_seen only moves forward.
    pub(crate) async fn write(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
        let o = &self.opened;
        sqlx::query(
            "INSERT INTO sessions (session_id, user_id, device_id, server_id, incarnation, kafka_partition, connected_at_ms) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[], $6::int4[], $7::int8[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&o.ids)
        .bind(&o.users)
        .bind(&o.devices)
        .bind(&o.servers)
        .bind(&o.incarnations)
        .bind(&o.partitions)
        .bind(&o.at)
        .execute(&mut **tx)
        .await?;
        let c = &self.closed;
        sqlx::query(
            "UPDATE sessions s SET disconnected_at_ms = u.t, reason = u.r \
             FROM UNNEST($1::uuid[], $2::int8[], $3::text[]) AS u(id, t, r) \
             WHERE s.session_id = u.id AND s.disconnected_at_ms IS NULL",
        )
        .bind(&c.ids)
        .bind(&c.at)
        .bind(&c.reasons)
        .execute(&mut **tx)
        .await?;
        self.write_subscriptions(tx).await?;
        sqlx::query(
            "INSERT INTO last_seen (user_id, at_ms) \
             SELECT user_id, max(t) FROM UNNEST($1::text[], $2::int8[]) AS u(user_id, t) GROUP BY user_id \
             ON CONFLICT (user_id) DO UPDATE SET at_ms = GREATEST(last_seen.at_ms, EXCLUDED.at_ms)",
        )
        .bind(&c.users)
        .bind(&c.at)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

impl EventBatch {
    /// Subscriptions made and ended in this batch, then every subscription
    /// of the sessions it closed removed.
    async fn write_subscriptions(
        &self,
        tx: &mut Transaction<'_, Postgres>,
    ) -> Result<(), StoreError> {
        let (on, off): (Vec<_>, Vec<_>) = self.subs.iter().partition(|(_, on)| **on);
        let columns = |v: Vec<(&(Uuid, String), &bool)>| -> (Vec<Uuid>, Vec<String>) {
            v.into_iter().map(|((s, c), _)| (*s, c.clone())).unzip()
        };
        let (on_s, on_c) = columns(on);
        let (off_s, off_c) = columns(off);
        sqlx::query(
            "INSERT INTO session_channels (session_id, channel) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[]) ON CONFLICT DO NOTHING",
        )
        .bind(&on_s)
        .bind(&on_c)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "DELETE FROM session_channels sc USING UNNEST($1::uuid[], $2::text[]) AS u(s, c) \
             WHERE sc.session_id = u.s AND sc.channel = u.c",
        )
        .bind(&off_s)
        .bind(&off_c)
        .execute(&mut **tx)
        .await?;
        sqlx::query("DELETE FROM session_channels WHERE session_id = ANY($1)")
            .bind(&self.closed.ids)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// A session the stored events show open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSession {
    pub session: Uuid,
    pub user: UserId,
    pub device: DeviceId,
    pub server: ServerId,
    pub incarnation: Uuid,
    pub partition: u32,
}

impl Store {
    /// Sessions of `partitions` whose `disconnected` is not stored (yet).
    pub async fn open_sessions(&self, partitions: &[u32]) -> Result<Vec<OpenSession>, StoreError> {
        let parts = partitions
            .iter()
            .map(|p| db_partition(*p))
            .collect::<Result<Vec<i32>, _>>()?;
        let rows: Vec<(Uuid, String, String, String, Uuid, i32)> = sqlx::query_as(
            "SELECT session_id, user_id, device_id, server_id, incarnation, kafka_partition \
             FROM sessions WHERE disconnected_at_ms IS NULL AND kafka_partition = ANY($1)",
        )
        .bind(&parts)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(session, user, device, server, incarnation, p)| {
                let bad = |e: protocol::IdError| StoreError::Row(e.to_string());
                Ok(OpenSession {
                    session,
                    user: UserId::new(&user).map_err(bad)?,
                    device: DeviceId::new(&device).map_err(bad)?,
                    server: ServerId::new(&server).map_err(bad)?,
                    incarnation,
                    partition: p.unsigned_abs(),
                })
            })
            .collect()
    }

    /// Every channel subscription of an open session: (session, user, channel).
    pub async fn open_subscriptions(&self) -> Result<Vec<(Uuid, UserId, String)>, StoreError> {
        let rows: Vec<(Uuid, String, String)> = sqlx::query_as(
            "SELECT sc.session_id, s.user_id, sc.channel FROM session_channels sc \
             JOIN sessions s USING (session_id) WHERE s.disconnected_at_ms IS NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(s, u, c)| Some((s, UserId::new(u).ok()?, c)))
            .collect())
    }

    /// When each of `users` last ended a session (unix ms), for those that have.
    pub async fn last_seen(&self, users: &[UserId]) -> Result<BTreeMap<UserId, i64>, StoreError> {
        let names: Vec<&str> = users.iter().map(UserId::as_str).collect();
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT user_id, at_ms FROM last_seen WHERE user_id = ANY($1)")
                .bind(&names)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(u, t)| Some((UserId::new(&u).ok()?, t)))
            .collect())
    }
}
