//! No silent zombie: a long-lived task that dies makes its service drain
//! and exit with an error (so the orchestrator restarts it), with readiness
//! false meanwhile — for a messaging server's Kafka consumer and for the
//! persister's consumer thread. The fault is injected through the
//! services' `serve_with` hook, which nothing outside Rust code can reach.

use crate::messaging::connect;
use harness::{wait_until, Infra, Stack};
use std::sync::Arc;
use std::time::Duration;

async fn not_ready(url: &str) -> bool {
    !reqwest::get(format!("{url}/readyz"))
        .await
        .is_ok_and(|r| r.status().is_success())
}

pub async fn a_dying_task_is_never_a_silent_zombie(infra: Arc<Infra>) -> anyhow::Result<()> {
    let mut stack = Stack::start(&infra, "zombie", 1, false).await?;
    let faults = messaging_server::Faults::default();
    let victim = stack.add_server_with(|_| {}, faults.clone())?;
    stack.wait_settled(2).await?;
    let mut user = None;
    for i in 0..200 {
        let u = format!("z{i}");
        if stack.route(&u).await?.0 == victim {
            user = Some(u);
            break;
        }
    }
    let user = user.ok_or_else(|| anyhow::anyhow!("no user routed to {victim}"))?;
    let mut device = connect(&stack, &user, "d").await?;
    faults.fail("kafka-consumer");
    let url = stack.server_http(&victim).unwrap_or_default();
    wait_until(
        "the server reports not ready",
        Duration::from_secs(5),
        || not_ready(&url),
    )
    .await?;
    let code = device.closed(Duration::from_secs(30)).await?;
    anyhow::ensure!(
        code == Some(4006),
        "the device was closed with {code:?}, want 4006"
    );
    let handle = stack
        .take_server(&victim)
        .ok_or_else(|| anyhow::anyhow!("no handle for {victim}"))?;
    handle.exits_with("kafka-consumer").await?;
    stack.wait_settled(1).await?;
    connect(&stack, &user, "d").await?;

    let persister_faults = persister::Faults::default();
    stack.start_persister_with(persister_faults.clone())?;
    let persister = stack
        .persister
        .take()
        .ok_or_else(|| anyhow::anyhow!("no persister"))?;
    let purl = persister.url();
    wait_until(
        "the persister is ready",
        Duration::from_secs(30),
        || async { !not_ready(&purl).await },
    )
    .await?;
    persister_faults.fail("consumer");
    persister.exits_with("panicked").await?;
    // Exited means gone: no HTTP server left behind answering probes for a
    // persister whose consumer is dead.
    anyhow::ensure!(
        reqwest::get(format!("{purl}/readyz")).await.is_err(),
        "the persister exited but its HTTP server still answers"
    );
    eprintln!("    server: Kafka consumer panicked → not ready, sessions closed 4006, exit error; persister: consumer thread panicked → exit error");
    stack.stop().await;
    Ok(())
}
