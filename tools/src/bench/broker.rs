//! The broker alone: produce at a fixed rate to one partition with a consumer
//! attached (the servers' settings: idempotent, acks=all, linger 5 ms,
//! fetch.wait.max.ms 5), reporting per window — by log length — the rate
//! achieved, produce→consume latency and the broker's CPU per record. Used to
//! choose the development broker and as the baseline for the server's own
//! numbers. The broker is the harness's (container) or, with `--broker-cmd`,
//! a process this tool starts (`{addr}` and `{dir}` are substituted).

use crate::bench::Env;
use crate::procstat::cpu_seconds;
use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::Serialize;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(clap::Args, Clone)]
pub struct BrokerArgs {
    /// Records per second offered to the broker.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// One table row per this many seconds.
    #[arg(long, default_value_t = 30)]
    window_secs: u64,
    /// The consumer's fetch.wait.max.ms (the servers use 5).
    #[arg(long, default_value_t = 5)]
    fetch_wait_ms: u64,
    /// Start this broker instead of the harness's, e.g.
    /// "tansu broker --listener-url tcp://{addr} --advertised-listener-url tcp://{addr} --storage-engine sqlite://tansu.db".
    #[arg(long)]
    broker_cmd: Option<String>,
    /// The name the report gives the broker.
    #[arg(long, default_value = "nisshi 0.8.1 SQLite (harness image)")]
    label: String,
    /// Also write the result as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Serialize, Default, Clone)]
struct Window {
    log_length: i64,
    produced: u64,
    consumed: u64,
    records_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    broker_cpu_us_per_record: f64,
}

#[derive(Serialize)]
struct Report {
    broker: String,
    rate: u64,
    seconds: u64,
    fetch_wait_ms: u64,
    producer_config: String,
    produced: u64,
    consumed: u64,
    p50_ms: f64,
    p99_ms: f64,
    broker_cpu_s: f64,
    broker_cpu_us_per_record: f64,
    windows: Vec<Window>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds are valid")
}

struct Shared {
    window: Mutex<Histogram<u64>>,
    total: Mutex<Histogram<u64>>,
    consumed: AtomicU64,
    last_offset: AtomicI64,
    /// Set once everything produced was read (or the wait for it ended).
    done: std::sync::atomic::AtomicBool,
}

fn consume(brokers: String, topic: String, fetch_wait_ms: u64, stop: Instant, shared: Arc<Shared>) {
    let Ok(c) = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "baseline")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .create::<BaseConsumer>()
    else {
        return;
    };
    let mut tpl = TopicPartitionList::new();
    if tpl
        .add_partition_offset(&topic, 0, Offset::Beginning)
        .is_err()
        || c.assign(&tpl).is_err()
    {
        return;
    }
    drop(tpl);
    while Instant::now() < stop && !shared.done.load(Ordering::Relaxed) {
        let Some(Ok(m)) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let sent: u64 = m
            .payload()
            .and_then(|p| std::str::from_utf8(p).ok())
            .and_then(|s| s.split(' ').next()?.parse().ok())
            .unwrap_or(0);
        let l = now_us().saturating_sub(sent).max(1);
        for h in [&shared.window, &shared.total] {
            let _ = h.lock().unwrap_or_else(|e| e.into_inner()).record(l);
        }
        shared.consumed.fetch_add(1, Ordering::Relaxed);
        shared.last_offset.store(m.offset(), Ordering::Relaxed);
    }
}

/// A broker process of the tool's own, listening on a free loopback port.
struct OwnBroker {
    child: std::process::Child,
    addr: String,
    _dir: std::path::PathBuf,
}

impl OwnBroker {
    async fn start(cmd: &str) -> anyhow::Result<Self> {
        let addr = format!("127.0.0.1:{}", harness::free_port()?);
        let dir =
            std::env::temp_dir().join(format!("switchboard-broker-{}", harness::free_port()?));
        std::fs::create_dir_all(&dir)?;
        let words: Vec<String> = cmd
            .split_whitespace()
            .map(|w| {
                w.replace("{addr}", &addr)
                    .replace("{dir}", &dir.to_string_lossy())
            })
            .collect();
        let (prog, args) = words
            .split_first()
            .ok_or_else(|| anyhow::anyhow!("empty --broker-cmd"))?;
        let child = std::process::Command::new(prog)
            .args(args)
            .current_dir(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("broker.log"))?)
            .spawn()?;
        harness::infra::wait_for_kafka(&addr).await?;
        Ok(Self {
            child,
            addr,
            _dir: dir,
        })
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

pub async fn broker(infra: Arc<Env>, a: BrokerArgs, producer_config: &str) -> anyhow::Result<()> {
    let own = match &a.broker_cmd {
        Some(cmd) => Some(OwnBroker::start(cmd).await?),
        None => None,
    };
    let (kafka, pid) = match &own {
        Some(b) => (b.addr.clone(), Some(b.child.id())),
        None => (infra.kafka.clone(), infra.broker_pid()),
    };
    let topic = infra.unique("baseline");
    create_topic(&kafka, &topic).await?;
    let mut cfg = ClientConfig::new();
    // The servers' producer settings (linger.ms: librdkafka's default, 5 ms).
    cfg.set("bootstrap.servers", &kafka)
        .set("enable.idempotence", "true")
        .set("acks", "all");
    for (k, v) in producer_config
        .split(',')
        .filter_map(|kv| kv.split_once('='))
    {
        cfg.set(k.trim(), v.trim());
    }
    let p: FutureProducer = cfg.create()?;
    // The idempotent producer's first send waits for its producer id.
    p.send(
        FutureRecord::to(&topic)
            .partition(0)
            .key("k")
            .payload(&format!("{} warm", now_us())),
        Duration::from_secs(30),
    )
    .await
    .map_err(|(e, _)| e)?;
    println!(
        "{}: {} records/s to one partition for {} s, producer config {producer_config:?}",
        a.label, a.rate, a.seconds
    );
    let shared = Arc::new(Shared {
        window: Mutex::new(hist()),
        total: Mutex::new(hist()),
        consumed: AtomicU64::new(0),
        last_offset: AtomicI64::new(0),
        done: Default::default(),
    });
    let stop = Instant::now() + Duration::from_secs(a.seconds + 35);
    let (brokers, t, sh) = (kafka.clone(), topic.clone(), shared.clone());
    let wait = a.fetch_wait_ms;
    let reader = std::thread::spawn(move || consume(brokers, t, wait, stop, sh));
    // Measure from the moment the consumer reads: its first fetch (and the
    // producer's id) are start-up, not the broker's steady cost.
    harness::wait_until("the consumer reads", Duration::from_secs(30), || async {
        shared.consumed.load(Ordering::Relaxed) > 0
    })
    .await?;
    for h in [&shared.window, &shared.total] {
        *h.lock().unwrap_or_else(|e| e.into_inner()) = hist();
    }
    shared.consumed.store(0, Ordering::Relaxed);
    let cpu = || pid.and_then(cpu_seconds).unwrap_or(0.0);
    let (cpu_start, started) = (cpu(), Instant::now());
    let windows = produce(&p, &topic, &a, &shared, cpu).await;
    let _ = p.flush(Duration::from_secs(30));
    let produced: u64 = windows.iter().map(|w| w.produced).sum();
    let _ = harness::wait_until(
        "the consumer read everything",
        Duration::from_secs(30),
        || async { shared.consumed.load(Ordering::Relaxed) >= produced },
    )
    .await;
    shared.done.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    let broker_cpu = cpu() - cpu_start;
    let total = shared
        .total
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let report = Report {
        broker: a.label.clone(),
        rate: a.rate,
        seconds: started.elapsed().as_secs(),
        fetch_wait_ms: a.fetch_wait_ms,
        producer_config: producer_config.to_owned(),
        produced,
        consumed: shared.consumed.load(Ordering::Relaxed),
        p50_ms: ms(&total, 0.5),
        p99_ms: ms(&total, 0.99),
        broker_cpu_s: broker_cpu,
        broker_cpu_us_per_record: broker_cpu * 1e6 / produced.max(1) as f64,
        windows,
    };
    println!(
        "total: {} produced, {} consumed, p50 {:.1} ms, p99 {:.1} ms, broker CPU {:.1} s = {:.0} us per record",
        report.produced, report.consumed, report.p50_ms, report.p99_ms, report.broker_cpu_s, report.broker_cpu_us_per_record
    );
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Offers `rate` records/s for `seconds`, closing a table row every window.
async fn produce(
    p: &FutureProducer,
    topic: &str,
    a: &BrokerArgs,
    shared: &Shared,
    cpu: impl Fn() -> f64,
) -> Vec<Window> {
    println!(
        "{:>10} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>10}",
        "log length", "produced", "consumed", "rec/s", "p50 ms", "p99 ms", "max ms", "CPU us/rec"
    );
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let until = Instant::now() + Duration::from_secs(a.seconds);
    let (mut windows, mut owed, mut produced) = (Vec::new(), 0.0f64, 0u64);
    let (mut w_start, mut w_cpu, mut w_consumed) = (Instant::now(), cpu(), 0u64);
    let payload_pad = "x".repeat(80);
    while Instant::now() < until {
        tick.tick().await;
        owed += a.rate as f64 / 1000.0;
        while owed >= 1.0 {
            owed -= 1.0;
            let payload = format!("{} {payload_pad}", now_us());
            // Acks are not awaited one by one: the consumer sees what landed.
            let _ = p.send_result(
                FutureRecord::to(topic)
                    .partition(0)
                    .key("k")
                    .payload(&payload),
            );
            produced += 1;
        }
        let last = Instant::now() >= until;
        if last || w_start.elapsed() >= Duration::from_secs(a.window_secs) {
            let consumed = shared.consumed.load(Ordering::Relaxed);
            let h = std::mem::replace(
                &mut *shared.window.lock().unwrap_or_else(|e| e.into_inner()),
                hist(),
            );
            let now_cpu = cpu();
            let w = Window {
                log_length: shared.last_offset.load(Ordering::Relaxed) + 1,
                produced,
                consumed: consumed - w_consumed,
                records_per_s: (consumed - w_consumed) as f64 / w_start.elapsed().as_secs_f64(),
                p50_ms: ms(&h, 0.5),
                p99_ms: ms(&h, 0.99),
                max_ms: h.max() as f64 / 1000.0,
                broker_cpu_us_per_record: (now_cpu - w_cpu) * 1e6 / produced.max(1) as f64,
            };
            println!(
                "{:>10} {:>9} {:>9} {:>9.0} {:>8.1} {:>8.1} {:>8.1} {:>10.0}",
                w.log_length,
                w.produced,
                w.consumed,
                w.records_per_s,
                w.p50_ms,
                w.p99_ms,
                w.max_ms,
                w.broker_cpu_us_per_record
            );
            windows.push(w);
            (w_start, w_cpu, w_consumed, produced) = (Instant::now(), now_cpu, consumed, 0);
        }
    }
    windows
}

async fn create_topic(kafka: &str, topic: &str) -> anyhow::Result<()> {
    harness::infra::create_topic(kafka, topic, 1).await
}
