//! The publish API for backends: API keys (never user tokens, and API keys
//! never on user endpoints), `system:` senders no user token may claim,
//! idempotent msg_ids, users and conversations as targets, batches.

use crate::messaging::{connect, next_message};
use harness::{Event, Infra, Stack, WsClient};
use protocol::PublishResult;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "backend-key-0123456789abcdef-0123456789";

async fn post(url: &str, bearer: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
    let r = reqwest::Client::new()
        .post(url)
        .bearer_auth(bearer)
        .json(body)
        .send()
        .await?;
    Ok((r.status().as_u16(), r.json().await.unwrap_or_default()))
}

fn publication(to: Value, key: &str) -> Value {
    json!({"to": to, "body": {"status": "shipped"}, "from": "system:orders", "idempotency_key": key})
}

pub async fn backends_publish_with_api_keys(infra: Arc<Infra>) -> anyhow::Result<()> {
    let stack = Stack::start_with(&infra, "publish", 2, true, |c| {
        c.api_keys = vec![KEY.to_owned().into()];
    })
    .await?;
    let (s0, s1) = (stack.servers[0].url(), stack.servers[1].url());
    let mut a = connect(&stack, "pa", "d").await?;
    let mut b = connect(&stack, "pb", "d").await?;

    let item = publication(json!({"users": ["pa", "pb"]}), "order-1");
    let (status, v) = post(&format!("{s0}/v1/publish"), KEY, &item).await?;
    anyhow::ensure!(status == 200, "publish: {status} {v}");
    let msg_id: protocol::MsgId = serde_json::from_value(v["msg_id"].clone())?;
    for device in [&mut a, &mut b] {
        let m = next_message(device).await?;
        anyhow::ensure!(
            m.msg_id == msg_id && m.from.as_str() == "system:orders",
            "{m:?}"
        );
    }
    let (_, again) = post(&format!("{s1}/v1/publish"), KEY, &item).await?;
    anyhow::ensure!(
        again["msg_id"] == v["msg_id"],
        "a retry got another msg_id: {again}"
    );
    // The retry is a second record with the same msg_id: clients drop it.
    for device in [&mut a, &mut b] {
        anyhow::ensure!(next_message(device).await?.msg_id == msg_id);
    }

    // Keys and tokens stay on their own side.
    let user_token = Stack::token("pa");
    for (bearer, path, body) in [
        ("not-the-key", "/v1/publish", &item),
        (user_token.as_str(), "/v1/publish", &item),
        (
            KEY,
            "/v1/messages",
            &json!({"client_msg_id": "x", "to": {"user": "pb"}, "body": {}}),
        ),
    ] {
        let (status, v) = post(&format!("{s0}{path}"), bearer, body).await?;
        anyhow::ensure!(
            status == 401 && v["code"] == "unauthorized",
            "{path}: {status} {v}"
        );
    }
    let not_system =
        json!({"to": {"users": ["pa"]}, "body": {}, "from": "pa", "idempotency_key": "k"});
    let (status, _) = post(&format!("{s0}/v1/publish"), KEY, &not_system).await?;
    anyhow::ensure!(status == 400, "a non-system sender was accepted");
    let impostor =
        switchboard_client::token::mint_hs256(harness::stack::JWT_SECRET, "system:orders", 60)?;
    let (_, ws_url) = stack.route("pa").await?;
    let mut c = WsClient::connect(&ws_url).await?;
    match c.hello(&impostor, "d", None).await? {
        Event::Closed(Some(4001)) => {}
        other => anyhow::bail!("a system: token was accepted: {other:?}"),
    }

    // A conversation, a batch with one bad item, and the Rust client.
    let create = json!({"conversation_id": "pubroom", "members": ["pb"]});
    let (status, _) = post(&format!("{s0}/v1/conversations"), &user_token, &create).await?;
    anyhow::ensure!(status == 201, "create: {status}");
    let batch = json!({"items": [
        publication(json!({"users": ["pb"]}), "b-1"),
        publication(json!({"conversation": "pubroom"}), "b-2"),
        publication(json!({"conversation": "no-such-room"}), "b-3"),
    ]});
    let (status, v) = post(&format!("{s1}/v1/publish/batch"), KEY, &batch).await?;
    anyhow::ensure!(status == 200, "batch: {status} {v}");
    let results: Vec<PublishResult> = serde_json::from_value(v["results"].clone())?;
    match results.as_slice() {
        [PublishResult::Accepted { .. }, PublishResult::Accepted { .. }, PublishResult::Refused { error }]
            if error.code == protocol::ErrorCode::NotMember => {}
        other => anyhow::bail!("batch results: {other:?}"),
    }
    // pa created the room (a member); pb is named in b-1 and is a member.
    let room = next_message(&mut a).await?;
    anyhow::ensure!(
        room.conversation_id.as_str() == "pubroom",
        "order-1 is {msg_id}; got {room:?}"
    );
    let mut got = [next_message(&mut b).await?, next_message(&mut b).await?];
    got.sort_by_key(|m| m.conversation_id.to_string());
    let convs: Vec<&str> = got.iter().map(|m| m.conversation_id.as_str()).collect();
    anyhow::ensure!(convs == ["pubroom", "system:orders"], "{convs:?}");
    let api = switchboard_client::Api::new(&stack.coordinator.url(), KEY);
    let rust: protocol::Publish =
        serde_json::from_value(publication(json!({"users": ["pa"]}), "rust-1"))?;
    let id = api.publish(&rust).await?;
    anyhow::ensure!(next_message(&mut a).await?.msg_id == id);
    anyhow::ensure!(
        a.quiet(Duration::from_millis(300)).await,
        "a duplicate arrived"
    );
    let acked: Vec<(usize, protocol::MsgId)> = vec![(0, msg_id), (0, id)];
    harness::traffic::expect_persisted(&stack, &acked).await?;
    stack.stop().await;
    Ok(())
}
