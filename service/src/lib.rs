//! Plumbing shared by the three services: etcd access, Kafka client settings,
//! HTTP error mapping, metrics rendering, signals and logging.

pub mod args;
pub mod etcd;
pub mod http;
pub mod kafka;
pub mod keys;
pub mod prom;
pub mod secret;
pub mod supervise;

pub use args::{Check, ConfigError, Valid};
pub use secret::Secret;

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Binding a service's listen address failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to bind {addr}")]
pub struct BindError {
    pub addr: std::net::SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds a service's listen address (port 0 picks a free port).
pub async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, BindError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// Cancels `token` on SIGTERM or SIGINT, so every service drains the same way.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stop the process with SIGKILL");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
            _ = token.cancelled() => {}
        }
        token.cancel();
    });
}

/// `RUST_LOG`-style filtering, `info` by default; safe to call twice.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

/// Exponential backoff for reconnect loops: never spins, never exceeds `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            next: min,
            min,
            max,
        }
    }
    pub fn reset(&mut self) {
        self.next = self.min;
    }
    /// Sleeps for the current delay (or until cancelled) and doubles it.
    /// Returns false when cancelled.
    pub async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = cancel.cancelled() => false,
        }
    }
}

/// `scheme://user:***@host/…`: a URL with its password hidden, for logs and
/// config dumps.
pub fn mask_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// A service's `main`: parse the flags and environment and check them once
/// (a bad setting exits 2 with one line, before any socket opens), log the
/// effective settings (secrets masked), cancel on SIGINT/SIGTERM, and `run`.
pub async fn main<T, F, Fut>(service: &str, run: F) -> std::process::ExitCode
where
    T: clap::Parser + Check + std::fmt::Debug,
    F: FnOnce(Valid<T>, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let config = match T::parse().validate() {
        Ok(c) => c,
        Err(reason) => {
            eprintln!("{service}: invalid configuration: {reason}");
            return std::process::ExitCode::from(2);
        }
    };
    init_tracing();
    tracing::info!(config = ?*config, "effective configuration");
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    match run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{service} failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_only_the_password() {
        assert_eq!(
            mask_url("postgres://u:hunter2@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
        assert_eq!(mask_url("postgres://db/x"), "postgres://db/x");
        assert_eq!(mask_url("not a url"), "not a url");
    }
}
