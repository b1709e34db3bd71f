//! Test harness: real infrastructure in containers, services in-process.

pub mod docker_compat;
pub mod infra;
pub mod trials;

pub use infra::Infra;

use std::future::Future;
use std::time::{Duration, Instant};

/// A free TCP port on loopback (bound, read, released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Polls `check` every 50 ms until it returns true or `within` has passed.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {within:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The coordinators' map (`coordinators`: one URL or several, by commas),
/// from the first replica that answers.
/// A replica that does not answer within 2 s (frozen, cut off) is not
/// waited for longer: map pollers must keep their pace.
pub async fn assignment(coordinators: &str) -> anyhow::Result<protocol::Assignment> {
    let api = switchboard_client::Api::new(coordinators, "");
    let replicas = u32::try_from(coordinators.split(',').count()).unwrap_or(1);
    let within = Duration::from_secs(2) * replicas;
    match tokio::time::timeout(within, api.assignment()).await {
        Ok(got) => Ok(got?),
        Err(_) => anyhow::bail!("no coordinator answered with its map within {within:?}"),
    }
}

/// `(server_id, ws_url)` of the server the coordinators route `user` to.
pub async fn route(coordinators: &str, user: &str) -> anyhow::Result<(String, String)> {
    let r = switchboard_client::Api::new(coordinators, "")
        .route(user)
        .await?;
    Ok((r.server_id.to_string(), r.ws_url))
}

/// Waits (at most `within`) until the coordinators' map shows `servers`
/// live servers owning every partition ([`protocol::Assignment::settled`]).
pub async fn wait_map_settled(
    coordinators: &str,
    servers: usize,
    within: Duration,
) -> anyhow::Result<()> {
    wait_until("the partition map is settled", within, || async {
        assignment(coordinators)
            .await
            .is_ok_and(|a| a.settled(servers))
    })
    .await
}

/// The value of the unlabelled metric `name` on `base`'s `/metrics`, or -1
/// when the service does not answer or does not export it.
pub async fn metric(base: &str, name: &str) -> f64 {
    sample(base, name).await.unwrap_or(-1.0)
}

/// The value of the unlabelled metric `name` on `base`'s `/metrics`.
pub async fn sample(base: &str, name: &str) -> Option<f64> {
    metric_value(&scrape(base).await?, name)
}

/// `base`'s `/metrics` page (waiting at most 5 s), if it answers.
pub async fn scrape(base: &str) -> Option<String> {
    let client = reqwest::Client::new();
    let got = client
        .get(format!("{base}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    got.text().await.ok()
}

/// The value of the unlabelled sample `name` in a Prometheus text page.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    service::prom::value(text, name)
}

pub mod services;
pub use services::ServiceHandle;

/// A coordinator config for tests: fast lease and debounce, isolated prefix.
pub fn coordinator_config(
    infra: &Infra,
    prefix: &str,
    topic: &str,
    partitions: u32,
) -> coordinator::Config {
    coordinator::Config {
        listen: ([127, 0, 0, 1], 0).into(),
        etcd: service::args::EtcdArgs {
            endpoints: infra.etcd_endpoints(),
            prefix: prefix.to_owned(),
        },
        kafka: service::args::KafkaArgs {
            brokers: infra.kafka.clone(),
            topic: topic.to_owned(),
        },
        partitions,
        channel_partitions: 2,
        replication_factor: 1,
        coordinator_id: None,
        lease_ttl: Duration::from_secs(2),
        debounce: Duration::from_millis(200),
        declare_dead: true,
        route_wait_max: Duration::from_secs(30),
        admin_key: None,
        persister_urls: Vec::new(),
        console_api_key: None,
    }
}

pub fn start_coordinator(name: &str, config: coordinator::Config) -> anyhow::Result<ServiceHandle> {
    use service::Check;
    let config = config.validate()?;
    ServiceHandle::start(name, move |listener, cancel| {
        coordinator::serve(config, listener, cancel)
    })
}

pub mod client;
pub mod stack;
pub mod topic;
pub use client::{Event, WsClient};
pub use stack::Stack;

pub mod process;
pub use process::Process;

pub mod receiver;
pub mod traffic;
pub use receiver::{Received, Receivers};
pub mod idp;
pub mod proxy;
