//! The NATS side of the comparison: Debian's `nats-server` with its
//! WebSocket listener, driven by the same Rust WebSocket clients.

use super::{body, measure, SystemRun, Tally, Workload};
use futures_util::{SinkExt, StreamExt};
use harness::{free_port, wait_until};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Debian's nats-server with a WebSocket listener on loopback, installed
/// with apt when missing.
pub struct Nats {
    child: tokio::process::Child,
    ws_url: String,
    tally: Tally,
    publisher: crate::bench::Ws,
    _dir: std::path::PathBuf,
}

fn ensure_nats_server() -> anyhow::Result<()> {
    let found = std::process::Command::new("nats-server")
        .arg("--version")
        .output();
    if found.is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    eprintln!("[bench] installing Debian's nats-server");
    let root = std::process::Command::new("id").arg("-u").output()?.stdout == b"0\n";
    let mut cmd = if root {
        std::process::Command::new("apt-get")
    } else {
        let mut c = std::process::Command::new("sudo");
        c.arg("apt-get");
        c
    };
    let status = cmd
        .args(["install", "-y", "-qq", "nats-server"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    anyhow::ensure!(status.success(), "apt-get install nats-server failed");
    Ok(())
}

/// One NATS WebSocket connection, subscribed to `fan` when `subscribe`.
async fn nats_client(ws_url: &str, subscribe: bool) -> anyhow::Result<crate::bench::Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await?;
    let mut hello =
        String::from("CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\n");
    if subscribe {
        hello.push_str("SUB fan 1\r\n");
    }
    hello.push_str("PING\r\n");
    ws.send(Message::binary(hello.into_bytes())).await?;
    // PONG answers our PING: everything before it, the SUB included, is in.
    while let Some(m) = ws.next().await {
        if m?.into_data().windows(4).any(|w| w == b"PONG") {
            return Ok(ws);
        }
    }
    anyhow::bail!("nats closed the connection before PONG")
}

/// Counts every `MSG` in a stream of NATS frames (a frame may hold many).
fn count_msgs(buf: &mut Vec<u8>, tally: &Tally) {
    loop {
        let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
            return;
        };
        let line = String::from_utf8_lossy(&buf[..eol]).into_owned();
        if let Some(len) = line
            .strip_prefix("MSG ")
            .and_then(|r| r.split_whitespace().last())
            .and_then(|l| l.parse::<usize>().ok())
        {
            if buf.len() < eol + 2 + len + 2 {
                return;
            }
            tally.record(&String::from_utf8_lossy(&buf[eol + 2..eol + 2 + len]));
            buf.drain(..eol + 2 + len + 2);
        } else {
            buf.drain(..eol + 2);
        }
    }
}

impl Nats {
    pub async fn start(subscribers: usize) -> anyhow::Result<Self> {
        ensure_nats_server()?;
        let (port, ws_port) = (free_port()?, free_port()?);
        let dir = std::env::temp_dir().join(format!("switchboard-nats-{ws_port}"));
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!("listen: 127.0.0.1:{port}\nwebsocket {{\n  listen: \"127.0.0.1:{ws_port}\"\n  no_tls: true\n}}\n"),
        )?;
        let child = tokio::process::Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let ws_url = format!("ws://127.0.0.1:{ws_port}");
        wait_until("nats-server listens", Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", ws_port))
                .await
                .is_ok()
        })
        .await?;
        let tally = Tally::new()?;
        for _ in 0..subscribers {
            let (mut tx, mut rx) = nats_client(&ws_url, true).await?.split();
            let t = tally.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(Ok(m)) = rx.next().await {
                    let data = m.into_data();
                    if data.windows(4).any(|w| w == b"PING") {
                        let _ = tx.send(Message::binary(b"PONG\r\n".to_vec())).await;
                    }
                    buf.extend_from_slice(&data);
                    count_msgs(&mut buf, &t);
                }
            });
        }
        let publisher = nats_client(&ws_url, false).await?;
        Ok(Self {
            child,
            ws_url,
            tally,
            publisher,
            _dir: dir,
        })
    }

    pub fn pids(&self) -> Vec<u32> {
        self.child.id().into_iter().collect()
    }

    pub async fn run(&mut self, w: Workload) -> anyhow::Result<SystemRun> {
        let pids = self.pids();
        let (mut tx, mut rx) = (&mut self.publisher).split();
        let drain = async { while let Some(Ok(_)) = rx.next().await {} };
        let frame = |_: usize| {
            let b = body();
            Message::binary(format!("PUB fan {}\r\n{b}\r\n", b.len()).into_bytes())
        };
        let run = measure(&pids, &self.tally, w, &mut tx, frame);
        tokio::select! {
            r = run => r,
            _ = drain => anyhow::bail!("the nats publisher's connection ended ({})", self.ws_url),
        }
    }
}
