//! Channel presence under churn (issue "Presence"): a presence channel
//! with `--subscribers` devices (child processes) over three servers while
//! `--churn-pct` of that audience per second unsubscribes or subscribes
//! again (devices in this process). Reports join/leave frames delivered per
//! second, server CPU per churn event and per delivered frame, the p99 of
//! churn → join/leave at observers, and what a listing of the whole channel
//! costs (`channel_presence` pages of 500) beside its stats.

use super::channels::{cpu, join, small_buffers, token, watcher, WatchReport, CHANNEL};
use super::{now_us, Bench};
use crate::bench::Env;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args)]
pub struct PresenceArgs {
    /// Devices subscribed to the presence channel all along.
    #[arg(long, default_value_t = 50_000)]
    subscribers: usize,
    #[arg(long, default_value_t = 3)]
    servers: usize,
    /// Share of the audience that leaves or joins each second, in percent.
    #[arg(long, default_value_t = 1.0)]
    churn_pct: f64,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// The servers' `SWITCHBOARD_JOIN_LEAVE_LIMIT`.
    #[arg(long, default_value_t = 1_000)]
    join_leave_limit: usize,
    /// Processes holding the subscribers.
    #[arg(long, default_value_t = 3)]
    watchers: usize,
    /// Subscribers in this process timing join/leave arrivals.
    #[arg(long, default_value_t = 20)]
    observers: usize,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(serde::Serialize)]
struct PresenceReport {
    subscribers: usize,
    servers: usize,
    join_leave_limit: usize,
    /// Whether the channel was small enough for join/leave frames.
    join_leave_sent: bool,
    churn_per_s: f64,
    seconds: u64,
    churn_events: u64,
    /// join/leave frames received by every subscriber together.
    join_leave_delivered: u64,
    join_leave_delivered_per_s: f64,
    /// churn (un)subscribe sent → join/leave read at an observer; null
    /// when none was sent (a channel above the join/leave limit).
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    server_cpu_s: f64,
    /// The servers' CPU without churn (cores), subtracted from the figures below.
    server_cpu_idle_cores: f64,
    /// Above idle, over the churn window (until the observers stop reading).
    server_cpu_us_per_churn_event: f64,
    server_cpu_us_per_delivered: Option<f64>,
    /// All the broker's CPU over the churn window, per event.
    broker_cpu_us_per_churn_event: f64,
    broker_cpu_idle_cores: f64,
    broker_cpu_us_per_churn_event_above_idle: f64,
    /// Every user of the channel, page by page (500 a page), from one
    /// device, once every server has applied the setup (before the churn).
    listing_users: usize,
    listing_pages: usize,
    listing_ms: f64,
    listing_page_max_ms: f64,
    stats_ms: f64,
    connect_seconds: f64,
}

type Ws = super::Ws;

/// Seconds measured without churn before it starts (the idle baseline).
const IDLE_SECS: u64 = 5;
/// (user, join?) → when the churn frame that causes it was sent (µs).
type Sent = Arc<Mutex<HashMap<(String, bool), u64>>>;

async fn device(b: &Bench, user: &str) -> anyhow::Result<Ws> {
    // A server that just lost its lease under the connect load leaves its
    // partitions unowned for a moment: ask again.
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = loop {
        match b.route(user).await {
            Ok((_, url)) => break url,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(e) => {
                eprintln!("route {user}: {e}; again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(&url, Some(small_buffers()), false).await?;
    join(&mut ws, user, &token(user), Some(CHANNEL)).await?;
    Ok(ws)
}

/// Reads an observer's frames until `until`, timing each join/leave.
async fn observe(
    mut ws: Ws,
    sent: Sent,
    hist: Arc<Mutex<Histogram<u64>>>,
    until: tokio::time::Instant,
) -> (Ws, u64) {
    let mut seen = 0;
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, ws.next()).await {
        let Message::Text(t) = m else { continue };
        let joined = t.starts_with("{\"type\":\"join\"");
        if !joined && !t.starts_with("{\"type\":\"leave\"") {
            continue;
        }
        seen += 1;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) else {
            continue;
        };
        let user = v["user"].as_str().unwrap_or_default().to_owned();
        let at = sent
            .lock()
            .ok()
            .and_then(|s| s.get(&(user, joined)).copied());
        if let (Some(at), Ok(mut h)) = (at, hist.lock()) {
            let _ = h.record(now_us().saturating_sub(at).max(1));
        }
    }
    (ws, seen)
}

/// Churns: each second, `rate` of the churners unsubscribe (or, the next
/// time, subscribe again), spread over the second. Returns the events sent.
async fn churn(
    churners: &mut [(String, Ws, bool)],
    rate: f64,
    seconds: u64,
    sent: Sent,
) -> anyhow::Result<u64> {
    let total = (rate * seconds as f64) as u64;
    let every = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut tick = tokio::time::interval(every);
    let n = churners.len().max(1);
    for i in 0..total {
        tick.tick().await;
        let (user, ws, subscribed) = &mut churners[i as usize % n];
        let kind = if *subscribed {
            "unsubscribe"
        } else {
            "subscribe"
        };
        if let Ok(mut s) = sent.lock() {
            s.insert((user.clone(), !*subscribed), now_us());
        }
        let frame = serde_json::json!({"type": kind, "channel": CHANNEL});
        ws.send(Message::text(frame.to_string())).await?;
        *subscribed = !*subscribed;
    }
    Ok(total)
}

/// Pages through the whole channel from `ws`: (users, pages, total ms, slowest page ms).
async fn listing(ws: &mut Ws) -> anyhow::Result<(Vec<String>, usize, f64, f64)> {
    let (mut users, mut pages, mut slowest) = (Vec::new(), 0, 0f64);
    let mut after: Option<String> = None;
    let t0 = Instant::now();
    loop {
        let ask = serde_json::json!({"type": "channel_presence", "id": pages, "channel": CHANNEL, "after": after, "limit": 500});
        let t = Instant::now();
        ws.send(Message::text(ask.to_string())).await?;
        let page = loop {
            match tokio::time::timeout(Duration::from_secs(30), ws.next()).await? {
                Some(Ok(Message::Text(t))) if t.starts_with("{\"type\":\"channel_presence\"") => {
                    break serde_json::from_str::<protocol::presence::ChannelPresence>(&t)?
                }
                Some(Ok(Message::Text(t))) if t.starts_with("{\"type\":\"error\"") => {
                    anyhow::bail!("{t}")
                }
                Some(Ok(_)) => {}
                other => anyhow::bail!("listing: {other:?}"),
            }
        };
        slowest = slowest.max(t.elapsed().as_secs_f64() * 1000.0);
        pages += 1;
        users.extend(page.users.iter().map(|u| u.to_string()));
        match page.next_after {
            Some(n) => after = Some(n.to_string()),
            None => return Ok((users, pages, t0.elapsed().as_secs_f64() * 1000.0, slowest)),
        }
    }
}

/// The devices of a run: subscribers held by child processes, observers
/// and churners in this one.
struct Audience {
    watchers: Vec<super::child::Child>,
    held: usize,
    observers: Vec<Ws>,
    churners: Vec<(String, Ws, bool)>,
    connect_seconds: f64,
}

impl Audience {
    fn len(&self) -> usize {
        self.held + self.observers.len() + self.churners.len()
    }
}

async fn connect(b: &Bench, a: &PresenceArgs, rate: f64) -> anyhow::Result<Audience> {
    let t = Instant::now();
    let coordinator = b.coordinator.url();
    let per = a.subscribers.div_ceil(a.watchers);
    let deadline = 900 + a.seconds * 2;
    let mut watchers = Vec::new();
    for w in 0..a.watchers {
        let count = per.min(a.subscribers - w * per);
        watchers.push(watcher(&coordinator, w * per, count, 0, deadline)?);
    }
    let mut held = 0;
    for w in &mut watchers {
        held += w.line("ready").await?.parse::<usize>()?;
    }
    let mut observers = Vec::new();
    for i in 0..a.observers {
        observers.push(device(b, &format!("obs{i}")).await?);
    }
    let mut churners = Vec::new();
    for i in 0..(rate.ceil() as usize).max(1) {
        let user = format!("churn{i}");
        churners.push((user.clone(), device(b, &user).await?, true));
    }
    let connect_seconds = t.elapsed().as_secs_f64();
    Ok(Audience {
        watchers,
        held,
        observers,
        churners,
        connect_seconds,
    })
}

/// A complete listing of the channel: once it is, every server has applied
/// the setup's events. Returns the last listing (users, pages, ms, worst page ms).
async fn settled_listing(ws: &mut Ws, audience: usize) -> anyhow::Result<(usize, usize, f64, f64)> {
    let settle = Instant::now() + Duration::from_secs(180);
    loop {
        let l = listing(ws).await?;
        if l.0.len() >= audience || Instant::now() > settle {
            return Ok((l.0.len(), l.1, l.2, l.3));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn stats_ms(b: &Bench) -> anyhow::Result<f64> {
    let t = Instant::now();
    let url = format!("{}/v1/channels/{CHANNEL}/stats", b.server_http(0));
    reqwest::Client::new()
        .get(&url)
        .bearer_auth(super::BENCH_API_KEY)
        .send()
        .await?
        .error_for_status()?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// CPU-seconds per second of each set of processes over the same `secs`.
async fn cpu_rates<const N: usize>(sets: [&[u32]; N], secs: u64) -> [f64; N] {
    let (c0, t) = (sets.map(cpu), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let elapsed = t.elapsed().as_secs_f64();
    let mut out = [0.0; N];
    for (i, set) in sets.iter().enumerate() {
        out[i] = (cpu(set) - c0[i]) / elapsed;
    }
    out
}

/// What the churn window measured.
struct Churned {
    events: u64,
    delivered: u64,
    wall: f64,
    server_cpu: f64,
    broker_cpu: f64,
    latency: Histogram<u64>,
}

/// Churns for `a.seconds` while the observers time join/leave and the
/// watchers count them; CPU of `pids` (servers) and `broker` over it.
async fn churn_window(
    au: &mut Audience,
    a: &PresenceArgs,
    rate: f64,
    (pids, broker): (&[u32], &[u32]),
) -> anyhow::Result<Churned> {
    let sent: Sent = Arc::default();
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1,
        600_000_000,
        3,
    )?));
    let until = tokio::time::Instant::now() + Duration::from_secs(a.seconds + 5);
    let readers: Vec<_> = std::mem::take(&mut au.observers)
        .into_iter()
        .map(|ws| tokio::spawn(observe(ws, sent.clone(), hist.clone(), until)))
        .collect();
    for w in &mut au.watchers {
        w.tell("start").await?;
    }
    let (cpu0, bcpu0, t0) = (cpu(pids), cpu(broker), Instant::now());
    // Kept open to the end: a closed churner would leave the channel.
    let events = churn(&mut au.churners, rate, a.seconds, sent).await?;
    let mut delivered = 0;
    for r in readers {
        let (ws, seen) = r.await?;
        delivered += seen;
        au.observers.push(ws);
    }
    let (wall, server_cpu, broker_cpu) = (
        t0.elapsed().as_secs_f64(),
        cpu(pids) - cpu0,
        cpu(broker) - bcpu0,
    );
    for w in &mut au.watchers {
        w.tell("stop").await?;
    }
    for w in &mut au.watchers {
        let r: WatchReport = serde_json::from_str(&w.line("report").await?)?;
        delivered += r.memberships;
    }
    let latency = hist
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram poisoned"))?
        .clone();
    Ok(Churned {
        events,
        delivered,
        wall,
        server_cpu,
        broker_cpu,
        latency,
    })
}

pub async fn presence(infra: Arc<Env>, a: PresenceArgs) -> anyhow::Result<()> {
    let env = [
        ("SWITCHBOARD_PRESENCE_CHANNELS", "ch:bench.*".to_owned()),
        (
            "SWITCHBOARD_JOIN_LEAVE_LIMIT",
            a.join_leave_limit.to_string(),
        ),
    ];
    let b = Bench::start_with(infra.clone(), a.servers, &env).await?;
    let rate = a.subscribers as f64 * a.churn_pct / 100.0;
    let mut au = connect(&b, &a, rate).await?;
    let audience = au.len();
    println!(
        "{audience} devices on {CHANNEL} in {:.1} s",
        au.connect_seconds
    );
    let (users, pages, listing_ms, page_max) =
        settled_listing(&mut au.observers[0], audience).await?;
    println!("listed {users} of {audience} in {pages} pages, {listing_ms:.1} ms");
    let stats_ms = stats_ms(&b).await?;
    let pids: Vec<u32> = (0..a.servers).map(|i| b.pid(i)).collect();
    let broker: Vec<u32> = infra.broker_pid().into_iter().collect();
    // What the servers and the broker spend without churn (pings, polls).
    let [idle, broker_idle] = cpu_rates([&pids, &broker], IDLE_SECS).await;
    let c = churn_window(&mut au, &a, rate, (&pids, &broker)).await?;
    let above = (c.server_cpu - idle * c.wall).max(0.0);
    let h = &c.latency;
    let ms = |q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0);
    let per_event = |cpu: f64| cpu * 1e6 / c.events.max(1) as f64;
    let report = PresenceReport {
        subscribers: audience,
        servers: a.servers,
        join_leave_limit: a.join_leave_limit,
        join_leave_sent: audience <= a.join_leave_limit,
        churn_per_s: rate,
        seconds: a.seconds,
        churn_events: c.events,
        join_leave_delivered: c.delivered,
        join_leave_delivered_per_s: c.delivered as f64 / c.wall,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: (!h.is_empty()).then(|| h.max() as f64 / 1000.0),
        server_cpu_s: c.server_cpu,
        server_cpu_idle_cores: idle,
        server_cpu_us_per_churn_event: per_event(above),
        server_cpu_us_per_delivered: (c.delivered > 0).then(|| above * 1e6 / c.delivered as f64),
        broker_cpu_us_per_churn_event: per_event(c.broker_cpu),
        broker_cpu_idle_cores: broker_idle,
        broker_cpu_us_per_churn_event_above_idle: per_event(
            (c.broker_cpu - broker_idle * c.wall).max(0.0),
        ),
        listing_users: users,
        listing_pages: pages,
        listing_ms,
        listing_page_max_ms: page_max,
        stats_ms,
        connect_seconds: au.connect_seconds,
    };
    super::report(&report, a.json.as_deref())?;
    for w in au.watchers {
        w.kill().await;
    }
    b.stop().await;
    Ok(())
}
