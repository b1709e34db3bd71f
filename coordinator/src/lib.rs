//! The coordinator: turns live messaging servers into the partition map
//! (docs/architecture.md; the map's contract is in docs/protocol.md, "Assignment") and serves it over HTTP.

pub mod assign;
mod broker_grace;
mod config;
mod console;
mod http;
pub mod leader;
mod metrics;
mod probe;
mod rejoin;
mod topic;

pub use config::Config;

use prometheus_client::registry::Registry;
use protocol::EtcdLayout;
use service::etcd::{connect_retrying, spawn_assignment_watch};
pub use service::supervise::Faults;
use service::supervise::Supervisor;
use service::Valid;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Binds `config.listen` and runs until `shutdown` is cancelled.
pub async fn run(config: Valid<Config>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = service::bind(config.listen).await?;
    serve(config, listener, shutdown).await
}

/// Descriptors kept for etcd, Kafka, the death checks and logs: the rest
/// may be connections.
const OPEN_FILES_KEPT: u64 = 1024;

pub async fn serve(
    config: Valid<Config>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_with(config, listener, shutdown, Faults::default()).await
}

/// `serve` with a fault hook for tests (see [`Faults`]). If any long-lived
/// task ends before `shutdown`, the coordinator stops and returns the error,
/// so the process exits non-zero and is restarted.
pub async fn serve_with(
    config: Valid<Config>,
    listener: TcpListener,
    shutdown: CancellationToken,
    faults: Faults,
) -> anyhow::Result<()> {
    let layout = EtcdLayout::new(&config.etcd.prefix);
    let id = config.coordinator_id();
    info!(coordinator = %id, addr = %listener.local_addr()?, "coordinator starting");
    let Some(client) = connect_retrying(&config.etcd.endpoints, &shutdown).await else {
        return Ok(());
    };
    // Cancelled only after the supervision below has decided, so a task
    // ending because of shutdown is never mistaken for a failure.
    let stop = CancellationToken::new();
    let metrics = metrics::Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let (assignment, watch) = spawn_assignment_watch(client.clone(), layout.clone(), stop.clone());
    let mut tasks = Supervisor::new(faults);
    tasks.spawn("assignment-watch", async move {
        match watch.await {
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            _ => {}
        }
    });
    let deaths = probe::Deaths::new(
        client.clone(),
        layout.clone(),
        metrics.clone(),
        config.declare_dead,
    );
    let route_wait_max = config.route_wait_max;
    let console = console::Console::new(
        config.admin_key.clone(),
        config.persister_urls.clone(),
        config.console_api_key.clone(),
    );
    let elector = leader::Elector {
        client,
        layout,
        config: config.into_inner(),
        id,
        metrics: metrics.clone(),
        checked: None,
    };
    tasks.spawn("elector", elector.run(stop.clone()));
    tasks.spawn(
        "metrics",
        observe_metrics(assignment.clone(), metrics.clone(), stop.clone()),
    );
    let state = http::AppState {
        assignment,
        deaths,
        route_wait_max,
        metrics,
        registry: Arc::new(registry),
        console,
    };
    let token = stop.clone();
    // Lookups wait (for a move) holding a connection each: bounded, so a
    // reconnect herd queues in the backlog and never takes the descriptors
    // etcd, Kafka and the death checks need.
    let listener = service::bounded::Bounded::within_open_files(listener, OPEN_FILES_KEPT)
        .map_err(|e| anyhow::Error::new(e).context("starting the listener's acceptor"))?;
    let server = axum::serve(listener, http::router(state))
        .with_graceful_shutdown(async move { token.cancelled().await });
    tasks.spawn("http", async move {
        if let Err(e) = server.await {
            error!(error = %e, "http server failed");
        }
    });
    let failed = tokio::select! {
        biased;
        _ = shutdown.cancelled() => None,
        exit = tasks.first_exit() => Some(exit),
    };
    stop.cancel();
    tasks.join_all(Duration::from_secs(5)).await;
    info!("coordinator stopped");
    match failed {
        Some(exit) => {
            error!(task = exit.task, how = %exit.how, "a long-lived task ended; exiting");
            Err(anyhow::Error::new(exit).context("coordinator failed"))
        }
        None => Ok(()),
    }
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
