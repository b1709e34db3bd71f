use crate::auth::Authenticator;
use crate::hub::Hub;
use crate::members::MemberCache;
use crate::metrics::Metrics;
use crate::producer::Producers;
use crate::Config;
use prometheus_client::registry::Registry;
use protocol::{Assignment, ServerInfo};
use service::etcd::AssignmentRx;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Everything a session or handler needs, shared behind one `Arc`.
pub struct AppState {
    /// The validated configuration (topic, brokers, limits, timeouts).
    pub config: Config,
    /// This server's registration as etcd and clients see it.
    pub info: ServerInfo,
    /// Verifies client JWTs.
    pub auth: Authenticator,
    /// The keys of the publish API.
    pub api_keys: crate::auth::ApiKeys,
    /// `SWITCHBOARD_ADMIN_KEY`, for `/admin/*` (none: admin actions are off).
    pub admin_keys: crate::auth::ApiKeys,
    /// PostgreSQL, with conversation members cached.
    pub members: MemberCache,
    /// The persister's position per partition, one query at a time each.
    pub persisted: crate::persisted::PersistedOffsets,
    /// Watermarks and ranges of the log, for resumes.
    pub log: crate::kafka::LogReader,
    /// Replay reads of PostgreSQL at once: half the pool, so a reconnect
    /// storm's replays leave sends and lookups their share.
    pub replay_reads: tokio::sync::Semaphore,
    /// The Kafka producer, replaced by its supervisor after a fatal error.
    pub producer: Arc<Producers>,
    /// One permit per open WebSocket, `SWITCHBOARD_MAX_CONNECTIONS` in all.
    pub sockets: Arc<tokio::sync::Semaphore>,
    /// Local devices and the fan-out of consumed records to them.
    pub hub: Arc<Hub>,
    /// Channel subscriptions of local devices, and the channel fan-out.
    pub channels: Arc<crate::channels::ChannelHub>,
    /// `<topic>.channels`, which this server reads in full.
    pub channel_topic: String,
    /// Who is online over the cluster, and local watchers.
    pub presence: Arc<crate::presence::Presence>,
    pub anycast: Arc<crate::anycast::Anycast>,
    /// Where connection events go (`<topic>.events`).
    pub events: crate::events::EventLog,
    pub metrics: Metrics,
    pub registry: Registry,
    /// The newest partition map (it carries the log epoch cursors use).
    pub assignment_rx: AssignmentRx,
    /// True while our registration lease is alive.
    pub registered: watch::Sender<bool>,
    /// The registration in force (`None` while unregistered): sessions
    /// belong to the one they connected under (`events`).
    pub incarnation: watch::Sender<Option<uuid::Uuid>>,
    /// True from the start of a drain; registration republishes on change.
    pub draining: watch::Sender<bool>,
    /// Tells a session it is reading frames sent while the process was frozen.
    pub freeze: Arc<crate::freeze::FreezeWatch>,
    /// False while the broker does not answer (`broker_watch`); the
    /// registration republishes on change.
    pub broker_reachable: watch::Sender<bool>,
    /// Ends sessions and background tasks once the drain is over.
    pub stop: CancellationToken,
}

impl AppState {
    pub fn assignment(&self) -> Option<Arc<Assignment>> {
        self.assignment_rx.borrow().clone()
    }

    /// The topic incarnation of the current map; empty before the first map.
    pub fn log_epoch(&self) -> String {
        self.assignment_rx
            .borrow()
            .as_ref()
            .map(|a| a.log_epoch.clone())
            .unwrap_or_default()
    }

    pub fn topic(&self) -> &str {
        &self.config.kafka.topic
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Serving means registered, not draining, named in the current map and
    /// holding a working producer.
    pub fn is_ready(&self) -> bool {
        self.not_ready().is_none()
    }

    /// Whether `a` names this server (a map without it means etcd dropped
    /// its registration, or the coordinator has not seen it yet).
    pub fn in_map(&self, a: &Assignment) -> bool {
        a.servers.contains_key(&self.info.server_id)
    }

    /// Watches everything [`AppState::not_ready`] and the ownership of
    /// partitions read, from now on: check, then await [`Changes::any`].
    pub fn changes(&self) -> Changes {
        Changes {
            assignment: seen_now(&self.assignment_rx),
            flags: [
                self.registered.subscribe(),
                self.draining.subscribe(),
                self.broker_reachable.subscribe(),
                self.producer.health(),
            ],
        }
    }

    /// Why this server does not serve now, for `/readyz` and the logs.
    pub fn not_ready(&self) -> Option<&'static str> {
        if self.is_draining() {
            return Some("draining");
        }
        if !*self.registered.borrow() {
            return Some("not registered in etcd (registering, or its lease was lost)");
        }
        match self.assignment() {
            None => return Some("no partition map yet"),
            // Registered, but the coordinator has not (or no longer) put us
            // in the map: we own nothing, so an orchestrator must not count us.
            Some(a) if !self.in_map(&a) => return Some("not in the coordinator's partition map"),
            Some(_) => {}
        }
        if !*self.broker_reachable.borrow() {
            return Some("the broker does not answer (partitions handed to servers that reach it)");
        }
        (!self.producer.is_healthy()).then_some("the Kafka producer is not ready")
    }
}

/// Receivers of the state's watches (see [`AppState::changes`]).
pub struct Changes {
    assignment: service::etcd::AssignmentRx,
    flags: [watch::Receiver<bool>; 4],
}

impl Changes {
    /// Resolves at the first change after these receivers were made.
    pub async fn any(mut self) {
        let [a, b, c, d] = &mut self.flags;
        tokio::select! {
            _ = changed(&mut self.assignment) => {}
            _ = changed(a) => {}
            _ = changed(b) => {}
            _ = changed(c) => {}
            _ = changed(d) => {}
        }
    }
}

/// A receiver of `rx` that has seen its current value. A clone keeps the
/// version its original last saw, and the state's receiver is only read
/// with `borrow()`: a plain clone would report "changed" at once, forever,
/// and its waiter would spin.
fn seen_now<T>(rx: &watch::Receiver<T>) -> watch::Receiver<T> {
    let mut fresh = rx.clone();
    fresh.mark_unchanged();
    fresh
}

/// A watch whose sender is gone never changes again (instead of waking
/// its waiter at once, over and over).
async fn changed<T>(rx: &mut watch::Receiver<T>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_fresh_receiver_waits_for_the_next_change_only() {
        let (tx, rx) = watch::channel(0);
        tx.send_replace(1);
        tx.send_replace(2);
        let mut fresh = seen_now(&rx);
        let early = tokio::time::timeout(Duration::from_millis(50), changed(&mut fresh)).await;
        assert!(early.is_err(), "nothing changed since it was made");
        tx.send_replace(3);
        let later = tokio::time::timeout(Duration::from_secs(5), changed(&mut fresh)).await;
        assert!(later.is_ok(), "a change after it was made wakes it");
    }
}
