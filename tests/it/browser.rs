//! The browser demo in headless Chromium (WebDriver): two users exchange
//! messages, one user's server drains and the page resumes on the new owner.
//! Screenshots are saved under target/test-artifacts/.

use fantoccini::{Client, ClientBuilder, Locator};
use harness::{free_port, wait_until, Infra, Stack};
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

pub async fn chromedriver() -> anyhow::Result<(tokio::process::Child, String)> {
    let port = free_port()?;
    let child = tokio::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot start chromedriver (Debian chromium-driver; ./dev test installs it): {e}"
            )
        })?;
    let url = format!("http://127.0.0.1:{port}");
    let status = format!("{url}/status");
    wait_until("chromedriver answers", T, || async {
        reqwest::get(&status)
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false)
    })
    .await?;
    Ok((child, url))
}

pub async fn browser(webdriver: &str) -> anyhow::Result<Client> {
    let mut caps = serde_json::Map::new();
    let args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1100,760",
    ];
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "args": args }),
    );
    Ok(ClientBuilder::rustls()?
        .capabilities(caps)
        .connect(webdriver)
        .await?)
}

async fn open(c: &Client, stack: &Stack, user: &str) -> anyhow::Result<()> {
    open_with(c, stack, user, &Stack::token(user)).await
}

async fn open_with(c: &Client, stack: &Stack, user: &str, token: &str) -> anyhow::Result<()> {
    let (_, ws) = stack.route(user).await?;
    let page = ws.replace("ws://", "http://").replace("/v1/ws", "/demo/");
    let url = format!(
        "{page}?coordinator={}&user={user}&token={token}",
        stack.coordinator.url(),
    );
    c.goto(&url).await?;
    text_contains(c, "#status", &format!("connected as {user}")).await
}

async fn text_contains(c: &Client, css: &str, needle: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let text = match c.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if text.contains(needle) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("{css} never contained {needle:?} (last: {text:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn say(c: &Client, to: &str, text: &str) -> anyhow::Result<()> {
    c.find(Locator::Css("#to")).await?.send_keys(to).await?;
    let input = c.find(Locator::Css("#text")).await?;
    input.send_keys(text).await?;
    c.find(Locator::Css("#send")).await?.click().await?;
    c.find(Locator::Css("#to")).await?.clear().await?;
    Ok(())
}

pub(crate) async fn screenshot(c: &Client, name: &str) -> anyhow::Result<std::path::PathBuf> {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, c.screenshot().await?)?;
    Ok(path)
}

pub async fn two_browser_users_chat_and_survive_a_drain(infra: Arc<Infra>) -> anyhow::Result<()> {
    let mut stack = Stack::start(&infra, "browser", 2, false).await?;
    let (alice, bob) = stack.users_on_distinct_servers("web").await?;
    let (_driver, webdriver) = chromedriver().await?;
    let (a, b) = (browser(&webdriver).await?, browser(&webdriver).await?);
    let result = async {
        open(&a, &stack, &alice).await?;
        open(&b, &stack, &bob).await?;
        say(&a, &bob, "hello bob, from a browser").await?;
        text_contains(&b, "#messages", "hello bob, from a browser").await?;
        say(&b, &alice, "hi alice!").await?;
        text_contains(&a, "#messages", "hi alice!").await?;
        // Bob's server goes away; his page must come back on the new owner.
        let (bob_server, _) = stack.route(&bob).await?;
        stack.add_server(|_| {})?;
        let old = stack
            .take_server(&bob_server)
            .ok_or_else(|| anyhow::anyhow!("no server"))?;
        old.stop().await;
        text_contains(&b, "#log", "closed with 4006").await?;
        text_contains(&b, "#status", "(resumed)").await?;
        say(&a, &bob, "still there?").await?;
        text_contains(&b, "#messages", "still there?").await?;
        let shots = (
            screenshot(&a, "browser-alice").await?,
            screenshot(&b, "browser-bob").await?,
        );
        eprintln!(
            "    screenshots: {} {}",
            shots.0.display(),
            shots.1.display()
        );
        anyhow::Ok(())
    }
    .await;
    let _ = a.close().await;
    let _ = b.close().await;
    stack.stop().await;
    result
}

const KEY: &str = "browser-key-0123456789abcdef-0123456789";

async fn publish(stack: &Stack, key: &str, text: &str) -> anyhow::Result<()> {
    let body = serde_json::json!({"to": {"channel": "ch:scores"}, "body": {"text": text},
        "from": "system:scores", "idempotency_key": key});
    let deadline = tokio::time::Instant::now() + T;
    loop {
        for s in &stack.servers {
            let r = reqwest::Client::new()
                .post(format!("{}/v1/publish", s.url()))
                .bearer_auth(KEY)
                .json(&body)
                .send()
                .await;
            if r.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "publication {key} not taken"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The demo's channel panel: subscribe, see publications live, and after the
/// page's server drains, resubscribe on the new one with `recovered: true`
/// and the publication made in between.
pub async fn browser_channel_panel_recovers_after_a_drain(infra: Arc<Infra>) -> anyhow::Result<()> {
    let mut stack = Stack::start_with(&infra, "browser-ch", 2, false, |c| {
        c.api_keys = vec![KEY.to_owned().into()];
    })
    .await?;
    let (_driver, webdriver) = chromedriver().await?;
    let page = browser(&webdriver).await?;
    let result = async {
        let grants = switchboard_client::token::Grants {
            channels: vec!["ch:*".into()],
            publish: vec![],
        };
        let token = switchboard_client::token::mint_hs256_with(
            harness::stack::JWT_SECRET,
            "fan",
            3600,
            &grants,
        )?;
        open_with(&page, &stack, "fan", &token).await?;
        page.find(Locator::Css("#channel"))
            .await?
            .send_keys("ch:scores")
            .await?;
        page.find(Locator::Css("#subscribe")).await?.click().await?;
        text_contains(&page, "#channels", "ch:scores (recovered: false)").await?;
        publish(&stack, "goal-1", "1-0").await?;
        text_contains(&page, "#channel-messages", "1-0").await?;
        let (server, _) = stack.route("fan").await?;
        stack.add_server(|c| c.api_keys = vec![KEY.to_owned().into()])?;
        let old = stack
            .take_server(&server)
            .ok_or_else(|| anyhow::anyhow!("no server"))?;
        old.stop().await;
        // Published while the page has no server: recovered on the next one.
        publish(&stack, "goal-2", "2-0").await?;
        text_contains(&page, "#log", "closed with 4006").await?;
        text_contains(&page, "#channels", "ch:scores (recovered: true)").await?;
        text_contains(&page, "#channel-messages", "2-0").await?;
        let shot = screenshot(&page, "browser-channel").await?;
        eprintln!("    screenshot: {}", shot.display());
        anyhow::Ok(())
    }
    .await;
    let _ = page.close().await;
    stack.stop().await;
    result
}

async fn subscribe_in_page(page: &Client, channel: &str) -> anyhow::Result<()> {
    page.find(Locator::Css("#channel"))
        .await?
        .send_keys(channel)
        .await?;
    page.find(Locator::Css("#subscribe")).await?.click().await?;
    Ok(())
}

/// The demo's presence: alice's page shows her contact bob offline, then
/// online with a green dot when his page connects; both subscribe to a
/// presence channel and her channel panel counts 2 watching; bob's page
/// closes and she sees him offline and 1 watching.
pub async fn browser_shows_contacts_online_and_who_is_watching(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let stack = Stack::start_with(&infra, "browser-pr", 2, false, |c| {
        c.presence_channels = vec!["ch:room*".into()];
    })
    .await?;
    let (alice, bob) = stack.users_on_distinct_servers("webp").await?;
    let api = switchboard_client::Api::new(&stack.coordinator.url(), &Stack::token(&alice));
    api.create_conversation(&alice, Some("webp-room"), std::slice::from_ref(&bob))
        .await?;
    let (_driver, webdriver) = chromedriver().await?;
    let (a, b) = (browser(&webdriver).await?, browser(&webdriver).await?);
    let grants = switchboard_client::token::Grants {
        channels: vec!["ch:*".into()],
        publish: vec![],
    };
    let token = |u: &str| {
        switchboard_client::token::mint_hs256_with(harness::stack::JWT_SECRET, u, 3600, &grants)
    };
    let result = async {
        open_with(&a, &stack, &alice, &token(&alice)?).await?;
        text_contains(&a, "#contacts", &format!("○ {bob}")).await?;
        open_with(&b, &stack, &bob, &token(&bob)?).await?;
        text_contains(&a, "#contacts", &format!("● {bob}")).await?;
        subscribe_in_page(&a, "ch:room1").await?;
        text_contains(&a, "#channels", "ch:room1 (recovered: false) · 1 watching").await?;
        subscribe_in_page(&b, "ch:room1").await?;
        text_contains(&a, "#channels", "· 2 watching").await?;
        let shot = screenshot(&a, "browser-presence").await?;
        eprintln!("    screenshot: {}", shot.display());
        b.close().await?;
        text_contains(&a, "#channels", "· 1 watching").await?;
        text_contains(&a, "#contacts", &format!("○ {bob} (last seen")).await?;
        anyhow::Ok(())
    }
    .await;
    let _ = a.close().await;
    stack.stop().await;
    result
}
