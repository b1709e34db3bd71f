//! The broker misbehaving under traffic, on a broker of the test's own:
//! paused past librdkafka's message timeout, and too slow for the offered
//! load. Sends must answer (never hang), servers must send again by
//! themselves, and everything acknowledged must be delivered and persisted.

use harness::stack::Backing;
use harness::traffic::{drive, expect_delivered, expect_persisted};
use harness::{Infra, Receivers, Stack};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The producer's message timeout (10 s) plus scheduling slack: no send may
/// take longer than this to be answered, whatever the broker does.
const ANSWER_WITHIN: Duration = Duration::from_secs(14);

/// Polls one server until a send through it is acknowledged; returns how long that took.
async fn sends_again(server: &str, user: &str, to: &str) -> anyhow::Result<Duration> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()?;
    let started = Instant::now();
    let mut n = 0;
    harness::wait_until("the server sends again", Duration::from_secs(40), || {
        n += 1;
        let body = json!({"client_msg_id": format!("again-{n}"), "to": {"user": to}, "body": {}});
        let req = http
            .post(format!("{server}/v1/messages"))
            .bearer_auth(Stack::token(user))
            .json(&body);
        async move {
            req.send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        }
    })
    .await?;
    Ok(started.elapsed())
}

async fn producer_restarts(server: &str) -> f64 {
    harness::metric(server, "switchboard_server_producer_restarts_total").await
}

pub async fn broker_pause_answers_and_recovers(infra: Arc<Infra>) -> anyhow::Result<()> {
    let (broker, kafka) = infra.private_broker("paused").await?;
    let stack = Stack::start_on(
        &infra,
        Backing::shared(&infra).kafka(&kafka),
        "paused",
        2,
        true,
        |_| {},
    )
    .await?;
    let users: Vec<String> = (0..6).map(|i| format!("pr{i}")).collect();
    let receivers = Receivers::start(&stack.coordinator.url(), &users).await?;
    let to = users.clone();
    let body = move |s: usize, n: usize| {
        let g = (s + n) % to.len();
        let b =
            json!({"client_msg_id": format!("s{s}-{n}"), "to": {"user": to[g]}, "body": {"n": n}});
        (format!("psend{s}"), g, b)
    };
    let traffic = {
        let until = Instant::now() + Duration::from_secs(22);
        async move {
            let o = drive(&stack, 8, Duration::from_millis(100), until, body).await;
            (stack, o)
        }
    };
    let pause = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        broker.pause().await?;
        // Past the producer's 10 s message timeout.
        tokio::time::sleep(Duration::from_secs(13)).await;
        broker.unpause().await?;
        anyhow::Ok(Instant::now())
    };
    let ((stack, o), unpaused) = tokio::join!(traffic, pause);
    let unpaused = unpaused?;
    let mut recovered = Vec::new();
    for s in &stack.servers {
        recovered.push(sends_again(&s.url(), "psend0", &users[0]).await?);
    }
    eprintln!(
        "    {} acked, {} unavailable, other {:?}; slowest answer {:?}; servers send again {:?} after the traffic ended ({:?} after unpause); producer restarts {:?}",
        o.acked.len(), o.unavailable, o.other, o.slowest, recovered, unpaused.elapsed(),
        [producer_restarts(&stack.servers[0].url()).await, producer_restarts(&stack.servers[1].url()).await],
    );
    anyhow::ensure!(o.other.is_empty(), "unexpected answers: {:?}", o.other);
    anyhow::ensure!(
        o.unavailable > 0,
        "the pause refused nothing: it did not bite"
    );
    anyhow::ensure!(
        o.slowest <= ANSWER_WITHIN,
        "a send hung for {:?}",
        o.slowest
    );
    expect_delivered(&receivers, &o.acked, |g| vec![g]).await?;
    expect_persisted(&stack, &o.acked).await?;
    receivers.stop().await;
    stack.stop().await;
    let _ = broker.rm().await;
    Ok(())
}

pub async fn overload_refuses_early_and_recovers(infra: Arc<Infra>) -> anyhow::Result<()> {
    let (broker, kafka) = infra.private_broker("overload").await?;
    let stack = Stack::start_on(
        &infra,
        Backing::shared(&infra).kafka(&kafka),
        "overload",
        2,
        true,
        |c| c.max_produce_in_flight = 256,
    )
    .await?;
    let receivers: Vec<String> = (0..4).map(|i| format!("or{i}")).collect();
    let senders: Vec<String> = (0..12).map(|i| format!("os{i}")).collect();
    let members: Vec<&String> = receivers.iter().chain(&senders).collect();
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{}/v1/conversations", stack.servers[0].url()))
        .bearer_auth(Stack::token(&senders[0]))
        .json(&json!({"conversation_id": "overload", "members": members}))
        .send()
        .await?;
    anyhow::ensure!(
        created.status().is_success(),
        "create conversation: {}",
        created.status()
    );
    let inboxes = Receivers::start(&stack.coordinator.url(), &receivers).await?;
    // A broker with a tenth of a core: far less than the offered load.
    let throttle = |cpus: &str| {
        std::process::Command::new("docker")
            .args(["update", "--cpus", cpus, broker.id()])
            .status()
    };
    anyhow::ensure!(throttle("0.1")?.success(), "docker update --cpus failed");
    let group_send = |senders: Vec<String>| {
        move |s: usize, n: usize| {
            let b = json!({"client_msg_id": format!("g{s}-{n}-{}", uuid::Uuid::new_v4()), "to": {"conversation": "overload"}, "body": {"n": n}});
            (senders[s % senders.len()].clone(), 0usize, b)
        }
    };
    let until = Instant::now() + Duration::from_secs(30);
    // Many senders at once, each waiting for its ack: up to 96 × 8 records
    // offered at a time, three times the bound.
    let overload = drive(
        &stack,
        96,
        Duration::from_millis(5),
        until,
        group_send(senders.clone()),
    )
    .await;
    // Still on the slow broker: each server sends again once its backlog is
    // through, and then takes a normal load without refusing anything.
    let mut recovered = Vec::new();
    for s in &stack.servers {
        recovered.push(sends_again(&s.url(), &senders[0], &receivers[0]).await?);
    }
    let until = Instant::now() + Duration::from_secs(10);
    let normal = drive(
        &stack,
        2,
        Duration::from_millis(200),
        until,
        group_send(senders.clone()),
    )
    .await;
    anyhow::ensure!(throttle("0")?.success(), "docker update --cpus failed");
    eprintln!(
        "    overload 30 s: {} acked, {} unavailable ({} refused by the in-flight bound, slowest refusal {:?}), other {:?}; then normal load: {} acked, {} unavailable; every server sends ({:?})",
        overload.acked.len(), overload.unavailable, overload.overloaded, overload.slowest_refusal, overload.other,
        normal.acked.len(), normal.unavailable, recovered,
    );
    anyhow::ensure!(
        overload.other.is_empty() && normal.other.is_empty(),
        "unexpected answers"
    );
    anyhow::ensure!(
        overload.overloaded > 0,
        "the offered load never hit the in-flight bound"
    );
    anyhow::ensure!(
        overload.slowest <= ANSWER_WITHIN,
        "a send hung for {:?}",
        overload.slowest
    );
    anyhow::ensure!(
        normal.unavailable == 0 && !normal.acked.is_empty(),
        "normal load after the overload still failed"
    );
    let acked: Vec<(usize, protocol::MsgId)> =
        overload.acked.into_iter().chain(normal.acked).collect();
    expect_delivered(&inboxes, &acked, |_| (0..receivers.len()).collect()).await?;
    expect_persisted(&stack, &acked).await?;
    inboxes.stop().await;
    stack.stop().await;
    let _ = broker.rm().await;
    Ok(())
}
