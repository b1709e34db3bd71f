//! The store's SQL against the suite's real PostgreSQL, without the rest
//! of the stack: a fresh database per test, migrated, written and read
//! through `store::Store` only.

use harness::Infra;
use protocol::{ConversationId, DeviceId, Kind, MsgId, Record, UserId};
use serde_json::value::RawValue;
use std::sync::Arc;
use store::{RowBatch, Store};
use tokio_util::sync::CancellationToken;

async fn fresh(infra: &Infra) -> anyhow::Result<Store> {
    let store = Store::connect(&infra.database("store").await?).await?;
    anyhow::ensure!(store.migrate(&CancellationToken::new()).await, "migrations");
    Ok(store)
}

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Chat message `n` of `room` sent at `n` ms, to `to`.
fn record(n: u128, room: &ConversationId, to: &[&str]) -> anyhow::Result<Record> {
    Ok(Record {
        v: 1,
        msg_id: MsgId(uuid::Uuid::from_u128(n)),
        kind: Kind::Chat,
        conversation_id: room.clone(),
        sender: uid("alice"),
        sender_device: DeviceId::new("phone")?,
        recipients: to.iter().map(|u| uid(u)).collect(),
        body: RawValue::from_string(format!("{{\"n\":{n}}}"))?,
        sent_at_ms: i64::try_from(n)?,
    })
}

/// Writing the same batch twice (a restart, a second replica) stores each
/// message and delivery once; the stored offset never moves back; a user's
/// deliveries read back in offset order with their bodies.
pub async fn a_batch_written_twice_is_stored_once_and_offsets_only_advance(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let store = fresh(&infra).await?;
    let room = ConversationId::new("room")?;
    let mut batch = RowBatch::default();
    for n in 0..10u128 {
        let offset = 100 + i64::try_from(n)?;
        batch.add(3, offset, &record(n, &room, &["alice", "bob"])?)?;
    }
    batch.skip(3, 110);
    store.write_batch("t", &batch).await?;
    store.write_batch("t", &batch).await?;
    let counts = store.counts().await?;
    anyhow::ensure!(
        (counts.messages, counts.distinct_msg_ids, counts.deliveries) == (10, 10, 20),
        "stored {counts:?}, want 10 messages and 20 deliveries"
    );
    anyhow::ensure!(store.persisted_next("t", 3).await? == 111);
    let mut older = RowBatch::default();
    older.add(3, 100, &record(0, &room, &["alice", "bob"])?)?;
    store.write_batch("t", &older).await?;
    anyhow::ensure!(
        store.persisted_next("t", 3).await? == 111,
        "an older batch moved the offset back"
    );
    let bob = store.deliveries(&uid("bob"), 3, 104..107).await?;
    let offsets: Vec<i64> = bob.iter().map(|m| m.kafka_offset).collect();
    anyhow::ensure!(offsets == [104, 105, 106], "bob's deliveries {offsets:?}");
    let body = bob.first().map(|m| m.body.as_str());
    anyhow::ensure!(body == Some(r#"{"n":4}"#), "stored as sent: {body:?}");
    let mut found = store
        .deliveries_by_body_field("n", &["4".into(), "11".into()])
        .await?;
    found.sort_by(|a, b| a.user.cmp(&b.user));
    let found: Vec<_> = found
        .iter()
        .map(|d| (d.value.as_str(), d.user.as_str(), d.partition, d.offset))
        .collect();
    anyhow::ensure!(
        found == [("4", "alice", 3, 104), ("4", "bob", 3, 104)],
        "found by body field: {found:?}"
    );
    Ok(())
}

/// History pages walk back through a conversation by (sent_at, msg_id),
/// each message once; conversations and their members read back typed.
pub async fn history_pages_and_conversations_read_back(infra: Arc<Infra>) -> anyhow::Result<()> {
    let store = fresh(&infra).await?;
    let room = ConversationId::new("team")?;
    let created = store
        .create_conversation(&room, &uid("alice"), &[uid("alice"), uid("bob")])
        .await?;
    anyhow::ensure!(created, "created");
    anyhow::ensure!(
        !store
            .create_conversation(&room, &uid("carol"), &[uid("carol")])
            .await?,
        "an id is taken once"
    );
    store.add_member(&room, &uid("carol")).await?;
    let mine = store.conversations_of(&uid("carol")).await?;
    anyhow::ensure!(
        mine == [(room.clone(), vec![uid("alice"), uid("bob"), uid("carol")])],
        "carol's conversations {mine:?}"
    );
    let mut batch = RowBatch::default();
    for n in 0..25u128 {
        batch.add(0, i64::try_from(n)?, &record(n, &room, &["alice"])?)?;
    }
    store.write_batch("t", &batch).await?;
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = store.history(&room, before, 10).await?;
        let Some(last) = page.last() else { break };
        before = Some((last.sent_at_ms, last.msg_id));
        seen.extend(page.iter().map(|m| m.sent_at_ms));
    }
    let want: Vec<i64> = (0..25).rev().collect();
    anyhow::ensure!(seen == want, "history {seen:?}");
    Ok(())
}

fn event(session: u128, kind: protocol::EventKind, at_ms: i64) -> protocol::ConnectionEvent {
    protocol::ConnectionEvent {
        v: 1,
        event: kind,
        user: uid(if session % 2 == 0 { "even" } else { "odd" }),
        device: DeviceId::new("phone").unwrap_or_else(|e| panic!("{e}")),
        session: uuid::Uuid::from_u128(session),
        server: protocol::ServerId::new("ms-1").unwrap_or_else(|e| panic!("{e}")),
        incarnation: uuid::Uuid::from_u128(99),
        at_ms,
        reason: (kind == protocol::EventKind::Disconnected)
            .then_some(protocol::DisconnectReason::Drain),
        channel: None,
    }
}

/// Connection events: a session opened and closed in one batch is stored
/// closed; a batch written twice changes nothing; a close seen again later
/// does not reopen or move anything; last_seen never moves back; the
/// events topic's offset is its own.
pub async fn sessions_and_last_seen_from_connection_events(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    use protocol::EventKind::{Connected, Disconnected, Subscribed};
    let store = fresh(&infra).await?;
    let mut batch = RowBatch::default();
    let events = [
        event(1, Connected, 10),
        event(2, Connected, 11),
        event(1, Subscribed, 12),
        event(1, Disconnected, 50),
        event(3, Connected, 13),
    ];
    for (i, e) in events.iter().enumerate() {
        batch.events.add(5, 20 + i64::try_from(i)?, e)?;
    }
    store.write_batch("t", &batch).await?;
    store.write_batch("t", &batch).await?;
    let open: Vec<u128> = store
        .open_sessions(&[5])
        .await?
        .iter()
        .map(|s| s.session.as_u128())
        .collect();
    anyhow::ensure!(
        open.len() == 2 && open.contains(&2) && open.contains(&3),
        "open {open:?}"
    );
    anyhow::ensure!(store.persisted_next("t.events", 5).await? == 25);
    anyhow::ensure!(
        store.persisted_next("t", 5).await? == 0,
        "the users' topic untouched"
    );
    let mut later = RowBatch::default();
    later.events.add(5, 25, &event(2, Disconnected, 40))?;
    store.write_batch("t", &later).await?;
    anyhow::ensure!(
        store.open_sessions(&[5]).await?.len() == 1,
        "session 3 open"
    );
    // A session of "even" that ended earlier (a late reader): never back.
    let mut older = RowBatch::default();
    older.events.add(5, 26, &event(4, Connected, 5))?;
    older.events.add(5, 27, &event(4, Disconnected, 30))?;
    store.write_batch("t", &older).await?;
    let seen = store
        .last_seen(&[uid("odd"), uid("even"), uid("nobody")])
        .await?;
    anyhow::ensure!(
        seen.get(&uid("odd")) == Some(&50) && seen.get(&uid("even")) == Some(&40),
        "{seen:?}"
    );
    anyhow::ensure!(!seen.contains_key(&uid("nobody")));
    anyhow::ensure!(
        store.open_sessions(&[5]).await?.len() == 1,
        "session 4 closed"
    );
    Ok(())
}

/// Presence contacts: members of a shared group, and a DM partner only
/// once that partner has written (a stranger's DM makes nobody visible to
/// the stranger).
pub async fn contacts_are_group_members_and_dm_partners_who_wrote(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let store = fresh(&infra).await?;
    let room = ConversationId::new("club")?;
    store
        .create_conversation(&room, &uid("ann"), &[uid("ann"), uid("ben")])
        .await?;
    let dm = ConversationId::direct(&uid("ann"), &uid("cat"));
    let mut batch = RowBatch::default();
    let mut from_cat = record(1, &dm, &["ann"])?;
    from_cat.sender = uid("cat");
    let mut from_ann_to_dan = record(
        2,
        &ConversationId::direct(&uid("ann"), &uid("dan")),
        &["dan"],
    )?;
    from_ann_to_dan.sender = uid("ann");
    batch.add(0, 0, &from_cat)?;
    batch.add(0, 1, &from_ann_to_dan)?;
    store.write_batch("t", &batch).await?;
    let others = [uid("ben"), uid("cat"), uid("dan"), uid("eve")];
    let ann = store.contacts_among(&uid("ann"), &others).await?;
    let mut got: Vec<&str> = ann.iter().map(UserId::as_str).collect();
    got.sort_unstable();
    anyhow::ensure!(got == ["ben", "cat"], "ann's contacts: {got:?}");
    let cat = store.contacts_among(&uid("cat"), &[uid("ann")]).await?;
    anyhow::ensure!(
        cat.is_empty(),
        "cat wrote to ann, ann never to cat: {cat:?}"
    );
    let dan = store.contacts_among(&uid("dan"), &[uid("ann")]).await?;
    anyhow::ensure!(dan.len() == 1, "ann wrote to dan: {dan:?}");
    Ok(())
}

/// Channel subscriptions of open sessions: the last event of a batch wins
/// for a (session, channel); a session's disconnect removes all of its
/// subscriptions; closed sessions' never come back.
pub async fn open_subscriptions_follow_subscribe_unsubscribe_and_disconnect(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    use protocol::EventKind::{Connected, Disconnected, Subscribed, Unsubscribed};
    let store = fresh(&infra).await?;
    let on = |s: u128, kind, ch: &str| -> anyhow::Result<protocol::ConnectionEvent> {
        Ok(protocol::ConnectionEvent {
            channel: Some(protocol::ChannelName::new(ch)?),
            ..event(s, kind, 1)
        })
    };
    let mut batch = RowBatch::default();
    let events = [
        event(1, Connected, 1),
        event(2, Connected, 1),
        on(1, Subscribed, "ch:a")?,
        on(1, Subscribed, "ch:b")?,
        on(1, Unsubscribed, "ch:b")?,
        on(2, Subscribed, "ch:a")?,
        on(2, Subscribed, "ch:c")?,
    ];
    for (i, e) in events.iter().enumerate() {
        batch.events.add(0, i64::try_from(i)?, e)?;
    }
    store.write_batch("t", &batch).await?;
    let mut subs: Vec<(u128, String)> = store
        .open_subscriptions()
        .await?
        .into_iter()
        .map(|(s, _, c)| (s.as_u128(), c))
        .collect();
    subs.sort();
    let want = [(1, "ch:a"), (2, "ch:a"), (2, "ch:c")].map(|(s, c)| (s, c.to_owned()));
    anyhow::ensure!(subs == want, "{subs:?}");
    let mut later = RowBatch::default();
    later.events.add(0, 10, &event(2, Disconnected, 5))?;
    later.events.add(0, 11, &on(1, Unsubscribed, "ch:a")?)?;
    store.write_batch("t", &later).await?;
    let left = store.open_subscriptions().await?;
    anyhow::ensure!(left.is_empty(), "{left:?}");
    Ok(())
}
