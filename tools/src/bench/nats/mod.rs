//! Fan-out side by side with NATS (issue: "beat NATS per delivery"): the
//! same Rust WebSocket clients and workload — N subscribers of one channel
//! or group / one subject, one publisher, ~150-byte messages, paced and
//! burst — against two Switchboard messaging servers and Debian's
//! `nats-server` with its WebSocket listener. CPU is read from /proc for the
//! servers only (the broker apart), idle CPU over the same window for both.

use super::Bench;
use crate::bench::Env;
use crate::procstat::cpu_seconds;
use futures_util::{SinkExt, StreamExt};
use harness::{wait_until, Stack};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args)]
pub struct NatsArgs {
    #[arg(long, default_value_t = 200)]
    subscribers: usize,
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Messages per second in the paced run.
    #[arg(long, default_value_t = 50)]
    rate: u64,
    /// Bursts measured together (each of `--messages`, awaited in turn):
    /// one burst is a tenth of a CPU-second, near the 10-ms tick of /proc.
    #[arg(long, default_value_t = 5)]
    bursts: usize,
    /// Seconds of idle CPU measured with every subscriber connected.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// What the subscribers of the Switchboard side follow: a channel (the
    /// live-update feature, like a NATS subject) and/or a group conversation.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Via::Channel, Via::Group])]
    via: Vec<Via>,
    /// Compare with JetStream (a file-backed stream, acked publications, a
    /// push consumer per subscriber) instead of core NATS.
    #[arg(long)]
    jetstream: bool,
    /// Write the runs as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Channel,
    Group,
}

const CHANNEL: &str = "ch:fan";

mod natsd;
use natsd::Nats;

impl NatsArgs {
    /// Paced, then burst.
    fn workloads(&self) -> [Workload; 2] {
        let per_round = (self.messages * self.subscribers) as u64;
        let (n, rate) = (self.messages, self.rate);
        [
            Workload {
                n,
                rate,
                rounds: 1,
                per_round,
            },
            Workload {
                n,
                rate: 0,
                rounds: self.bursts,
                per_round,
            },
        ]
    }
}

#[derive(Serialize, Default, Clone)]
struct SystemRun {
    deliveries: u64,
    server_cpu_s: f64,
    deliveries_per_cpu_s: f64,
    idle_cpu_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// The Kafka broker's CPU over the same window (Switchboard only; not
    /// in `server_cpu_s`, which compares the servers).
    #[serde(skip_serializing_if = "Option::is_none")]
    broker_cpu_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    broker_idle_cpu_s: Option<f64>,
}

#[derive(Serialize)]
struct Run {
    subscribers: usize,
    messages: usize,
    mode: &'static str,
    /// Bursts (or paced runs) measured together, each of `messages`.
    rounds: usize,
    /// How the Switchboard subscribers follow the publisher.
    via: Via,
    body_bytes: usize,
    /// `core` (nothing kept) or `jetstream` (a file-backed stream).
    nats_mode: &'static str,
    switchboard: SystemRun,
    nats: SystemRun,
    /// Switchboard deliveries per CPU-second of its servers over NATS's.
    ratio: f64,
    /// The same with the broker's CPU counted on Switchboard's side (the
    /// whole system against nats-server alone).
    ratio_with_broker: f64,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A ~150-byte JSON body carrying its send time.
fn body() -> String {
    let head = format!("{{\"t\":{},\"pad\":\"", now_us());
    let pad = "x".repeat(150usize.saturating_sub(head.len() + 2));
    format!("{head}{pad}\"}}")
}

/// Deliveries and send→deliver latency, shared by every subscriber task.
#[derive(Clone)]
struct Tally {
    delivered: Arc<AtomicU64>,
    latency: Arc<Mutex<Histogram<u64>>>,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            delivered: Arc::new(AtomicU64::new(0)),
            latency: Arc::new(Mutex::new(Histogram::new(3)?)),
        })
    }
    fn record(&self, body: &str) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let sent = body
            .split_once("\"t\":")
            .and_then(|(_, r)| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|t| t.parse::<u64>().ok());
        if let (Some(sent), Ok(mut h)) = (sent, self.latency.lock()) {
            let _ = h.record(now_us().saturating_sub(sent));
        }
    }
    fn reset(&self) {
        self.delivered.store(0, Ordering::Relaxed);
        if let Ok(mut h) = self.latency.lock() {
            h.reset();
        }
    }
    fn quantile_ms(&self, q: f64) -> f64 {
        self.latency
            .lock()
            .map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0)
    }
}

fn cpu(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_seconds(*p)).sum()
}

/// What one measured run publishes: `n` messages paced at `rate` per
/// second (0: all at once), `rounds` times, each round awaited until every
/// subscriber has it (`per_round` deliveries).
#[derive(Clone, Copy)]
struct Workload {
    n: usize,
    rate: u64,
    rounds: usize,
    per_round: u64,
}

/// Publishes the workload's frames made by `frame(i)` (i unique over the
/// rounds) on `sink` and waits for their deliveries after each round.
async fn measure<S>(
    pids: &[u32],
    tally: &Tally,
    w: Workload,
    sink: &mut S,
    frame: impl Fn(usize) -> Message,
) -> anyhow::Result<SystemRun>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    tally.reset();
    let cpu0 = cpu(pids);
    for round in 0..w.rounds {
        let started = Instant::now();
        for i in 0..w.n {
            sink.send(frame(round * w.n + i)).await?;
            if let Some(every) = 1_000_000u64.checked_div(w.rate) {
                let due = started + Duration::from_micros(every * (i as u64 + 1));
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let want = w.per_round * (round as u64 + 1);
        let done = wait_until("every delivery", Duration::from_secs(120), || async {
            tally.delivered.load(Ordering::Relaxed) >= want
        })
        .await;
        let got = tally.delivered.load(Ordering::Relaxed);
        done.map_err(|e| anyhow::anyhow!("{e}: {got} of {want}"))?;
    }
    let server_cpu_s = cpu(pids) - cpu0;
    let deliveries = tally.delivered.load(Ordering::Relaxed);
    Ok(SystemRun {
        deliveries,
        server_cpu_s,
        deliveries_per_cpu_s: deliveries as f64 / server_cpu_s.max(1e-9),
        idle_cpu_s: 0.0,
        p50_ms: tally.quantile_ms(0.5),
        p99_ms: tally.quantile_ms(0.99),
        broker_cpu_s: None,
        broker_idle_cpu_s: None,
    })
}

/// The Switchboard side: every subscriber (spread over both servers by
/// their partitions) follows a channel or is a member of a group; one
/// publisher session.
struct Switchboard {
    pids: Vec<u32>,
    tally: Tally,
    publisher: super::Ws,
    via: Via,
    /// The subscribers' readers; dropping them closes their sessions.
    _readers: tokio::task::JoinSet<()>,
}

/// A token that may subscribe and publish to every channel.
fn channel_token(user: &str) -> String {
    let grants = switchboard_client::token::Grants {
        channels: vec!["ch:*".into()],
        publish: vec!["ch:*".into()],
    };
    switchboard_client::token::mint_hs256_with(harness::stack::JWT_SECRET, user, 7200, &grants)
        .unwrap_or_default()
}

/// A session whose hello was welcomed; with `channel`, subscribed to it.
async fn sb_session(url: &str, user: &str, channel: Option<&str>) -> anyhow::Result<super::Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    super::channels::join(&mut ws, user, &channel_token(user), channel).await?;
    Ok(ws)
}

impl Switchboard {
    async fn start(b: &Bench, subscribers: usize, via: Via) -> anyhow::Result<Self> {
        let users: Vec<String> = (0..subscribers).map(|i| format!("sub{i}")).collect();
        let (_, pub_url) = b.route("publisher").await?;
        if via == Via::Group {
            let mut members = users.clone();
            members.push("publisher".into());
            let http = pub_url.replace("ws://", "http://").replace("/v1/ws", "");
            reqwest::Client::new()
                .post(format!("{http}/v1/conversations"))
                .bearer_auth(Stack::token("publisher"))
                .json(&serde_json::json!({"conversation_id": "fan", "members": members}))
                .send()
                .await?
                .error_for_status()?;
        }
        let channel = (via == Via::Channel).then_some(CHANNEL);
        let tally = Tally::new()?;
        let mut readers = tokio::task::JoinSet::new();
        for u in &users {
            let (_, url) = b.route(u).await?;
            let (_, mut rx) = sb_session(&url, u, channel).await?.split();
            let t = tally.clone();
            readers.spawn(async move {
                while let Some(Ok(m)) = rx.next().await {
                    if let Message::Text(text) = m {
                        if text.starts_with("{\"type\":\"message\"") {
                            t.record(&text);
                        }
                    }
                }
            });
        }
        let publisher = sb_session(&pub_url, "publisher", None).await?;
        let pids = (0..b.servers.len()).map(|i| b.pid(i)).collect();
        Ok(Self {
            pids,
            tally,
            publisher,
            via,
            _readers: readers,
        })
    }

    async fn run(&mut self, w: Workload) -> anyhow::Result<SystemRun> {
        let (mut tx, mut rx) = (&mut self.publisher).split();
        // Acks are read (and dropped) alongside, so the server never stalls on them.
        let drain = async { while let Some(Ok(_)) = rx.next().await {} };
        let rate = w.rate;
        let to = match self.via {
            Via::Channel => format!(r#"{{"channel":"{CHANNEL}"}}"#),
            Via::Group => r#"{"conversation":"fan"}"#.to_owned(),
        };
        let frame = |i: usize| {
            Message::text(format!(
                r#"{{"type":"send","client_msg_id":"m{rate}-{i}","to":{to},"body":{}}}"#,
                body()
            ))
        };
        let run = measure(&self.pids, &self.tally, w, &mut tx, frame);
        tokio::select! {
            r = run => r,
            _ = drain => anyhow::bail!("the publisher's session ended"),
        }
    }
}

pub async fn nats(infra: Arc<Env>, a: NatsArgs) -> anyhow::Result<()> {
    let broker: Vec<u32> = infra.broker_pid().into_iter().collect();
    let b = Bench::start(infra, 2).await?;
    let mut nats = Nats::start(a.subscribers, a.jetstream).await?;
    let nats_pids = nats.pids();
    let mut nats_runs = Vec::new();
    let n0 = cpu(&nats_pids);
    tokio::time::sleep(Duration::from_secs(a.idle_secs)).await;
    let nats_idle = cpu(&nats_pids) - n0;
    for w in a.workloads() {
        let mut n = nats.run(w).await?;
        n.idle_cpu_s = nats_idle;
        nats_runs.push(n);
    }
    drop(nats);
    let mut runs = Vec::new();
    for via in a.via.iter().copied() {
        // Each audience on fresh sessions; the other's are gone.
        let mut sb = Switchboard::start(&b, a.subscribers, via).await?;
        let (s0, b0) = (cpu(&sb.pids), cpu(&broker));
        tokio::time::sleep(Duration::from_secs(a.idle_secs)).await;
        let (sb_idle, broker_idle) = (cpu(&sb.pids) - s0, cpu(&broker) - b0);
        println!("idle {} s with {} subscribers via {}: switchboard servers {sb_idle:.3} CPU-s (broker {broker_idle:.3}), nats-server {nats_idle:.3} CPU-s", a.idle_secs, a.subscribers, if via == Via::Channel { "channel" } else { "group" });
        for ((mode, w), n) in ["paced", "burst"]
            .into_iter()
            .zip(a.workloads())
            .zip(&nats_runs)
        {
            let b0 = cpu(&broker);
            let mut s = sb.run(w).await?;
            s.idle_cpu_s = sb_idle;
            (s.broker_cpu_s, s.broker_idle_cpu_s) = (Some(cpu(&broker) - b0), Some(broker_idle));
            runs.push(report(&a, mode, via, s, n.clone()));
        }
    }
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&runs)? + "\n")?;
        println!("wrote {}", path.display());
    }
    b.stop().await;
    Ok(())
}

fn report(a: &NatsArgs, mode: &'static str, via: Via, s: SystemRun, n: SystemRun) -> Run {
    let ratio = s.deliveries_per_cpu_s / n.deliveries_per_cpu_s.max(1e-9);
    let whole = s.server_cpu_s + s.broker_cpu_s.unwrap_or_default();
    let ratio_with_broker =
        s.deliveries as f64 / whole.max(1e-9) / n.deliveries_per_cpu_s.max(1e-9);
    println!(
        "{mode:>5} via {}: switchboard {} deliveries, {:.2} CPU-s, {:.0}/CPU-s, p50 {:.1} ms p99 {:.1} ms, broker {:.2} CPU-s | nats {} deliveries, {:.2} CPU-s, {:.0}/CPU-s, p50 {:.1} ms p99 {:.1} ms | ratio {ratio:.2}, with the broker {ratio_with_broker:.2}",
        if via == Via::Channel { "channel" } else { "group" },
        s.deliveries, s.server_cpu_s, s.deliveries_per_cpu_s, s.p50_ms, s.p99_ms, s.broker_cpu_s.unwrap_or_default(),
        n.deliveries, n.server_cpu_s, n.deliveries_per_cpu_s, n.p50_ms, n.p99_ms
    );
    Run {
        subscribers: a.subscribers,
        messages: a.messages,
        mode,
        rounds: if mode == "burst" { a.bursts } else { 1 },
        via,
        body_bytes: body().len(),
        nats_mode: if a.jetstream { "jetstream" } else { "core" },
        switchboard: s,
        nats: n,
        ratio,
        ratio_with_broker,
    }
}
