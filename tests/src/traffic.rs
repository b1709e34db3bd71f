//! Send traffic for fault tests: concurrent senders over HTTP that back off
//! after a refusal as a client would, the outcome of every send, and the
//! checks that everything acknowledged was delivered and persisted.

use crate::{Receivers, Stack};
use protocol::MsgId;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a sender waits after a refusal before its next send.
pub const REFUSED_BACKOFF: Duration = Duration::from_millis(200);

#[derive(Default, Debug)]
pub struct Outcomes {
    /// Acknowledged sends: (index of the recipient group, msg_id).
    pub acked: Vec<(usize, MsgId)>,
    /// `unavailable` answers, and those among them refused by the in-flight bound.
    pub unavailable: usize,
    pub overloaded: usize,
    pub other: Vec<String>,
    pub slowest: Duration,
    pub slowest_refusal: Duration,
}

/// One send over HTTP; records its outcome and how long the answer took.
/// True when it was refused (the sender backs off, as a client would).
async fn send(
    http: &reqwest::Client,
    server: &str,
    user: &str,
    body: &serde_json::Value,
    out: &Mutex<Outcomes>,
    group: usize,
) -> bool {
    let started = Instant::now();
    let r = http
        .post(format!("{server}/v1/messages"))
        .bearer_auth(Stack::token(user))
        .json(body)
        .send()
        .await;
    let answer = match r {
        Ok(r) => {
            let status = r.status();
            Ok((
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            ))
        }
        Err(e) => Err(e),
    };
    let took = started.elapsed();
    let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
    o.slowest = o.slowest.max(took);
    let (status, v) = match answer {
        Ok(a) => a,
        Err(e) => {
            o.other.push(format!("transport: {e}"));
            return true;
        }
    };
    if status.is_success() {
        match v["msg_id"].as_str().and_then(|s| s.parse().ok()) {
            Some(id) => o.acked.push((group, MsgId(id))),
            None => o.other.push(format!("ack without msg_id: {v}")),
        }
        false
    } else if v["code"] == "unavailable" {
        o.unavailable += 1;
        o.slowest_refusal = o.slowest_refusal.max(took);
        if v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("overloaded")
        {
            o.overloaded += 1;
        }
        true
    } else {
        o.other.push(format!("{status}: {v}"));
        true
    }
}

/// One send through `server`'s HTTP API as `user` (the `send` frame as the
/// body); its msg_id once Kafka acknowledged it.
pub async fn post_send(
    server: &str,
    user: &str,
    body: &serde_json::Value,
) -> anyhow::Result<MsgId> {
    let r = reqwest::Client::new()
        .post(format!("{server}/v1/messages"))
        .bearer_auth(Stack::token(user))
        .json(body)
        .send()
        .await?
        .error_for_status()?;
    Ok(r.json::<protocol::Accepted>().await?.msg_id)
}

/// `senders` concurrent senders, each sending every `every` until `until`,
/// alternating servers; `body(sender, n)` gives (user, group, body).
pub async fn drive(
    stack: &Stack,
    senders: usize,
    every: Duration,
    until: Instant,
    body: impl Fn(usize, usize) -> (String, usize, serde_json::Value) + Send + Sync + 'static,
) -> Outcomes {
    let out = Arc::new(Mutex::new(Outcomes::default()));
    let servers: Vec<String> = stack.servers.iter().map(|s| s.url()).collect();
    let body = Arc::new(body);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_default();
    let mut tasks = Vec::new();
    for s in 0..senders {
        let (servers, body, out, http) = (servers.clone(), body.clone(), out.clone(), http.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while Instant::now() < until {
                let (user, group, b) = body(s, n);
                let server = &servers[(s + n) % servers.len()];
                let refused = send(&http, server, &user, &b, &out, group).await;
                n += 1;
                tokio::time::sleep(if refused { REFUSED_BACKOFF } else { every }).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let outcomes = std::mem::take(&mut *out.lock().unwrap_or_else(|e| e.into_inner()));
    outcomes
}

/// Every acknowledged message reached each receiver of its group.
pub async fn expect_delivered(
    receivers: &Receivers,
    acked: &[(usize, MsgId)],
    groups: impl Fn(usize) -> Vec<usize>,
) -> anyhow::Result<()> {
    let want = |i: usize| {
        acked
            .iter()
            .filter(|(g, _)| groups(*g).contains(&i))
            .map(|(_, m)| *m)
            .collect()
    };
    receivers.expect_each(want, Duration::from_secs(60)).await
}

/// Every acknowledged chat message has its row in PostgreSQL.
pub async fn expect_persisted(stack: &Stack, acked: &[(usize, MsgId)]) -> anyhow::Result<()> {
    let db = store::Store::connect(&stack.database_url).await?;
    let ids: Vec<uuid::Uuid> = acked.iter().map(|(_, m)| m.0).collect();
    let done = || async {
        db.count_stored(&ids)
            .await
            .is_ok_and(|n| n as usize == ids.len())
    };
    // After an overload of the broker the persister's group may first have
    // to sit out a session timeout (45 s) before it is consuming again.
    crate::wait_until(
        "every acknowledged message persisted",
        Duration::from_secs(120),
        done,
    )
    .await?;
    db.close().await;
    Ok(())
}
