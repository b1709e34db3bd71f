//! A listener that accepts on a thread of its own and holds at most `max`
//! accepted connections at once. Past the bound, new connections wait in
//! the kernel's listen backlog instead
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
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// A connection the acceptor took from the kernel, with its slot.
type Accepted = (std::net::TcpStream, SocketAddr, OwnedSemaphorePermit);

/// Connections are accepted by a thread of their own, as they arrive, and
/// wait in the process for the runtime to serve them. A herd of lookups
/// (13,600 devices at once after a server's death) on a busy machine
/// otherwise waits in the kernel's listen queue, which holds at most
/// `net.core.somaxconn` (4,096 here): every connection past it is dropped
/// and its client retransmits after 1, 3, 7 seconds — the queue was full
/// for 13 s after a kill while the runtime's workers, sharing two cores
/// with everything else, accepted between serving lookups.
pub struct Bounded {
    accepted: mpsc::UnboundedReceiver<Accepted>,
    permits: Arc<Semaphore>,
    local: SocketAddr,
    /// The listening socket, shut down on drop to end the acceptor's wait.
    socket: socket2::Socket,
}

impl Bounded {
    /// Starts the acceptor thread; must be called within a tokio runtime.
    pub fn new(inner: TcpListener, max: usize) -> io::Result<Self> {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        let permits = Arc::new(Semaphore::new(max));
        let local = inner.local_addr()?;
        let listener = inner.into_std()?;
        listener.set_nonblocking(false)?;
        let socket = socket2::Socket::from(listener.try_clone()?);
        let (tx, accepted) = mpsc::unbounded_channel();
        let (slots, runtime) = (permits.clone(), tokio::runtime::Handle::current());
        std::thread::Builder::new()
            .name("accept".into())
            .spawn(move || acceptor(&listener, &slots, &runtime, &tx))?;
        Ok(Self {
            accepted,
            permits,
            local,
            socket,
        })
    }

    /// Bounded by the open-file limit (the soft limit raised to the hard
    /// one first) less `reserved` descriptors for everything else.
    pub fn within_open_files(inner: TcpListener, reserved: u64) -> io::Result<Self> {
        let limit = rlimit::increase_nofile_limit(u64::MAX).ok();
        let max = limit.map_or(usize::MAX, |l| {
            usize::try_from(l.saturating_sub(reserved)).unwrap_or(usize::MAX)
        });
        tracing::info!(max_connections = max.min(Semaphore::MAX_PERMITS), open_files = ?limit, "listening");
        Self::new(inner, max)
    }
}

impl Drop for Bounded {
    fn drop(&mut self) {
        self.permits.close();
        // Wakes the acceptor's accept (EINVAL on Linux); it sees the
        // semaphore closed and ends, closing the port.
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

/// Takes a slot, then a connection, until the listener is dropped.
fn acceptor(
    listener: &std::net::TcpListener,
    slots: &Arc<Semaphore>,
    runtime: &tokio::runtime::Handle,
    tx: &mpsc::UnboundedSender<Accepted>,
) {
    while let Ok(slot) = runtime.block_on(slots.clone().acquire_owned()) {
        loop {
            match listener.accept() {
                Ok((io, addr)) => {
                    if tx.send((io, addr, slot)).is_err() {
                        return;
                    }
                    break;
                }
                Err(_) if slots.is_closed() => return,
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    // Out of descriptors despite the bound (another part of
                    // the process holds more than its reserve): back off.
                    tracing::error!(error = %e, "accept failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
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
        loop {
            let Some((io, addr, slot)) = self.accepted.recv().await else {
                // The acceptor ends only after this listener is dropped.
                tracing::error!("the acceptor thread ended; accepting nothing more");
                return std::future::pending().await;
            };
            match io
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(io))
            {
                Ok(io) => return (Held { io, _slot: slot }, addr),
                Err(e) => tracing::warn!(error = %e, "an accepted connection could not be served"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
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
        let mut listener = Bounded::new(inner, 2).unwrap();
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
        let server =
            tokio::spawn(async move { axum::serve(Bounded::new(inner, 1).unwrap(), app).await });
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

    /// A listener whose kernel queue holds only a few dozen connections.
    fn small_backlog() -> TcpListener {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        socket.listen(32).unwrap()
    }

    #[tokio::test]
    async fn a_burst_past_the_kernel_queue_is_accepted_while_the_runtime_is_busy() {
        let mut listener = Bounded::new(small_backlog(), 1_000).unwrap();
        let addr = listener.local_addr().unwrap();
        // This runtime's only thread is blocked while 300 clients connect:
        // the kernel's queue of 32 overflows unless something else accepts
        // (then at most 33 connect). An acceptor the machine stalls for a
        // moment may still lose one or two to a queue this short.
        let connected = std::thread::spawn(move || {
            (0..300)
                .filter_map(|_| {
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()
                })
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap();
        assert!(
            connected.len() >= 200,
            "{} of 300 connected",
            connected.len()
        );
        for _ in 0..connected.len() {
            let accept = tokio::time::timeout(Duration::from_secs(5), listener.accept());
            assert!(
                accept.await.is_ok(),
                "a connected client was never accepted"
            );
        }
    }

    #[tokio::test]
    async fn once_dropped_the_port_refuses() {
        let listener = Bounded::new(small_backlog(), 10).unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match TcpStream::connect(addr).await {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
                _ => assert!(
                    std::time::Instant::now() < deadline,
                    "the port still accepts after the listener was dropped"
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
