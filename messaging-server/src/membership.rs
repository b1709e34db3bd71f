//! Registration in etcd under a lease, and turning assignment epochs into
//! partition gains and losses for the consumer.

use crate::consumer::Ownership;
use crate::ending::Ending;
use crate::state::AppState;
use etcd_client::{Client, PutOptions};
use protocol::frames::Redirect;
use protocol::{Assignment, EtcdLayout};
use service::etcd::{keep_lease_alive, ttl_secs, LeaseEnd, REQUEST_TIMEOUT};
use service::Backoff;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Keeps this server registered; re-registers after losing the lease.
/// While etcd does not answer, the server keeps serving on the last known
/// map and keeps refreshing the same lease (docs/operations.md, "Outages").
/// Returns the live lease id when `stop` fires so the drain can revoke it.
pub async fn run_registration(
    state: Arc<AppState>,
    client: Client,
    stop: CancellationToken,
) -> Option<i64> {
    Registrar {
        layout: EtcdLayout::new(&state.config.etcd.prefix),
        draining: state.draining.subscribe(),
        broker: state.broker_reachable.subscribe(),
        state,
        client,
        stop,
        incarnation: uuid::Uuid::nil(),
    }
    .run()
    .await
}

/// What keeping one server's registration alive needs.
struct Registrar {
    state: Arc<AppState>,
    client: Client,
    layout: EtcdLayout,
    draining: tokio::sync::watch::Receiver<bool>,
    broker: tokio::sync::watch::Receiver<bool>,
    stop: CancellationToken,
    /// The registration being held: new for each lease.
    incarnation: uuid::Uuid,
}

impl Registrar {
    async fn run(mut self) -> Option<i64> {
        let mut backoff = Backoff::new(Duration::from_millis(200), self.retry_at_most());
        loop {
            self.incarnation = uuid::Uuid::new_v4();
            let lease = match self.register().await {
                Ok(l) => l,
                Err(e) => {
                    warn!(error = %e, "registration failed, retrying");
                    if !backoff.wait(&self.stop).await {
                        return None;
                    }
                    continue;
                }
            };
            backoff.reset();
            self.set_registered(true);
            self.state.metrics.etcd_reachable.set(1);
            info!(server = %self.state.info.server_id, lease, "registered");
            if self.hold(lease).await == LeaseEnd::Stopped {
                // Last step of a drain: the registration disappears at once.
                let revoke = self.client.lease_revoke(lease);
                let _ = tokio::time::timeout(Duration::from_secs(3), revoke).await;
                self.set_registered(false);
                return Some(lease);
            }
            warn!(server = %self.state.info.server_id, lease, "registration lease lost; closing sessions until re-registered");
            self.set_registered(false);
        }
    }

    /// Longest pause between attempts while etcd does not answer: a third of
    /// the TTL, so a lease lost in an etcd stall is noticed and replaced
    /// within about a third of a TTL of etcd answering again — well inside
    /// the coordinator's grace of one TTL (coordinator/src/rejoin.rs).
    fn retry_at_most(&self) -> Duration {
        (self.state.config.lease_ttl / 3).clamp(Duration::from_millis(100), Duration::from_secs(2))
    }

    fn set_registered(&self, yes: bool) {
        // The incarnation first: whoever sees `registered` sees its id.
        self.state
            .incarnation
            .send_replace(yes.then_some(self.incarnation));
        self.state.registered.send_replace(yes);
        self.state.metrics.registered.set(i64::from(yes));
    }

    /// A fresh lease and our registration on it, each step bounded so a
    /// stalled etcd is retried rather than waited on forever.
    async fn register(&mut self) -> Result<i64, etcd_client::Error> {
        let ttl = ttl_secs(self.state.config.lease_ttl);
        let grant = self.client.lease_grant(ttl, None);
        let lease = tokio::time::timeout(REQUEST_TIMEOUT, grant)
            .await
            .map_err(|_| etcd_client::Error::LeaseKeepAliveError("lease grant timed out".into()))??
            .id();
        tokio::time::timeout(REQUEST_TIMEOUT, self.put_info(lease))
            .await
            .map_err(|_| {
                etcd_client::Error::LeaseKeepAliveError("registration timed out".into())
            })??;
        Ok(lease)
    }

    async fn put_info(&mut self, lease: i64) -> Result<(), etcd_client::Error> {
        let info = protocol::ServerInfo {
            draining: *self.draining.borrow(),
            broker_unreachable: !*self.broker.borrow(),
            incarnation: Some(self.incarnation),
            ..self.state.info.clone()
        };
        let json = serde_json::to_vec(&info)
            .map_err(|e| etcd_client::Error::InvalidArgs(e.to_string()))?;
        let key = self.layout.server_key(&info.server_id);
        let opts = PutOptions::new().with_lease(lease);
        self.client.put(key, json, Some(opts)).await?;
        Ok(())
    }

    /// Holds `lease` through etcd outages; returns when it is lost or `stop` fires.
    async fn hold(&mut self, lease: i64) -> LeaseEnd {
        let mut backoff = Backoff::new(Duration::from_millis(100), self.retry_at_most());
        loop {
            match self.keep_alive(lease).await {
                LeaseEnd::Unreachable => {
                    let metrics = &self.state.metrics;
                    if metrics.etcd_reachable.get() == 1 {
                        warn!(server = %self.state.info.server_id, lease, "etcd unreachable; serving on the last known partition map");
                    }
                    metrics.etcd_reachable.set(0);
                    if !backoff.wait(&self.stop).await {
                        return LeaseEnd::Stopped;
                    }
                }
                end => return end,
            }
        }
    }

    /// Keeps the lease alive and republishes the registration when draining
    /// starts or the broker stops (or starts again) answering.
    async fn keep_alive(&mut self, lease: i64) -> LeaseEnd {
        loop {
            let (mut keeper, state) = (self.client.clone(), self.state.clone());
            let ttl = state.config.lease_ttl;
            tokio::select! {
                end = keep_lease_alive(&mut keeper, lease, ttl, &self.stop, || reachable(&state, lease)) => return end,
                r = self.draining.changed() => {
                    if r.is_ok() && self.put_info(lease).await.is_err() {
                        return LeaseEnd::Unreachable;
                    }
                }
                r = self.broker.changed() => {
                    if r.is_ok() && self.put_info(lease).await.is_err() {
                        return LeaseEnd::Unreachable;
                    }
                }
            }
        }
    }
}

/// A refresh etcd confirmed: after an outage, the registration survived.
fn reachable(state: &AppState, lease: i64) {
    if state.metrics.etcd_reachable.get() == 0 {
        info!(server = %state.info.server_id, lease, "etcd reachable again; registration kept");
        state.metrics.etcd_reachable.set(1);
    }
}

/// How a session of `partition` that is not (or no longer) served here ends:
/// 4006 when this server is draining or lost its registration, else 4005,
/// with a redirect to the new owner when the map names one.
pub fn close_for(state: &AppState, a: Option<&Assignment>, partition: u32) -> Ending {
    // A map without us means etcd dropped our registration, whichever of the
    // two watches (lease keep-alive, assignment) noticed first.
    let dropped = a.is_some_and(|a| !state.in_map(a));
    // The three are told apart only in the reason (and its metric label).
    let leaving = if state.is_draining() {
        Some("server draining")
    } else if !*state.registered.borrow() {
        Some("registration lost")
    } else if dropped {
        Some("not in the partition map")
    } else {
        None
    };
    let redirect = a.and_then(|a| {
        let owner = a
            .owner(partition)
            .filter(|o| o.server_id != state.info.server_id)?;
        Some(Redirect {
            server_id: owner.server_id.clone(),
            ws_url: owner.ws_url.clone(),
            epoch: a.epoch,
        })
    });
    match leaving {
        Some(why) => Ending::Leaving { why, redirect },
        None => Ending::Moved(redirect),
    }
}

/// Turns each new epoch (and registration changes) into gains and losses.
/// After a freeze every partition is lost and gained again: the watch's
/// `close_all` stopped serving them all, and a partition this server owned
/// before and after the freeze would otherwise never be opened again — its
/// devices sent away as "moved" to this very server, forever.
pub async fn run_ownership(
    state: Arc<AppState>,
    tx: mpsc::Sender<Ownership>,
    stop: CancellationToken,
) {
    let mut rx = state.assignment_rx.clone();
    let mut registered = state.registered.subscribe();
    let mut woken = state.freeze.woken();
    let mut owned: BTreeSet<u32> = BTreeSet::new();
    let mut woke = false;
    loop {
        let a = rx.borrow_and_update().clone();
        let mine: BTreeSet<u32> = match (&a, *registered.borrow_and_update()) {
            (Some(a), true) => a.partitions_of(&state.info.server_id).into_iter().collect(),
            _ => BTreeSet::new(),
        };
        let (lose, gain) = moves(&owned, &mine, std::mem::take(&mut woke));
        for p in lose {
            let close = match mine.contains(&p) {
                true => Ending::leaving(crate::session::WOKE),
                false => close_for(&state, a.as_deref(), p),
            };
            let _ = tx.send(Ownership::Lose(p, close)).await;
        }
        for p in gain {
            let _ = tx.send(Ownership::Gain(p)).await;
        }
        if owned != mine {
            info!(epoch = a.as_ref().map(|a| a.epoch), partitions = ?mine, "ownership changed");
        }
        owned = mine;
        state.metrics.owned_partitions.set(owned.len() as i64);
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            r = registered.changed() => if r.is_err() { return },
            r = woken.changed() => match r {
                Ok(()) => woke = true,
                Err(_) => return,
            },
            _ = stop.cancelled() => return,
        }
    }
}

/// Partitions to lose, then to gain, going from `owned` to `mine`; after a
/// freeze (`woke`) all of `owned` is lost and all of `mine` gained anew.
fn moves(owned: &BTreeSet<u32>, mine: &BTreeSet<u32>, woke: bool) -> (Vec<u32>, Vec<u32>) {
    if woke {
        return (
            owned.iter().copied().collect(),
            mine.iter().copied().collect(),
        );
    }
    (
        owned.difference(mine).copied().collect(),
        mine.difference(owned).copied().collect(),
    )
}

/// Closes every session with 4006 and a redirect to its partition's new owner.
pub fn close_all_for_drain(state: &AppState) {
    let a = state.assignment();
    state
        .hub
        .close_all(|_, p| close_for(state, a.as_deref(), p));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(v: &[u32]) -> BTreeSet<u32> {
        v.iter().copied().collect()
    }

    #[test]
    fn a_partition_kept_across_a_freeze_is_lost_and_gained_again() {
        let (owned, mine) = (set(&[1, 4, 6]), set(&[4, 7]));
        assert_eq!(moves(&owned, &mine, false), (vec![1, 6], vec![7]));
        assert_eq!(moves(&owned, &mine, true), (vec![1, 4, 6], vec![4, 7]));
    }

    proptest! {
        /// What the hub serves after the moves is exactly `mine`; after a
        /// freeze it served nothing (the watch's `close_all`). A loss is
        /// always of an owned partition, a gain never of a served one.
        #[test]
        fn the_moves_leave_exactly_mine_served(
            owned in proptest::collection::btree_set(0u32..16, 0..16),
            mine in proptest::collection::btree_set(0u32..16, 0..16),
            woke in any::<bool>(),
        ) {
            let mut served = if woke { BTreeSet::new() } else { owned.clone() };
            let (lose, gain) = moves(&owned, &mine, woke);
            for p in lose {
                prop_assert!(owned.contains(&p), "lost {p}, never owned");
                served.remove(&p);
            }
            for p in gain {
                prop_assert!(served.insert(p), "gained {p}, already served");
            }
            prop_assert_eq!(served, mine);
        }
    }
}
