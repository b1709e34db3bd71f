//! The per-stage latency histograms (`switchboard_server_stage_seconds`,
//! docs/operations.md "Metrics to alert on"): one chat message sent over
//! WebSocket and delivered moves the count of every stage; the device
//! resuming after it moves every session start step
//! (`switchboard_server_session_start_seconds`); its consumed run is
//! counted (`switchboard_server_consumed_run_records`).

use harness::{Event, Infra, Stack, WsClient};
use messaging_server::{Stage, StartStep};
use protocol::ServerFrame;
use std::sync::Arc;
use std::time::Duration;

/// A histogram family's name, its label and the label's values.
type Family = (&'static str, &'static str, Vec<&'static str>);

fn stages() -> Family {
    let values = Stage::ALL.map(Stage::as_str).to_vec();
    ("switchboard_server_stage_seconds", "stage", values)
}

fn steps() -> Family {
    let values = StartStep::ALL.map(StartStep::as_str).to_vec();
    ("switchboard_server_session_start_seconds", "step", values)
}

/// The count of each of `family`'s histograms (`name{label="…"}`).
async fn counts(base: &str, (name, label, values): &Family) -> Vec<f64> {
    let page = harness::scrape(base).await.unwrap_or_default();
    values
        .iter()
        .map(|v| {
            let series = format!("{name}_count{{{label}=\"{v}\"}}");
            harness::metric_value(&page, &series).unwrap_or(0.0)
        })
        .collect()
}

/// Runs the consumer handed to delivery (`switchboard_server_consumed_run_records`).
async fn run_count(base: &str) -> f64 {
    let page = harness::scrape(base).await.unwrap_or_default();
    harness::metric_value(&page, "switchboard_server_consumed_run_records_count").unwrap_or(0.0)
}

/// Waits (the server observes just after writing) until every histogram of
/// `family` counted more than `before`; says which did not.
async fn wait_all_moved(base: &str, family: &Family, before: &[f64]) -> anyhow::Result<()> {
    let after = std::sync::Mutex::new(Vec::new());
    let moved = harness::wait_until("every count moved", Duration::from_secs(10), || async {
        let now = counts(base, family).await;
        let all = now.iter().zip(before).all(|(a, b)| a > b);
        if let Ok(mut last) = after.lock() {
            *last = now;
        }
        all
    })
    .await;
    let after = after.lock().map(|a| a.clone()).unwrap_or_default();
    anyhow::ensure!(
        moved.is_ok(),
        "{} counts {:?} went from {before:?} to {after:?}",
        family.0,
        family.2
    );
    Ok(())
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
    let before = counts(&base, &stages()).await;
    let runs_before = run_count(&base).await;
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
    wait_all_moved(&base, &stages(), &before).await?;
    // Observed just before `queued`, which has moved.
    let runs = run_count(&base).await;
    anyhow::ensure!(
        runs > runs_before,
        "consumed runs counted {runs_before} before the message and {runs} after"
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
    let before = counts(&base, &steps()).await;
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
    wait_all_moved(&base, &steps(), &before).await
}
