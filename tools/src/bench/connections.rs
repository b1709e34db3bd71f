//! Many concurrent sessions (issue "Scale"): devices held by child processes
//! (`hold-devices`), each from its own range of loopback source addresses so
//! no (source, destination) pair runs out of ephemeral ports. Measures the
//! time to accept them all, server RSS per session, server CPU while they
//! idle (pings only), then send→deliver latency of direct messages among
//! them at a fixed rate while all stay connected.

use super::child::{Child, Span};
use super::Bench;
use crate::bench::Env;
use crate::procstat::{cpu_seconds, rss_bytes};
use futures_util::{SinkExt, StreamExt};
use harness::Stack;
use hdrhistogram::Histogram;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args)]
pub struct ConnArgs {
    /// Devices (one per user), all connected at once.
    #[arg(long, default_value_t = 100_000)]
    devices: usize,
    #[arg(long, default_value_t = 1)]
    servers: usize,
    /// Devices per child process (each holds one descriptor per device).
    #[arg(long, default_value_t = 17_000)]
    per_holder: usize,
    /// Seconds over which the servers' idle CPU is measured.
    #[arg(long, default_value_t = 20)]
    idle_secs: u64,
    /// Direct messages per second among the devices (all holders together).
    #[arg(long, default_value_t = 1000)]
    dm_rate: u64,
    #[arg(long, default_value_t = 20)]
    dm_seconds: u64,
    /// Devices that send (spread over the holders).
    #[arg(long, default_value_t = 200)]
    senders: usize,
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The hidden child command: hold devices, send and receive DMs when told.
#[derive(clap::Args)]
pub struct HoldArgs {
    #[command(flatten)]
    span: Span,
    /// All users of the run (DM targets are drawn from them).
    #[arg(long)]
    total: usize,
    /// Second octet of this holder's source addresses: 127.<net>.x.y.
    #[arg(long)]
    net: u8,
    #[arg(long)]
    senders: usize,
    /// DMs per second from this holder.
    #[arg(long)]
    rate: u64,
    #[arg(long)]
    seconds: u64,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct HoldReport {
    sent: u64,
    acked: u64,
    refused: u64,
    received: u64,
    /// Copies of a DM on its sender's own device (multi-device sync).
    sender_copies: u64,
    latency_us: Vec<(u64, u64)>,
}

#[derive(serde::Serialize)]
struct ConnReport {
    devices: usize,
    servers: usize,
    sessions_per_server: Vec<usize>,
    holders: usize,
    fd_limit_per_process: u64,
    accept_seconds: f64,
    accepted_per_s: f64,
    server_rss_before_mib: f64,
    server_rss_after_mib: f64,
    rss_per_session_bytes: f64,
    idle_secs: u64,
    idle_server_cpu_pct_of_core: f64,
    idle_server_cpu_us_per_session_per_s: f64,
    dm_rate_per_s: u64,
    dm_seconds: u64,
    dms_sent: u64,
    dms_acked: u64,
    dms_refused: u64,
    dms_delivered: u64,
    dm_sender_copies: u64,
    dms_lost: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    server_cpu_us_per_dm: f64,
    /// The same, less what the servers spend idle over that window (pings).
    server_cpu_us_per_dm_above_idle: f64,
    broker_cpu_us_per_dm: f64,
    dm_window_seconds: f64,
}

#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    acked: AtomicU64,
    refused: AtomicU64,
    received: AtomicU64,
    sender_copies: AtomicU64,
    latency: Mutex<Option<Histogram<u64>>>,
}

struct Plan {
    user: usize,
    total: usize,
    every: Duration,
    count: u64,
}

impl Plan {
    /// A spread of recipients other than the sender, without a random source.
    fn target(&self, n: u64) -> usize {
        let t = (self.user as u64 * 2_654_435_761 + n * 40_503) % self.total as u64;
        match t as usize {
            t if t == self.user => (t + 1) % self.total,
            t => t,
        }
    }
}

fn server_addr(ws_url: &str) -> anyhow::Result<SocketAddr> {
    let rest = ws_url.trim_start_matches("ws://");
    let host = rest.split('/').next().unwrap_or_default();
    Ok(host.parse()?)
}

/// Device `i` of holder `net`: connected from 127.<net>.<i/250>.<i%250+1>.
async fn device(server: SocketAddr, net: u8, i: usize, user: &str) -> anyhow::Result<super::Ws> {
    let source = Ipv4Addr::new(127, net, (i / 250 % 250) as u8, (i % 250 + 1) as u8);
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let stream = socket.connect(server).await?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let url = format!("ws://{server}/v1/ws");
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(
        url,
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
        Some(config),
    )
    .await?;
    let hello = serde_json::json!({"type": "hello", "token": Stack::token(user), "device_id": "d"});
    ws.send(Message::text(hello.to_string())).await?;
    match tokio::time::timeout(Duration::from_secs(60), ws.next()).await? {
        Some(Ok(Message::Text(t))) if t.contains("\"welcome\"") => Ok(ws),
        other => anyhow::bail!("{user}: no welcome: {other:?}"),
    }
}

pub async fn hold(a: HoldArgs) -> anyhow::Result<()> {
    let assignment = a.span.assignment().await?;
    let stats = Arc::new(Stats {
        latency: Mutex::new(Some(Histogram::new_with_bounds(1, 600_000_000, 3)?)),
        ..Stats::default()
    });
    let (go, go_rx) = tokio::sync::watch::channel(false);
    let mut told = super::child::Told::stdin();
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let ids: Vec<usize> = (a.span.first..a.span.first + a.span.count).collect();
    let every = Duration::from_secs_f64(a.senders.max(1) as f64 / a.rate.max(1) as f64);
    for chunk in ids.chunks(500) {
        let opened = futures_util::future::join_all(chunk.iter().map(|&u| {
            let user = format!("c{u}");
            let p = protocol::partition_for(&user, assignment.partitions);
            let url = assignment.owner(p).map(|s| s.ws_url.clone());
            async move { device(server_addr(&url.unwrap_or_default())?, a.net, u, &user).await }
        }))
        .await;
        for (ws, &u) in opened.into_iter().zip(chunk) {
            let local = u - a.span.first;
            let plan = (local < a.senders).then(|| Plan {
                user: u,
                total: a.total,
                every,
                count: a.rate * a.seconds / a.senders.max(1) as u64,
            });
            let me = format!("\"from\":\"c{u}\"");
            tasks.spawn(run_device(ws?, (me, plan), go_rx.clone(), stats.clone()));
        }
    }
    println!("ready {} {:.3}", tasks.len(), t0.elapsed().as_secs_f64());
    told.next().await?;
    go.send_replace(true);
    // Each message's delivery is awaited for at most ten seconds past the window.
    tokio::time::sleep(Duration::from_secs(a.seconds + 10)).await;
    let hist = stats.latency.lock().ok().and_then(|mut h| h.take());
    let report = HoldReport {
        sent: stats.sent.load(Ordering::Relaxed),
        acked: stats.acked.load(Ordering::Relaxed),
        refused: stats.refused.load(Ordering::Relaxed),
        received: stats.received.load(Ordering::Relaxed),
        sender_copies: stats.sender_copies.load(Ordering::Relaxed),
        latency_us: hist
            .iter()
            .flat_map(|h| h.iter_recorded())
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect(),
    };
    println!("report {}", serde_json::to_string(&report)?);
    // Stay connected until the parent is done with the servers.
    told.next().await?;
    tasks.abort_all();
    Ok(())
}

/// Reads (answering pings) until the end; sends DMs once told to go.
async fn run_device(
    mut ws: super::Ws,
    (me, plan): (String, Option<Plan>),
    mut go: tokio::sync::watch::Receiver<bool>,
    stats: Arc<Stats>,
) {
    let mut tick =
        tokio::time::interval(plan.as_ref().map_or(Duration::from_secs(3600), |p| p.every));
    let (mut n, mut started) = (0, false);
    let sending = plan.is_some();
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => observe(&t, &me, &stats),
                Some(Ok(_)) => {}
                _ => return,
            },
            r = go.changed(), if sending && !started => {
                started = r.is_ok() && *go.borrow();
                tick.reset();
            }
            _ = tick.tick(), if started && plan.as_ref().is_some_and(|p| n < p.count) => {
                let Some(p) = &plan else { continue };
                let f = serde_json::json!({"type": "send", "client_msg_id": format!("m{n}"),
                    "to": {"user": format!("c{}", p.target(n))}, "body": {"sent_us": super::now_us()}});
                n += 1;
                stats.sent.fetch_add(1, Ordering::Relaxed);
                if ws.send(Message::text(f.to_string())).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn observe(t: &str, me: &str, stats: &Stats) {
    if t.starts_with("{\"type\":\"ack\"") {
        stats.acked.fetch_add(1, Ordering::Relaxed);
    } else if t.starts_with("{\"type\":\"error\"") {
        stats.refused.fetch_add(1, Ordering::Relaxed);
    } else if let Some(sent) = super::sent_us(t) {
        // Latency counts every delivery; loss only the recipient's copy.
        if t.contains(me) {
            stats.sender_copies.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.received.fetch_add(1, Ordering::Relaxed);
        }
        let lat = super::now_us().saturating_sub(sent).max(1);
        if let Ok(mut h) = stats.latency.lock() {
            if let Some(h) = h.as_mut() {
                let _ = h.record(lat);
            }
        }
    }
}

fn sum(pids: &[u32], f: fn(u32) -> Option<f64>) -> f64 {
    pids.iter().filter_map(|p| f(*p)).sum()
}

fn rss(pid: u32) -> Option<f64> {
    rss_bytes(pid).map(|b| b as f64)
}

/// The soft limit on open files of this process (children inherit it).
fn fd_limit() -> u64 {
    harness::process::open_file_limits().map_or(0, |(soft, _)| soft)
}

fn holder(
    b: &Bench,
    a: &ConnArgs,
    k: usize,
    first: usize,
    count: usize,
    holders: usize,
) -> anyhow::Result<Child> {
    let flags = [
        ("total", a.devices.to_string()),
        ("net", (10 + k).to_string()),
        ("senders", (a.senders / holders).max(1).to_string()),
        ("rate", (a.dm_rate / holders as u64).to_string()),
        ("seconds", a.dm_seconds.to_string()),
    ];
    Child::command("hold-devices", &b.span(first, count), &flags)
}

pub async fn connections(infra: Arc<Env>, a: ConnArgs) -> anyhow::Result<()> {
    let b = Bench::start(infra.clone(), a.servers).await?;
    let pids: Vec<u32> = (0..a.servers).map(|i| b.pid(i)).collect();
    let broker: Vec<u32> = infra.broker_pid().into_iter().collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss0 = sum(&pids, rss);
    let holders = a.devices.div_ceil(a.per_holder.max(1));
    let t0 = Instant::now();
    let mut children = Vec::new();
    for k in 0..holders {
        let first = k * a.per_holder;
        let count = a.per_holder.min(a.devices - first);
        children.push(holder(&b, &a, k, first, count, holders)?);
    }
    let mut connected = 0;
    for c in &mut children {
        let ready = c.line("ready").await?;
        connected += ready.split(' ').next().unwrap_or("0").parse::<usize>()?;
    }
    let accept_seconds = t0.elapsed().as_secs_f64();
    println!(
        "{connected} devices connected to {} server(s) in {accept_seconds:.1} s",
        a.servers
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss1 = sum(&pids, rss);
    let sessions_per_server = sessions(&b).await;
    let cpu0 = sum(&pids, cpu_seconds);
    tokio::time::sleep(Duration::from_secs(a.idle_secs)).await;
    let idle_cpu = sum(&pids, cpu_seconds) - cpu0;
    println!(
        "idle: {idle_cpu:.2} CPU-s over {} s, RSS {:.1} -> {:.1} MiB",
        a.idle_secs,
        rss0 / 1048576.0,
        rss1 / 1048576.0
    );
    let (cpu0, bcpu0, t_dm) = (
        sum(&pids, cpu_seconds),
        sum(&broker, cpu_seconds),
        Instant::now(),
    );
    for c in &mut children {
        c.tell("go").await?;
    }
    let mut merged = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut total = HoldReport::default();
    for c in &mut children {
        let r: HoldReport = serde_json::from_str(&c.line("report").await?)?;
        total.sent += r.sent;
        total.acked += r.acked;
        total.refused += r.refused;
        total.received += r.received;
        total.sender_copies += r.sender_copies;
        for (v, n) in r.latency_us {
            merged.record_n(v, n)?;
        }
    }
    let (scpu, bcpu) = (
        sum(&pids, cpu_seconds) - cpu0,
        sum(&broker, cpu_seconds) - bcpu0,
    );
    let window = t_dm.elapsed().as_secs_f64();
    let above_idle = scpu - idle_cpu / a.idle_secs as f64 * window;
    let ms = |q: f64| merged.value_at_quantile(q) as f64 / 1000.0;
    let report = ConnReport {
        devices: connected,
        servers: a.servers,
        sessions_per_server,
        holders,
        fd_limit_per_process: fd_limit(),
        accept_seconds,
        accepted_per_s: connected as f64 / accept_seconds,
        server_rss_before_mib: rss0 / 1048576.0,
        server_rss_after_mib: rss1 / 1048576.0,
        rss_per_session_bytes: (rss1 - rss0) / connected.max(1) as f64,
        idle_secs: a.idle_secs,
        idle_server_cpu_pct_of_core: idle_cpu * 100.0 / a.idle_secs as f64 / a.servers as f64,
        idle_server_cpu_us_per_session_per_s: idle_cpu * 1e6
            / a.idle_secs as f64
            / connected.max(1) as f64,
        dm_rate_per_s: a.dm_rate,
        dm_seconds: a.dm_seconds,
        dms_sent: total.sent,
        dms_acked: total.acked,
        dms_refused: total.refused,
        dms_delivered: total.received,
        dm_sender_copies: total.sender_copies,
        dms_lost: total.acked.saturating_sub(total.received),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: merged.max() as f64 / 1000.0,
        server_cpu_us_per_dm: scpu * 1e6 / total.acked.max(1) as f64,
        server_cpu_us_per_dm_above_idle: above_idle * 1e6 / total.acked.max(1) as f64,
        broker_cpu_us_per_dm: bcpu * 1e6 / total.acked.max(1) as f64,
        dm_window_seconds: window,
    };
    super::report(&report, a.json.as_deref())?;
    for c in children {
        c.kill().await;
    }
    b.stop().await;
    Ok(())
}

/// Each server's open sessions, from its `/metrics`.
async fn sessions(b: &Bench) -> Vec<usize> {
    let mut out = Vec::new();
    for (_, _, port) in &b.servers {
        let base = format!("http://127.0.0.1:{port}");
        let n = super::metric(&base, "switchboard_server_connections").await;
        out.push(n.unwrap_or(0.0) as usize);
    }
    out
}
