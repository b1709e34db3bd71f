//! Whether this server reaches the broker. A server cut off from the broker
//! (while etcd and its clients still see it) can neither acknowledge sends
//! nor deliver its partitions, yet its lease stays alive, so nothing would
//! move. A metadata request every third of a lease TTL tells (or acks and
//! records that arrived since the last one, when the broker is merely too
//! busy to answer metadata quickly); after a whole
//! TTL without an answer the server says so in its registration
//! (`broker_unreachable`), the coordinator moves its partitions to servers
//! that reach the broker, and its sessions end with 4005 and a redirect to
//! the new owners. The first answer puts it back.

use rdkafka::consumer::{BaseConsumer, Consumer};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The supervised task: `watch_broker`, with its verdict also in `gauge`.
pub async fn run<P, F>(
    probe: P,
    ttl: Duration,
    reachable: watch::Sender<bool>,
    gauge: prometheus_client::metrics::gauge::Gauge,
    stop: CancellationToken,
) where
    P: FnMut(Duration) -> F,
    F: Future<Output = bool>,
{
    gauge.set(i64::from(*reachable.borrow()));
    let mut seen = reachable.subscribe();
    let follow = async {
        while seen.changed().await.is_ok() {
            gauge.set(i64::from(*seen.borrow_and_update()));
        }
    };
    tokio::select! {
        _ = watch_broker(probe, ttl, reachable.clone(), stop) => {}
        _ = follow => {}
    }
}

/// Probes with `probe` every `ttl / 3` (each probe bounded by the same) and
/// sets `reachable` to false once no probe succeeded for `ttl`, true again
/// on the next success.
pub async fn watch_broker<P, F>(
    mut probe: P,
    ttl: Duration,
    reachable: watch::Sender<bool>,
    stop: CancellationToken,
) where
    P: FnMut(Duration) -> F,
    F: Future<Output = bool>,
{
    let every = (ttl / 3).clamp(Duration::from_millis(100), Duration::from_secs(2));
    let mut last_ok = Instant::now();
    loop {
        let asked = Instant::now();
        let ok = tokio::select! {
            ok = tokio::time::timeout(every, probe(every)) => ok.unwrap_or(false),
            _ = stop.cancelled() => return,
        };
        if ok {
            last_ok = Instant::now();
        }
        let now_reachable = last_ok.elapsed() < ttl;
        if *reachable.borrow() != now_reachable {
            if now_reachable {
                info!("the broker answers again; taking partitions again");
            } else {
                warn!(silent_for = ?last_ok.elapsed(), "the broker does not answer; asking the coordinator to move our partitions");
            }
            reachable.send_replace(now_reachable);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(asked + every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One probe's answer: whether the broker answered within the timeout.
pub type Probe = std::pin::Pin<Box<dyn Future<Output = bool> + Send>>;

/// `probe`, answered yes without asking while `answers` (the broker's
/// acks and records this server received) moved since the last probe: a
/// broker too busy to answer a metadata request in a third of a TTL — a
/// saturated machine — but still acknowledging sends is reachable, and
/// moving this server's partitions would only start a reconnect herd.
pub fn or_traffic(
    mut probe: impl FnMut(Duration) -> Probe,
    answers: impl Fn() -> u64,
) -> impl FnMut(Duration) -> Probe {
    let mut last = answers();
    move |timeout| {
        let now = answers();
        if now != last {
            last = now;
            return Box::pin(std::future::ready(true));
        }
        probe(timeout)
    }
}

/// What this server has had from the broker so far, for `or_traffic`:
/// acknowledged sends and consumed records handed to devices.
pub fn answers(metrics: &crate::metrics::Metrics) -> impl Fn() -> u64 {
    let m = metrics.clone();
    move || m.sends.get() + m.deliveries.get() + m.channel_deliveries.get()
}

/// A metadata request for `topic` on a connection of its own.
pub fn metadata_probe(consumer: Arc<BaseConsumer>, topic: String) -> impl FnMut(Duration) -> Probe {
    move |timeout| {
        let (c, t) = (consumer.clone(), topic.clone());
        Box::pin(async move {
            let asked = tokio::task::spawn_blocking(move || c.fetch_metadata(Some(&t), timeout));
            matches!(asked.await, Ok(Ok(_)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The next change, or a failure after a minute (paused time: instant).
    async fn changed(rx: &mut watch::Receiver<bool>) {
        let next = tokio::time::timeout(Duration::from_secs(60), rx.changed());
        next.await
            .expect("no change within a minute")
            .expect("open");
    }

    /// Follows `reachable` while the broker answers or not, in paused time.
    #[tokio::test(start_paused = true)]
    async fn unreachable_after_a_ttl_of_silence_reachable_at_the_first_answer() {
        let ttl = Duration::from_secs(3);
        let answers = Arc::new(AtomicBool::new(true));
        let (tx, mut rx) = watch::channel(true);
        let stop = CancellationToken::new();
        let a = answers.clone();
        let probe = move |_| {
            let a = a.clone();
            async move { a.load(Ordering::SeqCst) }
        };
        let task = tokio::spawn(watch_broker(probe, ttl, tx, stop.clone()));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(*rx.borrow_and_update(), "reachable while it answers");
        let cut = Instant::now();
        answers.store(false, Ordering::SeqCst);
        changed(&mut rx).await;
        assert!(!*rx.borrow_and_update());
        let took = cut.elapsed();
        // A TTL after the last answer, which came at most one probe before the cut.
        assert!(
            took >= ttl - Duration::from_secs(1) && took <= ttl + Duration::from_secs(1),
            "{took:?}"
        );
        // A silence shorter than the TTL changes nothing.
        answers.store(true, Ordering::SeqCst);
        changed(&mut rx).await;
        assert!(*rx.borrow_and_update());
        answers.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(2)).await;
        answers.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !rx.has_changed().expect("open"),
            "a short silence moved nothing"
        );
        stop.cancel();
        task.await.expect("the watch ends on stop");
    }

    /// While acks and records keep arriving, a metadata probe that hangs
    /// does not make the broker unreachable; once they stop, it does.
    #[tokio::test(start_paused = true)]
    async fn traffic_from_the_broker_answers_for_a_hanging_probe() {
        let ttl = Duration::from_secs(3);
        let answers = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (tx, mut rx) = watch::channel(true);
        let stop = CancellationToken::new();
        let hanging = |_| -> Probe { Box::pin(std::future::pending::<bool>()) };
        let seen = answers.clone();
        let probe = or_traffic(hanging, move || seen.load(Ordering::SeqCst));
        let task = tokio::spawn(watch_broker(probe, ttl, tx, stop.clone()));
        for _ in 0..40 {
            answers.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(
            !rx.has_changed().expect("open"),
            "acks kept arriving: reachable"
        );
        let quiet = Instant::now();
        changed(&mut rx).await;
        assert!(!*rx.borrow());
        assert!(
            quiet.elapsed() <= ttl + Duration::from_secs(2),
            "{:?}",
            quiet.elapsed()
        );
        stop.cancel();
        task.await.expect("the watch ends on stop");
    }

    /// A probe that never returns counts as no answer.
    #[tokio::test(start_paused = true)]
    async fn a_hanging_probe_is_no_answer() {
        let (tx, mut rx) = watch::channel(true);
        let stop = CancellationToken::new();
        let probe = |_| std::future::pending::<bool>();
        tokio::spawn(watch_broker(
            probe,
            Duration::from_secs(3),
            tx,
            stop.clone(),
        ));
        changed(&mut rx).await;
        assert!(!*rx.borrow());
        stop.cancel();
    }
}
