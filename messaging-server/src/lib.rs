//! The messaging server (DESIGN.md §3–§6, §8): WebSocket sessions for the
//! users of the partitions etcd assigns to it.

pub mod auth;
mod config;
mod demo;
pub mod frame;
mod http;
pub mod hub;
pub mod kafka;
mod membership;
pub mod metrics;
pub mod producer;
pub mod resume;
pub mod send;
mod session;
pub mod state;
pub mod store;

pub use config::Config;

use anyhow::Context;
use prometheus_client::registry::Registry;
use protocol::runtime::etcd::{connect_retrying, spawn_assignment_watch};
use protocol::{EtcdLayout, ServerInfo};
use state::AppState;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = protocol::runtime::bind(config.listen).await?;
    serve(config, listener, shutdown).await
}

/// Serves on `listener` until `shutdown`, then drains (DESIGN.md §8).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let bound: SocketAddr = listener.local_addr()?;
    let (ws_url, http_url) = config.urls(bound);
    let server_id = config.server_id();
    if let Some(path) = &config.port_file {
        std::fs::write(path, bound.port().to_string())
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    info!(server = %server_id, %ws_url, "messaging server starting");
    let auth = auth::Authenticator::new(
        config.jwt_secret.as_deref(),
        config.jwt_public_key.as_deref(),
    )
    .context("failed to load the JWT key")?;
    let store = store::Store::connect_lazy(&config.database_url).context("invalid database url")?;
    if !protocol::runtime::db::migrate(&store.pool, &shutdown).await {
        return Ok(());
    }
    let consumer = Arc::new(
        kafka::live_consumer(&config.kafka.brokers, &server_id)
            .context("failed to create the Kafka consumer")?,
    );
    let Some(etcd) = connect_retrying(&config.etcd.endpoints, &shutdown).await else {
        return Ok(());
    };
    let stop = CancellationToken::new();
    let (assignment_rx, watch_task) = spawn_assignment_watch(
        etcd.clone(),
        EtcdLayout::new(&config.etcd.prefix),
        stop.clone(),
    );
    let metrics = metrics::Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let producer = Arc::new(
        producer::Producers::new(
            producer::ProducerSettings {
                brokers: config.kafka.brokers.clone(),
                extra: config.kafka_producer_config.clone(),
                max_in_flight: config.max_produce_in_flight,
            },
            metrics.clone(),
        )
        .context("failed to create the Kafka producer")?,
    );
    let hub = Arc::new(hub::Hub::new(config.queue_len));
    let info = ServerInfo {
        server_id,
        ws_url,
        http_url,
        weight: config.weight,
        draining: false,
    };
    let state = Arc::new(AppState {
        topic: config.kafka.topic.clone(),
        config,
        info,
        auth,
        store,
        producer: producer.clone(),
        hub: hub.clone(),
        metrics: metrics.clone(),
        registry,
        assignment_rx,
        log_epoch: Default::default(),
        registered: tokio::sync::watch::channel(false).0,
        draining: Default::default(),
        stop: stop.clone(),
    });
    let (draining_tx, draining_rx) = tokio::sync::watch::channel(false);
    let (own_tx, own_rx) = tokio::sync::mpsc::channel(256);
    let mut tasks = JoinSet::new();
    let live = kafka::LiveConsumer {
        consumer,
        topic: state.topic.clone(),
        hub,
        metrics,
        log_epoch: state.log_epoch.clone(),
    };
    tasks.spawn(live.run(own_rx, stop.clone()));
    tasks.spawn(producer.supervise(stop.clone()));
    tasks.spawn(membership::run_ownership(
        state.clone(),
        own_tx,
        stop.clone(),
    ));
    let registration = tokio::spawn(membership::run_registration(
        state.clone(),
        etcd,
        draining_rx,
        stop.clone(),
    ));
    let server = axum::serve(listener, http::router(state.clone())).with_graceful_shutdown({
        let stop = stop.clone();
        async move { stop.cancelled().await }
    });
    let server = tokio::spawn(async move { server.await });
    shutdown.cancelled().await;
    drain(&state, &draining_tx).await;
    stop.cancel();
    let _ = registration.await;
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    while tasks.join_next().await.is_some() {}
    watch_task.abort();
    info!(server = %state.info.server_id, "messaging server stopped");
    Ok(())
}

/// Graceful hand-off: mark draining, let the coordinator move our
/// partitions, redirect every client, flush what we produced.
async fn drain(state: &AppState, draining: &tokio::sync::watch::Sender<bool>) {
    info!(server = %state.info.server_id, "draining");
    state.draining.store(true, Ordering::SeqCst);
    let _ = draining.send(true);
    let deadline = Instant::now() + Duration::from_secs(state.config.drain_timeout_secs);
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
