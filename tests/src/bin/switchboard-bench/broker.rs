//! The broker alone: produce at a fixed rate to one partition with a consumer
//! attached (same settings as the servers), latency per 2-second window. The
//! baseline for the server's own latency numbers.

use harness::procstat::cpu_seconds;
use harness::Infra;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn consume(brokers: String, topic: String, stop: Instant) {
    let Ok(c) = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "baseline")
        .set("fetch.wait.max.ms", "5")
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
    let (mut n, mut sum, mut max, mut window) = (0u64, 0u64, 0u64, Instant::now());
    while Instant::now() < stop {
        let Some(Ok(m)) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let sent: u64 = m
            .payload()
            .and_then(|p| std::str::from_utf8(p).ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let l = now_us().saturating_sub(sent);
        (n, sum, max) = (n + 1, sum + l, max.max(l));
        if window.elapsed() > Duration::from_secs(2) {
            println!(
                "  log length {:>6}: avg {:>7.1} ms  max {:>7.1} ms",
                m.offset() + 1,
                sum as f64 / n as f64 / 1000.0,
                max as f64 / 1000.0
            );
            (n, sum, max, window) = (0, 0, 0, Instant::now());
        }
    }
}

pub async fn broker(
    infra: Arc<Infra>,
    rate: u64,
    seconds: u64,
    producer_config: &str,
) -> anyhow::Result<()> {
    let topic = infra.unique("baseline");
    infra.create_topic(&topic, 1).await?;
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &infra.kafka)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1");
    for (k, v) in producer_config
        .split(',')
        .filter_map(|kv| kv.split_once('='))
    {
        cfg.set(k.trim(), v.trim());
    }
    let p: FutureProducer = cfg.create()?;
    println!("broker alone: {rate} records/s to one partition for {seconds} s, producer config {producer_config:?}");
    let stop = Instant::now() + Duration::from_secs(seconds + 3);
    let (brokers, t) = (infra.kafka.clone(), topic.clone());
    let reader = std::thread::spawn(move || consume(brokers, t, stop));
    let cpu0 = infra.broker_pid().and_then(cpu_seconds).unwrap_or(0.0);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut sent = 0u64;
    while Instant::now() < until {
        tick.tick().await;
        let (p, t) = (p.clone(), topic.clone());
        tokio::spawn(async move {
            let _ = p
                .send(
                    FutureRecord::to(&t)
                        .partition(0)
                        .key("k")
                        .payload(&now_us().to_string()),
                    Duration::from_secs(30),
                )
                .await;
        });
        sent += 1;
    }
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    let cpu = infra.broker_pid().and_then(cpu_seconds).unwrap_or(0.0) - cpu0;
    println!(
        "broker CPU {cpu:.2} s for {sent} records = {:.0} us per record",
        cpu * 1e6 / sent.max(1) as f64
    );
    Ok(())
}
