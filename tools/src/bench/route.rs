//! `/v1/route` requests per second of one coordinator process pinned to one
//! core, with wrk on the other core.

use super::Bench;
use crate::bench::Env;
use harness::{free_port, wait_until, Process};
use std::sync::Arc;
use std::time::Duration;

pub async fn route(infra: Arc<Env>, seconds: u64) -> anyhow::Result<()> {
    // A published map with one live server.
    let b = Bench::start(infra.clone(), 1).await?;
    let port = free_port()?;
    let env = [
        ("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}")),
        ("SWITCHBOARD_ETCD_ENDPOINTS", infra.etcd.clone()),
        ("SWITCHBOARD_ETCD_PREFIX", b.prefix.clone()),
        ("SWITCHBOARD_KAFKA_BROKERS", infra.kafka.clone()),
        ("SWITCHBOARD_TOPIC", b.topic.clone()),
        ("SWITCHBOARD_PARTITIONS", "8".into()),
    ];
    let coord = Process::spawn("coordinator", &env)?;
    let pid = coord.pid().unwrap_or(0).to_string();
    tokio::process::Command::new("taskset")
        .args(["-a", "-p", "-c", "0", &pid])
        .output()
        .await?;
    let url = format!("http://127.0.0.1:{port}/v1/route?user_id=alice");
    wait_until(
        "the replica serves routes",
        Duration::from_secs(30),
        || async {
            reqwest::get(&url)
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        },
    )
    .await?;
    let out = tokio::process::Command::new("taskset")
        .args([
            "-c",
            "1",
            "wrk",
            "-t1",
            "-c64",
            &format!("-d{seconds}s"),
            "--latency",
            &url,
        ])
        .output()
        .await?;
    println!("coordinator replica pinned to CPU 0, wrk (1 thread, 64 connections) on CPU 1:");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    let _ = coord.terminate().await;
    b.stop().await;
    Ok(())
}
