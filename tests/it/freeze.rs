//! A server frozen (SIGSTOP) for longer than its freeze limit but not long
//! enough to lose its lease wakes, closes every session (4006: what it read
//! while stopped is stale), and serves its partitions again at once: the
//! map did not change, so every partition it owned is still its own. (The
//! storm bench found a woken server that never reopened such a partition:
//! its devices were sent away as "moved" to the same server for minutes.)

use harness::{free_port, wait_until, Event, Infra, Stack, WsClient};
use protocol::{partition_for, ServerFrame, ServerId};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Freeze limit = half the TTL (15 s); keep-alives every third (10 s): the
/// lease outlives a 16-s freeze by at least 4 s.
const LEASE_TTL_SECS: u64 = 30;
const FREEZE: Duration = Duration::from_secs(16);
/// A woken server serves its partitions again within this.
const SERVED_WITHIN: Duration = Duration::from_secs(10);
const NAME: &str = "frozen";

/// Users whose partition `frozen` owns, one per partition it owns.
async fn its_users(stack: &Stack) -> anyhow::Result<Vec<String>> {
    let a = stack.assignment().await?;
    let id = ServerId::new(NAME)?;
    let mut users: Vec<(u32, String)> = Vec::new();
    for u in (0..4000).map(|i| format!("fz{i}")) {
        let p = partition_for(&u, a.partitions);
        if a.is_owner(p, &id) && !users.iter().any(|(q, _)| *q == p) {
            users.push((p, u));
        }
    }
    anyhow::ensure!(!users.is_empty(), "{NAME} owns no partition");
    Ok(users.into_iter().map(|(_, u)| u).collect())
}

async fn welcomed(ws_url: &str, user: &str) -> anyhow::Result<WsClient> {
    let mut c = WsClient::connect(ws_url).await?;
    match c.hello(&Stack::token(user), "d", None).await? {
        Event::Frame(ServerFrame::Welcome(_)) => Ok(c),
        other => anyhow::bail!("{user}: {other:?}"),
    }
}

pub async fn a_server_woken_from_a_freeze_serves_its_partitions_again(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let stack = Stack::start(&infra, "freeze", 1, false).await?;
    let port = free_port()?;
    let ttl = ("SWITCHBOARD_LEASE_TTL_SECS", LEASE_TTL_SECS.to_string());
    let server = stack.server_process(NAME, port, &[ttl])?;
    let (ws_url, base) = (
        format!("ws://127.0.0.1:{port}/v1/ws"),
        format!("http://127.0.0.1:{port}"),
    );
    wait_until(
        "the frozen-to-be server serves",
        Duration::from_secs(60),
        || async {
            its_users(&stack).await.is_ok()
                && reqwest::get(format!("{base}/readyz"))
                    .await
                    .is_ok_and(|r| r.status().is_success())
        },
    )
    .await?;
    let users = its_users(&stack).await?;
    let mut before = Vec::new();
    for u in &users {
        before.push(welcomed(&ws_url, u).await?);
    }
    let epoch = stack.assignment().await?.epoch;

    server.signal("STOP").await?;
    tokio::time::sleep(FREEZE).await;
    server.signal("CONT").await?;
    for c in &mut before {
        let code = c.closed(Duration::from_secs(10)).await?;
        anyhow::ensure!(code == Some(4006), "a session across the freeze: {code:?}");
    }
    let a = stack.assignment().await?;
    anyhow::ensure!(
        a.epoch == epoch,
        "the map changed during the freeze (epoch {epoch} → {}): the lease lapsed, so this test did not test a kept partition",
        a.epoch
    );

    let woke = Instant::now();
    let mut after = Vec::new();
    for u in &users {
        let left = SERVED_WITHIN.saturating_sub(woke.elapsed());
        let c = tokio::time::timeout(left, welcomed(&ws_url, u))
            .await
            .map_err(|_| {
                anyhow::anyhow!("{u}: no welcome within {SERVED_WITHIN:?} of the wake")
            })??;
        after.push(c);
    }
    for (n, (u, c)) in users.iter().zip(&mut after).enumerate() {
        crate::auth::dm(&stack, u, n).await?;
        let f = c.frame(Duration::from_secs(10)).await?;
        anyhow::ensure!(
            matches!(&f, ServerFrame::Message(m) if m.body.get() == format!(r#"{{"n":{n}}}"#)),
            "{u} got {f:?}"
        );
    }
    println!(
        "freeze: {} partitions served again {:?} after the wake",
        users.len(),
        woke.elapsed()
    );
    drop(after);
    drop(server);
    stack.stop().await;
    Ok(())
}
