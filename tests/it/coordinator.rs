//! Coordinator against real etcd: membership, sticky assignment, failover,
//! fencing, long-poll and the route API.

use etcd_client::Client;
use harness::{coordinator_config, start_coordinator, wait_until, Infra};
use protocol::{Assignment, EtcdLayout, ServerId, ServerInfo};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

pub(crate) const TTL: i64 = 2;

/// A messaging server's membership, played by the test through a real lease.
pub(crate) struct Member {
    pub(crate) info: ServerInfo,
    pub(crate) lease: i64,
    pub(crate) keeper: JoinHandle<()>,
}

pub(crate) async fn register(
    etcd: &mut Client,
    layout: &EtcdLayout,
    id: &str,
) -> anyhow::Result<Member> {
    register_at(etcd, layout, id, &format!("{id}.test")).await
}

/// `register`, its URLs naming `host`.
pub(crate) async fn register_at(
    etcd: &mut Client,
    layout: &EtcdLayout,
    id: &str,
    host: &str,
) -> anyhow::Result<Member> {
    let lease = etcd.lease_grant(TTL, None).await?.id();
    let info = ServerInfo::at_host(ServerId::new(id)?, host);
    let opts = etcd_client::PutOptions::new().with_lease(lease);
    etcd.put(
        layout.server_key(&info.server_id),
        serde_json::to_vec(&info)?,
        Some(opts),
    )
    .await?;
    let (mut keeper, mut stream) = etcd.lease_keep_alive(lease).await?;
    let keeper = tokio::spawn(async move {
        loop {
            if keeper.keep_alive().await.is_err() || stream.message().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    Ok(Member {
        info,
        lease,
        keeper,
    })
}

async fn set_draining(etcd: &mut Client, layout: &EtcdLayout, m: &Member) -> anyhow::Result<()> {
    let info = ServerInfo {
        draining: true,
        ..m.info.clone()
    };
    let opts = etcd_client::PutOptions::new().with_lease(m.lease);
    etcd.put(
        layout.server_key(&info.server_id),
        serde_json::to_vec(&info)?,
        Some(opts),
    )
    .await?;
    Ok(())
}

async fn assignment(base: &str) -> anyhow::Result<Option<Assignment>> {
    let resp = reqwest::get(format!("{base}/v1/assignment")).await?;
    if !resp.status().is_success() {
        return Ok(None);
    }
    Ok(Some(resp.json().await?))
}

pub(crate) async fn wait_assignment(
    base: &str,
    within: Duration,
    pred: impl Fn(&Assignment) -> bool,
) -> anyhow::Result<Assignment> {
    let found = std::sync::Mutex::new(None);
    wait_until("the assignment condition holds", within, || async {
        let hit = assignment(base).await.ok().flatten().filter(|a| pred(a));
        let ok = hit.is_some();
        if let Ok(mut f) = found.lock() {
            *f = hit;
        }
        ok
    })
    .await?;
    found
        .into_inner()
        .ok()
        .flatten()
        .ok_or_else(|| anyhow::anyhow!("assignment condition not met within {within:?}"))
}

fn balanced(a: &Assignment) -> bool {
    let loads = a.loads();
    let (min, max) = (
        loads.values().min().copied().unwrap_or(0),
        loads.values().max().copied().unwrap_or(0),
    );
    a.owners.iter().all(Option::is_some) && max - min <= 1
}

fn owners_of(a: &Assignment, id: &str) -> Vec<u32> {
    ServerId::new(id).map_or_else(|_| Vec::new(), |id| a.partitions_of(&id))
}

fn owner_name(owner: &Option<ServerId>) -> Option<&str> {
    owner.as_ref().map(ServerId::as_str)
}

pub(crate) async fn setup(
    infra: &Infra,
    name: &str,
) -> anyhow::Result<(EtcdLayout, coordinator::Config, Client)> {
    let prefix = format!("/{}", infra.unique(name));
    let cfg = coordinator_config(infra, &prefix, &infra.unique(name), 12);
    let etcd = service::etcd::connect(&infra.etcd_endpoints()).await?;
    Ok((EtcdLayout::new(&prefix), cfg, etcd))
}

pub async fn three_servers_join_drain_and_crash(infra: Arc<Infra>) -> anyhow::Result<()> {
    let (layout, cfg, mut etcd) = setup(&infra, "join").await?;
    let coord = start_coordinator("coord", cfg)?;
    let base = coord.url();
    let s1 = register(&mut etcd, &layout, "s1").await?;
    let s2 = register(&mut etcd, &layout, "s2").await?;
    let s3 = register(&mut etcd, &layout, "s3").await?;
    let a = wait_assignment(&base, Duration::from_secs(20), |a| {
        a.servers.len() == 3 && balanced(a)
    })
    .await?;
    anyhow::ensure!(a.loads().values().all(|n| *n == 4), "loads {:?}", a.loads());

    let t = Instant::now();
    set_draining(&mut etcd, &layout, &s2).await?;
    let b = wait_assignment(&base, Duration::from_secs(5), |b| {
        b.epoch > a.epoch && owners_of(b, "s2").is_empty()
    })
    .await?;
    let drain_time = t.elapsed();
    anyhow::ensure!(
        drain_time < Duration::from_secs(1),
        "drain took {drain_time:?}"
    );
    for p in a.moved_to(&b) {
        anyhow::ensure!(
            owner_name(&a.owners[p as usize]) == Some("s2"),
            "partition {p} moved but was not s2's"
        );
    }
    anyhow::ensure!(b.owners.iter().all(Option::is_some));

    let t = Instant::now();
    s3.keeper.abort(); // crash: the lease is not revoked, it expires
    let c = wait_assignment(&base, Duration::from_secs(10), |c| {
        !c.servers.contains_key("s3")
    })
    .await?;
    let crash_time = t.elapsed();
    anyhow::ensure!(
        crash_time <= Duration::from_secs(TTL as u64 + 1),
        "crash noticed after {crash_time:?}"
    );
    for p in b.moved_to(&c) {
        anyhow::ensure!(
            owner_name(&b.owners[p as usize]) == Some("s3"),
            "partition {p} moved but was not s3's"
        );
    }
    anyhow::ensure!(
        c.owners.iter().all(|o| owner_name(o) == Some("s1")),
        "s1 should own all: {:?}",
        c.owners
    );
    eprintln!("    drain re-published in {drain_time:?}, crash noticed in {crash_time:?}");
    drop((s1, s2));
    coord.stop().await;
    Ok(())
}

async fn is_leader(base: &str) -> bool {
    harness::sample(base, "switchboard_coordinator_is_leader").await == Some(1.0)
}

pub async fn leader_failover_keeps_routes_and_fences_stale_writes(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let (layout, cfg, mut etcd) = setup(&infra, "failover").await?;
    let a = start_coordinator("coord-a", cfg.clone())?;
    let b = start_coordinator("coord-b", cfg)?;
    let _s1 = register(&mut etcd, &layout, "s1").await?;
    let _s2 = register(&mut etcd, &layout, "s2").await?;
    for c in [&a, &b] {
        wait_assignment(&c.url(), Duration::from_secs(20), |x| x.servers.len() == 2).await?;
    }
    let a_leads = std::sync::atomic::AtomicBool::new(false);
    wait_until("a single leader", Duration::from_secs(10), || async {
        let (la, lb) = (is_leader(&a.url()).await, is_leader(&b.url()).await);
        a_leads.store(la, std::sync::atomic::Ordering::Relaxed);
        la != lb
    })
    .await?;
    let (leader, survivor) = if a_leads.into_inner() { (a, b) } else { (b, a) };
    let before = assignment(&survivor.url())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no map"))?;
    let route_url = format!("{}/v1/route?user_id=alice", survivor.url());
    leader.kill().await;
    let _s3 = register(&mut etcd, &layout, "s3").await?;

    let deadline = Instant::now() + Duration::from_secs(15);
    let mut route_failures = 0;
    let mut published = None;
    while Instant::now() < deadline && published.is_none() {
        if !reqwest::get(&route_url)
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false)
        {
            route_failures += 1;
        }
        published = assignment(&survivor.url())
            .await?
            .filter(|x| x.epoch > before.epoch && x.servers.len() == 3);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::ensure!(
        published.is_some(),
        "the survivor never published the new membership"
    );
    anyhow::ensure!(
        route_failures == 0,
        "/v1/route failed {route_failures} times during failover"
    );
    anyhow::ensure!(
        is_leader(&survivor.url()).await,
        "survivor does not report leadership"
    );
    survivor.stop().await;
    stale_write_is_fenced(&infra, &mut etcd).await
}

/// A leader whose election lease is gone cannot overwrite the assignment.
async fn stale_write_is_fenced(infra: &Infra, etcd: &mut Client) -> anyhow::Result<()> {
    let layout = EtcdLayout::new(&format!("/{}", infra.unique("fence")));
    let lease = etcd.lease_grant(TTL, None).await?.id();
    let key = etcd
        .campaign(layout.election(), "old-leader", lease)
        .await?
        .leader()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no leader key"))?;
    let mut first = Assignment::empty(4);
    first.epoch = 1;
    coordinator::leader::write_fenced(etcd, &layout, &key, &first).await?;
    etcd.lease_revoke(lease).await?;
    let mut stale = Assignment::empty(4);
    stale.epoch = 2;
    let res = coordinator::leader::write_fenced(etcd, &layout, &key, &stale).await;
    anyhow::ensure!(
        matches!(res, Err(coordinator::leader::LeaderError::Deposed)),
        "stale write was not rejected: {res:?}"
    );
    let stored = coordinator::leader::read_assignment(etcd, &layout).await?;
    anyhow::ensure!(
        stored.map(|a| a.epoch) == Some(1),
        "stale write changed the stored map"
    );
    Ok(())
}

/// Every registration expired at once (as after an etcd stall longer than
/// the TTL) and a new leader takes over: it keeps the servers of the map it
/// inherited for one TTL, so one that registers again keeps its partitions
/// without a map in between that lacks it, and one that does not is removed
/// when the grace ends — two epochs would mean an empty map was published.
pub async fn new_leader_waits_a_ttl_for_the_servers_of_its_map(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let (layout, cfg, mut etcd) = setup(&infra, "rejoin").await?;
    let first = start_coordinator("coord-a", cfg.clone())?;
    let s1 = register(&mut etcd, &layout, "s1").await?;
    let s2 = register(&mut etcd, &layout, "s2").await?;
    let a = wait_assignment(&first.url(), Duration::from_secs(20), |a| {
        a.servers.len() == 2 && balanced(a)
    })
    .await?;
    first.stop().await;
    for m in [&s1, &s2] {
        m.keeper.abort();
        etcd.lease_revoke(m.lease).await?;
    }
    let second = start_coordinator("coord-b", cfg)?;
    let base = second.url();
    wait_until("the new leader leads", Duration::from_secs(20), || {
        is_leader(&base)
    })
    .await?;
    let led = Instant::now();
    let held = assignment(&base)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no map"))?;
    anyhow::ensure!(
        held.epoch == a.epoch && held.servers.len() == 2,
        "the new leader published a map without the unregistered servers at once: {held:?}"
    );
    // The leader has read the registrations and holds both servers.
    wait_until(
        "the leader awaits s1 and s2",
        Duration::from_secs(5),
        || async { harness::metric(&base, "switchboard_coordinator_awaited_servers").await == 2.0 },
    )
    .await?;
    let _s1 = register(&mut etcd, &layout, "s1").await?;
    let b = wait_assignment(&base, Duration::from_secs(10), |b| {
        !b.servers.contains_key("s2")
    })
    .await?;
    let dropped_after = led.elapsed();
    anyhow::ensure!(
        b.epoch == a.epoch + 1,
        "one new epoch expected (s2 dropped), got {} → {}",
        a.epoch,
        b.epoch
    );
    anyhow::ensure!(
        owners_of(&a, "s1")
            .iter()
            .all(|p| owners_of(&b, "s1").contains(p))
            && b.owners.iter().all(|o| owner_name(o) == Some("s1")),
        "s1 must keep its partitions and take s2's: {:?} → {:?}",
        a.owners,
        b.owners
    );
    anyhow::ensure!(
        dropped_after <= Duration::from_secs(TTL as u64 + 2),
        "s2 dropped only {dropped_after:?} after the new leader took over"
    );
    eprintln!("    inherited map kept; s2 dropped {dropped_after:?} after the new leader took over, in one epoch");
    second.stop().await;
    Ok(())
}

pub async fn long_poll_returns_on_change_and_times_out(infra: Arc<Infra>) -> anyhow::Result<()> {
    let (layout, cfg, mut etcd) = setup(&infra, "poll").await?;
    let coord = start_coordinator("coord", cfg)?;
    let base = coord.url();
    let _s1 = register(&mut etcd, &layout, "s1").await?;
    let a = wait_assignment(&base, Duration::from_secs(20), |a| a.servers.len() == 1).await?;

    let t = Instant::now();
    let r = reqwest::get(format!(
        "{base}/v1/assignment?after_epoch={}&wait_ms=300",
        a.epoch
    ))
    .await?;
    let same: Assignment = r.json().await?;
    let waited = t.elapsed();
    anyhow::ensure!(same.epoch == a.epoch, "epoch changed unexpectedly");
    anyhow::ensure!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "timed out after {waited:?}"
    );

    let url = format!("{base}/v1/assignment?after_epoch={}&wait_ms=20000", a.epoch);
    let poll = tokio::spawn(async move { (reqwest::get(url).await, Instant::now()) });
    // Let the long poll reach the server before the change it waits for.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _s2 = register(&mut etcd, &layout, "s2").await?;
    let changed_at = Instant::now();
    let (resp, answered_at) = poll.await?;
    let next: Assignment = resp?.json().await?;
    anyhow::ensure!(next.epoch > a.epoch, "long-poll returned an old epoch");
    let lag = answered_at.duration_since(changed_at);
    anyhow::ensure!(
        lag < Duration::from_secs(2),
        "long-poll answered {lag:?} after the change"
    );
    coord.stop().await;
    Ok(())
}

pub async fn route_api_validates_and_answers(infra: Arc<Infra>) -> anyhow::Result<()> {
    let (layout, cfg, mut etcd) = setup(&infra, "route").await?;
    let coord = start_coordinator("coord", cfg)?;
    let base = coord.url();
    wait_until(
        "the coordinator publishes a map",
        Duration::from_secs(20),
        || async {
            reqwest::get(format!("{base}/readyz"))
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        },
    )
    .await?;
    let r = reqwest::get(format!("{base}/v1/route?user_id=alice")).await?;
    anyhow::ensure!(r.status() == 503, "route without servers: {}", r.status());
    let body: serde_json::Value = r.json().await?;
    anyhow::ensure!(body["code"] == "unavailable", "{body}");

    for bad in ["user_id=bad%20id", "user_id=", "nothing=1"] {
        let r = reqwest::get(format!("{base}/v1/route?{bad}")).await?;
        anyhow::ensure!(r.status() == 400, "{bad}: {}", r.status());
        let body: serde_json::Value = r.json().await?;
        anyhow::ensure!(
            body["code"] == "invalid_field" && body["message"].is_string(),
            "{bad}: {body}"
        );
    }
    let _s1 = register(&mut etcd, &layout, "s1").await?;
    wait_assignment(&base, Duration::from_secs(20), |a| a.servers.len() == 1).await?;
    let body: serde_json::Value = reqwest::get(format!("{base}/v1/route?user_id=alice"))
        .await?
        .json()
        .await?;
    let expected = protocol::partition_for("alice", 12);
    anyhow::ensure!(
        body["partition"] == expected && body["server_id"] == "s1",
        "{body}"
    );
    anyhow::ensure!(
        body["ws_url"] == "ws://s1.test/v1/ws" && body["epoch"].as_u64().is_some(),
        "{body}"
    );
    let metrics = harness::scrape(&base).await.unwrap_or_default();
    anyhow::ensure!(
        metrics.contains("switchboard_coordinator_epoch"),
        "metrics: {metrics}"
    );
    let r = reqwest::get(format!("{base}/nope")).await?;
    anyhow::ensure!(r.status() == 404);
    coord.stop().await;
    Ok(())
}
