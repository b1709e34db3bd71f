//! Token expiry mid-session: a session ends with 4001 at its token's `exp`
//! unless the client sent a fresh token (`auth` → `authed`) first; the Rust
//! client refreshes through its callback without losing anything.

use harness::stack::JWT_SECRET;
use harness::{Event, Infra, Stack, WsClient};
use protocol::{ErrorCode, ServerFrame};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_client::token::mint_hs256;
use switchboard_client::{Client, ClientConfig, TokenRefresh};

async fn session(stack: &Stack, user: &str, ttl: i64) -> anyhow::Result<(WsClient, u64)> {
    let (_, ws_url) = stack.route(user).await?;
    let mut c = WsClient::connect(&ws_url).await?;
    match c
        .hello(&mint_hs256(JWT_SECRET, user, ttl)?, "d", None)
        .await?
    {
        Event::Frame(ServerFrame::Welcome(w)) => Ok((c, w.token_exp.unwrap_or(0))),
        other => anyhow::bail!("expected welcome, got {other:?}"),
    }
}

fn auth(id: u64, token: &str) -> String {
    serde_json::json!({"type": "auth", "id": id, "token": token}).to_string()
}

/// A DM `{"n": n}` to `to`, posted by a backend.
pub(crate) async fn dm(stack: &Stack, to: &str, n: usize) -> anyhow::Result<()> {
    let body = serde_json::json!({"client_msg_id": format!("tok{n}"), "to": {"user": to}, "body": {"n": n}});
    reqwest::Client::new()
        .post(format!("{}/v1/messages", stack.servers[0].url()))
        .bearer_auth(Stack::token("issuer"))
        .json(&body)
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

pub async fn expired_tokens_close_unless_refreshed(infra: Arc<Infra>) -> anyhow::Result<()> {
    let stack = Stack::start(&infra, "tokens", 1, false).await?;
    // Not refreshed: closed with 4001 at exp.
    let (mut lapsed, exp) = session(&stack, "lapsed", 2).await?;
    let started = Instant::now();
    anyhow::ensure!(exp > 0, "welcome carries no token_exp");
    let code = lapsed.closed(Duration::from_secs(10)).await?;
    anyhow::ensure!(
        code == Some(4001),
        "an expired session closed with {code:?}"
    );
    anyhow::ensure!(
        started.elapsed() < Duration::from_secs(4),
        "closed late: {:?}",
        started.elapsed()
    );

    // Refreshed: stays past the old exp and still gets messages.
    let (mut kept, _) = session(&stack, "kept", 2).await?;
    kept.send_text(auth(1, "garbage")).await?;
    match kept.frame(Duration::from_secs(5)).await? {
        ServerFrame::Error(e) if e.code == ErrorCode::Unauthorized => {}
        other => anyhow::bail!("a bad token got {other:?}"),
    }
    kept.send_text(auth(2, &mint_hs256(JWT_SECRET, "someone-else", 60)?))
        .await?;
    match kept.frame(Duration::from_secs(5)).await? {
        ServerFrame::Error(e) if e.code == ErrorCode::InvalidField => {}
        other => anyhow::bail!("another user's token got {other:?}"),
    }
    kept.send_text(auth(3, &mint_hs256(JWT_SECRET, "kept", 60)?))
        .await?;
    match kept.frame(Duration::from_secs(5)).await? {
        ServerFrame::Authed(a) => anyhow::ensure!(a.exp > exp + 30, "authed until {}", a.exp),
        other => anyhow::bail!("a fresh token got {other:?}"),
    }
    anyhow::ensure!(
        kept.quiet(Duration::from_secs(4)).await,
        "the refreshed session got something"
    );
    dm(&stack, "kept", 0).await?;
    match kept.frame(Duration::from_secs(10)).await? {
        ServerFrame::Message(_) => {}
        other => anyhow::bail!("the refreshed session got {other:?}"),
    }

    // The Rust client refreshes through its callback.
    let refreshes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = refreshes.clone();
    let mut client = Client::start(ClientConfig {
        coordinator_url: stack.coordinator.url(),
        token: mint_hs256(JWT_SECRET, "renewed", 3)?,
        refresh: Some(TokenRefresh::new(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async { mint_hs256(JWT_SECRET, "renewed", 3).ok() }
        })),
        user_id: "renewed".into(),
        device_id: "phone".into(),
        cursor: None,
        max_backoff: Duration::from_secs(1),
        report_duplicates: false,
        local_address: None,
    });
    let (mut got, mut sessions, mut closes) = (0, 0, Vec::new());
    let until = Instant::now() + Duration::from_secs(10);
    let mut sent = 0;
    while Instant::now() < until || got < sent {
        if Instant::now() < until && sessions > 0 {
            dm(&stack, "renewed", 100 + sent).await?;
            sent += 1;
        }
        match tokio::time::timeout(Duration::from_millis(500), client.next_event()).await {
            Ok(Some(switchboard_client::Event::Connected { .. })) => sessions += 1,
            Ok(Some(switchboard_client::Event::Message(_))) => got += 1,
            Ok(Some(switchboard_client::Event::Disconnected { code })) => closes.push(code),
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => anyhow::bail!("the client stopped"),
        }
        anyhow::ensure!(
            Instant::now() < until + Duration::from_secs(10),
            "got {got} of {sent}"
        );
    }
    let n = refreshes.load(std::sync::atomic::Ordering::Relaxed);
    anyhow::ensure!(
        sessions == 1 && closes.is_empty(),
        "sessions {sessions}, closes {closes:?}"
    );
    anyhow::ensure!(n >= 3, "only {n} refreshes over 10 s of 3-s tokens");
    eprintln!("    expired session closed 4001 on time; auth kept another past exp; the Rust client refreshed {n} times over 10 s, {got} of {sent} messages, one session");
    client.close().await;
    stack.stop().await;
    Ok(())
}
