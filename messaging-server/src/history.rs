//! History pages that read their own writes: a conversation's rows in
//! PostgreSQL, plus the chat records of the caller's partition that the
//! persister has not written yet (docs/protocol.md, "History"). An
//! acknowledged send is in the log, so it is in the very next page.

use crate::session::ReplaySource;
use protocol::api::HistoryMessage;
use protocol::{ConversationId, Record, UserId};
use std::collections::HashSet;
use std::future::Future;

/// Offsets of the log read at most past the persister's position: a
/// persister this far behind is an outage, and a page waits for it there.
pub const MAX_UNSTORED: i64 = 10_000;

/// A page position: newer than nothing (`None`) or strictly older than
/// `(sent_at_ms, msg_id)`.
pub type Before = Option<(i64, uuid::Uuid)>;

/// The caller's chat records of `conversation` between the persister's
/// position in `partition` and `log_end`.
pub async fn unstored(
    source: &impl ReplaySource,
    user: &UserId,
    partition: u32,
    conversation: &ConversationId,
    log_end: i64,
) -> anyhow::Result<Vec<HistoryMessage>> {
    let from = source
        .persisted_next(partition)
        .await?
        .max(log_end - MAX_UNSTORED);
    if from >= log_end {
        return Ok(Vec::new());
    }
    let records = source.logged(user, partition, from..log_end).await?;
    Ok(records
        .into_iter()
        .filter(|(_, r)| r.conversation_id == *conversation)
        .map(|(_, r)| from_record(r))
        .collect())
}

fn from_record(r: Record) -> HistoryMessage {
    HistoryMessage {
        msg_id: r.msg_id,
        conversation_id: r.conversation_id,
        from: r.sender,
        from_device: r.sender_device,
        body: r.body,
        sent_at_ms: r.sent_at_ms,
    }
}

fn key(m: &HistoryMessage) -> (i64, uuid::Uuid) {
    (m.sent_at_ms, m.msg_id.0)
}

/// One page: the log's unstored tail, then PostgreSQL's rows, merged. In
/// this order because the persister commits its position with its rows: a
/// record it writes between the two reads is then in the rows, where the
/// other order would miss it in both (CI saw 24 of 25 once).
pub async fn page<E>(
    rows: impl Future<Output = Result<Vec<HistoryMessage>, E>>,
    tail: impl Future<Output = Vec<HistoryMessage>>,
    before: Before,
    limit: usize,
) -> Result<Vec<HistoryMessage>, E> {
    let tail = tail.await;
    let stored = rows.await?;
    Ok(merge(stored, tail, before, limit))
}

/// One page, newest first: the stored rows and the unstored records
/// together, each msg_id once, older than `before`, at most `limit`.
pub fn merge(
    stored: Vec<HistoryMessage>,
    unstored: Vec<HistoryMessage>,
    before: Before,
    limit: usize,
) -> Vec<HistoryMessage> {
    let mut all: Vec<HistoryMessage> = stored
        .into_iter()
        .chain(unstored)
        .filter(|m| before.is_none_or(|b| key(m) < b))
        .collect();
    all.sort_by_key(|m| std::cmp::Reverse(key(m)));
    let mut seen = HashSet::new();
    all.retain(|m| seen.insert(m.msg_id));
    all.truncate(limit);
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use protocol::{DeviceId, MsgId};

    fn msg(at: i64, id: u128) -> HistoryMessage {
        HistoryMessage {
            msg_id: MsgId(uuid::Uuid::from_u128(id)),
            conversation_id: ConversationId::new("room").unwrap(),
            from: UserId::new("alice").unwrap(),
            from_device: DeviceId::new("phone").unwrap(),
            body: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            sent_at_ms: at,
        }
    }

    fn ids(page: &[HistoryMessage]) -> Vec<u128> {
        page.iter().map(|m| m.msg_id.0.as_u128()).collect()
    }

    #[test]
    fn unstored_records_join_the_page_once_and_in_order() {
        let stored = vec![msg(30, 3), msg(20, 2), msg(10, 1)];
        let unstored = vec![msg(30, 3), msg(40, 4), msg(50, 5)];
        assert_eq!(
            ids(&merge(stored.clone(), unstored.clone(), None, 10)),
            [5, 4, 3, 2, 1]
        );
        assert_eq!(
            ids(&merge(stored.clone(), unstored.clone(), None, 2)),
            [5, 4]
        );
        let before = Some((40, uuid::Uuid::from_u128(4)));
        assert_eq!(ids(&merge(stored, unstored, before, 10)), [3, 2, 1]);
    }

    /// Bob's `room` records at offsets `0..end`, the persister having
    /// written those before `persisted`; it writes the rest right after
    /// whichever side is read first, the race a page must survive.
    struct Racing {
        end: i64,
        persisted: std::sync::atomic::AtomicI64,
    }

    impl Racing {
        fn persister_catches_up(&self) -> i64 {
            self.persisted
                .swap(self.end, std::sync::atomic::Ordering::SeqCst)
        }

        async fn rows(&self) -> Result<Vec<HistoryMessage>, String> {
            let written = self.persister_catches_up();
            Ok((0..written).rev().map(|o| msg(o, o as u128)).collect())
        }
    }

    impl ReplaySource for Racing {
        async fn log_start(&self, _: u32) -> anyhow::Result<i64> {
            Ok(0)
        }

        async fn persisted_next(&self, _: u32) -> anyhow::Result<i64> {
            Ok(self.persister_catches_up())
        }

        async fn stored(
            &self,
            _: &UserId,
            _: u32,
            _: std::ops::Range<i64>,
        ) -> anyhow::Result<Vec<store::StoredMessage>> {
            anyhow::bail!("a history page reads rows by conversation, not deliveries")
        }

        async fn logged(
            &self,
            _: &UserId,
            _: u32,
            range: std::ops::Range<i64>,
        ) -> anyhow::Result<Vec<(i64, Record)>> {
            let bob = ["bob"];
            Ok(range
                .map(|o| {
                    let mut r = crate::hub::tests::record(protocol::Kind::Chat, "alice", "p", &bob);
                    r.msg_id = MsgId(uuid::Uuid::from_u128(o as u128));
                    r.sent_at_ms = o;
                    (o, r)
                })
                .collect())
        }
    }

    #[tokio::test]
    async fn a_record_persisted_between_the_two_reads_is_on_the_page() {
        let log = Racing {
            end: 25,
            persisted: 10.into(),
        };
        let (bob, room) = (
            UserId::new("bob").unwrap(),
            ConversationId::new("room").unwrap(),
        );
        let tail = async {
            unstored(&log, &bob, 0, &room, log.end)
                .await
                .unwrap_or_default()
        };
        let got = page(log.rows(), tail, None, 100).await.unwrap();
        assert_eq!(ids(&got), (0..25).rev().collect::<Vec<u128>>());
    }

    proptest! {
        /// Paging through the merge with `next_before` visits every message
        /// exactly once, newest first, whatever overlaps the two sides have.
        #[test]
        fn paging_visits_every_message_once(
            stored in proptest::collection::btree_set((0i64..50, 0u128..200), 0..40),
            extra in proptest::collection::btree_set((0i64..50, 0u128..200), 0..20),
            limit in 1usize..7,
        ) {
            // A msg_id has one sent_at_ms wherever it is read from.
            let mut at = std::collections::HashMap::new();
            for (t, id) in stored.iter().chain(&extra) {
                at.entry(*id).or_insert(*t);
            }
            let side = |s: &std::collections::BTreeSet<(i64, u128)>| {
                s.iter().map(|(_, id)| msg(at[id], *id)).collect::<Vec<_>>()
            };
            let (stored, extra) = (side(&stored), side(&extra));
            let mut want: Vec<(i64, u128)> = at.iter().map(|(id, t)| (*t, *id)).collect();
            want.sort_by(|a, b| b.cmp(a));
            let mut got = Vec::new();
            let mut before = None;
            loop {
                // PostgreSQL answers its own page (LIMIT), the log its tail.
                let pg = merge(stored.clone(), Vec::new(), before, limit);
                let page = merge(pg, extra.clone(), before, limit);
                got.extend(page.iter().map(|m| (m.sent_at_ms, m.msg_id.0.as_u128())));
                match page.last() {
                    Some(last) if page.len() == limit => before = Some(key(last)),
                    _ => break,
                }
            }
            prop_assert_eq!(got, want);
        }
    }
}
