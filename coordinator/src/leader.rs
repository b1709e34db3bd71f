//! Leadership: campaign in etcd under a lease, then publish the assignment on
//! every membership change, each write fenced on still holding leadership.

use crate::assign::assign;
use crate::broker_grace::BrokerGrace;
use crate::metrics::Metrics;
use crate::rejoin::Rejoin;
use crate::topic;
use crate::Config;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, LeaderKey, Txn, TxnOp, WatchOptions,
    WatchStream,
};
use protocol::{Assignment, EtcdLayout, ServerId, ServerInfo};
use service::etcd::{keep_lease_alive, ttl_secs, LeaseEnd};
use service::Backoff;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("lost the election lease")]
    LeaseLost,
    #[error("deposed: the fenced assignment write was rejected")]
    Deposed,
    #[error("topic: {0}")]
    Topic(#[from] topic::TopicError),
}

pub struct Elector {
    pub client: Client,
    pub layout: EtcdLayout,
    pub config: Config,
    pub id: String,
    pub metrics: Metrics,
    /// The log epoch whose topics this process checked, and the users'
    /// topic's partition count: a later term leads without asking the
    /// broker again, so a slow broker (a saturated machine) cannot keep a
    /// coordinator from publishing after it lost and won the election. A
    /// new log epoch (a recreated topic) is checked anew.
    pub checked: Option<(String, u32)>,
}

impl Elector {
    /// Campaigns, leads, and campaigns again after losing, until cancelled.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(3));
        while !cancel.is_cancelled() {
            match self.term(&cancel).await {
                Ok(()) => backoff.reset(),
                Err(_) if cancel.is_cancelled() => break,
                Err(e) => warn!(coordinator = %self.id, error = %e, "leadership term ended"),
            }
            self.metrics.is_leader.set(0);
            self.metrics.awaited_servers.set(0);
            if !backoff.wait(&cancel).await {
                break;
            }
        }
    }

    async fn term(&mut self, cancel: &CancellationToken) -> Result<(), LeaderError> {
        let lease = self
            .client
            .lease_grant(ttl_secs(self.config.lease_ttl), None)
            .await?
            .id();
        let lost = cancel.child_token();
        let (endpoints, ttl, ends) = (
            self.config.etcd.endpoints.clone(),
            self.config.lease_ttl,
            lost.clone(),
        );
        // On a thread and etcd connection of its own: a coordinator busy
        // with a herd's route lookups must still refresh its lease on time.
        let keeper = service::own_thread::spawn("election-lease", move || async move {
            match service::etcd::connect(&endpoints).await {
                Ok(client) => keep_alive(client, lease, ttl, ends).await,
                Err(e) => {
                    warn!(lease, error = %e, "no etcd connection to keep the election lease");
                    ends.cancel();
                }
            }
        });
        let result = self.campaign_and_lead(lease, &lost).await;
        // Ends what campaign_and_lead left running under `lost`; dropping
        // the handle stops the keeper on its thread.
        lost.cancel();
        drop(keeper);
        // Revoking hands leadership over at once instead of after a TTL.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.lease_revoke(lease)).await;
        result
    }

    async fn campaign_and_lead(
        &mut self,
        lease: i64,
        lost: &CancellationToken,
    ) -> Result<(), LeaderError> {
        let election = self.layout.election();
        let resp = tokio::select! {
            r = self.client.campaign(election.as_str(), self.id.as_str(), lease) => r?,
            _ = lost.cancelled() => return Err(LeaderError::LeaseLost),
        };
        let Some(key) = resp.leader().cloned() else {
            return Err(LeaderError::LeaseLost);
        };
        info!(coordinator = %self.id, "became leader");
        self.metrics.is_leader.set(1);
        tokio::select! {
            r = self.lead(&key, lost) => r,
            _ = lost.cancelled() => Err(LeaderError::LeaseLost),
        }
    }

    /// The topics of `log_epoch` exist (created if not): the users'
    /// topic's partitions.
    async fn check_topics(&mut self, log_epoch: &str) -> Result<u32, LeaderError> {
        if let Some((_, p)) = self.checked.as_ref().filter(|(e, _)| e == log_epoch) {
            return Ok(*p);
        }
        let c = &self.config;
        let partitions = topic::ensure_topic(
            &c.kafka.brokers,
            &c.kafka.topic,
            c.partitions,
            c.replication_factor,
        )
        .await?;
        topic::ensure_topic(
            &c.kafka.brokers,
            &protocol::channel_topic(&c.kafka.topic),
            c.channel_partitions,
            c.replication_factor,
        )
        .await?;
        // A user's events go to the user's partition: as many as the users' topic.
        topic::ensure_topic(
            &c.kafka.brokers,
            &protocol::events_topic(&c.kafka.topic),
            partitions,
            c.replication_factor,
        )
        .await?;
        self.checked = Some((log_epoch.to_owned(), partitions));
        Ok(partitions)
    }

    async fn lead(&mut self, key: &LeaderKey, lost: &CancellationToken) -> Result<(), LeaderError> {
        let log_epoch = topic::ensure_log_epoch(&mut self.client, &self.layout).await?;
        let partitions = self.check_topics(&log_epoch).await?;
        let c = &self.config;
        let mut current = read_assignment(&mut self.client, &self.layout)
            .await?
            .unwrap_or_else(|| Assignment::empty(partitions));
        let (mut servers, rev) = read_servers(&mut self.client, &self.layout).await?;
        let mut rejoin = Rejoin::new(&current, &servers, Instant::now() + c.lease_ttl);
        let mut broker = BrokerGrace::new(c.lease_ttl);
        self.log_awaited(&rejoin);
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(rev + 1);
        let mut watch = self
            .client
            .watch(self.layout.servers_prefix(), Some(opts))
            .await?;
        loop {
            let now = Instant::now();
            let members = broker.members(&rejoin.members(&servers, now), now);
            self.metrics
                .awaited_servers
                .set(rejoin.waiting().count() as i64);
            if let Some(next) = next_assignment(&current, &members, partitions, &log_epoch) {
                write_fenced(&mut self.client, &self.layout, key, &next).await?;
                self.log_publish(&current, &next);
                current = next;
            }
            let until = [rejoin.deadline(), broker.deadline(now)]
                .into_iter()
                .flatten()
                .min();
            wait_for_change(&mut watch, c.debounce, until, lost).await?;
            servers = read_servers(&mut self.client, &self.layout).await?.0;
        }
    }

    fn log_awaited(&self, rejoin: &Rejoin) {
        let waiting: Vec<&ServerId> = rejoin.waiting().collect();
        if !waiting.is_empty() {
            info!(
                coordinator = %self.id,
                servers = ?waiting,
                grace = ?self.config.lease_ttl,
                "servers of the inherited map are not registered; keeping them for one lease TTL while they register again"
            );
        }
    }

    fn log_publish(&self, prev: &Assignment, next: &Assignment) {
        let moved = prev.moved_to(next);
        self.metrics.reassigned.inc_by(moved.len() as u64);
        self.metrics.published.inc();
        info!(
            epoch = next.epoch,
            moved = moved.len(),
            partitions = ?moved,
            loads = ?next.loads(),
            servers = next.servers.len(),
            "published assignment"
        );
    }
}

/// The next map, or `None` when nothing a client or server sees would change.
pub fn next_assignment(
    current: &Assignment,
    servers: &BTreeMap<ServerId, ServerInfo>,
    partitions: u32,
    log_epoch: &str,
) -> Option<Assignment> {
    let prev: &[Option<ServerId>] = if current.partitions == partitions {
        &current.owners
    } else {
        &[]
    };
    let owners = assign(prev, servers, partitions);
    let unchanged = current.epoch > 0
        && owners == current.owners
        && *servers == current.servers
        && current.partitions == partitions
        && current.log_epoch == log_epoch;
    (!unchanged).then(|| Assignment {
        epoch: current.epoch + 1,
        log_epoch: log_epoch.to_owned(),
        partitions,
        owners,
        servers: servers.clone(),
    })
}

/// Writes `next` only while `key` (our election key) still exists with its
/// original revision: a deposed leader's write fails instead of clobbering.
pub async fn write_fenced(
    client: &mut Client,
    layout: &EtcdLayout,
    key: &LeaderKey,
    next: &Assignment,
) -> Result<(), LeaderError> {
    let json =
        serde_json::to_vec(next).map_err(|e| etcd_client::Error::InvalidArgs(e.to_string()))?;
    let txn = Txn::new()
        .when([Compare::create_revision(
            key.key(),
            CompareOp::Equal,
            key.rev(),
        )])
        .and_then([TxnOp::put(layout.assignment_key(), json, None)]);
    if client.txn(txn).await?.succeeded() {
        Ok(())
    } else {
        Err(LeaderError::Deposed)
    }
}

pub async fn read_assignment(
    client: &mut Client,
    layout: &EtcdLayout,
) -> Result<Option<Assignment>, LeaderError> {
    let resp = client.get(layout.assignment_key(), None).await?;
    Ok(resp
        .kvs()
        .first()
        .and_then(|kv| serde_json::from_slice(kv.value()).ok()))
}

/// Live registrations and the revision they were read at.
pub async fn read_servers(
    client: &mut Client,
    layout: &EtcdLayout,
) -> Result<(BTreeMap<ServerId, ServerInfo>, i64), LeaderError> {
    let prefix = layout.servers_prefix();
    let resp = client
        .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    let mut servers = BTreeMap::new();
    for kv in resp.kvs() {
        let id = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
        match serde_json::from_slice::<ServerInfo>(kv.value()) {
            Ok(info) if info.server_id.as_str() == id => {
                servers.insert(info.server_id.clone(), info);
            }
            Ok(_) => warn!(server = %id, "registration names another server id; ignored"),
            Err(e) => warn!(server = %id, error = %e, "undecodable registration; ignored"),
        }
    }
    Ok((servers, rev))
}

/// Returns after a membership event followed by `debounce` of quiet
/// collection, so a burst becomes one epoch, or at `until` (a grace ending).
async fn wait_for_change(
    watch: &mut WatchStream,
    debounce: Duration,
    until: Option<Instant>,
    lost: &CancellationToken,
) -> Result<(), LeaderError> {
    let deadline = async {
        match until {
            Some(t) => tokio::time::sleep_until(t.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    loop {
        let msg = tokio::select! {
            m = watch.message() => m?,
            _ = lost.cancelled() => return Err(LeaderError::LeaseLost),
            _ = &mut deadline => return Ok(()),
        };
        let Some(msg) = msg else {
            return Err(etcd_client::Error::WatchError("server watch ended".into()).into());
        };
        if msg.canceled() {
            return Err(etcd_client::Error::WatchError("server watch cancelled".into()).into());
        }
        if msg
            .events()
            .iter()
            .any(|e| matches!(e.event_type(), EventType::Put | EventType::Delete))
        {
            break;
        }
    }
    tokio::time::sleep(debounce).await;
    // Swallow what queued up during the debounce: the re-read sees it all.
    while let Ok(Ok(Some(_))) = tokio::time::timeout(Duration::ZERO, watch.message()).await {}
    Ok(())
}

async fn keep_alive(mut client: Client, lease: i64, ttl: Duration, lost: CancellationToken) {
    // Unreachable counts as lost here: a leader that cannot reach etcd
    // cannot publish anyway, and its fenced writes would fail. Every replica
    // keeps serving routes from its cached map meanwhile.
    match keep_lease_alive(&mut client, lease, ttl, &lost, || {}).await {
        LeaseEnd::Stopped => {}
        end => {
            warn!(
                lease,
                ?end,
                "election lease lost or etcd unreachable; leadership ends"
            );
            lost.cancel();
        }
    }
}
