//! A rolling upgrade that bumps the record version: a newer release writes
//! a record this one cannot read. Skipping it would move every cursor of its
//! partition past a message nobody delivered. Instead each reader stops at
//! it: the live consumer ends (the server drains and exits, supervised), a
//! resume that reaches it is refused `unavailable` + 4006, and the persister
//! stops with its committed offset before it — so an upgraded release
//! delivers and stores it later, and nothing is lost.

use harness::traffic::post_send;
use harness::{Infra, Stack, WsClient};
use protocol::{MsgId, ServerFrame};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::Arc;
use std::time::Duration;
use switchboard_client::{Client, ClientConfig, Event};

const USER: &str = "ver-bob";

pub async fn a_record_too_new_is_never_skipped(infra: Arc<Infra>) -> anyhow::Result<()> {
    let mut stack = Stack::start(&infra, "versions", 1, true).await?;
    let server = stack.servers[0].url();
    let alice = sender(stack.partitions);
    let mut bob = Client::start(ClientConfig {
        coordinator_url: stack.coordinator.url(),
        token: Stack::token(USER),
        user_id: USER.into(),
        device_id: "phone".into(),
        cursor: None,
        max_backoff: Duration::from_secs(1),
        report_duplicates: false,
        local_address: None,
        refresh: None,
    });
    // Live delivery starts at the welcome: send only once bob has one.
    while !matches!(next(&mut bob).await?, Event::Connected { .. }) {}
    let mut before = Vec::new();
    for i in 0..3 {
        before.push(post(&server, &alice, i).await?);
    }
    let mut got = Vec::new();
    while !before.iter().all(|m| got.contains(m)) {
        if let Event::Message(m) = next(&mut bob).await? {
            got.push(m.msg_id);
        }
    }
    let newer = produce_newer(&infra, &stack).await?;
    let mut after = Vec::new();
    for i in 3..6 {
        after.push(post(&server, &alice, i).await?);
    }
    let ms1 = stack
        .take_server("ms1")
        .ok_or_else(|| anyhow::anyhow!("no ms1"))?;
    ms1.exits_with("kafka-consumer").await?;
    if let Some(persister) = &stack.persister {
        persister.exits_with("newer than this reader").await?;
    }
    // A server of the same (old) release takes over: a resume reaching the
    // record is refused, never replayed past it.
    stack.add_server(|_| {})?;
    stack.wait_settled(1).await?;
    let cursor = bob
        .cursor()
        .ok_or_else(|| anyhow::anyhow!("bob has no cursor"))?;
    let refusal = resume_refusal(&stack, &cursor).await?;
    anyhow::ensure!(
        refusal.contains("newer than this reader"),
        "the resume was refused with {refusal:?}"
    );
    let drained = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            if let Ok(Event::Message(m)) = next(&mut bob).await {
                got.push(m.msg_id);
            }
        }
    });
    let _ = drained.await;
    let cursor = bob
        .cursor()
        .ok_or_else(|| anyhow::anyhow!("bob has no cursor"))?;
    anyhow::ensure!(
        got == before && cursor.offset < newer,
        "delivered past the record too new (offset {newer}): got {got:?}, cursor {cursor}"
    );
    let db = store::Store::connect(&stack.database_url).await?;
    let ids = |v: &[MsgId]| v.iter().map(|m| m.0).collect::<Vec<_>>();
    let (stored_before, stored_after) = (
        db.count_stored(&ids(&before)).await?,
        db.count_stored(&ids(&after)).await?,
    );
    anyhow::ensure!(
        (stored_before, stored_after) == (3, 0),
        "rows before/after the record: {stored_before}/{stored_after}, want 3/0"
    );
    eprintln!("    record v2 at offset {newer}: server and persister stopped at it, a resume refused ({refusal}); 3 delivered and stored before it, 0 after");
    db.close().await;
    bob.close().await;
    stack.stop().await;
    Ok(())
}

async fn next(c: &mut Client) -> anyhow::Result<Event> {
    tokio::time::timeout(Duration::from_secs(20), c.next_event())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the client stopped"))
}

async fn post(server: &str, from: &str, i: usize) -> anyhow::Result<MsgId> {
    let body = serde_json::json!({"client_msg_id": format!("ver{i}"), "to": {"user": USER}, "body": {"i": i}});
    post_send(server, from, &body).await
}

/// A sender whose own partition is bob's: a DM's records go to both users'
/// partitions, and a sender elsewhere would have the persister store the
/// later messages from its own partition's records (that partition holds
/// nothing too new) — a race the check below must not depend on.
fn sender(partitions: u32) -> String {
    let bob = protocol::partition_for(USER, partitions);
    (0..)
        .map(|i| format!("ver-alice{i}"))
        .find(|u| protocol::partition_for(u, partitions) == bob)
        .unwrap_or_default()
}

/// Writes a record of version 2 — another shape altogether — to the user's
/// partition, as a newer release would; returns its offset.
async fn produce_newer(infra: &Infra, stack: &Stack) -> anyhow::Result<i64> {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &infra.kafka)
        .create()?;
    let partition = protocol::partition_for(USER, stack.partitions);
    let payload =
        serde_json::json!({"v": 2, "id": "from-a-newer-release", "to": [USER]}).to_string();
    let record = FutureRecord::to(&stack.topic)
        .partition(i32::try_from(partition)?)
        .key(USER)
        .payload(&payload);
    let delivered = producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)?;
    Ok(delivered.offset)
}

/// Resumes from `cursor` with a raw session: the error message it gets
/// before its close.
async fn resume_refusal(stack: &Stack, cursor: &protocol::Cursor) -> anyhow::Result<String> {
    let (_, ws_url) = stack.route(USER).await?;
    let mut c = WsClient::connect(&ws_url).await?;
    c.hello(&Stack::token(USER), "tablet", Some(cursor.clone()))
        .await?;
    loop {
        match c.frame(Duration::from_secs(15)).await? {
            ServerFrame::Error(e) => {
                let code = c.closed(Duration::from_secs(5)).await?;
                anyhow::ensure!(code == Some(4006), "closed with {code:?} after {e:?}");
                return Ok(e.message);
            }
            ServerFrame::Message(m) => anyhow::bail!("replayed {m:?}"),
            _ => {}
        }
    }
}
