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

/// The value of the unlabelled metric `name` on `base`'s `/metrics`, or -1
/// when the service does not answer or does not export it.
pub async fn metric(base: &str, name: &str) -> f64 {
    let text = match reqwest::get(format!("{base}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return -1.0,
    };
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0)
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
pub use client::{Event, WsClient};
pub use stack::Stack;

pub mod process;
pub use process::Process;

pub mod receiver;
pub mod traffic;
pub use receiver::{Received, Receivers};
pub mod proxy;
