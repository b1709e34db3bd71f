//! Channels: authorization by the token's claims, the per-connection limit,
//! one record per publication delivered on every server, recovery from a
//! cursor after a drain and after a crash of the subscriber's server, and
//! `recovered: false` once the log no longer holds what was missed.

use harness::{Event, Infra, Stack, WsClient};
use protocol::frames::{Subscribed, Unsubscribed};
use protocol::{ChannelName, Cursor, ErrorCode, ServerFrame};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_client::token::{mint_hs256_with, Grants};
use switchboard_client::{Client, ClientConfig};

pub(crate) const KEY: &str = "channel-key-0123456789abcdef-0123456789";
pub(crate) const T: Duration = Duration::from_secs(10);

pub(crate) fn token(user: &str, channels: &[&str], publish: &[&str]) -> String {
    let grants = Grants {
        channels: channels.iter().map(|s| s.to_string()).collect(),
        publish: publish.iter().map(|s| s.to_string()).collect(),
    };
    mint_hs256_with(harness::stack::JWT_SECRET, user, 3600, &grants).unwrap_or_default()
}

pub(crate) async fn connect(stack: &Stack, user: &str, token: &str) -> anyhow::Result<WsClient> {
    let (_, ws_url) = stack.route(user).await?;
    let mut c = WsClient::connect(&ws_url).await?;
    match c.hello(token, "d", None).await? {
        Event::Frame(ServerFrame::Welcome(_)) => Ok(c),
        other => anyhow::bail!("expected welcome, got {other:?}"),
    }
}

async fn request(c: &mut WsClient, frame: Value) -> anyhow::Result<ServerFrame> {
    c.send_text(frame.to_string()).await?;
    c.frame(T).await
}

/// Subscribes, retrying while the server's channel consumer is still opening.
pub(crate) async fn subscribe(
    c: &mut WsClient,
    channel: &str,
    cursor: Option<&Cursor>,
) -> anyhow::Result<(Vec<protocol::frames::Message>, Subscribed)> {
    let deadline = Instant::now() + T;
    let mut frame = json!({"type": "subscribe", "id": 1, "channel": channel});
    if let Some(c) = cursor {
        frame["cursor"] = json!(c.to_string());
    }
    c.send_text(frame.to_string()).await?;
    let mut recovered = Vec::new();
    loop {
        match c.frame(T).await? {
            ServerFrame::Message(m) => recovered.push(m),
            ServerFrame::Subscribed(s) => return Ok((recovered, s)),
            ServerFrame::Error(e)
                if e.code == ErrorCode::Unavailable && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                c.send_text(frame.to_string()).await?;
            }
            other => anyhow::bail!("subscribe {channel}: {other:?}"),
        }
    }
}

pub(crate) async fn publish(
    urls: &[String],
    channel: &str,
    key: &str,
    kind: &str,
) -> anyhow::Result<protocol::MsgId> {
    let body = json!({"to": {"channel": channel}, "kind": kind, "body": {"k": key},
        "from": "system:feed", "idempotency_key": key});
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    // A retry with the same idempotency key is the same publication, so any
    // live server may take it.
    for url in urls.iter().cycle() {
        let r = http
            .post(format!("{url}/v1/publish"))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await;
        if let Ok(r) = r {
            if r.status().is_success() {
                let v: Value = r.json().await?;
                return Ok(serde_json::from_value(v["msg_id"].clone())?);
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no server took publication {key}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("no servers")
}

fn error_code(f: &ServerFrame) -> Option<ErrorCode> {
    match f {
        ServerFrame::Error(e) => Some(e.code),
        _ => None,
    }
}

pub async fn channels_are_authorized_limited_and_served(infra: Arc<Infra>) -> anyhow::Result<()> {
    let stack = Stack::start_with(&infra, "chan-auth", 2, false, |c| {
        c.api_keys = vec![KEY.to_owned().into()];
        c.max_channels_per_device = 2;
        c.max_group_members = 3;
    })
    .await?;
    let urls: Vec<String> = stack.servers.iter().map(|s| s.url()).collect();
    let t = token("viewer", &["ch:news", "ch:vehicle.*"], &["ch:vehicle.*"]);
    let mut c = connect(&stack, "viewer", &t).await?;

    let refused = request(
        &mut c,
        json!({"type": "subscribe", "id": 1, "channel": "ch:sports"}),
    )
    .await?;
    anyhow::ensure!(
        error_code(&refused) == Some(ErrorCode::Forbidden),
        "{refused:?}"
    );
    let (_, s) = subscribe(&mut c, "ch:vehicle.9", None).await?;
    anyhow::ensure!(
        !s.recovered && s.channel.as_str() == "ch:vehicle.9",
        "{s:?}"
    );
    subscribe(&mut c, "ch:news", None).await?;
    let over = request(
        &mut c,
        json!({"type": "subscribe", "id": 2, "channel": "ch:vehicle.10"}),
    )
    .await?;
    anyhow::ensure!(
        error_code(&over) == Some(ErrorCode::TooManyChannels),
        "{over:?}"
    );

    // Devices publish where the `publish` claim allows, and see it themselves.
    let send = |to: &str, id: &str| json!({"type": "send", "id": id, "client_msg_id": id, "to": {"channel": to}, "body": {"lat": 1}});
    let denied = request(&mut c, send("ch:news", "n1")).await?;
    anyhow::ensure!(
        error_code(&denied) == Some(ErrorCode::Forbidden),
        "{denied:?}"
    );
    c.send_text(send("ch:vehicle.9", "v1").to_string()).await?;
    let (mut acked, mut delivered) = (false, false);
    while !(acked && delivered) {
        match c.frame(T).await? {
            ServerFrame::Ack(_) => acked = true,
            ServerFrame::Message(m) => {
                anyhow::ensure!(
                    m.channel.as_ref().map(ChannelName::as_str) == Some("ch:vehicle.9")
                        && m.cursor.is_some(),
                    "{m:?}"
                );
                delivered = true;
            }
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }

    // A backend's publication reaches a subscriber on each server once.
    let a = stack.assignment().await?;
    let other_user = (0..1000)
        .map(|i| format!("chan{i}"))
        .find(|u| owner_of(&a, u) != owner_of(&a, "viewer"))
        .ok_or_else(|| anyhow::anyhow!("no user on the other server"))?;
    let t2 = token(&other_user, &["ch:*"], &[]);
    let mut d = connect(&stack, &other_user, &t2).await?;
    subscribe(&mut d, "ch:news", None).await?;
    let id = publish(&urls, "ch:news", "n-1", "chat").await?;
    for dev in [&mut c, &mut d] {
        match dev.frame(T).await? {
            ServerFrame::Message(m) => {
                anyhow::ensure!(m.msg_id == id && m.from.as_str() == "system:feed", "{m:?}")
            }
            other => anyhow::bail!("expected the publication, got {other:?}"),
        }
    }
    let un = request(
        &mut c,
        json!({"type": "unsubscribe", "id": 3, "channel": "ch:news"}),
    )
    .await?;
    anyhow::ensure!(
        matches!(un, ServerFrame::Unsubscribed(Unsubscribed { .. })),
        "{un:?}"
    );
    publish(&urls, "ch:news", "n-2", "chat").await?;
    anyhow::ensure!(matches!(d.frame(T).await?, ServerFrame::Message(_)));
    anyhow::ensure!(
        c.next(Duration::from_millis(500)).await.is_err(),
        "an unsubscribed device still receives"
    );

    // Past SWITCHBOARD_MAX_GROUP_MEMBERS a group is refused: that audience
    // belongs in a channel.
    let http = reqwest::Client::new();
    let create = |members: Value| {
        http.post(format!("{}/v1/conversations", urls[0]))
            .bearer_auth(Stack::token("owner"))
            .json(&json!({"conversation_id": "big", "members": members}))
            .send()
    };
    let r = create(json!(["m1", "m2", "m3"])).await?;
    anyhow::ensure!(
        r.status().as_u16() == 400,
        "a group of 4 was created: {}",
        r.status()
    );
    anyhow::ensure!(create(json!(["m1", "m2"])).await?.status().as_u16() == 201);
    let add = |m: &str| {
        http.put(format!("{}/v1/conversations/big/members/{m}", urls[0]))
            .bearer_auth(Stack::token("owner"))
            .send()
    };
    anyhow::ensure!(
        add("m2").await?.status().as_u16() == 204,
        "re-adding a member"
    );
    anyhow::ensure!(
        add("m4").await?.status().as_u16() == 400,
        "a fourth member was added"
    );

    // The publish API takes channels; a channel name must be one.
    let bad =
        json!({"to": {"channel": "news"}, "body": {}, "from": "system:x", "idempotency_key": "k"});
    let r = reqwest::Client::new()
        .post(format!("{}/v1/publish", urls[0]))
        .bearer_auth(KEY)
        .json(&bad)
        .send()
        .await?;
    anyhow::ensure!(
        r.status().as_u16() == 400,
        "bad channel name accepted: {}",
        r.status()
    );
    stack.stop().await;
    Ok(())
}

/// A cursor the log no longer covers gets `recovered: false`, never a silent gap.
pub async fn channel_recovery_says_when_the_log_was_trimmed(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let stack = Stack::start_with(&infra, "chan-trim", 1, false, |c| {
        c.api_keys = vec![KEY.to_owned().into()]
    })
    .await?;
    let urls: Vec<String> = stack.servers.iter().map(|s| s.url()).collect();
    let t = token("trim", &["ch:*"], &[]);
    let mut c = connect(&stack, "trim", &t).await?;
    let (_, first) = subscribe(&mut c, "ch:scores", None).await?;
    publish(&urls, "ch:scores", "s-1", "chat").await?;
    let cursor = match c.frame(T).await? {
        ServerFrame::Message(m) => m.cursor.ok_or_else(|| anyhow::anyhow!("no cursor"))?,
        other => anyhow::bail!("{other:?}"),
    };
    anyhow::ensure!(cursor.offset > first.cursor.offset);
    drop(c);
    let missed = [
        publish(&urls, "ch:scores", "s-2", "chat").await?,
        publish(&urls, "ch:scores", "s-3", "chat").await?,
    ];
    publish(&urls, "ch:scores", "s-4", "ephemeral").await?;

    // Within the log: exactly the missed chat publications, then subscribed.
    let mut c = connect(&stack, "trim", &t).await?;
    let (recovered, s) = subscribe(&mut c, "ch:scores", Some(&cursor)).await?;
    let ids: Vec<_> = recovered.iter().map(|m| m.msg_id).collect();
    anyhow::ensure!(
        s.recovered && ids == missed,
        "recovered {ids:?} of {missed:?}: {s:?}"
    );
    anyhow::ensure!(recovered.iter().all(|m| m.replay));

    // Past the log's start: said plainly.
    let channel = ChannelName::new("ch:scores")?;
    let partition = protocol::partition_for(channel.as_str(), 2);
    infra
        .delete_records(
            &protocol::channel_topic(&stack.topic),
            partition,
            s.cursor.offset + 1,
        )
        .await?;
    let mut c = connect(&stack, "trim", &t).await?;
    let (recovered, s) = subscribe(&mut c, "ch:scores", Some(&cursor)).await?;
    anyhow::ensure!(!s.recovered && recovered.is_empty(), "{recovered:?} {s:?}");
    stack.stop().await;
    Ok(())
}

fn client(stack: &Stack, user: &str) -> Client {
    Client::start(client_config(stack, user))
}

pub(crate) fn client_config(stack: &Stack, user: &str) -> ClientConfig {
    ClientConfig {
        coordinator_url: stack.coordinator.url(),
        token: token(user, &["ch:live.*"], &[]),
        user_id: user.into(),
        device_id: "screen".into(),
        cursor: None,
        max_backoff: Duration::from_secs(1),
        report_duplicates: false,
        local_address: None,
        refresh: None,
    }
}

/// Subscribers on every server; the server of one is drained and the server
/// of another crashes while publications go on: every subscriber's app gets
/// every publication once, and the two resubscribe with `recovered: true`.
pub async fn channel_subscribers_lose_nothing_across_drain_and_crash(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let mut stack = Stack::start_with(&infra, "chan-fail", 3, false, |c| {
        c.api_keys = vec![KEY.to_owned().into()]
    })
    .await?;
    let a = stack.assignment().await?;
    let owner = |u: &str| owner_of(&a, u);
    let users = two_per_server(&a, "fan")?;
    let channel = ChannelName::new("ch:live.match")?;
    let mut clients = Vec::new();
    for u in &users {
        let c = client(&stack, u);
        tokio::time::timeout(Duration::from_secs(20), c.subscribe(&channel)).await??;
        clients.push(c);
    }
    let drained = owner(&users[0]);
    let crashed_user = users
        .iter()
        .find(|u| owner(u) != drained)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("all users on one server"))?;
    let crashed = owner(&crashed_user);

    let mut sent = Vec::new();
    for i in 0..150 {
        if i == 50 {
            let old = stack
                .take_server(&drained)
                .ok_or_else(|| anyhow::anyhow!("no {drained}"))?;
            stack.add_server(|c| c.api_keys = vec![KEY.to_owned().into()])?;
            tokio::spawn(old.stop());
        }
        if i == 100 {
            let old = stack
                .take_server(&crashed)
                .ok_or_else(|| anyhow::anyhow!("no {crashed}"))?;
            old.kill().await;
            stack.add_server(|c| c.api_keys = vec![KEY.to_owned().into()])?;
        }
        let urls: Vec<String> = stack.servers.iter().map(|s| s.url()).collect();
        sent.push(publish(&urls, channel.as_str(), &format!("p{i}"), "chat").await?);
    }
    let want: HashSet<_> = sent.iter().copied().collect();
    let mut recovered: HashMap<String, usize> = HashMap::new();
    let affected = [users[0].clone(), crashed_user.clone()];
    for (u, c) in users.iter().zip(clients.iter_mut()) {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        // Recovered publications come before their `subscribed`: read on
        // until both are in.
        let done = |got: &Vec<_>, rec: &HashMap<String, usize>| {
            got.len() >= sent.len() && (!affected.contains(u) || rec.contains_key(u))
        };
        while !done(&got, &recovered) && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(5), c.next_event()).await {
                Ok(Some(switchboard_client::Event::Message(m))) => got.push(m.msg_id),
                Ok(Some(switchboard_client::Event::Subscribed {
                    recovered: true, ..
                })) => *recovered.entry(u.clone()).or_default() += 1,
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => break,
            }
        }
        let unique: HashSet<_> = got.iter().copied().collect();
        let missing = want.difference(&unique).count();
        anyhow::ensure!(
            missing == 0 && got.len() == unique.len(),
            "{u}: {missing} of {} missing, {} duplicates",
            sent.len(),
            got.len() - unique.len()
        );
    }
    for u in &affected {
        anyhow::ensure!(
            recovered.get(u).copied().unwrap_or(0) >= 1,
            "{u} never resubscribed with recovery: {recovered:?}"
        );
    }
    for c in clients {
        c.close().await;
    }
    stack.stop().await;
    Ok(())
}

/// Six users named `<prefix><n>`, two on each of three servers.
pub(crate) fn two_per_server(
    a: &protocol::Assignment,
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
    let owner = |u: &str| owner_of(a, u);
    let mut users: Vec<String> = Vec::new();
    for i in 0..500 {
        let u = format!("{prefix}{i}");
        if users.iter().filter(|v| owner(v) == owner(&u)).count() < 2 {
            users.push(u);
        }
        if users.len() == 6 {
            break;
        }
    }
    anyhow::ensure!(users.len() == 6, "users on three servers: {users:?}");
    Ok(users)
}

pub(crate) fn owner_of(a: &protocol::Assignment, user: &str) -> String {
    a.owner(protocol::partition_for(user, a.partitions))
        .map(|s| s.server_id.to_string())
        .unwrap_or_default()
}
