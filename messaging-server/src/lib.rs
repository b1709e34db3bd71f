//! The messaging server (docs/protocol.md, docs/architecture.md): WebSocket
//! sessions for the users of the partitions etcd assigns to it.

mod auth;
mod config;
mod demo;
mod frame;
mod http;
mod hub;
mod kafka;
mod members;
mod membership;
mod metrics;
mod producer;
mod resume;
mod send;
mod session;
mod state;

pub use config::Config;

use anyhow::Context;
use prometheus_client::registry::Registry;
use protocol::{EtcdLayout, ServerInfo};
use service::etcd::{connect_retrying, spawn_assignment_watch};
use state::AppState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Longest a request waits for PostgreSQL before it is answered
/// `unavailable` (group sends past the member cache, history, resume).
const DB_WAIT: Duration = Duration::from_secs(2);

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = service::bind(config.listen).await?;
    serve(config, listener, shutdown).await
}

/// Serves on `listener` until `shutdown`, then drains (docs/architecture.md, "Drain").
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    let info = advertise(&config, &listener)?;
    // A key that does not load fails before anything is connected.
    let auth = auth::Authenticator::new(
        config.jwt_secret.as_deref(),
        config.jwt_public_key.as_deref(),
    )
    .context("failed to load the JWT key")?;
    info!(server = %info.server_id, ws_url = %info.ws_url, "messaging server starting");
    let store = store::Store::connect_lazy(&config.database.url, 16, DB_WAIT)
        .context("invalid database url")?;
    if !store.migrate(&shutdown).await {
        return Ok(());
    }
    let consumer = kafka::live_consumer(&config.kafka.brokers, &info.server_id)
        .context("failed to create the Kafka consumer")?;
    let Some(etcd) = connect_retrying(&config.etcd.endpoints, &shutdown).await else {
        return Ok(());
    };
    let stop = CancellationToken::new();
    let layout = EtcdLayout::new(&config.etcd.prefix);
    let (assignment_rx, watch_task) = spawn_assignment_watch(etcd.clone(), layout, stop.clone());
    let state = build_state(config, info, auth, store, assignment_rx, stop.clone())?;
    let mut tasks = JoinSet::new();
    let (own_tx, own_rx) = tokio::sync::mpsc::channel(256);
    let live = kafka::LiveConsumer {
        consumer: Arc::new(consumer),
        topic: state.topic().to_owned(),
        hub: state.hub.clone(),
        metrics: state.metrics.clone(),
        assignment: state.assignment_rx.clone(),
    };
    tasks.spawn(live.run(own_rx, stop.clone()));
    tasks.spawn(state.producer.clone().supervise(stop.clone()));
    tasks.spawn(membership::run_ownership(
        state.clone(),
        own_tx,
        stop.clone(),
    ));
    let registration = tokio::spawn(membership::run_registration(
        state.clone(),
        etcd,
        stop.clone(),
    ));
    let server = axum::serve(listener, http::router(state.clone())).with_graceful_shutdown({
        let stop = stop.clone();
        async move { stop.cancelled().await }
    });
    let server = tokio::spawn(async move { server.await });
    shutdown.cancelled().await;
    drain(&state).await;
    stop.cancel();
    let _ = registration.await;
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    while tasks.join_next().await.is_some() {}
    watch_task.abort();
    info!(server = %state.info.server_id, "messaging server stopped");
    Ok(())
}

/// This server's registration: its id and the URLs clients reach it by
/// (written to the port file when one is configured).
fn advertise(config: &Config, listener: &TcpListener) -> anyhow::Result<ServerInfo> {
    let bound: SocketAddr = listener.local_addr()?;
    if let Some(path) = &config.port_file {
        std::fs::write(path, bound.port().to_string())
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    let (ws_url, http_url) = config.urls(bound);
    Ok(ServerInfo {
        server_id: config.server_id(),
        ws_url,
        http_url,
        weight: config.weight,
        draining: false,
    })
}

fn build_state(
    config: Config,
    info: ServerInfo,
    auth: auth::Authenticator,
    store: store::Store,
    assignment_rx: service::etcd::AssignmentRx,
    stop: CancellationToken,
) -> anyhow::Result<Arc<AppState>> {
    let metrics = metrics::Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let settings = producer::ProducerSettings {
        brokers: config.kafka.brokers.clone(),
        extra: config.kafka_producer_config.clone(),
        max_in_flight: config.max_produce_in_flight,
    };
    let producer = producer::Producers::new(settings, metrics.clone())
        .context("failed to create the Kafka producer")?;
    let log = kafka::LogReader::new(&config.kafka.brokers, &config.kafka.topic)
        .context("failed to create the Kafka log reader")?;
    Ok(Arc::new(AppState {
        hub: Arc::new(hub::Hub::new(config.queue_len)),
        config,
        info,
        auth,
        members: members::MemberCache::new(store),
        log,
        producer: Arc::new(producer),
        metrics,
        registry,
        assignment_rx,
        registered: tokio::sync::watch::channel(false).0,
        draining: tokio::sync::watch::channel(false).0,
        stop,
    }))
}

/// Graceful hand-off: mark draining, let the coordinator move our
/// partitions, redirect every client, flush what we produced.
async fn drain(state: &AppState) {
    info!(server = %state.info.server_id, "draining");
    state.draining.send_replace(true);
    let deadline = Instant::now() + state.config.drain_timeout;
    while Instant::now() < deadline && *state.registered.borrow() {
        let mine = state
            .assignment()
            .map(|a| a.partitions_of(&state.info.server_id).len())
            .unwrap_or(0);
        if mine == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    membership::close_all_for_drain(state);
    let deadline = Instant::now() + Duration::from_secs(3);
    while state.hub.connections() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Err(e) = state.producer.flush(Duration::from_secs(5)).await {
        warn!(error = %e, "producer flush incomplete");
    }
}
