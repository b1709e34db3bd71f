//! `synced` means caught up: every chat message acknowledged before a
//! resuming device's `hello` arrives in its replay, before `synced`.

use harness::{Event, Infra, Stack, WsClient};
use protocol::{Cursor, MsgId, ServerFrame};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

const ROUNDS: usize = 20;
const BURST: usize = 10;

async fn hello(
    stack: &Stack,
    user: &str,
    cursor: Option<Cursor>,
) -> anyhow::Result<(WsClient, Cursor, bool)> {
    let (_, ws_url) = stack.route(user).await?;
    let mut c = WsClient::connect(&ws_url).await?;
    match c.hello(&Stack::token(user), "d", cursor).await? {
        Event::Frame(ServerFrame::Welcome(w)) => Ok((c, w.cursor, w.resumed)),
        other => anyhow::bail!("expected welcome, got {other:?}"),
    }
}

/// `BURST` DMs sent at once through the server that does not serve `to`.
async fn burst(stack: &Stack, to: &str, round: usize) -> anyhow::Result<Vec<MsgId>> {
    let (owner, _) = stack.route(to).await?;
    let via = stack
        .servers
        .iter()
        .map(|s| s.url())
        .find(|u| Some(u.clone()) != stack.server_http(&owner))
        .ok_or_else(|| anyhow::anyhow!("no server other than {owner} to send through"))?;
    let http = reqwest::Client::new();
    let sends = (0..BURST).map(|i| {
        let body =
            json!({"client_msg_id": format!("r{round}-{i}"), "to": {"user": to}, "body": {"i": i}});
        let req = http
            .post(format!("{via}/v1/messages"))
            .bearer_auth(Stack::token("burster"))
            .json(&body);
        async move {
            let r = req.send().await?.error_for_status()?;
            anyhow::Ok(r.json::<protocol::Accepted>().await?.msg_id)
        }
    });
    futures_util::future::try_join_all(sends).await
}

pub async fn synced_follows_everything_acked_before_hello(infra: Arc<Infra>) -> anyhow::Result<()> {
    let stack = Stack::start(&infra, "seam", 2, false).await?;
    let (first, mut cursor, _) = hello(&stack, "seamer", None).await?;
    drop(first);
    for round in 0..ROUNDS {
        let mut acked = burst(&stack, "seamer", round).await?;
        let (mut c, _, resumed) = hello(&stack, "seamer", Some(cursor.clone())).await?;
        anyhow::ensure!(resumed, "round {round}: not resumed");
        let mut replayed = Vec::new();
        loop {
            match c.frame(Duration::from_secs(10)).await? {
                ServerFrame::Message(m) if m.replay => {
                    cursor = m.cursor.clone().unwrap_or(cursor);
                    replayed.push(m.msg_id);
                }
                ServerFrame::Synced(s) => {
                    cursor = s.cursor.clone();
                    break;
                }
                other => anyhow::bail!("round {round}: before synced came {other:?}"),
            }
        }
        acked.sort();
        replayed.sort();
        anyhow::ensure!(
            replayed == acked,
            "round {round}: {} of {BURST} acknowledged messages replayed before synced",
            replayed.len()
        );
    }
    eprintln!("    {ROUNDS} rounds of {BURST} sends acknowledged right before a resume: all replayed before synced");
    stack.stop().await;
    Ok(())
}
