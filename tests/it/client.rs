//! The client library and the CLI against a real stack.

use harness::{Infra, Stack};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_client::{Client, ClientConfig, Event, Kind, Target};

pub(crate) fn config(stack: &Stack, user: &str, device: &str) -> ClientConfig {
    ClientConfig {
        coordinator_url: stack.coordinator.url(),
        token: Stack::token(user),
        user_id: user.into(),
        device_id: device.into(),
        cursor: None,
        max_backoff: Duration::from_secs(2),
        report_duplicates: false,
        local_address: None,
        refresh: None,
    }
}

/// The receiving client's server drains mid-stream: the client follows the
/// redirect, resumes from its cursor and hands every message to the app once.
pub async fn client_resumes_and_dedupes_across_a_drain(infra: Arc<Infra>) -> anyhow::Result<()> {
    let mut stack = Stack::start(&infra, "client", 2, true).await?;
    let (alice, bob) = stack.users_on_distinct_servers("cl").await?;
    let (bob_server, _) = stack.route(&bob).await?;
    let mut receiver = Client::start(config(&stack, &bob, "phone"));
    first_welcome(&mut receiver).await?;
    let mut sender = Client::start(config(&stack, &alice, "laptop"));
    let to = Target::User(protocol::UserId::new(bob.as_str())?);
    let mut sent = Vec::new();
    for i in 0..120 {
        if i == 40 {
            let old = stack
                .take_server(&bob_server)
                .ok_or_else(|| anyhow::anyhow!("no server"))?;
            stack.add_server(|_| {})?;
            tokio::spawn(old.stop());
        }
        let id = tokio::time::timeout(
            Duration::from_secs(30),
            sender.send(to.clone(), serde_json::json!({"i": i}), Kind::Chat),
        )
        .await??;
        sent.push(id);
    }
    let (mut got, mut seen, mut reconnects, mut dups) = (Vec::new(), HashSet::new(), 0, 0);
    let deadline = Instant::now() + Duration::from_secs(40);
    while got.len() < sent.len() && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), receiver.next_event()).await {
            Ok(Some(Event::Message(m))) => {
                if !seen.insert(m.msg_id) {
                    dups += 1;
                }
                got.push(m.msg_id);
            }
            Ok(Some(Event::Connected { resumed, .. })) => reconnects += usize::from(resumed),
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => break,
        }
    }
    let missing = sent.iter().filter(|m| !seen.contains(m)).count();
    anyhow::ensure!(
        missing == 0,
        "{missing} of {} messages never reached the app",
        sent.len()
    );
    anyhow::ensure!(dups == 0, "the app saw {dups} duplicates");
    anyhow::ensure!(
        reconnects >= 1,
        "the receiver never resumed on the new owner"
    );
    anyhow::ensure!(receiver.cursor().is_some());
    receiver.close().await;
    sender.close().await;
    stack.stop().await;
    Ok(())
}

pub(crate) async fn cli(stack: &Stack, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = tokio::process::Command::new(harness::process::binary("switchboard-cli")?)
        .args(args)
        .env("SWITCHBOARD_COORDINATOR_URL", stack.coordinator.url())
        .env("SWITCHBOARD_JWT_SECRET", harness::stack::JWT_SECRET)
        .env_remove("SWITCHBOARD_TOKEN")
        .output()
        .await?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

pub async fn cli_route_send_tail_and_history(infra: Arc<Infra>) -> anyhow::Result<()> {
    let stack = Stack::start(&infra, "cli", 1, true).await?;
    let (ok, out, err) = cli(&stack, &["route", "alice"]).await?;
    anyhow::ensure!(
        ok && out.contains("\"server_id\":\"ms1\""),
        "route: {out} {err}"
    );

    let tail = {
        let mut cmd = tokio::process::Command::new(harness::process::binary("switchboard-cli")?);
        cmd.args(["--user", "bob", "tail", "--count", "1", "--seconds", "30"])
            .env("SWITCHBOARD_COORDINATOR_URL", stack.coordinator.url())
            .env("SWITCHBOARD_JWT_SECRET", harness::stack::JWT_SECRET)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn()?
    };
    let mut tail = tail;
    let tail_log = tail_connected(&mut tail).await?;
    let (ok, out, err) = cli(
        &stack,
        &["--user", "alice", "send", "--to-user", "bob", "hi bob"],
    )
    .await?;
    anyhow::ensure!(
        ok && out.trim().parse::<uuid::Uuid>().is_ok(),
        "send: {out} {err}"
    );
    let tailed = tail.wait_with_output().await?;
    let tail_log = tail_log.await.unwrap_or_default();
    let line = String::from_utf8_lossy(&tailed.stdout);
    anyhow::ensure!(
        tailed.status.success() && line.contains("hi bob"),
        "tail ({}): {line} {tail_log}",
        tailed.status
    );

    let history = std::sync::Mutex::new(String::new());
    let persisted = harness::wait_until(
        "the message is in bob's history",
        Duration::from_secs(20),
        || async {
            let h = cli(&stack, &["--user", "bob", "history", "dm:alice,bob"])
                .await
                .map(|r| r.1)
                .unwrap_or_default();
            let found = h.contains("hi bob");
            if let Ok(mut last) = history.lock() {
                *last = h;
            }
            found
        },
    )
    .await;
    anyhow::ensure!(
        persisted.is_ok(),
        "history: {}",
        history.lock().map(|h| h.clone()).unwrap_or_default()
    );
    let (ok, out, _) = cli(
        &stack,
        &[
            "--user",
            "alice",
            "conversation",
            "create",
            "--id",
            "crew",
            "bob",
        ],
    )
    .await?;
    anyhow::ensure!(ok && out.contains("crew"), "create: {out}");
    let (ok, _, _) = cli(
        &stack,
        &["--user", "alice", "conversation", "add", "crew", "carol"],
    )
    .await?;
    anyhow::ensure!(ok);
    let (ok, out, _) = cli(&stack, &["--user", "carol", "conversation", "list"]).await?;
    anyhow::ensure!(ok && out.contains("crew"), "list: {out}");

    let (ok, _, err) = cli(&stack, &["--user", "alice", "send", "hi"]).await?;
    anyhow::ensure!(!ok && err.contains("--to-user"), "missing target: {err}");
    let (ok, _, err) = cli(
        &stack,
        &["--user", "dave", "send", "--to-conversation", "crew", "hi"],
    )
    .await?;
    anyhow::ensure!(!ok && err.contains("not_member"), "non-member: {err}");
    let down = tokio::process::Command::new(harness::process::binary("switchboard-cli")?)
        .args(["--coordinator", "http://127.0.0.1:9", "route", "alice"])
        .output()
        .await?;
    let err = String::from_utf8_lossy(&down.stderr);
    anyhow::ensure!(
        !down.status.success() && err.contains("cannot reach"),
        "unreachable: {err}"
    );
    stack.stop().await;
    Ok(())
}

/// An app that stops reading: the client stops reading the socket, the
/// server's queue for the device overflows (4004), the client resumes from
/// the last message the app was handed — and the app still gets everything once.
pub async fn slow_app_gets_everything_after_4004(infra: Arc<Infra>) -> anyhow::Result<()> {
    let stack = Stack::start_with(&infra, "slowapp", 1, true, |c| c.queue_len = 64).await?;
    let mut receiver = Client::start(config(&stack, "slow", "phone"));
    first_welcome(&mut receiver).await?;
    let api = switchboard_client::Api::new(&stack.coordinator.url(), &Stack::token("fast"));
    let to = Target::User(protocol::UserId::new("slow")?);
    let total = 5000;
    let mut sent = HashSet::new();
    for chunk in (0..total).collect::<Vec<_>>().chunks(250) {
        let ids: Vec<String> = chunk.iter().map(|i| format!("s{i}")).collect();
        let sends = ids
            .iter()
            .map(|id| api.send("fast", id, &to, serde_json::json!({"id": id}), Kind::Chat));
        for r in futures_util::future::join_all(sends).await {
            sent.insert(r?);
        }
    }
    // Only now does the app start reading.
    let (mut got, mut overflowed) = (HashSet::new(), false);
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < total && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), receiver.next_event()).await {
            Ok(Some(Event::Message(m))) => {
                anyhow::ensure!(got.insert(m.msg_id), "duplicate handed to the app")
            }
            Ok(Some(Event::Disconnected { code: Some(4004) })) => overflowed = true,
            Ok(Some(Event::Connected { resumed: false, .. })) => {
                anyhow::bail!("a resume came back resumed: false")
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    anyhow::ensure!(got == sent, "the app got {} of {total}", got.len());
    anyhow::ensure!(
        overflowed,
        "the server never closed the slow device with 4004"
    );
    receiver.close().await;
    stack.stop().await;
    Ok(())
}

/// Reads the tail's stderr until it reports its session, then keeps
/// draining it (a closed pipe would fail the tail's next write); the task
/// returns everything it said.
async fn tail_connected(
    tail: &mut tokio::process::Child,
) -> anyhow::Result<tokio::task::JoinHandle<String>> {
    use tokio::io::AsyncBufReadExt;
    let stderr = tail
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("tail has no stderr"))?;
    let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let (mut said, mut connected) = (String::new(), Some(connected_tx));
        while let Ok(Some(line)) = lines.next_line().await {
            said.push_str(&line);
            said.push('\n');
            if line.contains("connected to") {
                if let Some(tx) = connected.take() {
                    let _ = tx.send(());
                }
            }
        }
        said
    });
    tokio::time::timeout(Duration::from_secs(20), connected_rx)
        .await
        .map_err(|_| anyhow::anyhow!("tail did not connect within 20 s"))?
        .map_err(|_| anyhow::anyhow!("tail exited before connecting"))?;
    Ok(reader)
}

/// A client idle long enough for its retry tick to miss many periods, then
/// sends past the server's rate limit: a refused send is retried a period
/// apart until accepted — never a burst of resends that the server
/// would close with 4008 — and each is acked once.
pub async fn rate_limited_sends_are_retried_without_a_burst(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let stack = Stack::start_with(&infra, "rl", 1, false, |c| {
        c.sends_per_sec = 2;
        c.send_burst = 2;
    })
    .await?;
    let mut alice = Client::start(config(&stack, "rl-alice", "phone"));
    first_welcome(&mut alice).await?;
    // 30 s idle: 60 missed periods of the 500-ms retry tick, more than the
    // 50 refusals in a row after which the server closes with 4008.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let to = Target::User(protocol::UserId::new("rl-bob")?);
    let mut ids = HashSet::new();
    for i in 0..10 {
        let body = serde_json::json!({ "i": i });
        let id = tokio::time::timeout(
            Duration::from_secs(30),
            alice.send(to.clone(), body, Kind::Chat),
        )
        .await??;
        ids.insert(id);
    }
    anyhow::ensure!(ids.len() == 10, "{} distinct acks of 10", ids.len());
    while let Ok(Some(e)) =
        tokio::time::timeout(Duration::from_millis(100), alice.next_event()).await
    {
        anyhow::ensure!(
            !matches!(e, Event::Disconnected { .. }),
            "the session was closed: {e:?}"
        );
    }
    let base = stack.servers[0].url();
    let text = harness::scrape(&base)
        .await
        .ok_or_else(|| anyhow::anyhow!("{base}/metrics does not answer"))?;
    anyhow::ensure!(
        !text
            .lines()
            .any(|l| l.contains("code=\"4008\"") && !l.ends_with(" 0")),
        "the server closed a session with 4008"
    );
    alice.close().await;
    stack.stop().await;
    Ok(())
}

/// Waits for the client's first welcome, past the attempt that led to it.
async fn first_welcome(c: &mut Client) -> anyhow::Result<()> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.next_event()).await? {
            Some(Event::Connected { .. }) => return Ok(()),
            Some(Event::Connecting { .. }) => {}
            other => anyhow::bail!("expected Connected, got {other:?}"),
        }
    }
}
