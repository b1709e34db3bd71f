//! etcd access shared by the coordinator and the messaging servers.

use crate::Backoff;
use etcd_client::{Client, ConnectOptions, EventType, WatchOptions};
use protocol::{Assignment, EtcdLayout};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub type AssignmentRx = watch::Receiver<Option<Arc<Assignment>>>;

/// How long one etcd request may take before it counts as unavailable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// HTTP/2 pings on a quiet connection, only while a stream (a watch, a
/// lease's keep-alives) is open: etcd (gRPC's enforcement policy) closes
/// with GOAWAY `too_many_pings` the connection of a client that pings more
/// often than `--grpc-keepalive-min-time` (5 s by default) or pings at all
/// while no stream is open — the third offence ends it. Pinging idle
/// connections every 10 s had etcd close a coordinator's about every 40 s
/// (tests/it/etcd_pings.rs); a request on an idle connection has its own
/// timeout instead.
const PING_EVERY: Duration = Duration::from_secs(10);

pub async fn connect(endpoints: &[String]) -> Result<Client, etcd_client::Error> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_keep_alive(PING_EVERY, Duration::from_secs(5))
        .with_keep_alive_while_idle(false);
    Client::connect(endpoints, Some(opts)).await
}

/// Connects, retrying with backoff until it works or `cancel` fires.
pub async fn connect_retrying(endpoints: &[String], cancel: &CancellationToken) -> Option<Client> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(3));
    loop {
        match connect(endpoints).await {
            Ok(c) => return Some(c),
            Err(e) => warn!(error = %e, "etcd unavailable, retrying"),
        }
        if !backoff.wait(cancel).await {
            return None;
        }
    }
}

/// Keeps the latest published assignment in a watch channel. The epoch never
/// goes backwards, so a delayed read cannot undo a newer map.
pub fn spawn_assignment_watch(
    client: Client,
    layout: EtcdLayout,
    cancel: CancellationToken,
) -> (AssignmentRx, JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            match watch_once(client.clone(), &layout, &tx, &cancel).await {
                Ok(()) => return,
                Err(e) => warn!(error = %e, "assignment watch failed, retrying"),
            }
            if !backoff.wait(&cancel).await {
                return;
            }
        }
    });
    (rx, task)
}

fn publish(tx: &watch::Sender<Option<Arc<Assignment>>>, value: &[u8]) {
    match serde_json::from_slice::<Assignment>(value) {
        Ok(a) => {
            tx.send_if_modified(|cur| match cur {
                Some(c) if c.epoch >= a.epoch => false,
                _ => {
                    info!(epoch = a.epoch, "assignment updated");
                    *cur = Some(Arc::new(a));
                    true
                }
            });
        }
        Err(e) => warn!(error = %e, "ignoring undecodable assignment"),
    }
}

async fn watch_once(
    mut client: Client,
    layout: &EtcdLayout,
    tx: &watch::Sender<Option<Arc<Assignment>>>,
    cancel: &CancellationToken,
) -> Result<(), etcd_client::Error> {
    let key = layout.assignment_key();
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, client.get(key.as_str(), None))
        .await
        .map_err(|_| etcd_client::Error::WatchError("get timed out".into()))??;
    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    if let Some(kv) = resp.kvs().first() {
        publish(tx, kv.value());
    }
    let opts = WatchOptions::new().with_start_revision(rev + 1);
    let mut stream = client.watch(key.as_str(), Some(opts)).await?;
    loop {
        let msg = tokio::select! {
            m = stream.message() => m?,
            _ = cancel.cancelled() => return Ok(()),
        };
        let Some(msg) = msg else {
            return Err(etcd_client::Error::WatchError("watch stream ended".into()));
        };
        if msg.canceled() {
            return Err(etcd_client::Error::WatchError(
                "watch cancelled by etcd".into(),
            ));
        }
        for ev in msg.events() {
            if let (EventType::Put, Some(kv)) = (ev.event_type(), ev.kv()) {
                publish(tx, kv.value());
            }
        }
    }
}

/// Why [`keep_lease_alive`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEnd {
    /// etcd answered that the lease is gone (expired or revoked): whatever
    /// it held is gone too.
    Lost,
    /// etcd did not answer. The lease may still be alive — a whole etcd
    /// cluster that restarts grants every lease a fresh TTL — so the caller
    /// retries on the same lease and learns the truth when etcd is back.
    Unreachable,
    /// `stop` fired; the lease is still alive (revoke it to hand over at once).
    Stopped,
}

/// Refreshes `lease` every third of its TTL until etcd says it is gone,
/// stops answering (a refresh not answered within two periods), or `stop`;
/// `refreshed` runs after each refresh etcd confirmed.
pub async fn keep_lease_alive(
    client: &mut Client,
    lease: i64,
    ttl: Duration,
    stop: &CancellationToken,
    mut refreshed: impl FnMut(),
) -> LeaseEnd {
    let every = (ttl / 3).max(Duration::from_millis(100));
    let opened = tokio::time::timeout(every * 2, client.lease_keep_alive(lease)).await;
    let Ok(Ok((mut keeper, mut stream))) = opened else {
        // etcd-client reports a lease etcd no longer has ("lease not found",
        // as after a stall longer than the TTL) as an error like any other:
        // only a direct question tells a lost lease from an absent etcd.
        return lease_state(client, lease, every * 2).await;
    };
    loop {
        if keeper.keep_alive().await.is_err() {
            return LeaseEnd::Unreachable;
        }
        match tokio::time::timeout(every * 2, stream.message()).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => refreshed(),
            Ok(Ok(Some(_))) => return LeaseEnd::Lost,
            _ => return LeaseEnd::Unreachable,
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return LeaseEnd::Stopped,
        }
    }
}

/// Asks etcd whether `lease` still exists: `Lost` when etcd says it does not
/// (TTL -1, or 0 as it expires), `Unreachable` when etcd does not answer
/// within `within` or the lease is alive (the caller then retries on it).
pub async fn lease_state(client: &mut Client, lease: i64, within: Duration) -> LeaseEnd {
    match tokio::time::timeout(within, client.lease_time_to_live(lease, None)).await {
        Ok(Ok(r)) if r.ttl() <= 0 => LeaseEnd::Lost,
        _ => LeaseEnd::Unreachable,
    }
}

/// The TTL etcd's lease API takes: whole seconds, at least one.
pub fn ttl_secs(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1)
}
