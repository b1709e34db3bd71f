//! A channel recovery that waits on the broker keeps its connection alive:
//! the server pings meanwhile, answers `ping` at once, and the session
//! outlives a wait longer than the server's own silence limit (three ping
//! intervals), on a broker of the test's own, paused.

use crate::channels::{connect, publish, subscribe, token, KEY, T};
use harness::stack::Backing;
use harness::{Infra, Stack};
use protocol::ServerFrame;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PING: Duration = Duration::from_secs(1);

pub async fn a_slow_channel_recovery_keeps_the_connection_alive(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let (broker, kafka) = infra.private_broker("slowrec").await?;
    let backing = Backing::shared(&infra).kafka(&kafka);
    let stack = Stack::start_on(&infra, backing, "slowrec", 1, false, |c| {
        c.api_keys = vec![KEY.to_owned().into()];
        c.ping_interval = PING;
    })
    .await?;
    let urls: Vec<String> = stack.servers.iter().map(|s| s.url()).collect();
    let mut first = connect(&stack, "early", &token("early", &["ch:*"], &[])).await?;
    let (_, before) = subscribe(&mut first, "ch:slow", None).await?;
    let missed = publish(&urls, "ch:slow", "slow-1", "chat").await?;
    let mut c = connect(&stack, "late", &token("late", &["ch:*"], &[])).await?;

    broker.pause().await?;
    let asked = Instant::now();
    let sub = json!({"type": "subscribe", "id": 1, "channel": "ch:slow",
        "cursor": before.cursor.to_string()});
    c.send_text(sub.to_string()).await?;
    c.send_text(json!({"type": "ping", "id": 2}).to_string())
        .await?;
    let un = json!({"type": "unsubscribe", "id": 3, "channel": "ch:other"});
    c.send_text(un.to_string()).await?;
    let pong = c.frame(T).await;
    let pong_after = asked.elapsed();
    let answer = c.frame(Duration::from_secs(20)).await;
    let answered_after = asked.elapsed();
    let pings = c.pings;
    // Kept while the recovery read, handled right after its answer.
    let then = c.frame(T).await;
    broker.unpause().await?;
    eprintln!(
        "    paused broker: pong after {pong_after:?} ({pong:?}); the subscribe answered after {answered_after:?} ({answer:?}), {pings} pings meanwhile; then {then:?}"
    );
    anyhow::ensure!(
        answered_after > PING * 3,
        "the pause did not bite: the subscribe was answered after {answered_after:?}"
    );
    anyhow::ensure!(
        matches!(pong, Ok(ServerFrame::Pong(_))) && pong_after < PING,
        "the ping was not answered during the recovery's wait"
    );
    anyhow::ensure!(answer.is_ok(), "no answer to the subscribe");
    anyhow::ensure!(
        matches!(then, Ok(ServerFrame::Unsubscribed(ref u)) if u.id == Some(json!(3))),
        "the frame sent during the recovery was not handled after it"
    );
    // One ping a second, the first a second in; slack for a loaded machine.
    let quiet_secs = answered_after.as_secs().saturating_sub(2).max(2);
    anyhow::ensure!(
        pings as u64 >= quiet_secs,
        "{pings} pings in {answered_after:?}: the server fell silent"
    );

    // The same session recovers once the broker is back (librdkafka
    // reconnects at its own pace).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (recovered, s) = loop {
        match subscribe(&mut c, "ch:slow", Some(&before.cursor)).await {
            Ok(r) => break r,
            Err(e) if Instant::now() < deadline => eprintln!("    not yet: {e:#}"),
            Err(e) => return Err(e),
        }
    };
    let ids: Vec<_> = recovered.iter().map(|m| m.msg_id).collect();
    anyhow::ensure!(
        s.recovered && ids == [missed],
        "recovered {ids:?} of {missed:?}: {s:?}"
    );
    stack.stop().await;
    let _ = broker.rm().await;
    Ok(())
}
