//! A channel's audience over every server: `GET /v1/channels/{c}/stats`.

use crate::channels::{client_config, owner_of, two_per_server, KEY};
use harness::{Infra, Stack};
use protocol::ChannelName;
use std::sync::Arc;
use std::time::Duration;
use switchboard_client::{Client, ClientConfig};

/// `GET /v1/channels/{c}/stats` from any of three servers: the channel's
/// subscribers and distinct users over all of them (one user with two
/// devices counts once); `?local=true` is one server's share; API key only.
pub async fn channel_stats_add_up_over_three_servers(infra: Arc<Infra>) -> anyhow::Result<()> {
    let stack = Stack::start_with(&infra, "chan-stats", 3, false, |c| {
        c.api_keys = vec![KEY.to_owned().into()]
    })
    .await?;
    let a = stack.assignment().await?;
    let owner = |u: &str| owner_of(&a, u);
    let users = two_per_server(&a, "st")?;
    let channel = ChannelName::new("ch:live.stats")?;
    let mut clients = Vec::new();
    let devices = users
        .iter()
        .map(|u| (u, "screen"))
        .chain([(&users[0], "phone")]);
    for (u, device) in devices {
        let c = Client::start(ClientConfig {
            device_id: device.into(),
            ..client_config(&stack, u)
        });
        tokio::time::timeout(Duration::from_secs(20), c.subscribe(&channel)).await??;
        clients.push(c);
    }
    let http = reqwest::Client::new();
    let stats = |base: String, local: bool, key: &'static str| {
        let req = http
            .get(format!("{base}/v1/channels/{channel}/stats"))
            .query(&[("local", local)])
            .bearer_auth(key);
        async move { req.send().await }
    };
    for s in &stack.servers {
        let got: protocol::api::ChannelStats = stats(s.url(), false, KEY)
            .await?
            .error_for_status()?
            .json()
            .await?;
        anyhow::ensure!(
            (got.subscribers, got.users) == (7, 6),
            "from {}: {got:?}",
            s.url()
        );
    }
    let api = switchboard_client::Api::new(&stack.coordinator.url(), KEY);
    let via_client = api.channel_stats(&channel).await?;
    anyhow::ensure!(
        (via_client.subscribers, via_client.users) == (7, 6),
        "client: {via_client:?}"
    );
    let home = owner(&users[0]);
    let base = stack
        .servers
        .iter()
        .find(|s| s.name == home)
        .map(|s| s.url())
        .ok_or_else(|| anyhow::anyhow!("no server {home}"))?;
    let share: protocol::api::ChannelStats = stats(base.clone(), true, KEY)
        .await?
        .error_for_status()?
        .json()
        .await?;
    anyhow::ensure!(
        (share.subscribers, share.users) == (3, 2),
        "{home}'s share: {share:?}"
    );
    let refused = stats(base, false, "not-a-key").await?.status();
    anyhow::ensure!(
        refused == reqwest::StatusCode::UNAUTHORIZED,
        "without a key: {refused}"
    );
    stack.stop().await;
    Ok(())
}
