//! Deaths clients can see. A client whose server vanished reports it on its
//! next route lookup (`unreachable`); the coordinator checks the server itself
//! and, when nothing listens on its port any more (a crash, an OOM kill, a
//! panic: the host answers with a reset), revokes the server's lease, so its
//! partitions move now instead of when the lease runs out.
//!
//! Only a refused connection condemns: a server that answers is alive (the
//! client's own network failed), and one that does not answer at all (a
//! frozen process, a host gone or cut off) may come back, so it keeps its
//! partitions until its lease ends — the only proof a partitioned server
//! has stopped serving them.

use crate::metrics::Metrics;
use etcd_client::Client;
use protocol::{EtcdLayout, ServerId, ServerInfo};
use std::collections::HashMap;
use std::io::ErrorKind;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;
use tracing::{info, warn};

/// What a check of one server found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The connection was refused: no process listens there.
    Dead,
    /// No answer in time: frozen, or the host is gone or cut off.
    Unresponsive,
    /// It answered over HTTP (or accepted a TLS-bound connection).
    Alive,
    /// The check could not be made from here (this process is out of file
    /// descriptors, ports or memory): it says nothing about the server.
    Unchecked,
}

impl Verdict {
    pub const ALL: [Verdict; 4] = [
        Verdict::Dead,
        Verdict::Unresponsive,
        Verdict::Alive,
        Verdict::Unchecked,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Dead => "dead",
            Verdict::Unresponsive => "unresponsive",
            Verdict::Alive => "alive",
            Verdict::Unchecked => "unchecked",
        }
    }

    /// What a failed connection says: refused — nothing listens; a local
    /// shortage — nothing (under a reconnect herd a coordinator out of file
    /// descriptors must not make every lookup wait); anything else — the
    /// host is gone or cut off.
    fn of_connect_error(e: &std::io::Error) -> Verdict {
        const LOCAL: [i32; 5] = [
            12,  // ENOMEM
            23,  // ENFILE
            24,  // EMFILE
            99,  // EADDRNOTAVAIL: no ephemeral port left
            105, // ENOBUFS
        ];
        match e.kind() {
            ErrorKind::ConnectionRefused => Verdict::Dead,
            _ if e.raw_os_error().is_some_and(|c| LOCAL.contains(&c)) => Verdict::Unchecked,
            _ => Verdict::Unresponsive,
        }
    }
}

/// A verdict and, for a server that did not answer, when its lease ends
/// unless it renews it: a frozen or cut-off server's map moves by then, so
/// a lookup waiting for that need not wait longer.
#[derive(Debug, Clone, Copy)]
pub struct Checked {
    pub verdict: Verdict,
    pub lease_ends: Option<Instant>,
}

/// `host:port` and whether the base URL speaks plain HTTP.
fn target(http_url: &str) -> Option<(String, bool)> {
    let (scheme, rest) = http_url.split_once("://")?;
    let plain = match scheme {
        "http" => true,
        "https" => false,
        _ => return None,
    };
    let host = rest.split('/').next().filter(|h| !h.is_empty())?;
    let has_port = host.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']'));
    let default = if plain { 80 } else { 443 };
    Some(match has_port {
        true => (host.to_owned(), plain),
        false => (format!("{host}:{default}"), plain),
    })
}

/// A connection reset (or closed) before any answer: the process behind the
/// port let go of it without a word — as a killed process's listener does
/// to the connections still in its queue while the kernel tears the process
/// down. Its port refuses a moment later; the check connects again then.
const RESET_RETRY: Duration = Duration::from_millis(20);

/// One check of a server's HTTP base, and what it saw (for the log):
/// refused → dead; a `/healthz` answered within `limit` → alive; anything
/// else → unresponsive. A reset is asked again (within `limit`): it says
/// nothing alone, and calling it unresponsive held every
/// lookup for a killed server's devices a recheck (1 s) longer.
async fn probe_why(http_url: &str, limit: Duration) -> (Verdict, String) {
    let Some((addr, plain)) = target(http_url) else {
        return (Verdict::Unresponsive, "no host:port in the URL".into());
    };
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (verdict, why, reset) = probe_once(&addr, plain, deadline).await;
        let again = tokio::time::Instant::now() + RESET_RETRY;
        if !reset || again >= deadline {
            return (verdict, why);
        }
        tokio::time::sleep_until(again).await;
    }
}

/// One connection's verdict, what it saw, and whether it was reset before
/// any answer.
async fn probe_once(
    addr: &str,
    plain: bool,
    deadline: tokio::time::Instant,
) -> (Verdict, String, bool) {
    let mut stream = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return (
                Verdict::of_connect_error(&e),
                format!("connect: {e}"),
                false,
            )
        }
        Err(_) => return (Verdict::Unresponsive, "connect timed out".into(), false),
    };
    if !plain {
        // A frozen process's kernel accepts too; without speaking TLS here a
        // connection is the most this check can learn.
        let why = "connected (TLS not checked)".into();
        return (Verdict::Alive, why, false);
    }
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let answer = async {
        stream.write_all(request.as_bytes()).await?;
        let mut head = [0u8; 8];
        stream.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(head)
    };
    match tokio::time::timeout_at(deadline, answer).await {
        Ok(Ok(head)) if head.starts_with(b"HTTP/1.") => (Verdict::Alive, "answered".into(), false),
        Ok(Ok(_)) => (Verdict::Unresponsive, "answered, not HTTP".into(), false),
        Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => {
            (Verdict::Dead, format!("read: {e}"), false)
        }
        Ok(Err(e)) => {
            let reset = matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe
            );
            (Verdict::Unresponsive, format!("read: {e}"), reset)
        }
        Err(_) => (Verdict::Unresponsive, "no answer in time".into(), false),
    }
}

/// How long one server's verdict is reused: a crash is reported by every one
/// of its clients within moments, and one check answers them all.
const REUSE: Duration = Duration::from_secs(1);
/// How long a check waits for an answer.
const LIMIT: Duration = Duration::from_secs(1);

type Check = Arc<OnceCell<Checked>>;

/// Checks reported servers, one check per server at a time, and revokes the
/// lease of one found dead (when `revoke` is on).
#[derive(Clone)]
pub struct Deaths {
    client: Client,
    layout: EtcdLayout,
    metrics: Metrics,
    revoke: bool,
    checks: Arc<Mutex<HashMap<ServerId, (Instant, Check)>>>,
}

impl Deaths {
    pub fn new(client: Client, layout: EtcdLayout, metrics: Metrics, revoke: bool) -> Self {
        Self {
            client,
            layout,
            metrics,
            revoke,
            checks: Arc::default(),
        }
    }

    /// The verdict on `server` (as the current map describes it), shared by
    /// everyone who asks within [`REUSE`] of the check.
    pub async fn check(&self, server: &ServerInfo) -> Checked {
        let cell = {
            let mut checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            checks.retain(|_, (at, _)| now.duration_since(*at) < REUSE);
            checks
                .entry(server.server_id.clone())
                .or_insert_with(|| (now, Check::default()))
                .1
                .clone()
        };
        *cell.get_or_init(|| self.check_now(server)).await
    }

    async fn check_now(&self, server: &ServerInfo) -> Checked {
        let (verdict, why) = probe_why(&server.http_url, LIMIT).await;
        let lease_ends = match verdict {
            Verdict::Unresponsive => self.lease_ends(server).await,
            _ => None,
        };
        self.metrics.probe(verdict);
        info!(server = %server.server_id, url = %server.http_url, verdict = verdict.label(), %why, "checked a server clients could not reach");
        if verdict == Verdict::Dead && self.revoke {
            if let Err(e) = self.declare_dead(server).await {
                warn!(server = %server.server_id, error = %e, "could not end the lease of a dead server");
            }
        }
        Checked {
            verdict,
            lease_ends,
        }
    }

    /// When `server`'s registration lease ends unless renewed (etcd's
    /// remaining TTL, whole seconds, plus one for the rounding and the map's
    /// debounce); `None` when etcd does not say or holds no registration.
    pub async fn lease_ends(&self, server: &ServerInfo) -> Option<Instant> {
        let left = self.lease_left(server).await?;
        Some(Instant::now() + Duration::from_secs(left + 1))
    }

    /// etcd's remaining TTL of `server`'s registration lease, whole seconds
    /// (0 also for a lease past its end that etcd has not removed yet:
    /// expired leases are revoked in batches, later under load); `None`
    /// when etcd does not say or holds no registration.
    pub async fn lease_left(&self, server: &ServerInfo) -> Option<u64> {
        let mut client = self.client.clone();
        let key = self.layout.server_key(&server.server_id);
        let ask = async {
            let resp = client.get(key, None).await.ok()?;
            let lease = resp.kvs().first()?.lease();
            let ttl = client.lease_time_to_live(lease, None).await.ok()?.ttl();
            u64::try_from(ttl).ok()
        };
        tokio::time::timeout(LIMIT, ask).await.ok().flatten()
    }

    /// Revokes the lease of `server`'s registration — only of the
    /// incarnation that was checked: a process restarted under the same id
    /// has registered a new one, which stays.
    async fn declare_dead(&self, server: &ServerInfo) -> Result<(), etcd_client::Error> {
        let mut client = self.client.clone();
        let key = self.layout.server_key(&server.server_id);
        let resp = client.get(key, None).await?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(());
        };
        let registered: Option<ServerInfo> = serde_json::from_slice(kv.value()).ok();
        let same = registered
            .is_some_and(|r| r.incarnation == server.incarnation && r.http_url == server.http_url);
        if !same || kv.lease() == 0 {
            return Ok(());
        }
        client.lease_revoke(kv.lease()).await?;
        self.metrics.declared_dead.inc();
        info!(server = %server.server_id, lease = kv.lease(), "server declared dead: its port refuses connections; lease revoked");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_come_from_the_http_base() {
        assert_eq!(
            target("http://10.0.0.1:8081"),
            Some(("10.0.0.1:8081".into(), true))
        );
        assert_eq!(
            target("http://server-0.sb/"),
            Some(("server-0.sb:80".into(), true))
        );
        assert_eq!(
            target("https://[::1]:9443/x"),
            Some(("[::1]:9443".into(), false))
        );
        assert_eq!(target("https://[::1]"), Some(("[::1]:443".into(), false)));
        assert_eq!(target("ftp://x"), None);
        assert_eq!(target("nonsense"), None);
    }

    #[test]
    fn only_a_refusal_condemns_and_a_local_shortage_says_nothing() {
        let verdict = |code| Verdict::of_connect_error(&std::io::Error::from_raw_os_error(code));
        assert_eq!(verdict(111), Verdict::Dead); // ECONNREFUSED
        assert_eq!(verdict(24), Verdict::Unchecked); // EMFILE
        assert_eq!(verdict(99), Verdict::Unchecked); // EADDRNOTAVAIL
        assert_eq!(verdict(113), Verdict::Unresponsive); // EHOSTUNREACH
        assert_eq!(verdict(110), Verdict::Unresponsive); // ETIMEDOUT
    }

    #[tokio::test]
    async fn a_closed_port_is_dead_a_silent_one_unresponsive_an_answer_alive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("http://{addr}");
        // Accepted by the kernel, never answered: a frozen process.
        let silent = probe_why(&url, Duration::from_millis(200)).await.0;
        assert_eq!(silent, Verdict::Unresponsive);
        // The silent check's connection waits in the backlog first.
        let answering = tokio::spawn(async move {
            for _ in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        assert_eq!(
            probe_why(&url, Duration::from_secs(2)).await.0,
            Verdict::Alive
        );
        answering.await.unwrap();
        // The listener is gone: nothing listens on the port.
        assert_eq!(
            probe_why(&url, Duration::from_secs(2)).await.0,
            Verdict::Dead
        );
    }

    /// A killed process's listener resets the connections in its queue,
    /// then its port refuses: the check's connection is reset first.
    // A zero linger resets at once; it is the lingering close that blocks.
    #[allow(deprecated)]
    #[tokio::test]
    async fn a_reset_before_any_answer_is_asked_again_and_a_refusal_then_is_dead() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let dying = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            s.set_linger(Some(Duration::ZERO)).unwrap();
            // Let the request arrive, so the reset meets a read.
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(s);
            drop(listener);
        });
        let started = std::time::Instant::now();
        let (verdict, why) = probe_why(&url, Duration::from_secs(1)).await;
        dying.await.unwrap();
        assert_eq!(verdict, Verdict::Dead, "{why}");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        // Reset every time until the limit: unresponsive, never dead.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let resetting = tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                s.set_linger(Some(Duration::ZERO)).unwrap();
                drop(s);
            }
        });
        let (verdict, why) = probe_why(&url, Duration::from_millis(300)).await;
        resetting.abort();
        assert_eq!(verdict, Verdict::Unresponsive, "{why}");
    }
}
