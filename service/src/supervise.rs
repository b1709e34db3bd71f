//! Long-lived tasks under supervision: the first one to end before shutdown
//! — returned or panicked — is reported, so the service drains and exits
//! non-zero (the orchestrator restarts it) instead of running on as a
//! zombie with a dead consumer, watch or keep-alive.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

/// Makes named tasks panic on request: how a test proves that a dying task
/// is noticed. Only Rust code that links a service and calls its
/// `serve_with` can hold one — no flag, variable or request reaches it.
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<HashMap<&'static str, CancellationToken>>>);

impl Faults {
    fn token(&self, task: &'static str) -> CancellationToken {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(task).or_default().clone()
    }

    /// Makes `task` panic (now, or as soon as it is guarded).
    pub fn fail(&self, task: &'static str) {
        self.token(task).cancel();
    }

    /// True once `fail(task)` was called (for tasks on plain threads).
    pub fn failed(&self, task: &'static str) -> bool {
        self.token(task).is_cancelled()
    }

    /// Runs `fut`, panicking if `fail(task)` is called first.
    pub async fn guard<F: Future>(&self, task: &'static str, fut: F) -> F::Output {
        let fault = self.token(task);
        tokio::select! {
            out = fut => out,
            _ = fault.cancelled() => panic!("injected fault in task {task}"),
        }
    }
}

/// A task that ended while it should have been running.
#[derive(Debug, thiserror::Error)]
#[error("task {task} {how}")]
pub struct TaskExit {
    pub task: &'static str,
    /// "ended" or "panicked: <message>".
    pub how: String,
}

pub struct Supervisor {
    tasks: JoinSet<()>,
    names: HashMap<Id, &'static str>,
    faults: Faults,
}

impl Supervisor {
    pub fn new(faults: Faults) -> Self {
        Self {
            tasks: JoinSet::new(),
            names: HashMap::new(),
            faults,
        }
    }

    pub fn spawn<F>(&mut self, task: &'static str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let faults = self.faults.clone();
        let handle = self
            .tasks
            .spawn(async move { faults.guard(task, fut).await });
        self.names.insert(handle.id(), task);
    }

    /// Waits until a task ends; pending forever when there are none.
    pub async fn first_exit(&mut self) -> TaskExit {
        let Some(ended) = self.tasks.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (id, how) = match ended {
            Ok((id, ())) => (id, "ended".to_owned()),
            Err(e) => {
                let id = e.id();
                let how = match e.try_into_panic() {
                    Ok(p) => format!("panicked: {}", panic_message(p.as_ref())),
                    Err(e) => format!("was cancelled: {e}"),
                };
                (id, how)
            }
        };
        let task = self.names.get(&id).copied().unwrap_or("unknown");
        TaskExit { task, how }
    }

    /// Waits (at most `within`) for every task to finish after shutdown.
    pub async fn join_all(mut self, within: Duration) {
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(within, all).await.is_err() {
            self.tasks.abort_all();
        }
    }
}

/// The text a panic was raised with.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reports_the_task_that_panicked_or_ended() {
        let faults = Faults::default();
        let mut sup = Supervisor::new(faults.clone());
        sup.spawn("forever", std::future::pending());
        sup.spawn("short", async {});
        let exit = sup.first_exit().await;
        assert_eq!((exit.task, exit.how.as_str()), ("short", "ended"));
        faults.fail("forever");
        let exit = sup.first_exit().await;
        assert_eq!(exit.task, "forever");
        assert!(exit.how.contains("injected fault"), "{}", exit.how);
        assert!(faults.failed("forever") && !faults.failed("short"));
    }
}
