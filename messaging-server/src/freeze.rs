//! Waking from a freeze. A process stopped longer than about half its lease
//! (a GC-like pause, a stopped VM, SIGSTOP, the cgroup freezer) wakes with
//! a view of the world that may be stale: its lease may have expired and
//! its partitions moved, and its sockets hold frames its clients sent while
//! it was stopped — their senders may already be resending elsewhere. So a
//! server that wakes acts on nothing it read while asleep: a session reading
//! a frame while the freeze is fresh closes (4006) without handling it (the
//! client resends it after reconnecting), and the watch closes every other
//! session, so devices re-resolve and resume from their cursors on whichever
//! server owns their partition now.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

const TICK: Duration = Duration::from_millis(100);

pub struct FreezeWatch {
    started: Instant,
    /// Milliseconds after `started` of the last tick.
    last_tick: AtomicU64,
    limit: Duration,
    /// Freezes woken from so far, for whoever must start over after one.
    woken: watch::Sender<u64>,
}

impl FreezeWatch {
    /// A freeze is a tick late by more than `limit`.
    pub fn new(limit: Duration) -> Self {
        Self {
            started: Instant::now(),
            last_tick: AtomicU64::new(0),
            limit,
            woken: watch::Sender::new(0),
        }
    }

    /// The limit for a lease of `ttl`: half of it (a lease is refreshed every
    /// third, so a stop of about two thirds can expire it), at least 1.5 s
    /// so a busy scheduler is not taken for a freeze.
    pub fn limit_for(ttl: Duration) -> Duration {
        (ttl / 2).max(Duration::from_millis(1500))
    }

    /// Changes after each freeze, once `run`'s `woke` has been called.
    pub fn woken(&self) -> watch::Receiver<u64> {
        self.woken.subscribe()
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Whether the process has just woken from a freeze: the watch has not
    /// ticked for longer than the limit (it will tick within `TICK` of
    /// waking; until then nothing read may be acted on).
    pub fn just_woke(&self) -> bool {
        let last = self.last_tick.load(Ordering::Acquire);
        self.now_ms().saturating_sub(last) > self.limit.as_millis() as u64
    }

    /// Ticks until `stop`; calls `woke` with the length of each freeze.
    /// The ticks come from a thread of their own: a stopped process stops
    /// it too, but a runtime too busy to poll a timer for seconds (a
    /// reconnect herd on a saturated machine) does not — ticking on the
    /// runtime took such a wait for a freeze, closed every session, and the
    /// devices' return starved the runtime again.
    pub async fn run(self: Arc<Self>, woke: impl Fn(Duration), stop: CancellationToken) {
        let (tx, mut freezes) = tokio::sync::mpsc::unbounded_channel();
        let (watch, until) = (self.clone(), stop.clone());
        let ticker = std::thread::Builder::new()
            .name("freeze-watch".into())
            .spawn(move || watch.tick(&tx, &until));
        if let Err(e) = ticker {
            warn!(error = %e, "no freeze watch: its thread could not start");
            return;
        }
        loop {
            tokio::select! {
                Some(freeze) = freezes.recv() => {
                    warn!(?freeze, "woke from a freeze; closing every session so devices resume on the current owners");
                    woke(freeze);
                    self.woken.send_modify(|n| *n += 1);
                }
                _ = stop.cancelled() => return,
            }
        }
    }

    fn tick(&self, freezes: &UnboundedSender<Duration>, stop: &CancellationToken) {
        while !stop.is_cancelled() {
            std::thread::sleep(TICK);
            let freeze = Duration::from_millis(
                self.now_ms()
                    .saturating_sub(self.last_tick.load(Ordering::Acquire)),
            );
            if freeze > self.limit && freezes.send(freeze).is_err() {
                return;
            }
            self.last_tick.store(self.now_ms(), Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn a_late_tick_is_a_freeze_and_the_next_one_ends_it() {
        let w = std::sync::Arc::new(FreezeWatch::new(Duration::from_millis(300)));
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (w2, s2, stop2) = (w.clone(), seen.clone(), stop.clone());
        let task = tokio::spawn(async move {
            w2.run(|d| s2.lock().unwrap().push(d), stop2).await;
        });
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(!w.just_woke(), "ticking keeps it awake");
        assert!(seen.lock().unwrap().is_empty());
        // A freeze as the watch sees one: no tick for a while.
        let asleep_since = w.now_ms();
        w.last_tick.store(0, Ordering::Release);
        assert!(w.just_woke());
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.lock().unwrap().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let freezes = seen.lock().unwrap().clone();
        assert_eq!(freezes.len(), 1, "{freezes:?}");
        assert!(freezes[0] >= Duration::from_millis(asleep_since));
        assert!(!w.just_woke(), "the tick after the freeze ends it");
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_runtime_too_busy_to_poll_is_not_a_freeze() {
        let w = std::sync::Arc::new(FreezeWatch::new(Duration::from_millis(500)));
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (w2, s2, stop2) = (w.clone(), seen.clone(), stop.clone());
        let task = tokio::spawn(async move {
            w2.run(|d| s2.lock().unwrap().push(d), stop2).await;
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        // This runtime's only thread is busy for three limits.
        std::thread::sleep(Duration::from_millis(1500));
        assert!(!w.just_woke(), "a busy runtime was taken for a freeze");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            seen.lock().unwrap().is_empty(),
            "{:?}",
            seen.lock().unwrap()
        );
        stop.cancel();
        task.await.unwrap();
    }

    #[test]
    fn the_limit_is_half_a_lease_but_never_under_a_second_and_a_half() {
        assert_eq!(
            FreezeWatch::limit_for(Duration::from_secs(10)),
            Duration::from_secs(5)
        );
        assert_eq!(
            FreezeWatch::limit_for(Duration::from_secs(2)),
            Duration::from_millis(1500)
        );
    }
}
