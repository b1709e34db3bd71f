//! A route lookup that reports its server unreachable waits for the map to
//! move, as long as the server's lease says it may be gone (`await_move`).

use crate::coordinator::{register_at, setup, wait_assignment, Member, TTL};
use harness::start_coordinator;
use harness::Infra;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A reported server that accepts but never answers its check, while its
/// lease is renewed: the lookup waits no longer than that lease could last
/// unrenewed (TTL + 1 s), not the 20 s it asked for, and gets the same
/// server back — it was slow, not gone.
pub async fn a_slow_but_leased_server_holds_a_lookup_no_longer_than_its_lease(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let (layout, cfg, mut etcd) = setup(&infra, "slowcheck").await?;
    let coord = start_coordinator("coord", cfg)?;
    let base = coord.url();
    // The kernel accepts for it; nothing ever reads or answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let host = silent.local_addr()?.to_string();
    let _s1 = register_at(&mut etcd, &layout, "s1", &host).await?;
    wait_assignment(&base, Duration::from_secs(20), |a| a.servers.len() == 1).await?;
    let t = Instant::now();
    let url = format!("{base}/v1/route?user_id=alice&unreachable=s1&wait_ms=20000");
    let body: serde_json::Value = reqwest::get(url).await?.json().await?;
    let waited = t.elapsed();
    anyhow::ensure!(body["server_id"] == "s1", "{body}");
    let page = harness::scrape(&base).await.unwrap_or_default();
    let unresponsive = harness::metric_value(
        &page,
        "switchboard_coordinator_probes_total{verdict=\"unresponsive\"}",
    );
    anyhow::ensure!(
        unresponsive.is_some_and(|n| n >= 1.0),
        "the check did not find s1 unresponsive: {unresponsive:?}"
    );
    let bound = Duration::from_secs(TTL as u64 + 3);
    anyhow::ensure!(
        waited >= Duration::from_secs(1) && waited < bound,
        "the lookup answered after {waited:?} (lease TTL {TTL} s; asked to wait 20 s)"
    );
    eprintln!("    a silent but leased server: the lookup answered after {waited:?}");
    drop(silent);
    coord.stop().await;
    Ok(())
}

/// A reported server that accepts but never answers (a frozen process: its
/// kernel still accepts) and whose lease lapses: the lookup waits for the
/// map that moves its partitions and answers with the new owner. The
/// leader's debounce is made long here so the move comes well after the
/// lease's end: answering at the lease's end sent the device back to the
/// silent server (a frozen server's devices waited 70 s in the storm bench).
pub async fn a_lookup_waits_past_a_lapsed_lease_for_the_move(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let c = silent_and_live(&infra, "lapsed", Some(Duration::from_secs(3)), 1).await?;
    let (base, user) = (c.base.as_str(), &c.on_s1[0]);
    // s1 freezes: its lease is no longer renewed.
    c.s1.keeper.abort();
    let t = Instant::now();
    let url = format!("{base}/v1/route?user_id={user}&unreachable=s1&wait_ms=20000");
    let body: serde_json::Value = reqwest::get(url).await?.json().await?;
    let waited = t.elapsed();
    anyhow::ensure!(
        body["server_id"] == "s2",
        "after {waited:?} the lookup named {} (s1 silent, its lease lapsed)",
        body["server_id"]
    );
    anyhow::ensure!(
        waited < Duration::from_secs(TTL as u64 + 8),
        "the lookup answered after {waited:?}"
    );
    eprintln!("    a silent server whose lease lapsed: the new owner after {waited:?}");
    drop(c.silent);
    c.coord.stop().await;
    Ok(())
}

/// Lookups reporting a silent server keep coming while its lease lapses
/// (one every 100 ms, from the moment it stops renewing until the map
/// moves): each must wait for the move and name the new owner. A lookup
/// whose check saw the lease's last second used to give up at that
/// second's end while etcd had not yet removed the expired lease, and sent
/// its device back to the silent server (59 of 1,142 devices in the 3,000
/// storm's freeze, each then waiting out a connect timeout and a backoff).
pub async fn lookups_during_a_lease_s_last_second_wait_for_the_move(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let c = silent_and_live(&infra, "lastsec", None, 8).await?;
    let (base, users) = (c.base.as_str(), &c.on_s1);
    c.s1.keeper.abort();
    let mut lookups = tokio::task::JoinSet::new();
    let until = Instant::now() + Duration::from_secs(TTL as u64 + 2);
    let mut n = 0;
    while Instant::now() < until {
        let user = users[n % users.len()].clone();
        let url = format!("{base}/v1/route?user_id={user}&unreachable=s1&wait_ms=20000");
        lookups.spawn(async move {
            let body: serde_json::Value = reqwest::get(url).await?.json().await?;
            anyhow::Ok(body["server_id"].as_str().unwrap_or_default().to_owned())
        });
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut named: std::collections::BTreeMap<String, usize> = Default::default();
    while let Some(r) = lookups.join_next().await {
        *named.entry(r??).or_default() += 1;
    }
    anyhow::ensure!(
        named.keys().all(|s| s == "s2"),
        "{n} lookups while s1's lease lapsed named {named:?} (only s2 owns its partitions after the move)"
    );
    eprintln!("    {n} lookups while a silent server's lease lapsed: {named:?}");
    drop(c.silent);
    c.coord.stop().await;
    Ok(())
}

/// A coordinator over two servers — s1's URLs lead to a listener that
/// accepts and never answers (a frozen process: its kernel still accepts),
/// s2 elsewhere — once both own partitions; with users whose partition s1
/// owns (up to `n`).
struct SilentAndLive {
    coord: harness::ServiceHandle,
    base: String,
    silent: tokio::net::TcpListener,
    s1: Member,
    _s2: Member,
    on_s1: Vec<String>,
}

async fn silent_and_live(
    infra: &Infra,
    name: &str,
    debounce: Option<Duration>,
    n: usize,
) -> anyhow::Result<SilentAndLive> {
    let (layout, mut cfg, mut etcd) = setup(infra, name).await?;
    if let Some(d) = debounce {
        cfg.debounce = d;
    }
    let coord = start_coordinator("coord", cfg)?;
    let base = coord.url();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let host = silent.local_addr()?.to_string();
    let s1 = register_at(&mut etcd, &layout, "s1", &host).await?;
    let _s2 = register_at(&mut etcd, &layout, "s2", "s2.test").await?;
    let a = wait_assignment(&base, Duration::from_secs(20), |a| {
        a.servers.len() == 2 && a.owners.iter().all(Option::is_some)
    })
    .await?;
    let on_s1: Vec<String> = (0..1000)
        .map(|i| format!("u{i}"))
        .filter(|u| {
            let p = protocol::partition_for(u, a.partitions);
            a.owner(p).is_some_and(|o| o.server_id.as_str() == "s1")
        })
        .take(n)
        .collect();
    anyhow::ensure!(!on_s1.is_empty(), "no user on s1");
    Ok(SilentAndLive {
        coord,
        base,
        silent,
        s1,
        _s2,
        on_s1,
    })
}
