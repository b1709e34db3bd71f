//! The JavaScript SDK (clients/js) against the real stack, in Node and in
//! headless Chromium: the same scenario (clients/js/tests/scenario.mjs) —
//! 200 messages from alice to bob while bob's server is drained and then
//! the next one crashes, and bob's short token is refreshed through the
//! callback (ten more messages after its expiry) — must deliver every
//! message exactly once, in order.

use crate::browser::{browser, chromedriver};
use harness::{Infra, Stack};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

fn sdk_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../clients/js")
}

struct Scenario {
    alice: String,
    bob: String,
    env: Value,
}

async fn scenario(stack: &Stack) -> anyhow::Result<Scenario> {
    let (alice, bob) = stack.users_on_distinct_servers("js").await?;
    let secret = harness::stack::JWT_SECRET;
    let short_ttl = 8;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let env = json!({
        "coordinators": stack.coordinator.url(),
        "alice": alice, "aliceToken": Stack::token(&alice),
        "bob": bob, "bobToken": Stack::token(&bob),
        // Expires mid-run: the client must refresh it through its callback.
        "bobShortToken": switchboard_client::token::mint_hs256(secret, &bob, short_ttl)?,
        "bobShortExp": now + short_ttl as u64,
        "messages": 200,
    });
    Ok(Scenario { alice, bob, env })
}

/// Progress lines from the scenario, wherever it runs (Node or Python's
/// stdout, or a page).
pub(crate) enum Lines {
    Process(tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>),
    Page(fantoccini::Client),
}

impl Lines {
    async fn next(&mut self) -> anyhow::Result<Vec<String>> {
        match self {
            Lines::Process(l) => match l.next_line().await? {
                Some(line) => Ok(vec![line]),
                None => anyhow::bail!("the scenario's process exited before the result"),
            },
            Lines::Page(c) => {
                let v = c
                    .execute("return (window.__lines || []).splice(0);", vec![])
                    .await?;
                let lines: Vec<String> = serde_json::from_value(v)?;
                if lines.is_empty() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(lines)
            }
        }
    }
}

/// Moves bob's server at the scenario's marks and returns its result.
pub(crate) async fn drive(
    stack: &mut Stack,
    bob: &str,
    lines: &mut Lines,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let batch = tokio::time::timeout_at(deadline, lines.next()).await??;
        for line in batch {
            eprintln!("    [sdk] {}", line.chars().take(300).collect::<String>());
            if line == "sent 50" {
                let (server, _) = stack.route(bob).await?;
                stack.add_server(|_| {})?;
                let old = stack
                    .take_server(&server)
                    .ok_or_else(|| anyhow::anyhow!("no {server}"))?;
                tokio::spawn(old.stop());
            } else if line == "sent 120" {
                stack.wait_settled(3).await?;
                let (server, _) = stack.route(bob).await?;
                let old = stack
                    .take_server(&server)
                    .ok_or_else(|| anyhow::anyhow!("no {server}"))?;
                old.kill().await;
                stack.add_server(|_| {})?;
            } else if let Some(result) = line.strip_prefix("result ") {
                return Ok(serde_json::from_str(result)?);
            } else if let Some(e) = line.strip_prefix("error ") {
                anyhow::bail!("the scenario failed: {e}");
            }
        }
    }
}

pub(crate) fn check(result: &Value) -> anyhow::Result<()> {
    let n = |k: &str| result[k].as_u64().unwrap_or(u64::MAX);
    anyhow::ensure!(
        n("sent") == 210 && n("received") == 210 && n("unique") == 210 && n("missing") == 0,
        "not exactly once: {result}"
    );
    anyhow::ensure!(result["inOrder"] == true, "out of order: {result}");
    anyhow::ensure!(
        n("refreshes") >= 1,
        "the token was never refreshed: {result}"
    );
    anyhow::ensure!(
        n("reconnects") >= 2,
        "bob did not go through both failures: {result}"
    );
    Ok(())
}

pub async fn js_sdk_in_node_delivers_exactly_once_across_failures(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let mut stack = Stack::start(&infra, "js-node", 3, false).await?;
    let s = scenario(&stack).await?;
    let env = |k: &str| s.env[k].as_str().unwrap_or_default().to_owned();
    let mut node = tokio::process::Command::new("node")
        // Node 20's WebSocket is behind this flag; Node 22+ has it on.
        .arg("--experimental-websocket")
        .arg(sdk_dir().join("tests/node.mjs"))
        .env("SB_COORDINATORS", env("coordinators"))
        .env("SB_ALICE", &s.alice)
        .env("SB_ALICE_TOKEN", env("aliceToken"))
        .env("SB_BOB", &s.bob)
        .env("SB_BOB_TOKEN", env("bobToken"))
        .env("SB_BOB_SHORT_TOKEN", env("bobShortToken"))
        .env("SB_BOB_SHORT_EXP", s.env["bobShortExp"].to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!("cannot start node (Debian nodejs; ./dev test installs it): {e}")
        })?;
    let out = node
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = Lines::Process(tokio::io::BufReader::new(out).lines());
    let result = drive(&mut stack, &s.bob, &mut lines).await;
    let status = tokio::time::timeout(Duration::from_secs(10), node.wait()).await??;
    stack.stop().await;
    check(&result?)?;
    anyhow::ensure!(status.success(), "node exited with {status}");
    Ok(())
}

pub async fn js_sdk_in_chromium_delivers_exactly_once_across_failures(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let mut stack = Stack::start(&infra, "js-web", 3, false).await?;
    let s = scenario(&stack).await?;
    let (_driver, webdriver) = chromedriver().await?;
    let page = browser(&webdriver).await?;
    let result = async {
        page.goto(&format!("{}/demo/", stack.servers[0].url()))
            .await?;
        let src = std::fs::read_to_string(sdk_dir().join("tests/scenario.mjs"))?;
        let start = r#"
            const [src, env, done] = arguments;
            window.__lines = [];
            const say = (l) => window.__lines.push(l);
            Promise.all([
              import('/demo/switchboard.js'),
              import(URL.createObjectURL(new Blob([src], { type: 'text/javascript' }))),
            ]).then(([sb, scenario]) => scenario.run(sb, env, say))
              .catch((e) => say('error ' + (e && e.stack || e)));
            done(true);
        "#;
        page.execute_async(start, vec![json!(src), s.env.clone()])
            .await?;
        let mut lines = Lines::Page(page.clone());
        drive(&mut stack, &s.bob, &mut lines).await
    }
    .await;
    let _ = page.close().await;
    stack.stop().await;
    check(&result?)
}

/// The SDK's presence in Node (clients/js/tests/presence.mjs): a watched
/// contact online then offline with last_seen, a presence channel listed
/// with both users, a leave when the contact unsubscribes, a stranger refused.
pub async fn js_sdk_presence_in_node(infra: Arc<Infra>) -> anyhow::Result<()> {
    let stack = Stack::start_with(&infra, "js-presence", 2, true, |c| {
        c.presence_channels = vec!["ch:live.js*".into()];
    })
    .await?;
    let (alice, bob) = stack.users_on_distinct_servers("jsp").await?;
    let api = switchboard_client::Api::new(&stack.coordinator.url(), &Stack::token(&alice));
    api.create_conversation(&alice, None, std::slice::from_ref(&bob))
        .await?;
    let token = |u: &str| {
        let grants = switchboard_client::token::Grants {
            channels: vec!["ch:live.*".into()],
            publish: vec![],
        };
        switchboard_client::token::mint_hs256_with(harness::stack::JWT_SECRET, u, 3600, &grants)
    };
    let out = tokio::process::Command::new("node")
        .arg("--experimental-websocket")
        .arg(sdk_dir().join("tests/presence.mjs"))
        .env("SB_COORDINATORS", stack.coordinator.url())
        .env("SB_ALICE", &alice)
        .env("SB_ALICE_TOKEN", token(&alice)?)
        .env("SB_BOB", &bob)
        .env("SB_BOB_TOKEN", token(&bob)?)
        .env("SB_ROOM", "ch:live.js-room")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), out).await??;
    stack.stop().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("result "))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no result from node: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let r: Value = serde_json::from_str(line)?;
    let mut listed: Vec<String> = serde_json::from_value(r["listed"].clone()).unwrap_or_default();
    listed.sort();
    let mut both = vec![alice.clone(), bob.clone()];
    both.sort();
    anyhow::ensure!(r["firstOnline"] == false && r["online"] == true, "{r}");
    anyhow::ensure!(listed == both, "listed {listed:?}: {r}");
    anyhow::ensure!(r["leave"] == true && r["offline"] == true, "{r}");
    anyhow::ensure!(
        r["lastSeen"].is_u64() && r["strangerRefused"] == true,
        "{r}"
    );
    anyhow::ensure!(out.status.success(), "node exited with {}: {r}", out.status);
    Ok(())
}

/// The SDK's anycast in Node (clients/js/tests/anycast.mjs): two workers on
/// two servers; 20 anycast messages are each handled by exactly one of them
/// (both get some), and 10 with one key all by the same one.
pub async fn js_sdk_anycast_in_node(infra: Arc<Infra>) -> anyhow::Result<()> {
    let stack = Stack::start_with(&infra, "js-anycast", 2, true, |c| {
        c.presence_channels = vec!["ch:live.js*".into()];
        // Short: a `handled` the SDK failed to send shows as a second handler.
        c.anycast_handle_timeout = Duration::from_secs(1);
    })
    .await?;
    let (alice, bob) = stack.users_on_distinct_servers("jsa").await?;
    let token = |u: &str, publish: &[&str]| {
        let grants = switchboard_client::token::Grants {
            channels: vec!["ch:live.*".into()],
            publish: publish.iter().map(|p| p.to_string()).collect(),
        };
        switchboard_client::token::mint_hs256_with(harness::stack::JWT_SECRET, u, 3600, &grants)
    };
    let out = tokio::process::Command::new("node")
        .arg("--experimental-websocket")
        .arg(sdk_dir().join("tests/anycast.mjs"))
        .env("SB_COORDINATORS", stack.coordinator.url())
        .env("SB_ALICE", &alice)
        .env("SB_ALICE_TOKEN", token(&alice, &[])?)
        .env("SB_BOB", &bob)
        .env("SB_BOB_TOKEN", token(&bob, &[])?)
        .env("SB_PUB", "jsa-dispatcher")
        .env("SB_PUB_TOKEN", token("jsa-dispatcher", &["ch:live.js*"])?)
        .env("SB_POOL", "ch:live.js-pool")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), out).await??;
    stack.stop().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("result "))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no result from node: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let r: Value = serde_json::from_str(line)?;
    let tally = |field: &str| -> std::collections::HashMap<String, Vec<String>> {
        serde_json::from_value(r[field].clone()).unwrap_or_default()
    };
    let (plain, keyed) = (tally("handled"), tally("keyed"));
    let once =
        |t: &std::collections::HashMap<String, Vec<String>>| t.values().all(|h| h.len() == 1);
    let workers: std::collections::HashSet<&String> = plain.values().flatten().collect();
    let keyed_by: std::collections::HashSet<&String> = keyed.values().flatten().collect();
    anyhow::ensure!(
        r["sent"] == 30 && plain.len() == 20 && keyed.len() == 10 && once(&plain) && once(&keyed),
        "each anycast message must be handled exactly once: {r}"
    );
    anyhow::ensure!(
        workers.len() == 2,
        "20 messages all went to {workers:?}: {r}"
    );
    anyhow::ensure!(keyed_by.len() == 1, "one key went to {keyed_by:?}: {r}");
    anyhow::ensure!(out.status.success(), "node exited with {}: {r}", out.status);
    Ok(())
}
