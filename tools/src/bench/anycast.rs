//! Anycast (issue "Anycast"): `--subscribers` devices on a presence channel
//! over three servers, each answering `handled` at once; a backend
//! publishes `--rate` anycast publications per second through
//! `POST /v1/publish/batch` for `--seconds`. Reports publications handled
//! per second, publish → delivered latency at the chosen subscriber, how
//! evenly they spread, duplicates and losses, and CPU per publication of
//! the servers and of the broker.

use super::channels::{cpu, join, small_buffers, token};
use super::{now_us, Bench, Ws, BENCH_API_KEY};
use crate::bench::Env;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const POOL: &str = "ch:bench.pool";

#[derive(clap::Args)]
pub struct AnycastArgs {
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    #[arg(long, default_value_t = 3)]
    servers: usize,
    /// Anycast publications per second.
    #[arg(long, default_value_t = 2_000)]
    rate: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(serde::Serialize)]
struct AnycastReport {
    subscribers: usize,
    servers: usize,
    rate: usize,
    seconds: u64,
    published: usize,
    /// Distinct publications delivered to a subscriber (each answered `handled`).
    handled: usize,
    /// Deliveries of a publication a subscriber already had elsewhere.
    duplicates: usize,
    missing: usize,
    /// Distinct publications handled per second, first publish to last delivery.
    handled_per_s: f64,
    /// Publish (the batch sent) → delivered to the chosen subscriber.
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// The least and most any subscriber got, in percent of an even share.
    spread_min_pct: f64,
    spread_max_pct: f64,
    server_cpu_us_per_publication: f64,
    broker_cpu_us_per_publication: f64,
}

/// A delivery: (subscriber, msg_id, publish µs, delivered µs).
type Delivery = (usize, String, u64, u64);

async fn subscriber(b: &Bench, i: usize) -> anyhow::Result<(String, Ws)> {
    let user = format!("worker{i}");
    let (_, url) = b.route(&user).await?;
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(&url, Some(small_buffers()), false).await?;
    join(&mut ws, &user, &token(&user), Some(POOL)).await?;
    Ok((url, ws))
}

/// How many users `ws`'s server lists in the pool.
async fn listed(ws: &mut Ws) -> anyhow::Result<usize> {
    let ask =
        serde_json::json!({"type": "channel_presence", "id": "l", "channel": POOL, "limit": 500});
    ws.send(Message::text(ask.to_string())).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await? {
            Some(Ok(Message::Text(t))) if t.starts_with("{\"type\":\"channel_presence\"") => {
                let page: protocol::presence::ChannelPresence = serde_json::from_str(&t)?;
                return Ok(page.users.len());
            }
            Some(Ok(_)) => {}
            other => anyhow::bail!("listing: {other:?}"),
        }
    }
}

/// Answers `handled` for every anycast publication and reports it.
async fn work(
    i: usize,
    mut ws: Ws,
    out: mpsc::UnboundedSender<Delivery>,
    until: tokio::time::Instant,
) {
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, ws.next()).await {
        let Message::Text(t) = m else { continue };
        if !t.contains("\"anycast\":true") {
            continue;
        }
        let at = now_us();
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) else {
            continue;
        };
        let msg_id = v["msg_id"].as_str().unwrap_or_default().to_owned();
        let handled = serde_json::json!({"type": "handled", "channel": POOL, "msg_id": msg_id});
        if ws.send(Message::text(handled.to_string())).await.is_err() {
            return;
        }
        let sent = v["body"]["sent_us"].as_u64().unwrap_or(at);
        let _ = out.send((i, msg_id, sent, at));
    }
}

/// Publishes `rate` a second for `seconds`, in batches every 50 ms.
async fn publish(b: &Bench, servers: usize, rate: usize, seconds: u64) -> anyhow::Result<usize> {
    let http = reqwest::Client::new();
    let per_batch = (rate / 20).max(1);
    let batches = seconds as usize * 20;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut sent = 0;
    for n in 0..batches {
        tick.tick().await;
        let sent_us = now_us();
        let items: Vec<serde_json::Value> = (0..per_batch)
            .map(|k| {
                serde_json::json!({"to": {"channel": POOL}, "body": {"sent_us": sent_us, "n": sent + k},
                    "from": "system:bench", "idempotency_key": format!("any-{}-{k}", n), "anycast": true})
            })
            .collect();
        let url = format!("{}/v1/publish/batch", b.server_http(n % servers));
        let r: serde_json::Value = http
            .post(url)
            .bearer_auth(BENCH_API_KEY)
            .json(&serde_json::json!({ "items": items }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let accepted = r["results"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|x| x["msg_id"].is_string()).count());
        sent += accepted;
    }
    Ok(sent)
}

pub async fn anycast(infra: Arc<Env>, a: AnycastArgs) -> anyhow::Result<()> {
    let env = [("SWITCHBOARD_PRESENCE_CHANNELS", "ch:bench.*".to_owned())];
    let b = Bench::start_with(infra.clone(), a.servers, &env).await?;
    let mut workers = Vec::new();
    for i in 0..a.subscribers {
        workers.push(subscriber(&b, i).await?);
    }
    // Every server must list the whole pool before the run: one asker each.
    let mut asked = std::collections::HashSet::new();
    for (url, ws) in &mut workers {
        if !asked.insert(url.clone()) {
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while listed(ws).await? < a.subscribers {
            anyhow::ensure!(Instant::now() < deadline, "{url} never listed the pool");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let until = tokio::time::Instant::now() + Duration::from_secs(a.seconds + 60);
    let tasks: Vec<_> = workers
        .into_iter()
        .enumerate()
        .map(|(i, (_, ws))| tokio::spawn(work(i, ws, tx.clone(), until)))
        .collect();
    let pids: Vec<u32> = (0..a.servers).map(|i| b.pid(i)).collect();
    let broker: Vec<u32> = infra.broker_pid().into_iter().collect();
    let (cpu0, bcpu0, t0) = (cpu(&pids), cpu(&broker), now_us());
    let published = publish(&b, a.servers, a.rate, a.seconds).await?;
    let mut got: Vec<Delivery> = Vec::new();
    let mut distinct: HashMap<String, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while distinct.len() < published {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(d)) => {
                *distinct.entry(d.1.clone()).or_default() += 1;
                got.push(d);
            }
            _ => break,
        }
    }
    let last = got.iter().map(|d| d.3).max().unwrap_or(t0);
    let (server_cpu, broker_cpu) = (cpu(&pids) - cpu0, cpu(&broker) - bcpu0);
    // A late duplicate would show within the handle timeout; wait some.
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
        *distinct.entry(d.1.clone()).or_default() += 1;
        got.push(d);
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut per_worker = vec![0usize; a.subscribers];
    for (i, _, sent, at) in &got {
        let _ = hist.record(at.saturating_sub(*sent).max(1));
        per_worker[*i] += 1;
    }
    let even = got.len() as f64 / a.subscribers as f64;
    let pct = |n: usize| n as f64 * 100.0 / even.max(1e-9);
    let handled = distinct.len();
    let per_pub = |cpu: f64| cpu * 1e6 / published.max(1) as f64;
    let report = AnycastReport {
        subscribers: a.subscribers,
        servers: a.servers,
        rate: a.rate,
        seconds: a.seconds,
        published,
        handled,
        duplicates: got.len() - handled,
        missing: published.saturating_sub(handled),
        handled_per_s: handled as f64 / ((last.saturating_sub(t0)) as f64 / 1e6).max(1e-9),
        p50_ms: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        max_ms: hist.max() as f64 / 1000.0,
        spread_min_pct: pct(per_worker.iter().copied().min().unwrap_or(0)),
        spread_max_pct: pct(per_worker.iter().copied().max().unwrap_or(0)),
        server_cpu_us_per_publication: per_pub(server_cpu),
        broker_cpu_us_per_publication: per_pub(broker_cpu),
    };
    super::report(&report, a.json.as_deref())?;
    for t in tasks {
        t.abort();
    }
    b.stop().await;
    Ok(())
}
