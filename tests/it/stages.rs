//! The per-stage latency histograms (`switchboard_server_stage_seconds`,
//! docs/operations.md "Metrics to alert on"): one chat message sent over
//! WebSocket and delivered moves the count of every stage; the device
//! resuming after it moves every session start step
//! (`switchboard_server_session_start_seconds`).

use harness::{Event, Infra, Stack, WsClient};
use messaging_server::{Stage, StartStep};
use protocol::ServerFrame;
use std::sync::Arc;
use std::time::Duration;

/// The count of each of `series`' histograms (`name{label="…"}`).
async fn histogram_counts(base: &str, name: &str, label: &str, values: &[&str]) -> Vec<f64> {
    let page = harness::scrape(base).await.unwrap_or_default();
    values
        .iter()
        .map(|v| {
            let series = format!("{name}_count{{{label}=\"{v}\"}}");
            harness::metric_value(&page, &series).unwrap_or(0.0)
        })
        .collect()
}

async fn counts(base: &str) -> Vec<f64> {
    let stages = Stage::ALL.map(Stage::as_str);
    histogram_counts(base, "switchboard_server_stage_seconds", "stage", &stages).await
}

async fn step_counts(base: &str) -> Vec<f64> {
    let steps = StartStep::ALL.map(StartStep::as_str);
    histogram_counts(
        base,
        "switchboard_server_session_start_seconds",
        "step",
        &steps,
    )
    .await
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
    let cursor = match bob.frame(Duration::from_secs(10)).await? {
        ServerFrame::Message(m) => m.cursor,
        other => anyhow::bail!("bob got {other:?}"),
    };
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
    resume_moves_every_start_step(&stack, bob, cursor).await?;
    stack.stop().await;
    Ok(())
}

/// Bob's device comes back with its cursor: open, caught up, welcomed and
/// synced are each timed once more.
async fn resume_moves_every_start_step(
    stack: &Stack,
    bob: WsClient,
    cursor: Option<protocol::Cursor>,
) -> anyhow::Result<()> {
    let base = stack.servers[0].url();
    let before = step_counts(&base).await;
    drop(bob);
    let (_, url) = stack.route("bob").await?;
    let mut ws = WsClient::connect(&url).await?;
    match ws.hello(&Stack::token("bob"), "d1", cursor).await? {
        Event::Frame(ServerFrame::Welcome(w)) if w.resumed => {}
        other => anyhow::bail!("bob's resume got {other:?}"),
    }
    loop {
        match ws.frame(Duration::from_secs(10)).await? {
            ServerFrame::Synced(_) => break,
            ServerFrame::Message(_) => {}
            other => anyhow::bail!("bob's resume got {other:?}"),
        }
    }
    // The server times a step just after writing it: poll, briefly.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let after = step_counts(&base).await;
        if after.iter().zip(&before).all(|(a, b)| a > b) {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "session start counts {:?} went from {before:?} to {after:?}",
            StartStep::ALL.map(StartStep::as_str)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
