//! 10,000 random frames over real WebSockets: junk text, broken and
//! mutated JSON, binary frames, pings and oversized frames. The server may
//! close the fuzzing connection (4003, 4008, 1009) — the fuzzer reconnects —
//! but it stays up, and a bystander's session is unaffected.

use crate::messaging::connect;
use futures_util::{SinkExt, StreamExt};
use harness::{Infra, Stack};
use protocol::ServerFrame;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const FRAMES: usize = 10_000;

/// xorshift64*: deterministic, so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn text(&mut self, max: u64) -> String {
        let len = self.below(max);
        (0..len)
            .map(|_| char::from_u32(self.below(0x3000) as u32).unwrap_or('?'))
            .collect()
    }
    fn bytes(&mut self, max: u64) -> Vec<u8> {
        let len = self.below(max);
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn frame(rng: &mut Rng, n: usize) -> Message {
    let send = format!(
        r#"{{"type":"send","client_msg_id":"f{n}","to":{{"user":"{}"}},"body":{{"t":{}}}}}"#,
        rng.text(12).replace(['"', '\\'], ""),
        serde_json::Value::from(rng.text(20))
    );
    match rng.below(10) {
        0 => Message::text(rng.text(200)),
        1 => {
            let keep = rng.below(send.chars().count() as u64) as usize;
            Message::text(send.chars().take(keep).collect::<String>())
        }
        2 => Message::text(format!(
            r#"{{"type":"{}","id":{}}}"#,
            rng.text(8).replace(['"', '\\'], ""),
            rng.next()
        )),
        3 => Message::binary(rng.bytes(300)),
        4 => Message::Ping(rng.bytes(60).into()),
        5 => Message::text(send.replace("\"user\"", "\"conversation\"")),
        6 if rng.below(50) == 0 => Message::text("x".repeat(200 * 1024)),
        7 => Message::text(r#"{"type":"hello","token":"again"}"#),
        _ => Message::text(send),
    }
}

pub async fn ten_thousand_random_frames_leave_the_server_and_others_fine(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let stack = Stack::start(&infra, "fuzz", 1, false).await?;
    let mut bystander = connect(&stack, "bystander", "d").await?;
    let (_, ws_url) = stack.route("fuzzer").await?;
    let hello = format!(r#"{{"type":"hello","token":"{}"}}"#, Stack::token("fuzzer"));
    let mut rng = Rng(0x5EED_F00D_1234_5678);
    let (mut sent, mut sessions) = (0usize, 0usize);
    let mut closes: BTreeMap<String, usize> = BTreeMap::new();
    while sent < FRAMES {
        let (ws, _) = tokio_tungstenite::connect_async(&ws_url).await?;
        let (mut sink, mut stream) = ws.split();
        sink.send(Message::text(hello.clone())).await?;
        sessions += 1;
        let reader = tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                if let Message::Close(c) = m {
                    return c.map_or("none".to_owned(), |c| u16::from(c.code).to_string());
                }
            }
            "dropped".to_owned()
        });
        while sent < FRAMES {
            sent += 1;
            if sink.send(frame(&mut rng, sent)).await.is_err() {
                break;
            }
            if reader.is_finished() {
                break;
            }
        }
        let _ = sink.close().await;
        let how = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .map_or("timeout".to_owned(), |r| r.unwrap_or_default());
        *closes.entry(how).or_default() += 1;
    }
    let ready = reqwest::get(format!("{}/readyz", stack.servers[0].url()))
        .await?
        .status();
    anyhow::ensure!(
        ready.is_success(),
        "the server is not ready after the fuzzing: {ready}"
    );
    let body =
        serde_json::json!({"client_msg_id": "after-fuzz", "to": {"user": "bystander"}, "body": {}});
    reqwest::Client::new()
        .post(format!("{}/v1/messages", stack.servers[0].url()))
        .bearer_auth(Stack::token("neighbour"))
        .json(&body)
        .send()
        .await?
        .error_for_status()?;
    match bystander.frame(Duration::from_secs(10)).await? {
        ServerFrame::Message(m) => anyhow::ensure!(m.from.as_str() == "neighbour"),
        other => anyhow::bail!("the bystander got {other:?}"),
    }
    eprintln!("    {sent} random frames over {sessions} sessions; closes by code {closes:?}; server ready, bystander unaffected");
    // Every session the server ended says why with a documented code (the
    // last one we close ourselves), even when the frames it had not read yet
    // include one it cannot parse: before, 18 of 38 sessions ended in a reset
    // that swallowed their 4003.
    let unexplained: Vec<_> = closes
        .iter()
        .filter(|(code, _)| !["4003", "4008", "1009", "1000", "none"].contains(&code.as_str()))
        .collect();
    anyhow::ensure!(
        unexplained.is_empty(),
        "sessions ended without a documented close code: {unexplained:?}"
    );
    let oversized = close_after_oversized_frame(&ws_url, &hello).await?;
    anyhow::ensure!(
        oversized == "1009",
        "an oversized frame was answered {oversized}, want 1009"
    );
    stack.stop().await;
    Ok(())
}

/// One session: hello, one frame above the limit; how the server closed it.
async fn close_after_oversized_frame(ws_url: &str, hello: &str) -> anyhow::Result<String> {
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await?;
    ws.send(Message::text(hello)).await?;
    ws.send(Message::text("x".repeat(200 * 1024))).await?;
    let read = async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(c) = m {
                return c.map_or("none".to_owned(), |c| u16::from(c.code).to_string());
            }
        }
        "dropped".to_owned()
    };
    Ok(tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .unwrap_or_else(|_| "timeout".to_owned()))
}
