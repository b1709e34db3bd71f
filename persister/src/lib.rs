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
use service::http::{metrics_response, not_found};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

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
    info!(addr = %listener.local_addr()?, topic = %config.kafka.topic, "persister starting");
    let store =
        store::Store::connect_lazy(&config.database.url, 4, std::time::Duration::from_secs(5))
            .context("invalid database url")?;
    let metrics = metrics::Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let registry = Arc::new(registry);
    let app = Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/metrics",
            get(move || async move { metrics_response(&registry) }),
        )
        .fallback(not_found);
    let token = shutdown.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
    });

    if !store.migrate(&shutdown).await {
        return Ok(());
    }
    let ctx = consumer::Ctx {
        store,
        topic: config.kafka.topic.clone(),
        handle: tokio::runtime::Handle::current(),
        metrics,
        cancel: shutdown.clone(),
        pending: Mutex::new(batch::Batch::default()),
    };
    let worker = std::thread::Builder::new()
        .name("persister-consumer".into())
        .spawn(move || consumer::run_until_cancelled(ctx, &config))
        .context("failed to start the consumer thread")?;
    shutdown.cancelled().await;
    let consumed = tokio::task::spawn_blocking(move || worker.join()).await;
    let _ = http.await;
    info!("persister stopped");
    match consumed {
        Ok(Ok(Err(e))) => Err(anyhow::Error::new(e).context("failed to create the Kafka consumer")),
        _ => Ok(()),
    }
}
