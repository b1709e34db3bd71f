//! Network faults and gray failures on a cluster whose processes each have
//! an address of their own (`Shape::network`): links cut with iptables in
//! one side's network namespace (no FIN, no RST), a process frozen with the
//! cgroup freezer, the broker link slowed by its relay and made lossy.

use super::backing::Backing;
use super::chaos::Fault;
use super::cluster::{Cluster, Role, Service};
use std::time::Duration;

/// One fault: what it did to whom, undone when `heal` is called.
pub struct Injected<'a> {
    fault: Fault,
    target: &'a Service,
    backing: &'a Backing,
    /// For the split: the processes on the other side.
    others: Vec<String>,
    servers: Vec<&'a Service>,
}

/// Injects `fault` on its `nth` target; `Ok` once in place.
pub async fn inject<'a>(
    cluster: &'a Cluster,
    fault: Fault,
    nth: usize,
) -> anyhow::Result<Injected<'a>> {
    let b = cluster
        .backing
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("{fault:?} needs the cluster on a network of its own"))?;
    let servers: Vec<&Service> = cluster.of(Role::Server).collect();
    let target = match fault {
        Fault::LeaderCutFromEtcd => super::chaos::leader(cluster).await,
        Fault::PersisterCutFromPostgres | Fault::PersisterCutFromBroker => {
            super::chaos::pick(cluster, Role::Persister, nth)
        }
        _ => super::chaos::pick(cluster, Role::Server, nth),
    }
    .ok_or_else(|| anyhow::anyhow!("no target for {fault:?}"))?;
    let others = cluster
        .services
        .iter()
        .filter(|s| s.role != Role::Persister && s.name != target.name)
        .filter_map(|s| s.ip.clone())
        .chain([b.etcd_ip.clone()])
        .collect();
    let i = Injected {
        fault,
        target,
        backing: b,
        others,
        servers,
    };
    i.apply(true).await?;
    Ok(i)
}

impl Injected<'_> {
    pub fn target(&self) -> &str {
        &self.target.name
    }

    pub async fn heal(&self) -> anyhow::Result<()> {
        self.apply(false).await
    }

    async fn apply(&self, on: bool) -> anyhow::Result<()> {
        let (t, b) = (&self.target.container, self.backing);
        let relay = (b.broker_relay_ip.as_str(), Some(b.broker_relay_port));
        match self.fault {
            Fault::ServerCutFromEtcd | Fault::LeaderCutFromEtcd => {
                t.cut(&b.etcd_ip, None, on).await
            }
            Fault::ServerCutFromBroker | Fault::PersisterCutFromBroker => {
                t.cut(relay.0, relay.1, on).await
            }
            Fault::PersisterCutFromPostgres => t.cut(&b.postgres_ip, None, on).await,
            Fault::FreezeServer => t.freeze(on).await,
            Fault::ClientsCutFromServer => t.cut_port(self.target.port, on).await,
            Fault::SlowLossyBroker => {
                b.broker_relay.delay(if on { SLOW } else { Duration::ZERO });
                for s in &self.servers {
                    s.container.lossy(relay.0, LOSS_PERCENT, on).await?;
                }
                Ok(())
            }
            Fault::SplitOneServer => {
                for peer in &self.others {
                    t.cut(peer, None, on).await?;
                }
                Ok(())
            }
            other => Err(anyhow::anyhow!("{other:?} is not a network fault")),
        }
    }
}

/// The slow link's delay, each way.
pub const SLOW: Duration = Duration::from_millis(50);
pub const LOSS_PERCENT: u32 = 2;
