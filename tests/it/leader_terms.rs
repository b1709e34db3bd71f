//! A coordinator that loses its election lease and wins again leads on what
//! it already checked: under a saturated machine the broker's Admin API can
//! take longer than a term lasts, and a term that asks it again publishes
//! nothing until it answers (the 36,000-device storm's logs: 14 terms ended
//! on `topic: kafka unavailable` while servers came and went).

use crate::coordinator::{register, setup, wait_assignment};
use harness::proxy::Proxy;
use harness::{start_coordinator, Infra};
use protocol::ServerId;
use std::sync::Arc;
use std::time::Duration;

pub async fn a_new_term_publishes_while_the_broker_does_not_answer(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let (layout, mut cfg, mut etcd) = setup(&infra, "terms").await?;
    // The coordinator reaches the broker only through a link the test cuts.
    let proxy = Proxy::bind().await?;
    proxy.target(infra.kafka.parse()?);
    cfg.kafka.brokers = proxy.addr().to_string();
    let coord = start_coordinator("coord-terms", cfg)?;
    let _s1 = register(&mut etcd, &layout, "s1").await?;
    wait_assignment(&coord.url(), Duration::from_secs(20), |a| {
        a.servers.len() == 1
    })
    .await?;
    proxy.cut(true);
    // The term ends as a lost lease ends it; the next one starts at once.
    let election = etcd
        .get(
            layout.election(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    let lease = election
        .kvs()
        .first()
        .map(|kv| kv.lease())
        .ok_or_else(|| anyhow::anyhow!("no election key"))?;
    etcd.lease_revoke(lease).await?;
    let _s2 = register(&mut etcd, &layout, "s2").await?;
    let s2 = ServerId::new("s2")?;
    // Asking the cut broker again would take its 10-s operation timeout
    // and end the term, again and again while the link stays cut.
    let published = wait_assignment(&coord.url(), Duration::from_secs(8), |a| {
        !a.partitions_of(&s2).is_empty()
    })
    .await;
    proxy.cut(false);
    coord.stop().await;
    published.map(drop).map_err(|e| {
        e.context("a coordinator that won the election again published nothing while the broker was cut off")
    })
}
