//! etcd stalls — a slow fsync, a GC pause, a stopped VM — on an etcd container
//! of the test's own, frozen with `docker pause` while DMs flow. etcd keeps
//! counting lease time while frozen, so a stall longer than the lease TTL
//! expires every registration and the election lease at the moment it thaws
//! (unlike a clean stop, after which etcd grants every lease a fresh TTL).

use crate::outages::{dms, report, watch, Watched};
use harness::stack::Backing;
use harness::traffic::{drive, expect_delivered, expect_persisted, Outcomes};
use harness::{Infra, Receivers, Stack};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The stack's lease TTL (servers and coordinator).
const TTL: Duration = Duration::from_secs(2);
/// The stated bound (docs/operations.md, "etcd stalls"): once etcd answers
/// again, every partition is served by a registered, ready server within
/// two lease TTLs.
const RECOVERY_BOUND: Duration = Duration::from_secs(4);
const STALL_STARTS: Duration = Duration::from_secs(3);
const TRAFFIC: Duration = Duration::from_secs(16);

pub async fn etcd_stall_longer_than_the_lease_recovers_by_itself(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let run = stall_under_traffic(&infra, "stall-long", 2 * TTL).await?;
    let Run { o, during, .. } = &run;
    anyhow::ensure!(
        run.recovery.took <= RECOVERY_BOUND,
        "partitions served again only {:?} after etcd answered (bound {RECOVERY_BOUND:?})",
        run.recovery.took
    );
    anyhow::ensure!(
        run.leases_after.iter().all(|(s, l)| run.leases_before.get(s) != Some(l)),
        "a stall of two TTLs must expire every lease, and each server must register anew: before {:?}, after {:?}",
        run.leases_before,
        run.leases_after
    );
    anyhow::ensure!(
        during.routes_failed == 0 && during.not_ready == 0,
        "during the stall the map stands and everyone serves on it: {during:?}"
    );
    // The new leader waits for the servers of its inherited map instead of
    // publishing a map without them (coordinator/src/rejoin.rs).
    anyhow::ensure!(
        run.moved == 0,
        "{} partitions moved although every server registered again",
        run.moved
    );
    report("etcd stalled 2 TTL", o, o.acked.len(), o.acked.len());
    Ok(())
}

pub async fn etcd_stall_shorter_than_the_lease_changes_nothing(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    // Each lease is refreshed every third of its TTL, so at least two thirds
    // of it are left when a stall begins: a stall of 0.6 s expires none.
    let run = stall_under_traffic(&infra, "stall-short", Duration::from_millis(600)).await?;
    anyhow::ensure!(
        run.leases_after == run.leases_before,
        "a stall shorter than the lease replaced a lease: {:?} → {:?}",
        run.leases_before,
        run.leases_after
    );
    anyhow::ensure!(
        run.epochs == (run.epochs.0, run.epochs.0),
        "a stall shorter than the lease published a new map: epochs {:?}",
        run.epochs
    );
    anyhow::ensure!(
        run.during.routes_failed == 0 && run.during.not_ready == 0 && run.recovery.unready == 0,
        "nobody may look unready: {:?}, {} unready samples after",
        run.during,
        run.recovery.unready
    );
    anyhow::ensure!(
        run.sessions.iter().all(|s| *s == (1, 0)),
        "sessions were closed (sessions, closes per device): {:?}",
        run.sessions
    );
    report(
        "etcd stalled 0.6 s",
        &run.o,
        run.o.acked.len(),
        run.o.acked.len(),
    );
    Ok(())
}

/// What one stall under traffic showed; the checks every stall must pass
/// (sends acknowledged, deliveries during the stall, nothing lost or
/// duplicated — `expect_delivered` — nothing ready while serving nothing) are made before it returns.
struct Run {
    o: Outcomes,
    during: Watched,
    recovery: Recovery,
    leases_before: BTreeMap<String, i64>,
    leases_after: BTreeMap<String, i64>,
    /// Assignment epoch before the stall and after recovery.
    epochs: (u64, u64),
    /// Partitions whose owner differs between those two maps.
    moved: usize,
    /// (sessions, closes) per receiving device.
    sessions: Vec<(usize, usize)>,
}

async fn stall_under_traffic(infra: &Infra, name: &str, stall: Duration) -> anyhow::Result<Run> {
    let (etcd, url) = infra.private_etcd(name).await?;
    let stack = Stack::start_on(
        infra,
        Backing::shared(infra).etcd(&url),
        name,
        2,
        true,
        |_| {},
    )
    .await?;
    let users: Vec<String> = (0..6).map(|i| format!("{name}-u{i}")).collect();
    let receivers = Receivers::start(&stack.coordinator.url(), &users).await?;
    let before = stack.assignment().await?;
    let leases_before = leases(&url, &stack.prefix).await?;
    let traffic = drive(
        &stack,
        4,
        Duration::from_millis(100),
        Instant::now() + TRAFFIC,
        dms("s", &users),
    );
    let fault = async {
        tokio::time::sleep(STALL_STARTS).await;
        etcd.pause().await?;
        let at_pause = delivered(&receivers);
        let during = watch(&stack, &users[0], stall).await;
        let delivered_in_stall = delivered(&receivers) - at_pause;
        etcd.unpause().await?;
        let leases = Leases {
            url: &url,
            prefix: &stack.prefix,
            before: &leases_before,
            renewed: stall >= 2 * TTL,
        };
        let recovery = recover(&stack, leases).await?;
        anyhow::Ok((during, delivered_in_stall, recovery))
    };
    let (o, fault) = tokio::join!(traffic, fault);
    let (during, delivered_in_stall, recovery) = fault?;
    eprintln!(
        "    stall {stall:?}: during it {during:?}, {delivered_in_stall} deliveries; served again {:?} after the thaw, {} samples not ready",
        recovery.took, recovery.unready
    );
    anyhow::ensure!(
        o.unavailable == 0 && o.other.is_empty(),
        "sends need no etcd, yet {} were unavailable and {:?} failed",
        o.unavailable,
        o.other
    );
    anyhow::ensure!(
        delivered_in_stall > 0,
        "devices connected before the stall received nothing during it"
    );
    anyhow::ensure!(
        recovery.ready_but_idle == 0,
        "a server stayed ready while it served nothing ({} samples)",
        recovery.ready_but_idle
    );
    expect_delivered(&receivers, &o.acked, |g| vec![g]).await?;
    expect_persisted(&stack, &o.acked).await?;
    let mut sessions = Vec::new();
    for inbox in &receivers.inboxes {
        let r = inbox.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        sessions.push((r.sessions, r.close_codes.len()));
    }
    let after = stack.assignment().await?;
    eprintln!(
        "    map: epoch {} → {}, {} partitions moved; sessions (sessions, closes) {sessions:?}",
        before.epoch,
        after.epoch,
        before.moved_to(&after).len()
    );
    let leases_after = leases(&url, &stack.prefix).await?;
    receivers.stop().await;
    stack.stop().await;
    Ok(Run {
        o,
        during,
        recovery,
        leases_before,
        leases_after,
        epochs: (before.epoch, after.epoch),
        moved: before.moved_to(&after).len(),
        sessions,
    })
}

fn delivered(receivers: &Receivers) -> usize {
    receivers
        .inboxes
        .iter()
        .map(|i| i.lock().map(|r| r.chat.len()).unwrap_or(0))
        .sum()
}

/// The lease each registered server's key is attached to.
async fn leases(url: &str, prefix: &str) -> anyhow::Result<BTreeMap<String, i64>> {
    let mut etcd = service::etcd::connect(&[url.to_owned()]).await?;
    let servers = protocol::EtcdLayout::new(prefix).servers_prefix();
    let opts = etcd_client::GetOptions::new().with_prefix();
    let resp = etcd.get(servers.as_str(), Some(opts)).await?;
    Ok(resp
        .kvs()
        .iter()
        .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.lease()))
        .collect())
}

#[derive(Debug, Default)]
struct Recovery {
    took: Duration,
    /// Samples in which a server answered `/readyz` 503.
    unready: usize,
    /// Samples in which a server was ready with no partition, twice in a row
    /// (one alone can fall between its registration and its first gain).
    ready_but_idle: usize,
}

/// The registrations recovery waits for: every server under a new lease
/// (`renewed`, after a stall that expired them) or under the same one.
struct Leases<'a> {
    url: &'a str,
    prefix: &'a str,
    before: &'a BTreeMap<String, i64>,
    renewed: bool,
}

impl Leases<'_> {
    async fn as_expected(&self) -> bool {
        let Ok(now) = leases(self.url, self.prefix).await else {
            return false;
        };
        now.len() == self.before.len()
            && now
                .iter()
                .all(|(k, l)| (self.before.get(k) == Some(l)) != self.renewed)
    }
}

/// Polls every 100 ms until both servers are registered as `leases` expects,
/// ready, and together serve every partition of a map that names an owner
/// for each.
async fn recover(stack: &Stack, leases: Leases<'_>) -> anyhow::Result<Recovery> {
    let started = Instant::now();
    let mut r = Recovery::default();
    let mut idle_before = vec![false; stack.servers.len()];
    while started.elapsed() < Duration::from_secs(60) {
        let mut served = 0;
        let mut all_ready = true;
        for (i, s) in stack.servers.iter().enumerate() {
            let (ready, partitions) = readiness(&s.url()).await;
            let idle = ready && partitions == 0;
            r.ready_but_idle += usize::from(idle && idle_before[i]);
            idle_before[i] = idle;
            r.unready += usize::from(!ready);
            all_ready &= ready && partitions > 0;
            served += partitions;
        }
        let owned = stack.assignment().await.is_ok_and(|a| {
            a.servers.len() == stack.servers.len() && a.owners.iter().all(Option::is_some)
        });
        if all_ready && owned && served == u64::from(stack.partitions) && leases.as_expected().await
        {
            r.took = started.elapsed();
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the servers did not serve every partition again within 60 s: {r:?}")
}

/// `/readyz` of a server: ready, and how many partitions it said it serves.
async fn readiness(base: &str) -> (bool, u64) {
    let Ok(resp) = reqwest::get(format!("{base}/readyz")).await else {
        return (false, 0);
    };
    if !resp.status().is_success() {
        return (false, 0);
    }
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    (true, body["partitions"].as_u64().unwrap_or(0))
}

/// The root of the stall bug, without a stack: after a stall longer than the
/// lease, the keep-alive must say `Lost` (register again), not `Unreachable`
/// (keep waiting on a lease etcd no longer has) — and during the stall it
/// must say `Unreachable`, not `Lost`.
pub async fn keep_alive_tells_a_lost_lease_from_a_stalled_etcd(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    use service::etcd::{keep_lease_alive, LeaseEnd};
    let (etcd, url) = infra.private_etcd("stall-lease").await?;
    let mut client = service::etcd::connect(&[url]).await?;
    let ttl = Duration::from_secs(1);
    let lease = client.lease_grant(1, None).await?.id();
    let never = tokio_util::sync::CancellationToken::new();
    etcd.pause().await?;
    let paused = Instant::now();
    let during = keep_lease_alive(&mut client, lease, ttl, &never, || {}).await;
    anyhow::ensure!(
        during == LeaseEnd::Unreachable,
        "during the stall: {during:?}"
    );
    tokio::time::sleep((3 * ttl).saturating_sub(paused.elapsed())).await;
    etcd.unpause().await?;
    let thawed = Instant::now();
    let after = keep_lease_alive(&mut client, lease, ttl, &never, || {}).await;
    anyhow::ensure!(
        after == LeaseEnd::Lost,
        "after a stall of three TTLs: {after:?}"
    );
    eprintln!("    lease loss known {:?} after the thaw", thawed.elapsed());
    // A live lease is still kept alive: the check is not "always lost".
    let live = client.lease_grant(1, None).await?.id();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut refreshes = 0;
    let kept = tokio::time::timeout(Duration::from_secs(3), async {
        keep_lease_alive(&mut client, live, ttl, &stop, || {
            refreshes += 1;
            if refreshes == 3 {
                stop.cancel();
            }
        })
        .await
    })
    .await?;
    anyhow::ensure!(
        kept == LeaseEnd::Stopped && refreshes == 3,
        "a live lease: {kept:?} after {refreshes} refreshes"
    );
    Ok(())
}
