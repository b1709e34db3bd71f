//! A listener that holds at most `max` accepted connections at once. Past
//! the bound, new connections wait in the kernel's listen backlog instead
//! of `accept` failing with EMFILE — which makes axum sleep a second per
//! failure (a coordinator holding a 36,000-device reconnect herd's lookups
//! did), and leaves the process no descriptor for etcd, the broker or its
//! checks (docs/benchmarks.md, "36,000 devices again").

use axum::serve::Listener;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Bounded {
    inner: TcpListener,
    permits: Arc<Semaphore>,
}

impl Bounded {
    pub fn new(inner: TcpListener, max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            inner,
            permits: Arc::new(Semaphore::new(max)),
        }
    }

    /// Bounded by the open-file limit (the soft limit raised to the hard
    /// one first) less `reserved` descriptors for everything else.
    pub fn within_open_files(inner: TcpListener, reserved: u64) -> Self {
        let limit = rlimit::increase_nofile_limit(u64::MAX).ok();
        let max = limit.map_or(usize::MAX, |l| {
            usize::try_from(l.saturating_sub(reserved)).unwrap_or(usize::MAX)
        });
        tracing::info!(max_connections = max.min(Semaphore::MAX_PERMITS), open_files = ?limit, "listening");
        Self::new(inner, max)
    }
}

/// An accepted connection; its slot is free again when it is dropped.
pub struct Held {
    io: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl Listener for Bounded {
    type Io = Held;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Held, SocketAddr) {
        let slot = loop {
            // The semaphore is never closed; the loop only satisfies the type.
            if let Ok(slot) = self.permits.clone().acquire_owned().await {
                break slot;
            }
        };
        loop {
            match self.inner.accept().await {
                Ok((io, addr)) => return (Held { io, _slot: slot }, addr),
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    // Out of descriptors despite the bound (another part of
                    // the process holds more than its reserve): back off.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

impl AsyncRead for Held {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Held {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn past_the_bound_a_connection_waits_until_one_closes() {
        let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let mut listener = Bounded::new(inner, 2);
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        let first = listener.accept().await;
        let _second = listener.accept().await;
        let third = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(
            third.is_err(),
            "a third connection was accepted past the bound of 2"
        );
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(2), listener.accept()).await;
        assert!(third.is_ok(), "the freed slot was not used");
    }

    #[tokio::test]
    async fn axum_serves_through_it_one_connection_after_another() {
        let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let app = axum::Router::new().route("/", get(|| async { "ok" }));
        let server = tokio::spawn(async move { axum::serve(Bounded::new(inner, 1), app).await });
        for _ in 0..3 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let request = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
            c.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            let read = c.read_to_string(&mut answer);
            tokio::time::timeout(Duration::from_secs(5), read)
                .await
                .unwrap()
                .unwrap();
            assert!(
                answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"),
                "{answer}"
            );
        }
        server.abort();
    }
}
