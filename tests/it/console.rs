//! The operator console (the coordinator's `/console/`) in headless
//! Chromium: it shows every server and every partition of a three-server
//! stack, a drain from its button moves the drained server's colour off
//! the map within 5 s, and without the admin key nothing is shown or done.
//! Screenshots: target/test-artifacts/console-*.png.

use crate::browser::{browser, chromedriver, screenshot};
use harness::stack::Backing;
use harness::{Infra, Stack};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ADMIN: &str = "console-admin-key-0123456789abcdef-0123";
/// The stated bound: the drain, the coordinator's debounce, a page poll.
const REPAINTED_WITHIN: Duration = Duration::from_secs(5);

/// What the page shows: (server id, state) per row, and each cell's owner.
async fn shown(page: &fantoccini::Client) -> anyhow::Result<(Vec<(String, String)>, Vec<String>)> {
    let v = page
        .execute(
            r#"return {
                rows: [...document.querySelectorAll('#servers tbody tr')]
                    .map((tr) => [tr.dataset.server, tr.children[1].textContent]),
                cells: [...document.querySelectorAll('#grid .cell')].map((c) => c.dataset.owner),
            };"#,
            vec![],
        )
        .await?;
    Ok((
        serde_json::from_value(v["rows"].clone())?,
        serde_json::from_value(v["cells"].clone())?,
    ))
}

async fn refused_without_the_key(stack: &Stack) -> anyhow::Result<()> {
    let base = stack.coordinator.url();
    let http = reqwest::Client::new();
    let overview = http
        .get(format!("{base}/console/api/overview"))
        .send()
        .await?;
    anyhow::ensure!(
        overview.status() == 401,
        "overview without the key: {}",
        overview.status()
    );
    let drain = http
        .post(format!("{base}/console/api/servers/ms1/drain"))
        .bearer_auth("not-the-key")
        .send()
        .await?;
    anyhow::ensure!(
        drain.status() == 401,
        "drain with a wrong key: {}",
        drain.status()
    );
    let server = stack.servers[0].url();
    let direct = http.post(format!("{server}/admin/drain")).send().await?;
    anyhow::ensure!(
        direct.status() == 401,
        "a server's /admin/drain without the key: {}",
        direct.status()
    );
    let o: Value = http
        .get(format!("{base}/console/api/overview"))
        .bearer_auth(ADMIN)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    anyhow::ensure!(
        o["servers"].as_array().map(Vec::len) == Some(3) && o["can_drain"] == json!(true),
        "{o}"
    );
    Ok(())
}

pub async fn console_shows_the_map_and_drains_a_server(infra: Arc<Infra>) -> anyhow::Result<()> {
    let backing = Backing::shared(&infra).admin_key(ADMIN);
    let stack = Stack::start_on(&infra, backing, "console", 3, false, |c| {
        c.admin_key = Some(ADMIN.to_owned().into());
    })
    .await?;
    refused_without_the_key(&stack).await?;
    let (_driver, webdriver) = chromedriver().await?;
    let page = browser(&webdriver).await?;
    let result = async {
        page.goto(&format!("{}/console/#key={ADMIN}", stack.coordinator.url()))
            .await?;
        let partitions = stack.partitions as usize;
        let deadline = Instant::now() + Duration::from_secs(20);
        let (rows, cells) = loop {
            let (rows, cells) = shown(&page).await?;
            let all_ready = rows.len() == 3 && rows.iter().all(|(_, s)| s == "ready");
            if all_ready && cells.len() == partitions && cells.iter().all(|c| !c.is_empty()) {
                break (rows, cells);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the page shows {rows:?} and {cells:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        screenshot(&page, "console-before-drain").await?;
        let victim = rows[0].0.clone();
        anyhow::ensure!(cells.contains(&victim), "{victim} owns nothing: {cells:?}");
        page.execute("window.confirm = () => true;", vec![]).await?;
        let button = format!("button.drain[data-server='{victim}']");
        page.find(fantoccini::Locator::Css(&button))
            .await?
            .click()
            .await?;
        let clicked = Instant::now();
        loop {
            let (rows, cells) = shown(&page).await?;
            let draining = rows.iter().any(|(id, s)| id == &victim && s == "draining");
            if draining && cells.iter().all(|c| !c.is_empty() && c != &victim) {
                break;
            }
            anyhow::ensure!(
                clicked.elapsed() < REPAINTED_WITHIN,
                "{victim} still on the map {:?} after the drain: {rows:?} {cells:?}",
                clicked.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "    the map lost {victim}'s colour {:?} after the click",
            clicked.elapsed()
        );
        screenshot(&page, "console-after-drain").await?;
        anyhow::Ok(())
    }
    .await;
    let _ = page.close().await;
    stack.stop().await;
    result
}
