//! Bounded resources on a messaging server run as its own process (so its
//! RSS can be read): past `SWITCHBOARD_MAX_CONNECTIONS` upgrades are refused
//! with 503 `unavailable` and `Retry-After`, past
//! `SWITCHBOARD_MAX_DEVICES_PER_USER` a device gets `too_many_devices` and
//! 4009, and neither touches the sessions already open.

use harness::{free_port, wait_until, Event, Infra, Process, Stack, WsClient};
use protocol::{partition_for, ServerFrame};
use std::sync::Arc;
use std::time::Duration;

const MAX_CONNECTIONS: usize = 100;
const MAX_DEVICES: usize = 3;
const REFUSED_ATTEMPTS: usize = 1000;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn spawn_server(stack: &Stack, port: u16) -> anyhow::Result<Process> {
    spawn_limited(stack, port, MAX_CONNECTIONS)
}

fn spawn_limited(stack: &Stack, port: u16, max_connections: usize) -> anyhow::Result<Process> {
    let limits = [
        ("SWITCHBOARD_LEASE_TTL_SECS", "2".to_owned()),
        ("SWITCHBOARD_MAX_CONNECTIONS", max_connections.to_string()),
        ("SWITCHBOARD_MAX_DEVICES_PER_USER", MAX_DEVICES.to_string()),
    ];
    stack.server_process("limited", port, &limits)
}

async fn hello(ws_url: &str, user: &str, device: &str) -> anyhow::Result<(WsClient, Event)> {
    let mut c = WsClient::connect(ws_url).await?;
    let first = c.hello(&Stack::token(user), device, None).await?;
    Ok((c, first))
}

pub async fn limits_refuse_past_the_bound_and_keep_sessions(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let stack = Stack::start(&infra, "limits", 1, false).await?;
    let port = free_port()?;
    let server = spawn_server(&stack, port)?;
    let ws_url = format!("ws://127.0.0.1:{port}/v1/ws");
    wait_until(
        "the limited server owns partitions",
        Duration::from_secs(60),
        || async {
            stack.assignment().await.is_ok_and(|a| {
                !a.partitions_of(
                    &protocol::ServerId::new("limited")
                        .unwrap_or_else(|_| protocol::ServerId::random()),
                )
                .is_empty()
            }) && reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
                .await
                .is_ok_and(|r| r.status().is_success())
        },
    )
    .await?;
    let a = stack.assignment().await?;
    let mine: Vec<String> = (0..2000)
        .map(|i| format!("lim{i}"))
        .filter(|u| {
            a.owner(partition_for(u, a.partitions))
                .is_some_and(|o| o.server_id.as_str() == "limited")
        })
        .take(MAX_CONNECTIONS)
        .collect();
    anyhow::ensure!(
        mine.len() == MAX_CONNECTIONS,
        "only {} users route to the limited server",
        mine.len()
    );

    // One user, one device more than allowed.
    let mut devices = Vec::new();
    for d in 0..MAX_DEVICES {
        let (c, first) = hello(&ws_url, &mine[0], &format!("d{d}")).await?;
        anyhow::ensure!(
            matches!(first, Event::Frame(ServerFrame::Welcome(_))),
            "device {d}: {first:?}"
        );
        devices.push(c);
    }
    let (mut extra, first) = hello(&ws_url, &mine[0], "one-too-many").await?;
    match first {
        Event::Frame(ServerFrame::Error(e)) if e.code == protocol::ErrorCode::TooManyDevices => {}
        other => anyhow::bail!("a device past the limit got {other:?}"),
    }
    anyhow::ensure!(extra.closed(Duration::from_secs(5)).await? == Some(4009));
    drop(devices);
    drop(extra);
    let base = format!("http://127.0.0.1:{port}");
    wait_until(
        "the refused and closed devices are gone",
        Duration::from_secs(10),
        || async { harness::metric(&base, "switchboard_server_connections").await == 0.0 },
    )
    .await?;

    // Every connection the server allows (a socket's permit is released just
    // after its session ends, so a refusal right after the wait is retried),
    // then many more attempts.
    let mut open = Vec::new();
    for u in &mine {
        let mut opened = None;
        for _ in 0..50 {
            if let Ok((c, first)) = hello(&ws_url, u, "phone").await {
                anyhow::ensure!(
                    matches!(first, Event::Frame(ServerFrame::Welcome(_))),
                    "{u}: {first:?}"
                );
                opened = Some(c);
                break;
            }
            tokio::task::yield_now().await;
        }
        open.push(opened.ok_or_else(|| anyhow::anyhow!("{u} could not connect under the limit"))?);
    }
    let pid = server.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let before = rss_kib(pid);
    let mut refused = 0;
    for _ in 0..REFUSED_ATTEMPTS {
        match tokio_tungstenite::connect_async(&ws_url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r))
                if r.status() == 503 && r.headers().contains_key("retry-after") =>
            {
                refused += 1
            }
            Err(e) => anyhow::bail!("an upgrade past the limit failed otherwise: {e}"),
            Ok(_) => anyhow::bail!("an upgrade past the limit was accepted"),
        }
    }
    let after = rss_kib(pid);
    anyhow::ensure!(refused == REFUSED_ATTEMPTS);
    anyhow::ensure!(
        after < before + 10 * 1024,
        "RSS grew from {before} KiB to {after} KiB over {REFUSED_ATTEMPTS} refused upgrades"
    );

    // The sessions already open are untouched: a message still reaches one.
    let body =
        serde_json::json!({"client_msg_id": "still-here", "to": {"user": mine[7]}, "body": {}});
    reqwest::Client::new()
        .post(format!("{}/v1/messages", stack.servers[0].url()))
        .bearer_auth(Stack::token("outsider"))
        .json(&body)
        .send()
        .await?
        .error_for_status()?;
    match open[7].frame(Duration::from_secs(10)).await? {
        ServerFrame::Message(m) => anyhow::ensure!(m.from.as_str() == "outsider"),
        other => anyhow::bail!("an open session got {other:?}"),
    }
    eprintln!("    {MAX_CONNECTIONS} sessions open, {refused} upgrades refused with 503 + Retry-After, RSS {before} → {after} KiB; device {} refused with 4009", MAX_DEVICES + 1);
    drop(open);
    let _ = server.terminate().await;
    stack.stop().await;
    Ok(())
}

/// This process's hard limit on open files (children inherit it).
fn hard_open_files() -> Option<u64> {
    harness::process::open_file_limits().map(|(_, hard)| hard)
}

/// The connection limit in force, from a server's `/metrics`.
async fn connection_limit(port: u16) -> Option<u64> {
    let base = format!("http://127.0.0.1:{port}");
    let limit = harness::sample(&base, "switchboard_server_connection_limit").await?;
    Some(limit as u64)
}

/// A connection limit the process cannot hold descriptors for is lowered to
/// what it can (the open-file limit less 1,024 kept for everything else),
/// so a full server refuses upgrades with 503 instead of failing `accept`.
pub async fn connection_limit_fits_the_open_file_limit(infra: Arc<Infra>) -> anyhow::Result<()> {
    let hard = hard_open_files().ok_or_else(|| anyhow::anyhow!("no open-file limit in /proc"))?;
    let stack = Stack::start(&infra, "fdlimit", 1, false).await?;
    let (big, small) = (free_port()?, free_port()?);
    let configured = 10_000_000;
    let servers = [
        spawn_limited(&stack, big, configured)?,
        spawn_limited(&stack, small, MAX_CONNECTIONS)?,
    ];
    let mut limits = [None, None];
    for (i, port) in [big, small].into_iter().enumerate() {
        wait_until("the metric is served", Duration::from_secs(60), || async {
            connection_limit(port).await.is_some()
        })
        .await?;
        limits[i] = connection_limit(port).await;
    }
    let want = (configured as u64).min(hard.saturating_sub(1024));
    anyhow::ensure!(
        limits == [Some(want), Some(MAX_CONNECTIONS as u64)],
        "connection limits {limits:?}, want [{want}, {MAX_CONNECTIONS}] (hard open-file limit {hard})"
    );
    eprintln!(
        "    open files {hard}: a limit of {configured} became {want}; {MAX_CONNECTIONS} stayed"
    );
    for s in servers {
        let _ = s.terminate().await;
    }
    stack.stop().await;
    Ok(())
}
