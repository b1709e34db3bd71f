//! The broker misbehaving under traffic, on a broker of the test's own:
//! paused past librdkafka's message timeout, and too slow for the offered
//! load. Sends must answer (never hang), servers must send again by
//! themselves, and everything acknowledged must be delivered and persisted.

use harness::{Infra, Receivers, Stack};
use protocol::MsgId;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The producer's message timeout (10 s) plus scheduling slack: no send may
/// take longer than this to be answered, whatever the broker does.
const ANSWER_WITHIN: Duration = Duration::from_secs(14);

/// How long a sender waits after a refusal before its next send.
const REFUSED_BACKOFF: Duration = Duration::from_millis(200);

#[derive(Default, Debug)]
struct Outcomes {
    /// Acknowledged sends: (index of the recipient group, msg_id).
    acked: Vec<(usize, MsgId)>,
    /// `unavailable` answers, and those among them refused by the in-flight bound.
    unavailable: usize,
    overloaded: usize,
    other: Vec<String>,
    slowest: Duration,
    slowest_refusal: Duration,
}

/// One send over HTTP; records its outcome and how long the answer took.
/// True when it was refused (the sender backs off, as a client would).
async fn send(
    http: &reqwest::Client,
    server: &str,
    user: &str,
    body: &serde_json::Value,
    out: &Mutex<Outcomes>,
    group: usize,
) -> bool {
    let started = Instant::now();
    let r = http
        .post(format!("{server}/v1/messages"))
        .bearer_auth(Stack::token(user))
        .json(body)
        .send()
        .await;
    let answer = match r {
        Ok(r) => {
            let status = r.status();
            Ok((
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            ))
        }
        Err(e) => Err(e),
    };
    let took = started.elapsed();
    let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
    o.slowest = o.slowest.max(took);
    let (status, v) = match answer {
        Ok(a) => a,
        Err(e) => {
            o.other.push(format!("transport: {e}"));
            return true;
        }
    };
    if status.is_success() {
        match v["msg_id"].as_str().and_then(|s| s.parse().ok()) {
            Some(id) => o.acked.push((group, MsgId(id))),
            None => o.other.push(format!("ack without msg_id: {v}")),
        }
        false
    } else if v["code"] == "unavailable" {
        o.unavailable += 1;
        o.slowest_refusal = o.slowest_refusal.max(took);
        if v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("overloaded")
        {
            o.overloaded += 1;
        }
        true
    } else {
        o.other.push(format!("{status}: {v}"));
        true
    }
}

/// `senders` concurrent senders, each sending every `every` until `until`,
/// alternating servers; `body(sender, n)` gives (user, group, body).
async fn drive(
    stack: &Stack,
    senders: usize,
    every: Duration,
    until: Instant,
    body: impl Fn(usize, usize) -> (String, usize, serde_json::Value) + Send + Sync + 'static,
) -> Outcomes {
    let out = Arc::new(Mutex::new(Outcomes::default()));
    let servers: Vec<String> = stack.servers.iter().map(|s| s.url()).collect();
    let body = Arc::new(body);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_default();
    let mut tasks = Vec::new();
    for s in 0..senders {
        let (servers, body, out, http) = (servers.clone(), body.clone(), out.clone(), http.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while Instant::now() < until {
                let (user, group, b) = body(s, n);
                let server = &servers[(s + n) % servers.len()];
                let refused = send(&http, server, &user, &b, &out, group).await;
                n += 1;
                tokio::time::sleep(if refused { REFUSED_BACKOFF } else { every }).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let outcomes = std::mem::take(&mut *out.lock().unwrap_or_else(|e| e.into_inner()));
    outcomes
}

/// Every acknowledged message reached each receiver of its group.
async fn expect_delivered(
    receivers: &Receivers,
    acked: &[(usize, MsgId)],
    groups: impl Fn(usize) -> Vec<usize>,
) -> anyhow::Result<()> {
    let want = |i: usize| {
        acked
            .iter()
            .filter(|(g, _)| groups(*g).contains(&i))
            .map(|(_, m)| *m)
            .collect()
    };
    receivers.expect_each(want, Duration::from_secs(60)).await
}

/// Every acknowledged chat message has its row in PostgreSQL.
async fn expect_persisted(stack: &Stack, acked: &[(usize, MsgId)]) -> anyhow::Result<()> {
    let db = store::Store::connect(&stack.database_url).await?;
    let ids: Vec<uuid::Uuid> = acked.iter().map(|(_, m)| m.0).collect();
    let done = || async {
        db.count_stored(&ids)
            .await
            .is_ok_and(|n| n as usize == ids.len())
    };
    harness::wait_until(
        "every acknowledged message persisted",
        Duration::from_secs(60),
        done,
    )
    .await?;
    db.close().await;
    Ok(())
}

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
    let text = match reqwest::get(format!("{server}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return -1.0,
    };
    text.lines()
        .find(|l| l.starts_with("switchboard_server_producer_restarts_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0)
}

pub async fn broker_pause_answers_and_recovers(infra: Arc<Infra>) -> anyhow::Result<()> {
    let (broker, kafka) = infra.private_broker("paused").await?;
    let stack = Stack::start_on(&infra, &kafka, "paused", 2, true, |_| {}).await?;
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
    let stack = Stack::start_on(&infra, &kafka, "overload", 2, true, |c| {
        c.max_produce_in_flight = 256
    })
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
    let acked: Vec<(usize, MsgId)> = overload.acked.into_iter().chain(normal.acked).collect();
    expect_delivered(&inboxes, &acked, |_| (0..receivers.len()).collect()).await?;
    expect_persisted(&stack, &acked).await?;
    inboxes.stop().await;
    stack.stop().await;
    let _ = broker.rm().await;
    Ok(())
}
