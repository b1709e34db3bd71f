//! The persister (docs/architecture.md): every `chat` record into PostgreSQL exactly
//! once in effect, its Kafka offsets stored in the same transaction.

mod batch;
mod config;
mod consumer;
mod metrics;

pub use config::Config;

use anyhow::Context;
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use service::http::{metrics_response, not_found, ApiError};
pub use service::supervise::Faults;
use service::Valid;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

pub async fn run(config: Valid<Config>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = service::bind(config.listen).await?;
    serve(config, listener, shutdown).await
}

pub async fn serve(
    config: Valid<Config>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_with(config, listener, shutdown, Faults::default()).await
}

/// `serve` with a fault hook for tests (see [`Faults`]): the consumer thread
/// ending before `shutdown` — with an error or a panic — is an error the
/// process exits with, never a clean exit; `/readyz` is false from then on.
pub async fn serve_with(
    config: Valid<Config>,
    listener: TcpListener,
    shutdown: CancellationToken,
    faults: Faults,
) -> anyhow::Result<()> {
    info!(addr = %listener.local_addr()?, topic = %config.kafka.topic, "persister starting");
    let store = store::Store::connect_lazy(&config.database.url, 4, Duration::from_secs(5))
        .context("invalid database url")?;
    let metrics = metrics::Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let consuming = Arc::new(AtomicBool::new(false));
    let stop = shutdown.child_token();
    let http = tokio::spawn(serve_http(
        listener,
        registry,
        consuming.clone(),
        stop.clone(),
    ));
    if !store.migrate(&shutdown).await {
        stop.cancel();
        return Ok(());
    }
    let ctx = consumer::Ctx {
        store,
        topic: config.kafka.topic.clone(),
        handle: tokio::runtime::Handle::current(),
        metrics,
        cancel: stop.clone(),
        pending: Mutex::new(batch::Batch::default()),
        faults,
    };
    let worker = std::thread::Builder::new()
        .name("persister-consumer".into())
        .spawn(move || consumer::run_until_cancelled(ctx, &config))
        .context("failed to start the consumer thread")?;
    consuming.store(true, Ordering::SeqCst);
    let mut joined = tokio::task::spawn_blocking(move || worker.join());
    let early = tokio::select! {
        biased;
        _ = shutdown.cancelled() => None,
        r = &mut joined => Some(r),
    };
    consuming.store(false, Ordering::SeqCst);
    stop.cancel();
    let ended_early = early.is_some();
    let outcome = match early {
        Some(r) => r,
        None => joined.await,
    };
    let _ = http.await;
    info!("persister stopped");
    match outcome {
        Ok(Ok(Err(e))) => Err(anyhow::Error::new(e).context("the Kafka consumer failed")),
        Ok(Err(panic)) => {
            let what = service::supervise::panic_message(panic.as_ref());
            error!(panic = %what, "the consumer thread panicked");
            anyhow::bail!("the consumer thread panicked: {what}")
        }
        Err(e) => anyhow::bail!("the consumer thread could not be joined: {e}"),
        Ok(Ok(Ok(()))) if ended_early => anyhow::bail!("the consumer thread ended before shutdown"),
        Ok(Ok(Ok(()))) => Ok(()),
    }
}

/// Health, readiness (the consumer thread runs) and metrics.
async fn serve_http(
    listener: TcpListener,
    registry: Registry,
    consuming: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let registry = Arc::new(registry);
    let app = Router::new()
        .route(
            "/healthz",
            get(|| async { Json(protocol::api::Status::ok()) }),
        )
        .route(
            "/readyz",
            get(move || async move {
                if consuming.load(Ordering::SeqCst) {
                    Ok(Json(protocol::api::Status::ready()))
                } else {
                    Err(ApiError::unavailable("the consumer is not running"))
                }
            }),
        )
        .route(
            "/metrics",
            get(move || async move { metrics_response(&registry) }),
        )
        .fallback(not_found);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        error!(error = %e, "http server failed");
    }
}
