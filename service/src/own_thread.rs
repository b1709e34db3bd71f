//! A task that must keep time while the rest of the process is too busy to:
//! a lease keep-alive. On a runtime saturated by a reconnect herd a timer
//! can fire seconds late (the 36,000-device storm: servers' and the
//! coordinator's leases expired although etcd answered, each expiry a new
//! herd). Such a task runs here on a runtime of its own, on a thread of its
//! own, which the kernel schedules like any other thread; whatever it talks
//! to over the network (an etcd client) must be created inside `make`,
//! since a client's connection is driven by the runtime it was made on.

use std::future::Future;
use tokio::sync::oneshot;

/// Runs the future `make` returns on a single-threaded runtime of its own
/// thread, named `name`; the returned future resolves to its output, or to
/// `None` if the thread could not start or the future panicked. Dropping
/// the returned future drops the task on the thread too, as aborting a task
/// would: a supervisor dropping its tasks, or an in-process service killed
/// by a test, leaves no lease refreshed behind it.
pub fn spawn<F, Fut, T>(name: &str, make: F) -> impl Future<Output = Option<T>> + Send + 'static
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let (alive, dropped) = oneshot::channel::<()>();
    let started = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async move {
                    tokio::select! {
                        out = make() => drop(tx.send(out)),
                        _ = dropped => {}
                    }
                });
            }
        });
    if let Err(e) = started {
        tracing::error!(thread = name, error = %e, "could not start a thread");
    }
    async move {
        let _alive = alive;
        rx.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    /// The caller's runtime has one thread, blocked for a second: a task
    /// on it would tick zero times meanwhile; one on its own thread ticks
    /// on time.
    #[tokio::test(flavor = "current_thread")]
    async fn keeps_time_while_the_callers_runtime_is_blocked() {
        let start = Instant::now();
        let ticks = super::spawn("ticker", move || async move {
            let mut late = Duration::ZERO;
            for n in 1..=10u32 {
                tokio::time::sleep_until((start + n * Duration::from_millis(100)).into()).await;
                late = late.max(
                    start
                        .elapsed()
                        .saturating_sub(n * Duration::from_millis(100)),
                );
            }
            late
        });
        std::thread::sleep(Duration::from_millis(1100));
        let late = ticks.await.expect("the thread ran");
        assert!(
            late < Duration::from_millis(300),
            "a tick was {late:?} late"
        );
    }

    /// Dropped unfinished, the task on the thread stops.
    #[tokio::test]
    async fn dropping_the_handle_stops_the_task() {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        let ticks = Arc::new(AtomicU64::new(0));
        let counted = ticks.clone();
        let handle = super::spawn("forever", move || async move {
            loop {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(ticks.load(Ordering::SeqCst) > 0, "it ran");
        drop(handle);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after_drop = ticks.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), after_drop, "still running");
    }

    #[tokio::test]
    async fn a_panic_is_none() {
        let out: Option<()> = super::spawn("panics", || async { panic!("on purpose") }).await;
        assert!(out.is_none());
    }
}
