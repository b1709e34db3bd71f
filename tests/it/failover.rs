//! Failover in seconds: a server process dies (its host lives on, so its
//! port refuses connections); its devices report it on their next route
//! lookup, the coordinator finds the port closed and revokes the lease, and
//! every device is resumed on the new owners long before the lease would
//! have run out. Nothing acknowledged is lost.

use crate::client::config;
use harness::{metric_value, scrape, Infra, Stack};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_client::{Client, Event, Kind, Target};

/// Far longer than a failover may take: only a reported death beats it.
const LEASE_TTL: Duration = Duration::from_secs(20);
/// Every device of the dead server must be back within this.
const BACK_WITHIN: Duration = Duration::from_secs(6);
const DEVICES: usize = 24;

pub async fn a_crashed_server_is_replaced_long_before_its_lease_ends(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let mut stack = Stack::start_with(&infra, "failover", 3, false, |c| {
        c.lease_ttl = LEASE_TTL;
    })
    .await?;
    let victim = stack.servers[1].name.clone();
    let a = stack.assignment().await?;
    let on = |u: &str| {
        a.owner(protocol::partition_for(u, a.partitions))
            .map(|o| o.server_id.to_string())
    };
    let users: Vec<String> = (0..2000)
        .map(|i| format!("fo-{i}"))
        .filter(|u| on(u).as_deref() == Some(victim.as_str()))
        .take(DEVICES)
        .collect();
    let sender_id = (0..2000)
        .map(|i| format!("fo-sender-{i}"))
        .find(|u| on(u).is_some_and(|s| s != victim))
        .ok_or_else(|| anyhow::anyhow!("no sender off the victim"))?;
    anyhow::ensure!(
        users.len() == DEVICES,
        "only {} users on the victim",
        users.len()
    );
    let (mut clients, mut got) = (Vec::new(), Counts::new());
    for u in &users {
        let mut c = Client::start(config(&stack, u, "phone"));
        connected(&mut c, &mut got, |_| true).await?;
        clients.push(c);
    }
    let mut sender = Client::start(config(&stack, &sender_id, "desk"));
    connected(&mut sender, &mut Counts::new(), |_| true).await?;
    let before = send_each(&mut sender, &users, "before").await?;

    let t0 = Instant::now();
    stack
        .take_server(&victim)
        .ok_or_else(|| anyhow::anyhow!("no victim"))?
        .kill()
        .await;
    let mut back = Vec::new();
    for c in &mut clients {
        let left = BACK_WITHIN.saturating_sub(t0.elapsed());
        tokio::time::timeout(left, connected(c, &mut got, |s| s != victim))
            .await
            .map_err(|_| anyhow::anyhow!("a device was not back within {BACK_WITHIN:?} of the crash (lease TTL {LEASE_TTL:?}); back so far: {back:?}"))??;
        back.push(t0.elapsed().as_millis());
    }
    let page = scrape(&stack.coordinator.url()).await.unwrap_or_default();
    let declared = metric_value(&page, "switchboard_coordinator_declared_dead_total");
    anyhow::ensure!(
        declared == Some(1.0),
        "declared dead: {declared:?}, want 1 (one revoke for many reports)"
    );
    let after = send_each(&mut sender, &users, "after").await?;
    let want: BTreeSet<_> = before.into_iter().chain(after).collect();
    collect(&mut clients, &mut got, want.len()).await;
    let dups: usize = got.values().filter(|n| **n > 1).count();
    let missing = want.iter().filter(|m| !got.contains_key(*m)).count();
    anyhow::ensure!(
        missing == 0 && dups == 0,
        "{missing} of {} acknowledged messages missing, {dups} delivered twice",
        want.len()
    );
    println!("failover: {DEVICES} devices back in {back:?} ms after the crash");
    sender.close().await;
    for c in clients {
        c.close().await;
    }
    stack.stop().await;
    Ok(())
}

type Counts = BTreeMap<protocol::MsgId, usize>;

/// Waits for a `Connected` on a server `ok` accepts, counting the messages
/// handed to the app meanwhile into `got`.
async fn connected(
    c: &mut Client,
    got: &mut Counts,
    ok: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(30), c.next_event()).await?;
        match e {
            Some(Event::Connected { server_id, .. }) if ok(server_id.as_str()) => return Ok(()),
            Some(Event::Message(m)) => *got.entry(m.msg_id).or_default() += 1,
            Some(_) => {}
            None => anyhow::bail!("the client stopped"),
        }
    }
}

async fn send_each(
    sender: &mut Client,
    users: &[String],
    tag: &str,
) -> anyhow::Result<Vec<protocol::MsgId>> {
    let mut ids = Vec::new();
    for u in users {
        let to = Target::User(protocol::UserId::new(u.as_str())?);
        let body = serde_json::json!({ "tag": tag });
        let id = tokio::time::timeout(Duration::from_secs(20), sender.send(to, body, Kind::Chat))
            .await??;
        ids.push(id);
    }
    Ok(ids)
}

/// Every message each client hands the app, counted by id into `got`,
/// until `want` distinct ids arrived or 30 s passed.
async fn collect(clients: &mut [Client], got: &mut Counts, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < want && Instant::now() < deadline {
        for c in clients.iter_mut() {
            while let Ok(Some(e)) =
                tokio::time::timeout(Duration::from_millis(20), c.next_event()).await
            {
                if let Event::Message(m) = e {
                    *got.entry(m.msg_id).or_default() += 1;
                }
            }
        }
    }
}
