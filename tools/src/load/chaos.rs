//! Chaos mode: on a schedule, one failure at a time — `kill -9` of a
//! messaging server, a graceful stop (drain) of one, `kill -9` of the
//! coordinator leader, `kill -9` of a persister, `kill -9` of the broker —
//! each followed by a restart and a wait until the cluster has settled again.

use super::cluster::{Cluster, Role, Service};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    KillServer,
    DrainServer,
    KillLeader,
    KillPersister,
    KillBroker,
}

pub const ALL: [Fault; 5] = [
    Fault::KillServer,
    Fault::DrainServer,
    Fault::KillLeader,
    Fault::KillPersister,
    Fault::KillBroker,
];

impl Fault {
    pub fn label(self) -> &'static str {
        match self {
            Fault::KillServer => "kill -9 messaging server",
            Fault::DrainServer => "drain messaging server (SIGTERM)",
            Fault::KillLeader => "kill -9 coordinator leader",
            Fault::KillPersister => "kill -9 persister",
            Fault::KillBroker => "kill -9 broker (restart on the same storage)",
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Happened {
    pub fault: Fault,
    pub target: String,
    /// Seconds since the load started.
    pub at_s: f64,
    /// From the failure until the cluster was settled again after the restart.
    pub recovered_s: f64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Every kind of failure happens at least this many times: `enough` is
    /// cancelled once it has.
    pub rounds: usize,
    /// Pause between one recovery and the next failure.
    pub every: Duration,
    /// How long a failed service stays down before its restart.
    pub down: Duration,
}

/// Runs failures in rotation until `stop`; every service is up when it returns.
pub async fn run(
    cluster: &Cluster,
    schedule: Schedule,
    started: Instant,
    enough: CancellationToken,
    stop: CancellationToken,
) -> Vec<Happened> {
    let servers = cluster.of(Role::Server).count();
    let mut log = Vec::new();
    for round in 0.. {
        tokio::select! {
            _ = tokio::time::sleep(schedule.every) => {}
            _ = stop.cancelled() => break,
        }
        let fault = ALL[round % ALL.len()];
        let at = Instant::now();
        let (target, result) = inject(cluster, fault, round / ALL.len(), schedule.down).await;
        let settled = harness::wait_until(
            "the cluster settles after a failure",
            Duration::from_secs(180),
            || cluster.settled(servers),
        )
        .await;
        let error = result.and(settled).err().map(|e| format!("{e:#}"));
        if let Some(e) = &error {
            tracing::warn!(?fault, %target, error = %e, "chaos step failed");
        }
        eprintln!(
            "[chaos] {:>6.1}s {} ({target}): recovered in {:.1}s",
            at.duration_since(started).as_secs_f64(),
            fault.label(),
            at.elapsed().as_secs_f64()
        );
        log.push(Happened {
            fault,
            target,
            at_s: at.duration_since(started).as_secs_f64(),
            recovered_s: at.elapsed().as_secs_f64(),
            error,
        });
        if log.len() >= schedule.rounds * ALL.len() {
            enough.cancel();
        }
    }
    enough.cancel();
    log
}

async fn inject(
    cluster: &Cluster,
    fault: Fault,
    nth: usize,
    down: Duration,
) -> (String, anyhow::Result<()>) {
    if fault == Fault::KillBroker {
        let result = async {
            cluster.kill_broker().await?;
            tokio::time::sleep(down).await;
            cluster.start_broker().await
        }
        .await;
        return ("broker".to_owned(), result);
    }
    let target = match fault {
        Fault::KillServer | Fault::DrainServer => pick(cluster, Role::Server, nth),
        Fault::KillPersister => pick(cluster, Role::Persister, nth),
        Fault::KillLeader => leader(cluster).await,
        Fault::KillBroker => None,
    };
    let Some(s) = target else {
        return (
            String::new(),
            Err(anyhow::anyhow!("no target for {fault:?}")),
        );
    };
    let result = async {
        match fault {
            Fault::DrainServer => s.stop(Duration::from_secs(30)).await?,
            _ => s.kill().await?,
        }
        tokio::time::sleep(down).await;
        s.start().await
    }
    .await;
    (s.name.clone(), result)
}

fn pick(cluster: &Cluster, role: Role, nth: usize) -> Option<&Service> {
    let all: Vec<&Service> = cluster.of(role).collect();
    all.get(nth % all.len().max(1)).copied()
}

/// The current leader; a short wait covers an election still under way.
async fn leader(cluster: &Cluster) -> Option<&Service> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(l) = cluster.leader().await {
            return Some(l);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}
