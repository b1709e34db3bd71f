//! Fan-out throughput and send→deliver latency.

use super::{now_us, session, Bench};
use crate::bench::Env;
use crate::procstat::cpu_seconds;
use futures_util::{SinkExt, StreamExt};
use harness::Stack;
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn cpu(pid: Option<u32>) -> f64 {
    pid.and_then(cpu_seconds).unwrap_or(0.0)
}

pub async fn fanout(infra: Arc<Env>, members: usize, messages: usize) -> anyhow::Result<()> {
    let b = Bench::start(infra.clone(), 1).await?;
    let (_, ws_url) = b.route("fan0").await?;
    let users: Vec<String> = (0..members).map(|i| format!("fan{i}")).collect();
    let http = reqwest::Client::new();
    let server_http = ws_url.replace("ws://", "http://").replace("/v1/ws", "");
    http.post(format!("{server_http}/v1/conversations"))
        .bearer_auth(Stack::token(&users[0]))
        .json(&serde_json::json!({"conversation_id": "fan", "members": users}))
        .send()
        .await?
        .error_for_status()?;
    let delivered = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for u in &users {
        let (_, mut rx) = session(&ws_url, u, "r").await?.split();
        let d = delivered.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(m)) = rx.next().await {
                if let Message::Text(t) = m {
                    if t.starts_with("{\"type\":\"message\"") {
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let (mut tx, mut acks) = session(&ws_url, &users[0], "sender").await?.split();
    let (server, broker) = (Some(b.pid(0)), infra.broker_pid());
    let (cpu0, bcpu0, t0) = (cpu(server), cpu(broker), Instant::now());
    let expected = (messages * members) as u64;
    let sender = tokio::spawn(async move {
        for i in 0..messages {
            let f = serde_json::json!({"type":"send","client_msg_id":format!("f{i}"),"to":{"conversation":"fan"},"body":{"i":i}});
            if tx.send(Message::text(f.to_string())).await.is_err() {
                break;
            }
        }
        tx
    });
    let mut acked = 0;
    while acked < messages {
        match tokio::time::timeout(Duration::from_secs(30), acks.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.starts_with("{\"type\":\"ack\"") => acked += 1,
            Ok(Some(Ok(_))) => {}
            _ => anyhow::bail!("acks stopped at {acked}"),
        }
    }
    let _tx = sender.await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let wall = t0.elapsed().as_secs_f64();
    let (scpu, bcpu) = (cpu(server) - cpu0, cpu(broker) - bcpu0);
    let got = delivered.load(Ordering::Relaxed);
    let partitions = infra.settings.partitions;
    println!("fan-out: {messages} sends to a group of {members} members (P={partitions}), {got}/{expected} deliveries in {wall:.2} s");
    println!("deliveries/s (wall): {:.0}", got as f64 / wall);
    println!(
        "server CPU {scpu:.2} s -> {:.0} deliveries per server CPU-second (target >= 25,000)",
        got as f64 / scpu.max(1e-9)
    );
    println!(
        "server CPU per delivery {:.2} us; per send {:.1} us",
        scpu * 1e6 / got.max(1) as f64,
        scpu * 1e6 / messages as f64
    );
    println!(
        "broker CPU {bcpu:.2} s -> {:.1} us per produced record ({} records)",
        bcpu * 1e6 / (messages * 8) as f64,
        messages * 8
    );
    for r in readers {
        r.abort();
    }
    b.stop().await;
    Ok(())
}

/// Counts a receiver whose session ended (not when its task is aborted).
struct EndCounter(Arc<AtomicU64>);

impl Drop for EndCounter {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the senders were answered: acks, and refusals by error code.
#[derive(Default)]
struct Answers {
    acked: AtomicU64,
    refused: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Answers {
    /// Sends answered so far, acked or refused.
    fn answered(&self) -> u64 {
        let refused: u64 = self.refused.lock().map_or(0, |r| r.values().sum());
        self.acked.load(Ordering::Relaxed) + refused
    }

    fn count(&self, frame: &str) {
        if frame.contains("\"type\":\"ack\"") {
            self.acked.fetch_add(1, Ordering::Relaxed);
        } else if let Ok(v) = serde_json::from_str::<serde_json::Value>(frame) {
            if v["type"] == "error" {
                let code = v["code"].as_str().unwrap_or("?").to_owned();
                let mut r = self.refused.lock().unwrap_or_else(|e| e.into_inner());
                *r.entry(code).or_default() += 1;
            }
        }
    }
}

/// The latency run's result, as `--json` writes it.
#[derive(serde::Serialize)]
struct LatencyReport {
    rate: u64,
    seconds: u64,
    pairs: usize,
    sent: u64,
    /// Sends the server acknowledged (after Kafka had them).
    acked: u64,
    /// Sends the server refused, by error code (not retried by this tool).
    refused: std::collections::BTreeMap<String, u64>,
    delivered: u64,
    /// Receiver sessions the server ended during the run (they miss the rest).
    receivers_ended: u64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    /// CPU seconds over the window: sending server, receiving server,
    /// broker, and this tool (the 200 client sessions).
    cpu_s: std::collections::BTreeMap<&'static str, f64>,
    /// CPU per sent message, in microseconds, for the same processes.
    cpu_us_per_message: std::collections::BTreeMap<&'static str, f64>,
    /// CPU per acknowledged (and delivered) message, in microseconds.
    cpu_us_per_acked_message: std::collections::BTreeMap<&'static str, f64>,
    /// Seconds from the first send until every send was answered and every
    /// acked one delivered: the window of `cpu_s`.
    window_s: f64,
    /// Cores each process kept busy on average over the window.
    cores_used: std::collections::BTreeMap<&'static str, f64>,
    /// The process that kept the most cores busy: where the time went.
    busiest: &'static str,
    /// Our stages' share and the broker's, from the servers' own histograms
    /// over the same window (`own_p50_ms`, `own_p99_ms`, `broker_p50_ms`,
    /// `broker_p99_ms`, `stages_ms`).
    #[serde(flatten)]
    shares: super::stages::Shares,
    /// Cores of this machine.
    machine_cores: usize,
}

pub async fn latency(
    infra: Arc<Env>,
    rate: u64,
    seconds: u64,
    pairs: usize,
    json: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let b = Bench::start(infra.clone(), 2).await?;
    let (mut senders, mut receivers) = (Vec::new(), Vec::new());
    let (first_server, _) = b.route("lat-s0").await?;
    let mut i = 0;
    while senders.len() < pairs || receivers.len() < pairs {
        let u = format!("lat{i}");
        i += 1;
        let (server, url) = b.route(&u).await?;
        if server == first_server && senders.len() < pairs {
            senders.push((u, url));
        } else if server != first_server && receivers.len() < pairs {
            receivers.push((u, url));
        }
    }
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let delivered = Arc::new(AtomicU64::new(0));
    // Receivers do not reconnect: a session the server ends misses the rest.
    let ended = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (u, url) in &receivers {
        let (_, mut rx) = session(url, u, "r").await?.split();
        let (h, d, ended) = (hist.clone(), delivered.clone(), ended.clone());
        tasks.push(tokio::spawn(async move {
            let _count_on_exit = EndCounter(ended);
            // Pings and other control frames are skipped, not the end.
            while let Some(Ok(m)) = rx.next().await {
                let t = match m {
                    Message::Text(t) => t,
                    Message::Close(_) => break,
                    _ => continue,
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) else {
                    continue;
                };
                if let Some(sent) = v["body"]["t"].as_u64() {
                    let _ = h
                        .lock()
                        .map(|mut h| h.record(now_us().saturating_sub(sent).max(1)));
                    d.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let stages_before = stage_snapshot(&b).await;
    let answers = Arc::new(Answers::default());
    let period = Duration::from_secs_f64(pairs as f64 / rate as f64);
    let sent = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut sender_tasks = Vec::new();
    for (k, (u, url)) in senders.iter().enumerate() {
        let (mut tx, mut rx) = session(url, u, "s").await?.split();
        let answers = answers.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = rx.next().await {
                match m {
                    Message::Text(t) => answers.count(&t),
                    Message::Close(_) => break,
                    _ => {}
                }
            }
        });
        let (to, sent) = (receivers[k].0.clone(), sent.clone());
        sender_tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n = 0u64;
            while Instant::now() < until {
                tick.tick().await;
                n += 1;
                let f = serde_json::json!({"type":"send","client_msg_id":format!("l{n}"),"to":{"user":to},"body":{"t":now_us()}});
                if tx.send(Message::text(f.to_string())).await.is_err() {
                    return;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let me = Some(std::process::id());
    let (c0, c1, bc, gc, t0) = (
        cpu(Some(b.pid(0))),
        cpu(Some(b.pid(1))),
        cpu(infra.broker_pid()),
        cpu(me),
        Instant::now(),
    );
    for t in sender_tasks {
        t.await?;
    }
    let total = sent.load(Ordering::Relaxed);
    // Until every send is answered and every acked one delivered (refused
    // ones never are), at most 10 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    while (answers.answered() < total
        || delivered.load(Ordering::Relaxed) < answers.acked.load(Ordering::Relaxed))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let window = t0.elapsed().as_secs_f64();
    let shares = super::stages::shares(&stages_before, &stage_snapshot(&b).await);
    let (s0, s1, bk, generator) = (
        cpu(Some(b.pid(0))) - c0,
        cpu(Some(b.pid(1))) - c1,
        cpu(infra.broker_pid()) - bc,
        cpu(me) - gc,
    );
    let h = hist
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram poisoned"))?
        .clone();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!("latency: {total} sends at {rate}/s for {seconds} s over two servers ({pairs} sender/receiver pairs)");
    println!(
        "delivered {} ({} missing; {} receiver sessions ended by the server); acked {}, refused {:?}",
        delivered.load(Ordering::Relaxed),
        total.saturating_sub(delivered.load(Ordering::Relaxed)),
        ended.load(Ordering::Relaxed),
        answers.acked.load(Ordering::Relaxed),
        answers
            .refused
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default(),
    );
    println!(
        "send->deliver ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    );
    println!("CPU s over {window:.1} s: sending server {s0:.2}, receiving server {s1:.2}, broker {bk:.2}, load generator {generator:.2}");
    println!(
        "own share ms (handed + ack_written + queued + written): p50 {:.2}  p99 {:.2}; broker (produce stamp → consumed, linger included): p50 {:.2}  p99 {:.2}; stages {:?}; records per consumed run p50 {} p99 {}",
        shares.own_p50_ms, shares.own_p99_ms, shares.broker_p50_ms, shares.broker_p99_ms, shares.stages_ms, shares.run_records[0], shares.run_records[1]
    );
    if let Some(path) = json {
        let cpu_s: std::collections::BTreeMap<&'static str, f64> = [
            ("sending_server", s0),
            ("receiving_server", s1),
            ("broker", bk),
            ("load_generator", generator),
        ]
        .into();
        let acked = answers.acked.load(Ordering::Relaxed);
        let per = |n: u64| -> std::collections::BTreeMap<&'static str, f64> {
            cpu_s
                .iter()
                .map(|(k, v)| (*k, v * 1e6 / n.max(1) as f64))
                .collect()
        };
        let cores_used: std::collections::BTreeMap<&'static str, f64> = cpu_s
            .iter()
            .map(|(k, v)| (*k, v / window.max(1e-9)))
            .collect();
        let busiest = cores_used
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or("", |(k, _)| *k);
        let report = LatencyReport {
            rate,
            seconds,
            pairs,
            sent: total,
            acked,
            refused: answers
                .refused
                .lock()
                .map(|r| r.clone())
                .unwrap_or_default(),
            delivered: delivered.load(Ordering::Relaxed),
            receivers_ended: ended.load(Ordering::Relaxed),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: h.max() as f64 / 1000.0,
            cpu_us_per_message: per(total),
            cpu_us_per_acked_message: per(acked),
            cores_used,
            busiest,
            window_s: window,
            machine_cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_s,
            shares,
        };
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        println!("wrote {}", path.display());
    }
    for t in tasks {
        t.abort();
    }
    b.stop().await;
    Ok(())
}

/// Both servers' stage histograms, summed.
async fn stage_snapshot(b: &Bench) -> super::stages::Snapshot {
    let mut pages = Vec::new();
    for i in 0..2 {
        pages.push(harness::scrape(&b.server_http(i)).await.unwrap_or_default());
    }
    super::stages::Snapshot::parse(pages.iter().map(String::as_str))
}
