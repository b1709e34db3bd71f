//! One channel, a large audience (issue "Live updates"): ≥ 50,000 subscribed
//! devices spread over three servers, a backend publishing at a fixed rate,
//! publish→deliver latency, deliveries/s, server CPU per delivery and Kafka
//! bytes per publication — beside the same audience as a group conversation
//! (Kafka bytes, send latency and PostgreSQL rows per send).
//!
//! The devices live in `--watchers` child processes (this binary's hidden
//! `watch-channel` command), each under the 20,000 file descriptors a
//! process may hold here.

use super::child::{Child, Span};
use super::{now_us, sent_us, Bench, BENCH_API_KEY};
use crate::bench::Env;
use crate::procstat::cpu_seconds;
use futures_util::{SinkExt, StreamExt};
use harness::Infra;
use hdrhistogram::Histogram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

pub(super) const CHANNEL: &str = "ch:bench.live";

#[derive(clap::Args)]
pub struct ChannelArgs {
    /// Subscribed devices (one user each).
    #[arg(long, default_value_t = 50_000)]
    subscribers: usize,
    /// Messaging servers.
    #[arg(long, default_value_t = 3)]
    servers: usize,
    /// Publications per second.
    #[arg(long, default_value_t = 10)]
    rate: u64,
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Processes holding the devices.
    #[arg(long, default_value_t = 3)]
    watchers: usize,
    /// Sends to the same audience as a group conversation (0: skip).
    #[arg(long, default_value_t = 3)]
    group_sends: usize,
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The hidden child command: hold devices, report what they received.
#[derive(clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    span: Span,
    /// Publications each device should receive before the child reports.
    #[arg(long)]
    expect: usize,
    #[arg(long)]
    deadline_secs: u64,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
pub(super) struct WatchReport {
    pub(super) subscribed: usize,
    pub(super) received: u64,
    /// `join`/`leave` frames received (presence channels).
    #[serde(default)]
    pub(super) memberships: u64,
    /// (latency µs, count) pairs of the publish→deliver histogram.
    latency_us: Vec<(u64, u64)>,
}

#[derive(serde::Serialize)]
struct GroupReport {
    members: usize,
    sends: usize,
    kafka_records_per_send: f64,
    kafka_bytes_per_send: f64,
    send_ack_p50_ms: f64,
    send_ack_max_ms: f64,
    postgres_rows_per_send: f64,
}

#[derive(serde::Serialize)]
struct ChannelReport {
    subscribers: usize,
    servers: usize,
    rate_per_s: u64,
    seconds: u64,
    publications: u64,
    deliveries: u64,
    deliveries_expected: u64,
    deliveries_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    server_cpu_s: f64,
    server_cpu_us_per_delivery: f64,
    broker_cpu_us_per_publication: f64,
    kafka_bytes_per_publication: f64,
    connect_seconds: f64,
    group: Option<GroupReport>,
}

use super::Ws;

pub(super) fn small_buffers() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

pub(super) fn token(user: &str) -> String {
    let grants = switchboard_client::token::Grants {
        channels: vec!["ch:*".into()],
        publish: vec![],
    };
    switchboard_client::token::mint_hs256_with(harness::stack::JWT_SECRET, user, 7200, &grants)
        .unwrap_or_default()
}

/// One device: hello, subscribe, then record each publication's latency.
async fn device(ws_url: String, user: String) -> anyhow::Result<Ws> {
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(&ws_url, Some(small_buffers()), false).await?;
    join(&mut ws, &user, &token(&user), Some(CHANNEL)).await?;
    Ok(ws)
}

/// Says hello with `token` and, with `channel`, subscribes to it (again
/// while the server answers `unavailable`); returns once welcomed and
/// subscribed.
pub(super) async fn join(
    ws: &mut Ws,
    user: &str,
    token: &str,
    channel: Option<&str>,
) -> anyhow::Result<()> {
    let hello = serde_json::json!({"type": "hello", "token": token, "device_id": "w"});
    ws.send(Message::text(hello.to_string())).await?;
    let sub = serde_json::json!({"type": "subscribe", "id": 1, "channel": channel});
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await? {
            Some(Ok(Message::Text(t))) if t.contains("\"type\":\"welcome\"") => {
                if channel.is_none() {
                    return Ok(());
                }
                ws.send(Message::text(sub.to_string())).await?
            }
            Some(Ok(Message::Text(t))) if t.contains("\"type\":\"subscribed\"") => return Ok(()),
            Some(Ok(Message::Text(t))) if t.contains("\"unavailable\"") => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                ws.send(Message::text(sub.to_string())).await?
            }
            Some(Ok(Message::Text(t))) => anyhow::bail!("{user}: {t}"),
            Some(Ok(_)) => {}
            other => anyhow::bail!("{user}: {other:?}"),
        }
    }
}

pub async fn watch(a: WatchArgs) -> anyhow::Result<()> {
    let assignment = a.span.assignment().await?;
    let users: Vec<String> = (a.span.first..a.span.first + a.span.count)
        .map(|i| format!("w{i}"))
        .collect();
    let shards: Arc<Vec<Mutex<Histogram<u64>>>> = Arc::new(
        (0..16)
            .map(|_| Histogram::new_with_bounds(1, 600_000_000, 3).map(Mutex::new))
            .collect::<Result<_, _>>()?,
    );
    let received = Arc::new(AtomicU64::new(0));
    let memberships = Arc::new(AtomicU64::new(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(a.deadline_secs);
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in users.chunks(250) {
        let opened = futures_util::future::join_all(chunk.iter().map(|u| {
            let p = protocol::partition_for(u, assignment.partitions);
            let url = assignment
                .owner(p)
                .map(|s| s.ws_url.clone())
                .unwrap_or_default();
            device(url, u.clone())
        }))
        .await;
        // Each device reads from the start: it answers the server's pings
        // while the others are still connecting.
        for ws in opened {
            let i = tasks.len();
            tasks.spawn(receive(
                ws?,
                (shards.clone(), i % 16),
                (received.clone(), memberships.clone()),
                a.expect,
                deadline,
            ));
        }
    }
    println!("ready {}", tasks.len());
    if a.expect == 0 {
        // Held until the parent says stop (or goes away); "start" begins
        // the count of join/leave frames.
        let mut told = super::child::Told::stdin();
        while told.next().await.is_ok_and(|l| l == "start") {
            memberships.store(0, Ordering::Relaxed);
        }
        tasks.abort_all();
    }
    let mut kept = Vec::new();
    while let Some(r) = tasks.join_next().await {
        kept.extend(r.ok());
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for s in shards.iter() {
        if let Ok(h) = s.lock() {
            all.add(&*h)?;
        }
    }
    let report = WatchReport {
        subscribed: kept.len(),
        received: received.load(Ordering::Relaxed),
        memberships: memberships.load(Ordering::Relaxed),
        latency_us: all
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect(),
    };
    println!("report {}", serde_json::to_string(&report)?);
    Ok(())
}

type Shards = (Arc<Vec<Mutex<Histogram<u64>>>>, usize);

/// Records each publication's latency until `expect` have arrived (with
/// `expect` 0: until the deadline), and counts join/leave frames.
async fn receive(
    mut ws: Ws,
    (shards, shard): Shards,
    (received, memberships): (Arc<AtomicU64>, Arc<AtomicU64>),
    expect: usize,
    deadline: tokio::time::Instant,
) -> Ws {
    let mut got = 0;
    while expect == 0 || got < expect {
        let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, ws.next()).await else {
            break;
        };
        let Message::Text(t) = m else { continue };
        if t.starts_with("{\"type\":\"join\"") || t.starts_with("{\"type\":\"leave\"") {
            memberships.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if !t.contains("\"channel\":") {
            continue;
        }
        if let Some(sent) = sent_us(&t) {
            got += 1;
            let lat = now_us().saturating_sub(sent).max(1);
            if let Ok(mut h) = shards[shard].lock() {
                let _ = h.record(lat);
            }
        }
    }
    received.fetch_add(got as u64, Ordering::Relaxed);
    ws
}

/// A `watch-channel` child holding devices `first..first + count`.
pub(super) fn watcher(
    coordinator: &str,
    first: usize,
    count: usize,
    expect: usize,
    deadline_secs: u64,
) -> anyhow::Result<Child> {
    let span = Span {
        coordinator: coordinator.to_owned(),
        first,
        count,
    };
    let flags = [
        ("expect", expect.to_string()),
        ("deadline-secs", deadline_secs.to_string()),
    ];
    Child::command("watch-channel", &span, &flags)
}

pub(super) fn cpu(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_seconds(*p)).sum()
}

pub async fn channels(infra: Arc<Env>, a: ChannelArgs) -> anyhow::Result<()> {
    let b = Bench::start(infra.clone(), a.servers).await?;
    let coordinator = b.coordinator.url();
    let publications = (a.rate * a.seconds) as usize;
    let t_connect = Instant::now();
    let per = a.subscribers.div_ceil(a.watchers);
    let mut watchers = Vec::new();
    for w in 0..a.watchers {
        let count = per.min(a.subscribers - w * per);
        let deadline = 900 + a.seconds * 4;
        watchers.push(watcher(
            &coordinator,
            w * per,
            count,
            publications,
            deadline,
        )?);
    }
    let mut subscribed = 0;
    for w in &mut watchers {
        subscribed += w.line("ready").await?.parse::<usize>()?;
    }
    let connect_seconds = t_connect.elapsed().as_secs_f64();
    println!(
        "{subscribed} devices subscribed to {CHANNEL} over {} servers in {connect_seconds:.1} s",
        a.servers
    );
    let pids: Vec<u32> = (0..a.servers).map(|i| b.pid(i)).collect();
    let broker: Vec<u32> = infra.broker_pid().into_iter().collect();
    let (cpu0, bcpu0, t0) = (cpu(&pids), cpu(&broker), Instant::now());
    let published = publish_paced(&b, a.rate, publications).await?;
    let mut merged = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut deliveries = 0;
    for w in &mut watchers {
        let r: WatchReport = serde_json::from_str(&w.line("report").await?)?;
        deliveries += r.received;
        for (v, n) in r.latency_us {
            merged.record_n(v, n)?;
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let (scpu, bcpu) = (cpu(&pids) - cpu0, cpu(&broker) - bcpu0);
    let kafka = crate::topic::topic_bytes(&infra.kafka, &protocol::channel_topic(&b.topic)).await?;
    let group = match a.group_sends {
        0 => None,
        n => Some(group(&b, &infra, subscribed, n).await?),
    };
    let ms = |q: f64| merged.value_at_quantile(q) as f64 / 1000.0;
    let report = ChannelReport {
        subscribers: subscribed,
        servers: a.servers,
        rate_per_s: a.rate,
        seconds: a.seconds,
        publications: published,
        deliveries,
        deliveries_expected: published * subscribed as u64,
        deliveries_per_s: deliveries as f64 / wall,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: merged.max() as f64 / 1000.0,
        server_cpu_s: scpu,
        server_cpu_us_per_delivery: scpu * 1e6 / deliveries.max(1) as f64,
        broker_cpu_us_per_publication: bcpu * 1e6 / published.max(1) as f64,
        kafka_bytes_per_publication: kafka.bytes as f64 / kafka.records.max(1) as f64,
        connect_seconds,
        group,
    };
    super::report(&report, a.json.as_deref())?;
    for w in watchers {
        w.kill().await;
    }
    b.stop().await;
    Ok(())
}

/// Publishes `n` publications at `rate`/s through the servers in turn.
async fn publish_paced(b: &Bench, rate: u64, n: usize) -> anyhow::Result<u64> {
    let http = reqwest::Client::new();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let mut ok = 0;
    for i in 0..n {
        tick.tick().await;
        let url = format!(
            "http://127.0.0.1:{}/v1/publish",
            b.servers[i % b.servers.len()].2
        );
        let body = serde_json::json!({"to": {"channel": CHANNEL}, "from": "system:bench",
            "idempotency_key": format!("p{i}"), "body": {"sent_us": now_us(), "score": i}});
        let r = http
            .post(url)
            .bearer_auth(BENCH_API_KEY)
            .json(&body)
            .send()
            .await?;
        if r.status().is_success() {
            ok += 1;
        }
    }
    Ok(ok)
}

/// The same audience as one group conversation: a few sends from its first
/// member, with a persister running to count the rows each costs.
async fn group(
    b: &Bench,
    infra: &Infra,
    members: usize,
    sends: usize,
) -> anyhow::Result<GroupReport> {
    let users: Vec<String> = (0..members).map(|i| format!("w{i}")).collect();
    let server = format!("http://127.0.0.1:{}", b.servers[0].2);
    let http = reqwest::Client::new();
    http.post(format!("{server}/v1/conversations"))
        .bearer_auth(token(&users[0]))
        .json(&serde_json::json!({"conversation_id": "audience", "members": users}))
        .send()
        .await?
        .error_for_status()?;
    let persister = b.spawn_persister()?;
    let before = crate::topic::topic_bytes(&infra.kafka, &b.topic).await?;
    let mut acks = Vec::new();
    for i in 0..sends {
        let t = Instant::now();
        http.post(format!("{server}/v1/messages"))
            .bearer_auth(token(&users[0]))
            .json(&serde_json::json!({"client_msg_id": format!("g{i}"), "to": {"conversation": "audience"}, "body": {"sent_us": now_us()}}))
            .send()
            .await?
            .error_for_status()?;
        acks.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let after = crate::topic::topic_bytes(&infra.kafka, &b.topic).await?;
    let store = store::Store::connect_lazy(&b.db, 2, Duration::from_secs(5))?;
    let want = (sends * (members + 1)) as i64;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut rows = 0;
    while Instant::now() < deadline {
        let c = store.counts().await?;
        rows = c.messages + c.deliveries;
        if rows >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = persister.terminate().await;
    acks.sort_by(f64::total_cmp);
    Ok(GroupReport {
        members,
        sends,
        kafka_records_per_send: (after.records - before.records) as f64 / sends as f64,
        kafka_bytes_per_send: (after.bytes - before.bytes) as f64 / sends as f64,
        send_ack_p50_ms: acks[acks.len() / 2],
        send_ack_max_ms: acks.last().copied().unwrap_or(0.0),
        postgres_rows_per_send: rows as f64 / sends as f64,
    })
}
