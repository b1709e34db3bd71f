//! The coordinator: turns live messaging servers into the partition map
//! (docs/architecture.md; the map's contract is in docs/protocol.md, "Assignment") and serves it over HTTP.

pub mod assign;
mod config;
mod http;
pub mod leader;
mod metrics;
mod topic;

pub use config::Config;

use anyhow::Context;
use prometheus_client::registry::Registry;
use protocol::EtcdLayout;
use service::etcd::{connect_retrying, spawn_assignment_watch};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Binds `config.listen` and runs until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = service::bind(config.listen).await?;
    serve(config, listener, shutdown).await
}

pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    let layout = EtcdLayout::new(&config.etcd.prefix);
    let id = config.coordinator_id();
    info!(coordinator = %id, addr = %listener.local_addr()?, "coordinator starting");
    let Some(client) = connect_retrying(&config.etcd.endpoints, &shutdown).await else {
        return Ok(());
    };

    let metrics = metrics::Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let (assignment, watch_task) =
        spawn_assignment_watch(client.clone(), layout.clone(), shutdown.clone());

    let mut tasks = JoinSet::new();
    let elector = leader::Elector {
        client,
        layout,
        config,
        id,
        metrics: metrics.clone(),
    };
    tasks.spawn(elector.run(shutdown.clone()));
    tasks.spawn(observe_metrics(
        assignment.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let state = http::AppState {
        assignment,
        metrics,
        registry: Arc::new(registry),
    };
    let token = shutdown.clone();
    axum::serve(listener, http::router(state))
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await
        .context("http server failed")?;
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    watch_task.abort();
    info!("coordinator stopped");
    Ok(())
}

async fn observe_metrics(
    mut rx: service::etcd::AssignmentRx,
    m: metrics::Metrics,
    cancel: CancellationToken,
) {
    loop {
        if let Some(a) = rx.borrow_and_update().clone() {
            m.observe(&a);
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = cancel.cancelled() => return,
        }
    }
}
