//! Plumbing shared by the three services: etcd access, Kafka client settings,
//! HTTP error mapping, metrics rendering, signals and logging.

pub mod args;
pub mod bounded;
pub mod etcd;
pub mod http;
pub mod kafka;
pub mod keys;
pub mod own_thread;
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

/// Connections the kernel may hold completed for a listener before it
/// accepts them (capped by `net.core.somaxconn`). A reconnect herd brings
/// thousands of devices in the same second; with the usual 128 the kernel
/// drops the rest of their handshakes, and each dropped one costs its device
/// a SYN retransmission (1, 3, 7, 15, 31 s…): at 36,000 devices that, not
/// our work, was most of a failover's time (docs/benchmarks.md).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a service's listen address (port 0 picks a free port).
pub async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, BindError> {
    listen(addr).map_err(|source| BindError { addr, source })
}

fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As std and tokio do: a restarted server may bind while old
    // connections linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
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

    /// A thousand devices connect before the listener accepts any: every
    /// handshake waits, completed, in the backlog (with the usual 128 the
    /// rest are dropped and only come back after a SYN retransmission, a
    /// second or more later).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_herd_of_connections_waits_in_the_backlog() {
        const HERD: usize = 1_000;
        let listener = bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut clients = tokio::task::JoinSet::new();
        let wait = std::time::Duration::from_secs(3);
        for _ in 0..HERD {
            clients.spawn(tokio::time::timeout(
                wait,
                tokio::net::TcpStream::connect(addr),
            ));
        }
        let mut held = Vec::new();
        while let Some(c) = clients.join_next().await {
            if let Ok(Ok(Ok(c))) = c {
                held.push(c);
            }
        }
        let mut accepted = 0;
        let within = tokio::time::Instant::now() + std::time::Duration::from_millis(500);
        while let Ok(Ok(_)) = tokio::time::timeout_at(within, listener.accept()).await {
            accepted += 1;
        }
        assert_eq!(accepted, HERD, "accepted without a retransmission");
    }

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
