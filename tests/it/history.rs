//! History reads its own writes (docs/protocol.md, "History"): a message is
//! in `GET /v1/conversations/{id}/messages` as soon as its send is
//! acknowledged, before the persister has written it, and once only after.

use harness::{Infra, Stack};
use protocol::{Kind, MsgId, Target, UserId};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use switchboard_client::http::Api;

fn api(stack: &Stack, user: &str) -> Api {
    Api::new(&stack.coordinator.url(), &Stack::token(user))
}

/// Every page of `conversation` as `user` sees it, `limit` at a time.
async fn all_pages(
    api: &Api,
    user: &str,
    conversation: &str,
    limit: u32,
) -> anyhow::Result<Vec<MsgId>> {
    let (mut ids, mut before) = (Vec::new(), None::<String>);
    loop {
        let page = api
            .history(user, conversation, before.as_deref(), limit)
            .await?;
        ids.extend(page.messages.iter().map(|m| m.msg_id));
        match page.next_before {
            Some(next) => before = Some(next),
            None => return Ok(ids),
        }
    }
}

async fn send(api: &Api, from: &str, to: &Target, n: usize) -> anyhow::Result<MsgId> {
    let body = json!({"n": n});
    Ok(api
        .send(from, &format!("h{n}"), to, body, Kind::Chat)
        .await?)
}

pub async fn an_acknowledged_send_is_in_history_at_once(infra: Arc<Infra>) -> anyhow::Result<()> {
    // No persister at first: PostgreSQL holds none of these messages.
    let mut stack = Stack::start(&infra, "history", 2, false).await?;
    let (alice, bob) = (api(&stack, "alice"), api(&stack, "bob"));
    let dm = Target::User(UserId::new("bob")?);
    let mut sent = Vec::new();
    for n in 0..5 {
        sent.push(send(&alice, "alice", &dm, n).await?);
        // Read right after the ack, by the sender and by the recipient.
        for (api, user) in [(&alice, "alice"), (&bob, "bob")] {
            let page = api.history(user, "dm:alice,bob", None, 50).await?;
            let got: Vec<MsgId> = page.messages.iter().map(|m| m.msg_id).collect();
            let want: Vec<MsgId> = sent.iter().rev().copied().collect();
            anyhow::ensure!(
                got == want,
                "{user} read {got:?} right after sending {want:?}"
            );
        }
    }
    alice
        .create_conversation("alice", Some("crew"), &["bob".into()])
        .await?;
    let crew = Target::Conversation(protocol::ConversationId::new("crew")?);
    let group = send(&alice, "alice", &crew, 100).await?;
    let page = bob.history("bob", "crew", None, 50).await?;
    anyhow::ensure!(
        page.messages.iter().map(|m| m.msg_id).collect::<Vec<_>>() == [group],
        "group history right after the send: {:?}",
        page.messages
    );
    let paged = all_pages(&bob, "bob", "dm:alice,bob", 2).await?;
    anyhow::ensure!(
        paged == sent.iter().rev().copied().collect::<Vec<_>>(),
        "pages of 2: {paged:?}"
    );

    // The persister writes them; then two more are sent: pages mix stored
    // rows and log records, each message once.
    stack.start_persister()?;
    harness::wait_until(
        "the persister wrote the DMs",
        Duration::from_secs(30),
        || async {
            let rows = infra_history(&stack).await.unwrap_or_default();
            rows >= sent.len()
        },
    )
    .await?;
    for n in 5..7 {
        sent.push(send(&alice, "alice", &dm, n).await?);
    }
    let want: Vec<MsgId> = sent.iter().rev().copied().collect();
    for limit in [1, 3, 50] {
        let got = all_pages(&bob, "bob", "dm:alice,bob", limit).await?;
        anyhow::ensure!(
            got == want,
            "pages of {limit} across the persister's seam: {got:?}, want {want:?}"
        );
    }
    stack.stop().await;
    Ok(())
}

/// Rows of `dm:alice,bob` in PostgreSQL itself.
async fn infra_history(stack: &Stack) -> anyhow::Result<usize> {
    let store = store::Store::connect(&stack.database_url).await?;
    let dm = protocol::ConversationId::new("dm:alice,bob")?;
    Ok(store.history(&dm, None, 500).await?.len())
}
