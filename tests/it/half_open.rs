//! A client cut off from its server by a link that neither closes nor
//! resets (a partition, a NAT that forgot the flow, a dead middlebox): TCP
//! would report nothing for many minutes. Both ends must notice through the
//! pings within a stated time — the client after two ping intervals of
//! silence (the JavaScript SDK, which cannot see WebSocket pings, within two
//! and a half through its own `ping`), the server after three — and the
//! client must resume once the link heals with every message acknowledged
//! meanwhile, once.

use anyhow::Context;
use harness::proxy::Proxy;
use harness::{wait_until, Infra, Stack};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_client::{Client, ClientConfig, Event};
use tokio::io::AsyncBufReadExt;

const PING: Duration = Duration::from_secs(1);

pub async fn half_open_connections_are_noticed_by_both_ends(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let proxy = Proxy::bind().await?;
    let advertised = proxy.addr().to_string();
    let stack = Stack::start_with(&infra, "halfopen", 1, false, |c| {
        c.advertise_host = Some(advertised.clone());
        c.ping_interval = PING;
    })
    .await?;
    let server = stack.servers[0].url();
    proxy.target(server.trim_start_matches("http://").parse()?);
    let mut bob = Client::start(ClientConfig {
        coordinator_url: stack.coordinator.url(),
        token: Stack::token("ho-bob"),
        user_id: "ho-bob".into(),
        device_id: "phone".into(),
        cursor: None,
        max_backoff: Duration::from_secs(1),
        report_duplicates: false,
        local_address: None,
        refresh: None,
    });
    expect_connected(&mut bob, false)
        .await
        .context("connecting through the relay")?;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(post(&server, i).await?);
    }
    proxy.cut(true);
    let cut = Instant::now();
    for i in 5..15 {
        sent.push(post(&server, i).await?);
    }
    let mut got = Vec::new();
    let client_noticed = loop {
        let event = tokio::time::timeout(Duration::from_secs(20), bob.next_event());
        match event
            .await
            .context("waiting for the client to notice the cut")?
        {
            Some(Event::Message(m)) => got.push(m.msg_id),
            Some(Event::Disconnected { code: None }) => break cut.elapsed(),
            Some(Event::Disconnected { code }) => {
                anyhow::bail!("closed with {code:?} over a cut link")
            }
            Some(_) => {}
            None => anyhow::bail!("the client stopped"),
        }
    };
    wait_until(
        "the server drops the silent session",
        3 * PING + Duration::from_secs(2),
        || async { harness::metric(&server, "switchboard_server_connections").await == 0.0 },
    )
    .await?;
    let server_noticed = cut.elapsed();
    let why =
        r#"switchboard_server_closes_total{code="4006",reason="peer stopped answering pings"}"#;
    let closes = harness::sample(&server, why).await;
    anyhow::ensure!(
        closes.is_some_and(|n| n >= 1.0),
        "the silent session's close is not counted by its reason: {why} = {closes:?}"
    );
    anyhow::ensure!(
        client_noticed <= 2 * PING + Duration::from_secs(1),
        "the client noticed the dead link only after {client_noticed:?} (ping {PING:?})"
    );
    proxy.cut(false);
    let healed = Instant::now();
    expect_connected(&mut bob, true)
        .await
        .context("resuming after the link healed")?;
    let resumed_after = healed.elapsed();
    collect(&mut bob, &sent, &mut got).await?;
    let unique: HashSet<_> = got.iter().collect();
    anyhow::ensure!(
        unique.len() == got.len() && sent.iter().all(|m| unique.contains(m)),
        "after the link healed the app got {} messages ({} distinct) of {} sent",
        got.len(),
        unique.len(),
        sent.len()
    );
    eprintln!("    ping {PING:?}: client noticed the cut after {client_noticed:?}, server after ≤{server_noticed:?}; resumed {resumed_after:?} after the link healed, {} of {} messages once each", unique.len(), sent.len());
    bob.close().await;
    js_client_notices_too(&stack, &proxy).await?;
    stack.stop().await;
    Ok(())
}

/// The same for the JavaScript SDK in Node, through the same relay.
async fn js_client_notices_too(stack: &Stack, proxy: &Proxy) -> anyhow::Result<()> {
    let server = stack.servers[0].url();
    let sdk =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/js/tests/liveness.mjs");
    let mut node = tokio::process::Command::new("node")
        .arg("--experimental-websocket")
        .arg(sdk)
        .env("SB_COORDINATORS", stack.coordinator.url())
        .env("SB_USER", USER)
        .env("SB_TOKEN", Stack::token(USER))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start node (Debian nodejs; ./dev test installs it)")?;
    let out = node
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut dev = NodeDevice {
        lines: tokio::io::BufReader::new(out).lines(),
        got: Vec::new(),
    };
    dev.until("state connected").await?;
    proxy.cut(true);
    let cut = Instant::now();
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(post_to(&server, USER, i).await?.to_string());
    }
    let line = dev.until("state disconnected").await?;
    let noticed = cut.elapsed();
    anyhow::ensure!(line == "state disconnected:1006", "node: {line}");
    anyhow::ensure!(
        noticed <= 2 * PING + PING / 2 + Duration::from_secs(1),
        "the JS client noticed the dead link only after {noticed:?} (ping {PING:?})"
    );
    proxy.cut(false);
    dev.until("state connected").await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sent.iter().all(|m| dev.got.contains(m)) && Instant::now() < deadline {
        let _ = dev.until("state never").await;
    }
    let got = &dev.got;
    let unique: HashSet<_> = got.iter().collect();
    anyhow::ensure!(
        unique.len() == got.len() && sent.iter().all(|m| unique.contains(m)),
        "the JS client got {got:?}, want each of {sent:?} once"
    );
    drop(node.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(5), node.wait()).await;
    eprintln!("    JS SDK (Node): noticed the cut after {noticed:?}, resumed and got {} of {} messages once each", unique.len(), sent.len());
    Ok(())
}

const USER: &str = "ho-carol";

async fn post(server: &str, i: usize) -> anyhow::Result<protocol::MsgId> {
    post_to(server, "ho-bob", i).await
}

async fn post_to(server: &str, to: &str, i: usize) -> anyhow::Result<protocol::MsgId> {
    let body = serde_json::json!({"client_msg_id": format!("ho-{to}-{i}"), "to": {"user": to}, "body": {"i": i}});
    harness::traffic::post_send(server, "ho-alice", &body).await
}

async fn expect_connected(c: &mut Client, resumed: bool) -> anyhow::Result<()> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), c.next_event()).await? {
            Some(Event::Connected { resumed: r, .. }) if r == resumed => return Ok(()),
            Some(Event::Connected { resumed: r, .. }) => {
                anyhow::bail!("connected with resumed {r}")
            }
            Some(Event::Message(_)) if !resumed => {}
            Some(Event::Disconnected { .. } | Event::Connecting { .. }) => {}
            Some(Event::AttemptFailed(_)) => {}
            Some(other) if resumed => anyhow::bail!("before the resume: {other:?}"),
            Some(_) => {}
            None => anyhow::bail!("the client stopped"),
        }
    }
}

/// Collects messages until every one of `sent` arrived (or 20 s passed).
async fn collect(
    c: &mut Client,
    sent: &[protocol::MsgId],
    got: &mut Vec<protocol::MsgId>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sent.iter().all(|m| got.contains(m)) && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), c.next_event()).await {
            Ok(Some(Event::Message(m))) => got.push(m.msg_id),
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => break,
        }
    }
    Ok(())
}

/// The Node device's output: message ids collected on the way to the next
/// awaited state line.
struct NodeDevice {
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    got: Vec<String>,
}

impl NodeDevice {
    /// Reads up to the first line starting with `want` (at most 5 s).
    async fn until(&mut self, want: &str) -> anyhow::Result<String> {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(5), self.lines.next_line())
                .await
                .with_context(|| format!("node: waiting for {want}"))??
                .ok_or_else(|| anyhow::anyhow!("node exited"))?;
            match line.strip_prefix("message ") {
                Some(id) => self.got.push(id.to_owned()),
                None if line.starts_with(want) => return Ok(line),
                None => {}
            }
        }
    }
}
