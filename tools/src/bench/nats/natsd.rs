//! The NATS side of the comparison: Debian's `nats-server` with its
//! WebSocket listener, driven by the same Rust WebSocket clients. Core NATS
//! (at most once, nothing kept), or JetStream: a stream on file storage that
//! every publication is acked by, and one push consumer per subscriber — the
//! closest JetStream has to "every member gets every message, replayable".

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
    jetstream: bool,
    _dir: std::path::PathBuf,
}

/// The JetStream stream and the subject it keeps.
const STREAM: &str = "FAN";

/// Sends a JetStream API request on `ws` (already subscribed to `inbox`)
/// and returns the answer's body; an answer with an `error` fails.
async fn js_request(
    ws: &mut crate::bench::Ws,
    api: &str,
    inbox: &str,
    body: &serde_json::Value,
) -> anyhow::Result<String> {
    let body = body.to_string();
    let frame = format!("PUB $JS.API.{api} {inbox} {}\r\n{body}\r\n", body.len());
    ws.send(Message::binary(frame.into_bytes())).await?;
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, ws.next()).await {
        buf.extend_from_slice(&m?.into_data());
        let text = String::from_utf8_lossy(&buf).into_owned();
        let Some(at) = text.find(&format!("MSG {inbox} ")) else {
            continue;
        };
        let Some(answer) = text[at..].split("\r\n").nth(1).filter(|a| a.ends_with('}')) else {
            continue;
        };
        anyhow::ensure!(!answer.contains("\"error\""), "JetStream {api}: {answer}");
        return Ok(answer.to_owned());
    }
    anyhow::bail!("JetStream {api}: no answer within 20 s")
}

/// A subscriber of the stream: a push consumer delivering new messages to
/// `d.<i>` on this connection (no acks: like a Switchboard device, the
/// subscriber keeps its position and asks for a replay when it needs one).
async fn js_subscriber(ws_url: &str, i: usize) -> anyhow::Result<crate::bench::Ws> {
    let mut ws = nats_client(ws_url, false).await?;
    let inbox = format!("_INBOX.c{i}");
    let subs = format!("SUB d.{i} 1\r\nSUB {inbox} 2\r\n");
    ws.send(Message::binary(subs.into_bytes())).await?;
    let config = serde_json::json!({
        "stream_name": STREAM,
        "config": {
            "deliver_subject": format!("d.{i}"),
            "deliver_policy": "new",
            "ack_policy": "none",
            "max_ack_pending": -1,
        },
    });
    js_request(
        &mut ws,
        &format!("CONSUMER.CREATE.{STREAM}"),
        &inbox,
        &config,
    )
    .await?;
    Ok(ws)
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
    pub async fn start(subscribers: usize, jetstream: bool) -> anyhow::Result<Self> {
        ensure_nats_server()?;
        let (port, ws_port) = (free_port()?, free_port()?);
        let dir = std::env::temp_dir().join(format!("switchboard-nats-{ws_port}"));
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("nats.conf");
        let mut text = format!("listen: 127.0.0.1:{port}\nwebsocket {{\n  listen: \"127.0.0.1:{ws_port}\"\n  no_tls: true\n}}\n");
        if jetstream {
            let store = dir.join("js");
            text.push_str(&format!(
                "jetstream {{\n  store_dir: \"{}\"\n}}\n",
                store.display()
            ));
        }
        std::fs::write(&conf, text)?;
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
        let mut publisher = nats_client(&ws_url, false).await?;
        if jetstream {
            let stream = serde_json::json!({
                "name": STREAM, "subjects": ["fan"], "storage": "file", "retention": "limits",
            });
            let subs = "SUB _INBOX.api 1\r\nSUB _INBOX.acks 2\r\n";
            publisher
                .send(Message::binary(subs.as_bytes().to_vec()))
                .await?;
            js_request(
                &mut publisher,
                &format!("STREAM.CREATE.{STREAM}"),
                "_INBOX.api",
                &stream,
            )
            .await?;
        }
        for i in 0..subscribers {
            let ws = match jetstream {
                true => js_subscriber(&ws_url, i).await?,
                false => nats_client(&ws_url, true).await?,
            };
            let (mut tx, mut rx) = ws.split();
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
        Ok(Self {
            child,
            ws_url,
            tally,
            publisher,
            jetstream,
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
        // JetStream: every publication asks for the stream's ack (drained
        // alongside, like Switchboard's acks).
        let reply = if self.jetstream { " _INBOX.acks" } else { "" };
        let frame = |_: usize| {
            let b = body();
            Message::binary(format!("PUB fan{reply} {}\r\n{b}\r\n", b.len()).into_bytes())
        };
        let run = measure(&pids, &self.tally, w, &mut tx, frame);
        tokio::select! {
            r = run => r,
            _ = drain => anyhow::bail!("the nats publisher's connection ended ({})", self.ws_url),
        }
    }
}
