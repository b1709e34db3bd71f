//! The per-stage latency histograms (`switchboard_server_stage_seconds`,
//! docs/operations.md "Metrics to alert on"): one chat message sent over
//! WebSocket and delivered moves the count of every stage.

use harness::{Event, Infra, Stack, WsClient};
use messaging_server::Stage;
use protocol::ServerFrame;
use std::sync::Arc;
use std::time::Duration;

async fn counts(base: &str) -> Vec<f64> {
    let page = harness::scrape(base).await.unwrap_or_default();
    Stage::ALL
        .iter()
        .map(|s| {
            let s = s.as_str();
            let name = format!("switchboard_server_stage_seconds_count{{stage=\"{s}\"}}");
            harness::metric_value(&page, &name).unwrap_or(0.0)
        })
        .collect()
}

async fn connect(stack: &Stack, user: &str) -> anyhow::Result<WsClient> {
    let (_, url) = stack.route(user).await?;
    let mut ws = WsClient::connect(&url).await?;
    match ws.hello(&Stack::token(user), "d1", None).await? {
        Event::Frame(ServerFrame::Welcome(_)) => Ok(ws),
        other => anyhow::bail!("{user}'s hello got {other:?}"),
    }
}

pub async fn a_delivered_message_moves_every_stage(infra: Arc<Infra>) -> anyhow::Result<()> {
    // One server: the sending and the delivering side are the same process.
    let stack = Stack::start(&infra, "stages", 1, false).await?;
    let base = stack.servers[0].url();
    let (mut alice, mut bob) = (
        connect(&stack, "alice").await?,
        connect(&stack, "bob").await?,
    );
    let before = counts(&base).await;
    let send = serde_json::json!({"type": "send", "id": 1, "client_msg_id": "stage-1",
        "to": {"user": "bob"}, "body": {"text": "timed"}});
    alice.send_text(send.to_string()).await?;
    // The sender is a recipient of its own message (protocol.md), so its
    // copy may overtake the ack; one copy at most.
    let mut echoes = 0;
    loop {
        match alice.frame(Duration::from_secs(10)).await? {
            ServerFrame::Ack(_) => break,
            ServerFrame::Message(_) if echoes == 0 => echoes += 1,
            other => anyhow::bail!("the send got {other:?}"),
        }
    }
    match bob.frame(Duration::from_secs(10)).await? {
        ServerFrame::Message(_) => {}
        other => anyhow::bail!("bob got {other:?}"),
    }
    let after = std::sync::Mutex::new(Vec::new());
    let moved = harness::wait_until(
        "every stage counted the message",
        Duration::from_secs(10),
        || async {
            let now = counts(&base).await;
            let all = now.iter().zip(&before).all(|(a, b)| a > b);
            if let Ok(mut last) = after.lock() {
                *last = now;
            }
            all
        },
    )
    .await;
    let after = after.lock().map(|a| a.clone()).unwrap_or_default();
    anyhow::ensure!(
        moved.is_ok(),
        "stage counts {:?} went from {before:?} to {after:?}",
        Stage::ALL.map(Stage::as_str)
    );
    stack.stop().await;
    Ok(())
}
