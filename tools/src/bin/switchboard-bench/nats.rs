//! Fan-out side by side with NATS (issue: "beat NATS per delivery"): the
//! same Rust WebSocket clients and workload — N subscribers of one group /
//! subject, one publisher, ~150-byte messages, paced and burst — against two
//! Switchboard messaging servers and Debian's `nats-server` with its
//! WebSocket listener. CPU is read from /proc for the servers only (the
//! broker apart), idle CPU over the same window for both.

use super::{session, Bench};
use futures_util::{SinkExt, StreamExt};
use harness::{free_port, wait_until, Infra, Stack};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message;
use tools::procstat::cpu_seconds;

#[derive(clap::Args)]
pub struct NatsArgs {
    #[arg(long, default_value_t = 200)]
    subscribers: usize,
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Messages per second in the paced run.
    #[arg(long, default_value_t = 50)]
    rate: u64,
    /// Seconds of idle CPU measured with every subscriber connected.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// Write the runs as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Serialize, Default, Clone)]
struct SystemRun {
    deliveries: u64,
    server_cpu_s: f64,
    deliveries_per_cpu_s: f64,
    idle_cpu_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Serialize)]
struct Run {
    subscribers: usize,
    messages: usize,
    mode: &'static str,
    body_bytes: usize,
    switchboard: SystemRun,
    nats: SystemRun,
    /// Switchboard deliveries per CPU-second over NATS's.
    ratio: f64,
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

/// Publishes `n` frames made by `frame` on `sink`, paced at `rate` per
/// second (0: all at once), and waits until `want` deliveries.
async fn measure<S>(
    pids: &[u32],
    tally: &Tally,
    (n, rate, want): (usize, u64, u64),
    sink: &mut S,
    frame: impl Fn(usize) -> Message,
) -> anyhow::Result<SystemRun>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    tally.reset();
    let cpu0 = cpu(pids);
    let started = Instant::now();
    for i in 0..n {
        sink.send(frame(i)).await?;
        if let Some(every) = 1_000_000u64.checked_div(rate) {
            let due = started + Duration::from_micros(every * (i as u64 + 1));
            tokio::time::sleep_until(due.into()).await;
        }
    }
    let done = wait_until("every delivery", Duration::from_secs(120), || async {
        tally.delivered.load(Ordering::Relaxed) >= want
    })
    .await;
    let server_cpu_s = cpu(pids) - cpu0;
    let deliveries = tally.delivered.load(Ordering::Relaxed);
    done.map_err(|e| anyhow::anyhow!("{e}: {deliveries} of {want}"))?;
    Ok(SystemRun {
        deliveries,
        server_cpu_s,
        deliveries_per_cpu_s: deliveries as f64 / server_cpu_s.max(1e-9),
        idle_cpu_s: 0.0,
        p50_ms: tally.quantile_ms(0.5),
        p99_ms: tally.quantile_ms(0.99),
    })
}

/// The Switchboard side: a group of every subscriber (spread over both
/// servers by their partitions) and a publisher session.
struct Switchboard {
    pids: Vec<u32>,
    tally: Tally,
    publisher: super::Ws,
}

impl Switchboard {
    async fn start(b: &Bench, subscribers: usize) -> anyhow::Result<Self> {
        let users: Vec<String> = (0..subscribers).map(|i| format!("sub{i}")).collect();
        let mut members = users.clone();
        members.push("publisher".into());
        let (_, pub_url) = b.route("publisher").await?;
        let http = pub_url.replace("ws://", "http://").replace("/v1/ws", "");
        reqwest::Client::new()
            .post(format!("{http}/v1/conversations"))
            .bearer_auth(Stack::token("publisher"))
            .json(&serde_json::json!({"conversation_id": "fan", "members": members}))
            .send()
            .await?
            .error_for_status()?;
        let tally = Tally::new()?;
        for u in &users {
            let (_, url) = b.route(u).await?;
            let (_, mut rx) = session(&url, u, "d").await?.split();
            let t = tally.clone();
            tokio::spawn(async move {
                while let Some(Ok(m)) = rx.next().await {
                    if let Message::Text(text) = m {
                        if text.starts_with("{\"type\":\"message\"") {
                            t.record(&text);
                        }
                    }
                }
            });
        }
        let publisher = session(&pub_url, "publisher", "pub").await?;
        let pids = (0..b.servers.len()).map(|i| b.pid(i)).collect();
        Ok(Self {
            pids,
            tally,
            publisher,
        })
    }

    async fn run(&mut self, n: usize, rate: u64, subscribers: usize) -> anyhow::Result<SystemRun> {
        let (mut tx, mut rx) = (&mut self.publisher).split();
        // Acks are read (and dropped) alongside, so the server never stalls on them.
        let drain = async { while let Some(Ok(_)) = rx.next().await {} };
        let want = (n * subscribers) as u64;
        let frame = |i: usize| {
            Message::text(format!(
                r#"{{"type":"send","client_msg_id":"m{rate}-{i}","to":{{"conversation":"fan"}},"body":{}}}"#,
                body()
            ))
        };
        let run = measure(&self.pids, &self.tally, (n, rate, want), &mut tx, frame);
        tokio::select! {
            r = run => r,
            _ = drain => anyhow::bail!("the publisher's session ended"),
        }
    }
}

/// Debian's nats-server with a WebSocket listener on loopback, installed
/// with apt when missing.
struct Nats {
    child: tokio::process::Child,
    ws_url: String,
    tally: Tally,
    publisher: super::Ws,
    _dir: std::path::PathBuf,
}

fn ensure_nats_server() -> anyhow::Result<()> {
    let found = std::process::Command::new("nats-server")
        .arg("--version")
        .output();
    if found.is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    eprintln!("[bench] installing Debian's nats-server");
    let root = std::process::Command::new("id").arg("-u").output()?.stdout == b"0\n";
    let mut cmd = if root {
        std::process::Command::new("apt-get")
    } else {
        let mut c = std::process::Command::new("sudo");
        c.arg("apt-get");
        c
    };
    let status = cmd
        .args(["install", "-y", "-qq", "nats-server"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    anyhow::ensure!(status.success(), "apt-get install nats-server failed");
    Ok(())
}

/// One NATS WebSocket connection, subscribed to `fan` when `subscribe`.
async fn nats_client(ws_url: &str, subscribe: bool) -> anyhow::Result<super::Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await?;
    let mut hello =
        String::from("CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\n");
    if subscribe {
        hello.push_str("SUB fan 1\r\n");
    }
    hello.push_str("PING\r\n");
    ws.send(Message::binary(hello.into_bytes())).await?;
    // PONG answers our PING: everything before it, the SUB included, is in.
    while let Some(m) = ws.next().await {
        if m?.into_data().windows(4).any(|w| w == b"PONG") {
            return Ok(ws);
        }
    }
    anyhow::bail!("nats closed the connection before PONG")
}

/// Counts every `MSG` in a stream of NATS frames (a frame may hold many).
fn count_msgs(buf: &mut Vec<u8>, tally: &Tally) {
    loop {
        let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
            return;
        };
        let line = String::from_utf8_lossy(&buf[..eol]).into_owned();
        if let Some(len) = line
            .strip_prefix("MSG ")
            .and_then(|r| r.split_whitespace().last())
            .and_then(|l| l.parse::<usize>().ok())
        {
            if buf.len() < eol + 2 + len + 2 {
                return;
            }
            tally.record(&String::from_utf8_lossy(&buf[eol + 2..eol + 2 + len]));
            buf.drain(..eol + 2 + len + 2);
        } else {
            buf.drain(..eol + 2);
        }
    }
}

impl Nats {
    async fn start(subscribers: usize) -> anyhow::Result<Self> {
        ensure_nats_server()?;
        let (port, ws_port) = (free_port()?, free_port()?);
        let dir = std::env::temp_dir().join(format!("switchboard-nats-{ws_port}"));
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!("listen: 127.0.0.1:{port}\nwebsocket {{\n  listen: \"127.0.0.1:{ws_port}\"\n  no_tls: true\n}}\n"),
        )?;
        let child = tokio::process::Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let ws_url = format!("ws://127.0.0.1:{ws_port}");
        wait_until("nats-server listens", Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", ws_port))
                .await
                .is_ok()
        })
        .await?;
        let tally = Tally::new()?;
        for _ in 0..subscribers {
            let (mut tx, mut rx) = nats_client(&ws_url, true).await?.split();
            let t = tally.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(Ok(m)) = rx.next().await {
                    let data = m.into_data();
                    if data.windows(4).any(|w| w == b"PING") {
                        let _ = tx.send(Message::binary(b"PONG\r\n".to_vec())).await;
                    }
                    buf.extend_from_slice(&data);
                    count_msgs(&mut buf, &t);
                }
            });
        }
        let publisher = nats_client(&ws_url, false).await?;
        Ok(Self {
            child,
            ws_url,
            tally,
            publisher,
            _dir: dir,
        })
    }

    fn pids(&self) -> Vec<u32> {
        self.child.id().into_iter().collect()
    }

    async fn run(&mut self, n: usize, rate: u64, subscribers: usize) -> anyhow::Result<SystemRun> {
        let pids = self.pids();
        let (mut tx, mut rx) = (&mut self.publisher).split();
        let drain = async { while let Some(Ok(_)) = rx.next().await {} };
        let frame = |_: usize| {
            let b = body();
            Message::binary(format!("PUB fan {}\r\n{b}\r\n", b.len()).into_bytes())
        };
        let want = (n * subscribers) as u64;
        let run = measure(&pids, &self.tally, (n, rate, want), &mut tx, frame);
        tokio::select! {
            r = run => r,
            _ = drain => anyhow::bail!("the nats publisher's connection ended ({})", self.ws_url),
        }
    }
}

pub async fn nats(infra: Arc<Infra>, a: NatsArgs) -> anyhow::Result<()> {
    let b = Bench::start(infra, 2).await?;
    let mut sb = Switchboard::start(&b, a.subscribers).await?;
    let mut nats = Nats::start(a.subscribers).await?;
    let (sb_pids, nats_pids) = (sb.pids.clone(), nats.pids());
    let (s0, n0) = (cpu(&sb_pids), cpu(&nats_pids));
    tokio::time::sleep(Duration::from_secs(a.idle_secs)).await;
    let (sb_idle, nats_idle) = (cpu(&sb_pids) - s0, cpu(&nats_pids) - n0);
    println!("idle {} s with {} subscribers: switchboard servers {sb_idle:.3} CPU-s, nats-server {nats_idle:.3} CPU-s", a.idle_secs, a.subscribers);
    let mut runs = Vec::new();
    for (mode, rate) in [("paced", a.rate), ("burst", 0)] {
        let mut s = sb.run(a.messages, rate, a.subscribers).await?;
        let mut n = nats.run(a.messages, rate, a.subscribers).await?;
        (s.idle_cpu_s, n.idle_cpu_s) = (sb_idle, nats_idle);
        let ratio = s.deliveries_per_cpu_s / n.deliveries_per_cpu_s.max(1e-9);
        println!(
            "{mode:>5}: switchboard {} deliveries, {:.2} CPU-s, {:.0}/CPU-s, p50 {:.1} ms p99 {:.1} ms | nats {} deliveries, {:.2} CPU-s, {:.0}/CPU-s, p50 {:.1} ms p99 {:.1} ms | ratio {ratio:.2}",
            s.deliveries, s.server_cpu_s, s.deliveries_per_cpu_s, s.p50_ms, s.p99_ms,
            n.deliveries, n.server_cpu_s, n.deliveries_per_cpu_s, n.p50_ms, n.p99_ms
        );
        runs.push(Run {
            subscribers: a.subscribers,
            messages: a.messages,
            mode,
            body_bytes: body().len(),
            switchboard: s,
            nats: n,
            ratio,
        });
    }
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&runs)? + "\n")?;
        println!("wrote {}", path.display());
    }
    drop(nats);
    b.stop().await;
    Ok(())
}
