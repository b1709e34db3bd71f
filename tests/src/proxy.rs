//! A TCP relay on loopback whose link a test can cut without closing it: the
//! half-open connection of a partition (no FIN, no RST). While cut, bytes in
//! both directions are dropped and new connections wait, as a SYN would be
//! retransmitted until the link heals, and an end of stream waits too.
//! The link can also be slowed: every chunk is held for a delay, each
//! direction a delay line of its own (the kernel here has no netem).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Proxy {
    addr: SocketAddr,
    link: watch::Sender<Link>,
    accept: JoinHandle<()>,
    accepted: Arc<AtomicUsize>,
}

/// Where the relay leads (set once the target's port is known) and whether
/// the link is cut; connections wait while either forbids them.
#[derive(Clone, Copy, Default)]
struct Link {
    target: Option<SocketAddr>,
    cut: bool,
    delay: Duration,
}

impl Proxy {
    /// Listens on a port of its own on 127.0.0.1; relays once `target` is set.
    pub async fn bind() -> std::io::Result<Self> {
        Self::bind_on(IpAddr::V4(Ipv4Addr::LOCALHOST)).await
    }

    /// Listens on a port of its own on `ip` (e.g. the host's address on a
    /// test's Docker network, so containers can reach it).
    pub async fn bind_on(ip: IpAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?;
        let (link, rx) = watch::channel(Link::default());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(relay(client, rx.clone()));
            }
        });
        Ok(Self {
            addr,
            link,
            accept,
            accepted,
        })
    }

    /// Connections accepted so far (a client that reconnects shows here).
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn target(&self, target: SocketAddr) {
        self.link.send_modify(|l| l.target = Some(target));
    }

    /// Cuts the link (`true`) or heals it.
    pub fn cut(&self, cut: bool) {
        self.link.send_modify(|l| l.cut = cut);
    }

    /// Holds every chunk for `delay` in each direction (zero: none).
    pub fn delay(&self, delay: Duration) {
        self.link.send_modify(|l| l.delay = delay);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay(client: TcpStream, mut link: watch::Receiver<Link>) {
    let target = match link.wait_for(|l| !l.cut && l.target.is_some()).await {
        Ok(l) => l.target,
        Err(_) => return,
    };
    let Some(Ok(upstream)) =
        futures_util::future::OptionFuture::from(target.map(TcpStream::connect)).await
    else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (up_read, up_write) = upstream.into_split();
    tokio::join!(
        pipe(client_read, up_write, link.clone()),
        pipe(up_read, client_write, link)
    );
}

/// Copies `from` to `to` while the link is whole, drops what arrives while
/// it is cut, and passes an end of stream on.
async fn pipe(mut from: OwnedReadHalf, to: OwnedWriteHalf, link: watch::Receiver<Link>) {
    // Bounded: a reader far ahead of a slowed writer waits, as TCP's window would.
    let (line, held) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(256);
    let writer = tokio::spawn(deliver(held, to, link.clone()));
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let (cut, delay) = {
            let l = link.borrow();
            (l.cut, l.delay)
        };
        let due = tokio::time::Instant::now() + delay;
        if !cut && line.send((due, buf[..n].to_vec())).await.is_err() {
            break;
        }
    }
    drop(line);
    let _ = writer.await;
}

/// The delay line's far end: writes each chunk when it is due, then passes
/// the end of stream on. A FIN crosses a cut link no more than data: it
/// arrives once healed.
async fn deliver(
    mut held: tokio::sync::mpsc::Receiver<(tokio::time::Instant, Vec<u8>)>,
    mut to: OwnedWriteHalf,
    mut link: watch::Receiver<Link>,
) {
    while let Some((due, chunk)) = held.recv().await {
        tokio::time::sleep_until(due).await;
        if to.write_all(&chunk).await.is_err() {
            return;
        }
    }
    if link.wait_for(|l| !l.cut).await.is_ok() {
        let _ = to.shutdown().await;
    }
}
