//! Our etcd connections against etcd's keep-alive policy (gRPC's
//! enforcement: a client that pings a connection with no stream open, or
//! pings more often than `--grpc-keepalive-min-time`, is sent GOAWAY
//! `too_many_pings` after its third offence, and every watch and request on
//! that connection fails). A coordinator's main connection is idle between
//! map writes; a server's carries only its assignment watch.

use harness::proxy::Proxy;
use harness::Infra;
use std::sync::Arc;
use std::time::Duration;

/// Long enough for four pings at `service::etcd`'s interval (10 s): the
/// third offence, at the fourth ping, gets the connection closed.
const IDLE: Duration = Duration::from_secs(45);

/// One client left idle and one holding a quiet watch, each through a relay
/// that counts its connections, for `IDLE`: neither is closed by etcd —
/// the idle one is still on its first connection and the watch still open.
pub async fn quiet_etcd_connections_are_not_closed_for_their_pings(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let etcd: std::net::SocketAddr = infra
        .etcd
        .trim_start_matches("http://")
        .parse()
        .map_err(|e| anyhow::anyhow!("etcd address {}: {e}", infra.etcd))?;
    let (idle_link, watch_link) = (Proxy::bind().await?, Proxy::bind().await?);
    idle_link.target(etcd);
    watch_link.target(etcd);
    let url = |p: &Proxy| vec![format!("http://{}", p.addr())];
    let key = format!("/{}/pings", infra.unique("pings"));
    let mut idle = service::etcd::connect(&url(&idle_link)).await?;
    idle.get(key.as_str(), None).await?;
    let mut watcher = service::etcd::connect(&url(&watch_link)).await?;
    let mut events = watcher.watch(key.as_str(), None).await?;
    let created = tokio::time::timeout(Duration::from_secs(5), events.message()).await;
    anyhow::ensure!(
        matches!(&created, Ok(Ok(Some(r))) if r.created()),
        "the watch was not created: {created:?}"
    );

    // The scenario is the quiet time itself: nothing to poll for.
    let quiet = tokio::time::timeout(IDLE, events.message()).await;
    anyhow::ensure!(
        quiet.is_err(),
        "the watch ended while nothing was written: {quiet:?}"
    );
    idle.put(key.as_str(), "after", None).await?;
    let event = tokio::time::timeout(Duration::from_secs(5), events.message()).await;
    let seen = matches!(&event, Ok(Ok(Some(r))) if !r.events().is_empty());
    anyhow::ensure!(
        seen,
        "the quiet watch missed a put after {IDLE:?}: {event:?}"
    );
    let (a, b) = (idle_link.connections(), watch_link.connections());
    anyhow::ensure!(
        a == 1 && b == 1,
        "etcd closed a quiet connection (connections opened: idle client {a}, watching client {b})"
    );
    eprintln!("    idle and watching etcd clients kept their first connection for {IDLE:?}");
    Ok(())
}
