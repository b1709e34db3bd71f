//! `synced` means caught up: every chat message acknowledged before a
//! resuming device's `hello` arrives in its replay, before `synced`; and a
//! herd of resumes against a busy PostgreSQL waits its turn instead of
//! being sent away.

use harness::{Event, Infra, Stack, WsClient};
use protocol::{Cursor, MsgId, ServerFrame};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Resuming devices at once, one user each.
const HERD: usize = 24;
/// How long the test keeps the delivery rows locked: past the pool's
/// 2-s wait, so a replay queued in the pool would have failed.
const LOCKED_FOR: Duration = Duration::from_secs(5);

/// What one resuming device saw: its replayed messages, whether `synced`
/// came, and when (from the lock), or how it was sent away.
#[derive(Debug)]
struct Resumed {
    replayed: Vec<MsgId>,
    synced_after: Option<Duration>,
    refused: Option<String>,
}

async fn resume_one(stack: &Stack, user: &str, cursor: Cursor, t0: Instant) -> Resumed {
    let mut out = Resumed {
        replayed: Vec::new(),
        synced_after: None,
        refused: None,
    };
    let mut c = match hello(stack, user, Some(cursor)).await {
        Ok((c, _, true)) => c,
        Ok((_, _, false)) => {
            out.refused = Some("not resumed".into());
            return out;
        }
        Err(e) => {
            out.refused = Some(format!("{e:#}"));
            return out;
        }
    };
    loop {
        match c.next(Duration::from_secs(60)).await {
            Ok(Event::Frame(ServerFrame::Message(m))) if m.replay => out.replayed.push(m.msg_id),
            Ok(Event::Frame(ServerFrame::Synced(_))) => {
                out.synced_after = Some(t0.elapsed());
                return out;
            }
            other => {
                out.refused = Some(format!("{other:?}"));
                return out;
            }
        }
    }
}

pub async fn a_resume_herd_waits_for_a_busy_postgres(infra: Arc<Infra>) -> anyhow::Result<()> {
    let stack = Stack::start_with(&infra, "herd", 1, true, |c| {
        c.db_connections = 4;
        c.ping_interval = Duration::from_secs(1);
    })
    .await?;
    let users: Vec<String> = (0..HERD).map(|i| format!("herd{i}")).collect();
    let mut cursors = Vec::new();
    for u in &users {
        cursors.push(hello(&stack, u, None).await?.1);
    }
    let mut sent = Vec::new();
    for u in &users {
        let body = json!({"client_msg_id": format!("to-{u}"), "to": {"user": u}, "body": {}});
        sent.push(harness::traffic::post_send(&stack.servers[0].url(), "herder", &body).await?);
    }
    // Persisted, so each replay reads its message from PostgreSQL.
    let db = sqlx::PgPool::connect(&stack.database_url).await?;
    let persisted = || async {
        let n: Result<(i64,), _> =
            sqlx::query_as("SELECT count(*) FROM deliveries WHERE user_id = ANY($1)")
                .bind(&users)
                .fetch_one(&db)
                .await;
        n.is_ok_and(|(n,)| n as usize == HERD)
    };
    harness::wait_until(
        "each herd message persisted",
        Duration::from_secs(60),
        persisted,
    )
    .await?;

    let mut lock = db.begin().await?;
    sqlx::query("LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await?;
    let t0 = Instant::now();
    let herd = users
        .iter()
        .zip(cursors)
        .map(|(u, c)| resume_one(&stack, u, c, t0));
    let unlock = async {
        tokio::time::sleep(LOCKED_FOR).await;
        lock.commit().await
    };
    let (seen, unlocked) = tokio::join!(futures_util::future::join_all(herd), unlock);
    unlocked?;

    let refused: Vec<_> = seen.iter().filter_map(|r| r.refused.as_ref()).collect();
    let waited = seen
        .iter()
        .filter(|r| r.synced_after.is_some_and(|t| t >= LOCKED_FOR))
        .count();
    let slowest = seen.iter().filter_map(|r| r.synced_after).max();
    eprintln!(
        "    {HERD} resumes, delivery rows locked {LOCKED_FOR:?}: {} synced ({waited} after the lock), {} sent away {:?}; slowest {slowest:?}",
        HERD - refused.len(),
        refused.len(),
        refused.first()
    );
    anyhow::ensure!(
        refused.is_empty(),
        "{} resumes sent away: {refused:?}",
        refused.len()
    );
    for ((u, want), r) in users.iter().zip(&sent).zip(&seen) {
        anyhow::ensure!(
            r.replayed == [*want],
            "{u} replayed {:?}, want [{want}]",
            r.replayed
        );
    }
    anyhow::ensure!(
        waited >= HERD / 2,
        "the lock did not bite: only {waited} of {HERD} synced after it"
    );
    db.close().await;
    stack.stop().await;
    Ok(())
}
