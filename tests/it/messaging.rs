//! End to end through real broker, etcd and PostgreSQL with two servers.

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
    let ack = ack_of(&mut a1).await?;
    for c in [&mut a1, &mut a2, &mut b1, &mut b2] {
        let m = next_message(c).await?;
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
    let gack = ack_of(&mut b1).await?;
    for c in [&mut a1, &mut a2, &mut b1, &mut b2, &mut c1] {
        let m = loop {
            let m = next_message(c).await?;
            if m.msg_id == gack.msg_id {
                break m;
            }
        };
        anyhow::ensure!(m.conversation_id.as_str() == "team" && m.from.as_str() == bob);
    }
    let mut d = connect(&stack, "dave-x", "pc").await?;
    d.send_text(send(4, "g-2", json!({"conversation": "team"}), json!(1)))
        .await?;
    match d.frame(T).await? {
        ServerFrame::Error(e) => anyhow::ensure!(
            e.code == protocol::ErrorCode::NotMember && e.id == Some(json!(4)),
            "{e:?}"
        ),
        other => anyhow::bail!("non-member got {other:?}"),
    }
    // Ephemeral skips the sending device but reaches the sender's others.
    a1.send_text(json!({"type":"send","client_msg_id":"typing-1","to":{"user": bob},"body":{"typing":true},"kind":"ephemeral"}).to_string()).await?;
    ack_of(&mut a1).await?;
    for c in [&mut a2, &mut b1, &mut b2] {
        let m = next_message(c).await?;
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
    while sent.len() < 100 {
        let ack = ack_of(&mut a).await?;
        if ack.client_msg_id.as_str().starts_with('m') {
            sent.push(ack.msg_id);
        }
    }
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
