//! End to end through real broker, etcd and PostgreSQL with two servers.

use anyhow::Context;
use harness::{Event, Infra, Stack, WsClient};
use protocol::{Kind, ServerFrame};
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

pub async fn connect(stack: &Stack, user: &str, device: &str) -> anyhow::Result<WsClient> {
    let (_, ws_url) = stack.route(user).await?;
    let mut c = WsClient::connect(&ws_url).await?;
    match c.hello(&Stack::token(user), device, None).await? {
        Event::Frame(ServerFrame::Welcome(w)) => {
            anyhow::ensure!(w.user_id.as_str() == user, "welcome for {}", w.user_id)
        }
        other => anyhow::bail!("{user}/{device}: expected welcome, got {other:?}"),
    }
    Ok(c)
}

/// Next `message` frame, skipping acks; fails on anything else.
pub async fn next_message(c: &mut WsClient) -> anyhow::Result<protocol::frames::Message> {
    loop {
        match c.frame(T).await? {
            ServerFrame::Message(m) => return Ok(m),
            ServerFrame::Ack(_) => continue,
            other => anyhow::bail!("expected a message, got {other:?}"),
        }
    }
}

pub async fn ack_of(c: &mut WsClient) -> anyhow::Result<protocol::frames::Ack> {
    loop {
        match c.frame(T).await? {
            ServerFrame::Ack(a) => return Ok(a),
            ServerFrame::Message(_) => continue,
            other => anyhow::bail!("expected an ack, got {other:?}"),
        }
    }
}

/// The next ack, and the messages that arrived before it: with a fast
/// broker the sender's own copy of a message can overtake its ack.
async fn ack_keeping(
    c: &mut WsClient,
) -> anyhow::Result<(protocol::frames::Ack, Vec<protocol::frames::Message>)> {
    let mut early = Vec::new();
    loop {
        match c.frame(T).await? {
            ServerFrame::Ack(a) => return Ok((a, early)),
            ServerFrame::Message(m) => early.push(m),
            other => anyhow::bail!("expected an ack, got {other:?}"),
        }
    }
}

/// The message `msg_id` on `c`: from `early` if it came before an ack.
async fn message_with(
    c: &mut WsClient,
    early: &mut Vec<protocol::frames::Message>,
    msg_id: protocol::MsgId,
) -> anyhow::Result<protocol::frames::Message> {
    if let Some(i) = early.iter().position(|m| m.msg_id == msg_id) {
        return Ok(early.remove(i));
    }
    loop {
        let m = next_message(c).await?;
        if m.msg_id == msg_id {
            return Ok(m);
        }
    }
}

fn send(id: u64, cmid: &str, to: serde_json::Value, body: serde_json::Value) -> String {
    json!({"type": "send", "id": id, "client_msg_id": cmid, "to": to, "body": body}).to_string()
}

pub async fn dm_and_group_reach_every_device(infra: Arc<Infra>) -> anyhow::Result<()> {
    let stack = Stack::start(&infra, "fanout", 2, false).await?;
    let (alice, bob) = stack.users_on_distinct_servers("u").await?;
    let (sa, sb) = (stack.route(&alice).await?.0, stack.route(&bob).await?.0);
    anyhow::ensure!(sa != sb, "users share a server");
    let mut a1 = connect(&stack, &alice, "phone").await?;
    let mut a2 = connect(&stack, &alice, "laptop").await?;
    let mut b1 = connect(&stack, &bob, "phone").await?;
    let mut b2 = connect(&stack, &bob, "laptop").await?;

    // A forged sender is ignored: the token decides.
    let forged = json!({"type": "send", "id": 1, "client_msg_id": "dm-1", "to": {"user": bob}, "body": {"text": "hi"},
                        "from": "mallory", "sender": "mallory"}).to_string();
    a1.send_text(forged).await?;
    let (ack, early) = ack_keeping(&mut a1).await?;
    for (i, c) in [&mut a1, &mut a2, &mut b1, &mut b2].into_iter().enumerate() {
        let mut none = Vec::new();
        let early = if i == 0 {
            &mut early.clone()
        } else {
            &mut none
        };
        let m = message_with(c, early, ack.msg_id).await?;
        anyhow::ensure!(
            m.msg_id == ack.msg_id && m.from.as_str() == alice && m.from_device.as_str() == "phone",
            "{m:?}"
        );
        anyhow::ensure!(
            m.conversation_id.as_str()
                == protocol::ConversationId::direct(&m.from, &protocol::UserId::new(bob.as_str())?)
                    .as_str()
        );
        anyhow::ensure!(!m.replay && m.cursor.is_some() && m.body.get() == r#"{"text":"hi"}"#);
    }

    // Retrying the same client_msg_id gives the same msg_id.
    a1.send_text(send(2, "dm-1", json!({"user": bob}), json!({"text": "hi"})))
        .await?;
    anyhow::ensure!(
        ack_of(&mut a1).await?.msg_id == ack.msg_id,
        "retry changed the msg_id"
    );

    // A group with a third user; a non-member is refused.
    let carol = "carol-x";
    let http = reqwest::Client::new();
    let r = http
        .post(format!(
            "{}/v1/conversations",
            stack.server_http(&sa).unwrap_or_default()
        ))
        .bearer_auth(Stack::token(&alice))
        .json(&json!({"conversation_id": "team", "members": [bob, carol]}))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 201, "create: {}", r.status());
    let mut c1 = connect(&stack, carol, "tablet").await?;
    b1.send_text(send(
        3,
        "g-1",
        json!({"conversation": "team"}),
        json!({"n": 1}),
    ))
    .await?;
    let (gack, early) = ack_keeping(&mut b1).await?;
    for (i, c) in [&mut b1, &mut a1, &mut a2, &mut b2, &mut c1]
        .into_iter()
        .enumerate()
    {
        let mut none = Vec::new();
        let early = if i == 0 {
            &mut early.clone()
        } else {
            &mut none
        };
        let m = message_with(c, early, gack.msg_id)
            .await
            .context("the group message")?;
        anyhow::ensure!(m.conversation_id.as_str() == "team" && m.from.as_str() == bob);
    }
    let mut d = connect(&stack, "dave-x", "pc").await?;
    d.send_text(send(4, "g-2", json!({"conversation": "team"}), json!(1)))
        .await?;
    match d.frame(T).await.context("the refusal of a non-member")? {
        ServerFrame::Error(e) => anyhow::ensure!(
            e.code == protocol::ErrorCode::NotMember && e.id == Some(json!(4)),
            "{e:?}"
        ),
        other => anyhow::bail!("non-member got {other:?}"),
    }
    // Ephemeral skips the sending device but reaches the sender's others.
    a1.send_text(json!({"type":"send","client_msg_id":"typing-1","to":{"user": bob},"body":{"typing":true},"kind":"ephemeral"}).to_string()).await?;
    ack_of(&mut a1).await.context("the ephemeral ack")?;
    for c in [&mut a2, &mut b1, &mut b2] {
        let m = next_message(c).await.context("the ephemeral message")?;
        anyhow::ensure!(m.kind == Kind::Ephemeral && m.cursor.is_none(), "{m:?}");
    }
    anyhow::ensure!(
        a1.quiet(Duration::from_millis(500)).await,
        "the sending device got its own ephemeral message"
    );
    stack.stop().await;
    Ok(())
}

/// Disconnect, 100 sends, the partition moves (graceful drain of the old
/// owner), reconnect to the new owner with the cursor: exactly those 100 in
/// order as replay, then synced, then live; ephemeral never replayed.
pub async fn resume_on_new_owner_after_partition_moved(infra: Arc<Infra>) -> anyhow::Result<()> {
    let mut stack = Stack::start(&infra, "resume", 2, true).await?;
    let (alice, bob) = stack.users_on_distinct_servers("r").await?;
    let (bob_server, _) = stack.route(&bob).await?;
    let mut b = connect(&stack, &bob, "phone").await?;
    let mut a = connect(&stack, &alice, "phone").await?;
    a.send_text(send(0, "before", json!({"user": bob}), json!(0)))
        .await?;
    ack_of(&mut a).await?;
    let first = next_message(&mut b).await?;
    let cursor = first
        .cursor
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no cursor"))?;
    drop(b);

    let mut sent = Vec::new();
    for i in 0..100u64 {
        a.send_text(send(
            i,
            &format!("m{i}"),
            json!({"user": bob}),
            json!({"i": i}),
        ))
        .await?;
        if i % 10 == 0 {
            let eph = json!({"type":"send","client_msg_id":format!("e{i}"),"to":{"user": bob},"body":1,"kind":"ephemeral"});
            a.send_text(eph.to_string()).await?;
        }
    }
    // Acks may overlap; the order that counts is the order the client sent in.
    let mut by_index = std::collections::BTreeMap::new();
    while by_index.len() < 100 {
        let ack = ack_of(&mut a).await?;
        if let Some(i) = ack
            .client_msg_id
            .as_str()
            .strip_prefix('m')
            .and_then(|n| n.parse::<u64>().ok())
        {
            by_index.insert(i, ack.msg_id);
        }
    }
    sent.extend(by_index.into_values());
    // Move bob's partition: drain his server; a new one takes over.
    stack.add_server(|_| {})?;
    let old = stack
        .take_server(&bob_server)
        .ok_or_else(|| anyhow::anyhow!("no server {bob_server}"))?;
    old.stop().await;
    stack.wait_settled(2).await?;
    let (new_server, ws_url) = stack.route(&bob).await?;
    anyhow::ensure!(new_server != bob_server, "bob's partition did not move");

    let mut b = WsClient::connect(&ws_url).await?;
    match b.hello(&Stack::token(&bob), "phone", Some(cursor)).await? {
        Event::Frame(ServerFrame::Welcome(w)) => anyhow::ensure!(w.resumed, "not resumed: {w:?}"),
        other => anyhow::bail!("expected welcome, got {other:?}"),
    }
    let mut replayed = Vec::new();
    loop {
        match b.frame(T).await? {
            ServerFrame::Message(m) => {
                anyhow::ensure!(
                    m.replay && m.kind == Kind::Chat,
                    "non-replay or ephemeral during replay: {m:?}"
                );
                replayed.push(m.msg_id);
            }
            ServerFrame::Synced(_) => break,
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    if replayed != sent {
        let mut extra = Vec::new();
        while let Ok(ServerFrame::Message(m)) = b.frame(Duration::from_secs(2)).await {
            extra.push((
                m.replay,
                m.cursor.map(|c| c.offset),
                sent.iter().position(|x| *x == m.msg_id),
            ));
        }
        eprintln!("after synced: {extra:?}");
    }
    anyhow::ensure!(
        replayed == sent,
        "replayed {} messages, {} expected, in order: {}",
        replayed.len(),
        sent.len(),
        replayed == sent
    );
    let mut a = connect(&stack, &alice, "phone").await?;
    a.send_text(send(999, "after", json!({"user": bob}), json!("live")))
        .await?;
    let live_ack = ack_of(&mut a).await?;
    let live = next_message(&mut b).await?;
    anyhow::ensure!(
        !live.replay && live.msg_id == live_ack.msg_id,
        "live after synced: {live:?}"
    );
    let unique: HashSet<_> = replayed.iter().collect();
    anyhow::ensure!(unique.len() == 100, "duplicates in the replay");
    stack.stop().await;
    Ok(())
}

async fn expect_error(
    c: &mut WsClient,
    code: protocol::ErrorCode,
) -> anyhow::Result<protocol::frames::ErrorFrame> {
    match c.frame(T).await? {
        ServerFrame::Error(e) if e.code == code => Ok(e),
        other => anyhow::bail!("expected error {code:?}, got {other:?}"),
    }
}

/// Every bad input of docs/protocol.md ("WebSocket") gets its error or close code, and the
/// connection survives where §4 says it does.
pub async fn bad_input_gets_its_code(infra: Arc<Infra>) -> anyhow::Result<()> {
    use protocol::ErrorCode::*;
    let stack = Stack::start_with(&infra, "bad", 1, false, |c| {
        c.hello_timeout = Duration::from_secs(1);
        c.sends_per_sec = 1;
        c.send_burst = 3;
    })
    .await?;
    let (_, ws) = stack.route("alice").await?;
    let mut c = WsClient::connect(&ws).await?;
    anyhow::ensure!(
        c.closed(Duration::from_secs(5)).await? == Some(4002),
        "no hello"
    );
    let mut c = WsClient::connect(&ws).await?;
    anyhow::ensure!(
        matches!(
            c.hello("garbage", "d", None).await?,
            Event::Closed(Some(4001))
        ),
        "bad token"
    );
    let mut c = WsClient::connect(&ws).await?;
    anyhow::ensure!(
        matches!(
            c.hello(&Stack::expired_token("alice"), "d", None).await?,
            Event::Closed(Some(4001))
        ),
        "expired token"
    );
    let mut c = WsClient::connect(&ws).await?;
    c.send_text(r#"{"type":"send"}"#).await?;
    anyhow::ensure!(c.closed(T).await? == Some(4001), "first frame not a hello");

    let mut c = connect(&stack, "alice", "d1").await?;
    c.send_text("{").await?;
    expect_error(&mut c, BadJson).await?;
    c.send_text(r#"{"type":"nope","id":"x"}"#).await?;
    anyhow::ensure!(expect_error(&mut c, UnknownType).await?.id == Some(json!("x")));
    c.send_text(r#"{"type":"send","id":1,"client_msg_id":5,"to":{"user":"bob"},"body":1}"#)
        .await?;
    anyhow::ensure!(expect_error(&mut c, InvalidField).await?.id == Some(json!(1)));
    c.send_text(send(
        2,
        "big",
        json!({"user": "bob"}),
        json!("x".repeat(70 * 1024)),
    ))
    .await?;
    anyhow::ensure!(expect_error(&mut c, TooLarge).await?.id == Some(json!(2)));
    c.send_text(send(3, "ok", json!({"user": "bob"}), json!(1)))
        .await?;
    anyhow::ensure!(
        ack_of(&mut c).await?.id == Some(json!(3)),
        "the connection did not survive bad frames"
    );

    // Burst of 3 with one used: two more pass, then rate_limited, then 4008.
    let mut limited = 0;
    for i in 0..60u64 {
        c.send_text(send(
            10 + i,
            &format!("r{i}"),
            json!({"user": "bob"}),
            json!(i),
        ))
        .await?;
    }
    let code = loop {
        match c.next(T).await? {
            Event::Frame(ServerFrame::Error(e)) if e.code == RateLimited => limited += 1,
            Event::Frame(_) => {}
            Event::Closed(code) => break code,
        }
    };
    anyhow::ensure!(
        limited > 0 && code == Some(4008),
        "rate limit: {limited} errors, close {code:?}"
    );

    let mut c = connect(&stack, "alice", "d2").await?;
    for _ in 0..11 {
        c.send_text("{").await?;
    }
    anyhow::ensure!(
        c.closed(T).await? == Some(4003),
        "repeated errors must close with 4003"
    );
    let mut c = connect(&stack, "alice", "d3").await?;
    c.send_text("x".repeat(200 * 1024)).await?;
    anyhow::ensure!(
        c.closed(T).await? == Some(1009),
        "an oversize frame must close with 1009"
    );
    stack.stop().await;
    Ok(())
}

pub async fn history_pages_return_every_message_once(infra: Arc<Infra>) -> anyhow::Result<()> {
    let stack = Stack::start(&infra, "history", 1, true).await?;
    let base = stack.servers[0].url();
    let http = reqwest::Client::new();
    let alice = Stack::token("alice");
    let r = http
        .post(format!("{base}/v1/conversations"))
        .bearer_auth(&alice)
        .json(&json!({"conversation_id": "room", "members": ["bob"]}))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 201);
    let mut sent = HashSet::new();
    for i in 0..25 {
        let body = json!({"client_msg_id": format!("h{i}"), "to": {"conversation": "room"}, "body": {"i": i}});
        let v: serde_json::Value = http
            .post(format!("{base}/v1/messages"))
            .bearer_auth(&alice)
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        sent.insert(v["msg_id"].as_str().unwrap_or_default().to_owned());
    }
    let bob = Stack::token("bob");
    let page = |before: Option<String>| {
        let (http, base, bob) = (http.clone(), base.clone(), bob.clone());
        async move {
            let mut url = format!("{base}/v1/conversations/room/messages?limit=10");
            if let Some(b) = before {
                url.push_str(&format!("&before={b}"));
            }
            let v: serde_json::Value = http
                .get(url)
                .bearer_auth(&bob)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            anyhow::Ok(v)
        }
    };
    harness::wait_until(
        "the persister wrote all 25",
        Duration::from_secs(30),
        || async {
            let url = format!("{base}/v1/conversations/room/messages?limit=100");
            let Ok(r) = http.get(url).bearer_auth(&bob).send().await else {
                return false;
            };
            r.json::<serde_json::Value>()
                .await
                .map(|v| v["messages"].as_array().map(Vec::len) == Some(25))
                .unwrap_or(false)
        },
    )
    .await?;
    let (mut seen, mut before, mut pages, mut last_at) = (Vec::new(), None, 0, i64::MAX);
    loop {
        let v = page(before.clone()).await?;
        pages += 1;
        for m in v["messages"].as_array().cloned().unwrap_or_default() {
            let at = m["sent_at_ms"].as_i64().unwrap_or_default();
            anyhow::ensure!(at <= last_at, "history not newest first");
            last_at = at;
            seen.push(m["msg_id"].as_str().unwrap_or_default().to_owned());
        }
        match v["next_before"].as_str() {
            Some(b) => before = Some(b.to_owned()),
            None => break,
        }
    }
    let unique: HashSet<String> = seen.iter().cloned().collect();
    anyhow::ensure!(
        seen.len() == 25 && unique == sent && pages == 3,
        "{} seen in {pages} pages",
        seen.len()
    );
    let r = http
        .get(format!("{base}/v1/conversations/room/messages"))
        .bearer_auth(Stack::token("carol"))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 403, "non-member read history: {}", r.status());
    let r = http
        .get(format!("{base}/v1/conversations/nope/messages"))
        .bearer_auth(&bob)
        .send()
        .await?;
    anyhow::ensure!(r.status() == 404);
    let r = http
        .get(format!("{base}/v1/conversations/room/messages?before=zzz"))
        .bearer_auth(&bob)
        .send()
        .await?;
    anyhow::ensure!(r.status() == 400);
    let r = http
        .get(format!("{base}/v1/conversations/room/messages"))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 401);
    stack.stop().await;
    Ok(())
}

/// SIGTERM-equivalent graceful stop of a server under traffic: its clients
/// are redirected and resume on the new owners; no chat message is lost.
pub async fn drain_under_traffic_loses_nothing(infra: Arc<Infra>) -> anyhow::Result<()> {
    let mut stack = Stack::start(&infra, "drain", 3, true).await?;
    let users: Vec<String> = (0..8).map(|i| format!("rcv{i}")).collect();
    let receivers = harness::Receivers::start(&stack.coordinator.url(), &users).await?;
    // Drain the server that hosts the most receivers, so the hand-off is exercised.
    let mut hosted: std::collections::BTreeMap<String, usize> = Default::default();
    for u in &users {
        *hosted.entry(stack.route(u).await?.0).or_default() += 1;
    }
    let victim = hosted
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(s, _)| s.clone())
        .ok_or_else(|| anyhow::anyhow!("no routes"))?;
    let http = reqwest::Client::new();
    let token = Stack::token("sender");
    let mut expected: Vec<Vec<protocol::MsgId>> = vec![Vec::new(); users.len()];
    let mut stopping = None;
    for i in 0..240usize {
        if i == 60 {
            let handle = stack
                .take_server(&victim)
                .ok_or_else(|| anyhow::anyhow!("no victim"))?;
            stopping = Some(tokio::spawn(handle.stop()));
        }
        let to = i % users.len();
        let body =
            json!({"client_msg_id": format!("c{i}"), "to": {"user": users[to]}, "body": {"i": i}});
        let msg_id = loop {
            // Retry on another live server with the same client_msg_id: the same msg_id.
            let target = stack.servers[i % stack.servers.len()].url();
            match http
                .post(format!("{target}/v1/messages"))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => {
                    break r.json::<serde_json::Value>().await?["msg_id"]
                        .as_str()
                        .unwrap_or_default()
                        .parse()?
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        expected[to].push(protocol::MsgId(msg_id));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Some(s) = stopping {
        s.await?;
    }
    receivers
        .expect_each(|i| expected[i].clone(), Duration::from_secs(30))
        .await?;
    let inboxes = &receivers.inboxes;
    let moved: usize = inboxes
        .iter()
        .filter_map(|i| {
            i.lock()
                .ok()
                .map(|o| usize::from(o.close_codes.contains(&Some(4006))))
        })
        .sum();
    let resumed: usize = inboxes
        .iter()
        .filter_map(|i| i.lock().ok().map(|o| o.resumed))
        .sum();
    let sent: usize = expected.iter().map(Vec::len).sum();
    eprintln!("    {sent} chat messages, 0 lost; {moved} receivers closed with 4006 and {resumed} resumed sessions");
    anyhow::ensure!(moved > 0, "no receiver was on the drained server");
    receivers.stop().await;
    stack.stop().await;
    Ok(())
}

/// A server that loses its etcd lease closes its sessions with 4006, then
/// re-registers and serves again.
pub async fn lost_lease_closes_sessions_and_reregisters(infra: Arc<Infra>) -> anyhow::Result<()> {
    let stack = Stack::start(&infra, "lease", 1, false).await?;
    let mut c = connect(&stack, "alice", "d").await?;
    let layout = protocol::EtcdLayout::new(&stack.prefix);
    let ms1 = protocol::ServerId::new("ms1")?;
    let mut etcd = service::etcd::connect(&infra.etcd_endpoints()).await?;
    let resp = etcd.get(layout.server_key(&ms1), None).await?;
    let lease = resp
        .kvs()
        .first()
        .map(|kv| kv.lease())
        .ok_or_else(|| anyhow::anyhow!("ms1 is not registered"))?;
    etcd.lease_revoke(lease).await?;
    let code = c.closed(T).await?;
    anyhow::ensure!(
        code == Some(4006),
        "sessions must close with 4006 when the lease is lost, got {code:?}"
    );
    harness::wait_until(
        "ms1 registered again under a new lease",
        Duration::from_secs(20),
        || async {
            let Ok(r) = etcd.clone().get(layout.server_key(&ms1), None).await else {
                return false;
            };
            r.kvs().first().is_some_and(|kv| kv.lease() != lease)
        },
    )
    .await?;
    stack.wait_settled(1).await?;
    let _again = connect(&stack, "alice", "d").await?;
    stack.stop().await;
    Ok(())
}

/// Every metric the Grafana dashboard queries is exported by a running stack
/// (labelled families appear once they have a sample, so each is exercised).
pub async fn dashboard_queries_only_exported_metrics(infra: Arc<Infra>) -> anyhow::Result<()> {
    let stack = Stack::start(&infra, "metrics", 1, true).await?;
    let mut a = connect(&stack, "alice", "d").await?;
    a.send_text(send(1, "m1", json!({"user": "bob"}), json!(1)))
        .await?;
    ack_of(&mut a).await?;
    a.send_text("{").await?;
    expect_error(&mut a, protocol::ErrorCode::BadJson).await?;
    let (_, ws) = stack.route("alice").await?;
    let mut bad = WsClient::connect(&ws).await?;
    bad.hello("not-a-token", "d", None).await?;
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana/switchboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let mut wanted = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().cloned().unwrap_or_default() {
        for target in panel["targets"].as_array().cloned().unwrap_or_default() {
            let expr = target["expr"].as_str().unwrap_or_default().to_owned();
            for word in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("switchboard_"))
            {
                wanted.insert(
                    word.trim_end_matches("_bucket")
                        .trim_end_matches("_total")
                        .to_owned(),
                );
            }
        }
    }
    let persister = stack
        .persister
        .as_ref()
        .map(|p| p.url())
        .unwrap_or_default();
    // A dashboard read wrongly (no panels, another layout) must not pass
    // for one whose every query is exported.
    anyhow::ensure!(
        wanted.len() >= 10,
        "the dashboard yielded only {} metric names: {wanted:?}",
        wanted.len()
    );
    let bases = [stack.coordinator.url(), stack.servers[0].url(), persister];
    let missing = std::sync::Mutex::new(wanted.clone());
    let _ = harness::wait_until(
        "every metric the dashboard queries is exported",
        Duration::from_secs(20),
        || async {
            let mut exported = String::new();
            for base in &bases {
                exported.push_str(&harness::scrape(base).await.unwrap_or_default());
            }
            let Ok(mut missing) = missing.lock() else {
                return false;
            };
            missing.retain(|family| {
                !exported.lines().any(|l| {
                    l.starts_with("# TYPE ") && l.split_whitespace().nth(2) == Some(family.as_str())
                })
            });
            missing.is_empty()
        },
    )
    .await;
    let missing = missing.into_inner().unwrap_or_default();
    anyhow::ensure!(
        missing.is_empty(),
        "the dashboard queries metrics nobody exports: {missing:?}"
    );
    stack.stop().await;
    Ok(())
}
