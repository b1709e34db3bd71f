//! Chaos mode: on a schedule, one failure at a time — `kill -9` of a
//! messaging server, a graceful stop (drain) of one, `kill -9` of the
//! coordinator leader, `kill -9` of a persister, `kill -9` of the broker —
//! each followed by a restart and a wait until the cluster has settled again.
//! With `--network-faults`, the network faults and gray failures of
//! `partitions.rs` instead. Every fault's window goes into the history.

use super::cluster::{Cluster, Role, Service};
use crate::history::{record::Recorder, Window};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    KillServer,
    DrainServer,
    KillLeader,
    KillPersister,
    KillBroker,
    ServerCutFromEtcd,
    ServerCutFromBroker,
    FreezeServer,
    LeaderCutFromEtcd,
    PersisterCutFromPostgres,
    PersisterCutFromBroker,
    ClientsCutFromServer,
    SlowLossyBroker,
    SplitOneServer,
}

pub const ALL: [Fault; 5] = [
    Fault::KillServer,
    Fault::DrainServer,
    Fault::KillLeader,
    Fault::KillPersister,
    Fault::KillBroker,
];

/// The network faults and gray failures (`--network-faults`).
pub const PARTITIONS: [Fault; 9] = [
    Fault::ServerCutFromEtcd,
    Fault::FreezeServer,
    Fault::ServerCutFromBroker,
    Fault::LeaderCutFromEtcd,
    Fault::PersisterCutFromPostgres,
    Fault::ClientsCutFromServer,
    Fault::PersisterCutFromBroker,
    Fault::SlowLossyBroker,
    Fault::SplitOneServer,
];

impl Fault {
    /// Whether it needs the cluster on a network of its own.
    pub fn is_network(self) -> bool {
        !ALL.contains(&self)
    }

    pub fn label(self) -> &'static str {
        match self {
            Fault::ServerCutFromEtcd => "messaging server cut from etcd",
            Fault::ServerCutFromBroker => "messaging server cut from the broker",
            Fault::FreezeServer => "messaging server frozen (cgroup freezer)",
            Fault::LeaderCutFromEtcd => "coordinator leader cut from etcd",
            Fault::PersisterCutFromPostgres => "persister cut from PostgreSQL",
            Fault::PersisterCutFromBroker => "persister cut from the broker",
            Fault::ClientsCutFromServer => "clients cut from their server (half-open)",
            Fault::SlowLossyBroker => "servers-broker link slow (50 ms each way) and lossy (2%)",
            Fault::SplitOneServer => {
                "one server split from etcd, coordinators and the other servers"
            }
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

/// How long traffic goes on after the last fault.
const TAIL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Schedule {
    /// Every kind of failure happens at least this many times: `enough` is
    /// cancelled once it has.
    pub rounds: usize,
    /// Pause between one recovery and the next failure.
    pub every: Duration,
    /// How long a failed service stays down before its restart (a link
    /// stays cut, a process frozen).
    pub down: Duration,
    /// How long the slow, lossy link lasts.
    pub slow: Duration,
    /// The faults, in rotation.
    pub faults: Vec<Fault>,
}

/// Runs failures in rotation until `stop`; every service is up when it returns.
pub async fn run(
    cluster: &Cluster,
    schedule: Schedule,
    (started, history): (Instant, &Recorder),
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
        let all = &schedule.faults;
        let fault = all[round % all.len()];
        let at = Instant::now();
        let (target, result) = if fault.is_network() {
            network(cluster, fault, round / all.len(), &schedule).await
        } else {
            inject(cluster, fault, round / all.len(), schedule.down).await
        };
        let healed = Instant::now();
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
        history.fault(Window {
            fault: format!("{fault:?}"),
            target: target.clone(),
            at_ms: history.ms(at),
            healed_ms: history.ms(healed),
            end_ms: history.now_ms(),
        });
        log.push(Happened {
            fault,
            target,
            at_s: at.duration_since(started).as_secs_f64(),
            recovered_s: at.elapsed().as_secs_f64(),
            error,
        });
        if log.len() >= schedule.rounds * all.len() && !enough.is_cancelled() {
            // Traffic goes on a while after the last fault, so the history
            // shows its devices served again.
            tokio::select! {
                _ = tokio::time::sleep(TAIL) => {}
                _ = stop.cancelled() => {}
            }
            enough.cancel();
        }
    }
    enough.cancel();
    log
}

/// A network fault: in place for `down` (`slow` for the slow link), then healed.
async fn network(
    cluster: &Cluster,
    fault: Fault,
    nth: usize,
    schedule: &Schedule,
) -> (String, anyhow::Result<()>) {
    let injected = match super::partitions::inject(cluster, fault, nth).await {
        Ok(i) => i,
        Err(e) => return (String::new(), Err(e)),
    };
    let lasts = if fault == Fault::SlowLossyBroker {
        schedule.slow
    } else {
        schedule.down
    };
    tokio::time::sleep(lasts).await;
    (injected.target().to_owned(), injected.heal().await)
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
        _ => None,
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

pub(super) fn pick(cluster: &Cluster, role: Role, nth: usize) -> Option<&Service> {
    let all: Vec<&Service> = cluster.of(role).collect();
    all.get(nth % all.len().max(1)).copied()
}

/// The current leader; a short wait covers an election still under way.
pub(super) async fn leader(cluster: &Cluster) -> Option<&Service> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(l) = cluster.leader().await {
            return Some(l);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}
