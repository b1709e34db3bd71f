//! Connection events (`<topic>.events`): every `connected` is followed by
//! exactly one `disconnected` of its session, also when the server that
//! held it was drained or killed; the persister keeps sessions and
//! last_seen from them.

use crate::channels::{client_config, owner_of, two_per_server};
use harness::topic::read_all;
use harness::{wait_until, Infra, Stack};
use protocol::{ChannelName, ConnectionEvent, DisconnectReason, EventKind};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use switchboard_client::Client;
use uuid::Uuid;

/// What the topic says of one session, in log order.
#[derive(Debug, Default)]
struct Story {
    user: String,
    server: String,
    events: Vec<(EventKind, Option<DisconnectReason>)>,
}

async fn stories(stack: &Stack) -> anyhow::Result<BTreeMap<Uuid, Story>> {
    let topic = protocol::events_topic(&stack.topic);
    let mut out: BTreeMap<Uuid, Story> = BTreeMap::new();
    for (p, offset, payload) in read_all(stack.brokers(), &topic, stack.partitions).await? {
        let e = ConnectionEvent::decode(&payload)
            .map_err(|e| anyhow::anyhow!("partition {p} offset {offset}: {e}"))?;
        let home = protocol::partition_for(e.user.as_str(), stack.partitions);
        anyhow::ensure!(p == home, "{e:?} in partition {p}, not the user's {home}");
        let story = out.entry(e.session).or_default();
        story.user = e.user.to_string();
        story.server = e.server.to_string();
        story.events.push((e.event, e.reason));
    }
    Ok(out)
}

/// `Ok` when every session reads connected, (un)subscriptions, then exactly
/// one disconnected; otherwise what is wrong.
fn complete(stories: &BTreeMap<Uuid, Story>) -> Result<(), String> {
    for (id, s) in stories {
        let kinds: Vec<EventKind> = s.events.iter().map(|e| e.0).collect();
        let ends = kinds
            .iter()
            .filter(|k| **k == EventKind::Disconnected)
            .count();
        let starts = kinds.iter().filter(|k| **k == EventKind::Connected).count();
        let ordered = kinds.first() == Some(&EventKind::Connected)
            && kinds.last() == Some(&EventKind::Disconnected);
        if starts != 1 || ends != 1 || !ordered {
            return Err(format!("session {id} of {}: {:?}", s.user, s.events));
        }
    }
    Ok(())
}

fn reasons(stories: &BTreeMap<Uuid, Story>, user: &str) -> Vec<DisconnectReason> {
    stories
        .values()
        .filter(|s| s.user == user)
        .filter_map(|s| s.events.last().and_then(|e| e.1))
        .collect()
}

/// Six users on three servers, each subscribed to a channel; the server of
/// two of them drains, another's is killed (no drain, no lease revoke), the
/// clients reconnect to the last server and close. Every session then has
/// exactly one `disconnected`: `drain`, `server_lost` (written by the
/// partition's next owner) or `client_close`; the store holds no open
/// session and a last_seen for everyone.
pub async fn every_connected_has_one_disconnected_after_a_drain_and_a_kill(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let mut stack = Stack::start(&infra, "conn-events", 3, true).await?;
    let a = stack.assignment().await?;
    let users = two_per_server(&a, "ev")?;
    let channel = ChannelName::new("ch:live.events")?;
    let mut clients = Vec::new();
    for u in &users {
        let c = Client::start(client_config(&stack, u));
        tokio::time::timeout(Duration::from_secs(20), c.subscribe(&channel)).await??;
        clients.push(c);
    }
    let by_server = |server: &str| -> Vec<String> {
        let on = users.iter().filter(|u| owner_of(&a, u) == server);
        on.cloned().collect()
    };
    let drained = owner_of(&a, &users[0]);
    let killed = users
        .iter()
        .map(|u| owner_of(&a, u))
        .find(|s| *s != drained)
        .ok_or_else(|| anyhow::anyhow!("all users on one server"))?;
    let gone = |id: &str| anyhow::anyhow!("no server {id}");
    stack
        .take_server(&drained)
        .ok_or_else(|| gone(&drained))?
        .stop()
        .await;
    let elsewhere = |s: &Story| s.server != drained;
    reconnected(&stack, &by_server(&drained), elsewhere).await?;
    stack
        .take_server(&killed)
        .ok_or_else(|| gone(&killed))?
        .kill()
        .await;
    let survivor = a
        .servers
        .keys()
        .map(|s| s.to_string())
        .find(|s| *s != drained && *s != killed)
        .ok_or_else(|| anyhow::anyhow!("no third server"))?;
    reconnected(&stack, &users, |s: &Story| s.server == survivor).await?;
    for c in clients {
        c.close().await;
    }
    let s = all_complete(&stack).await?;
    let count = |u: &str, r| reasons(&s, u).iter().filter(|x| **x == r).count();
    let expect = [
        (by_server(&drained), DisconnectReason::Drain),
        (by_server(&killed), DisconnectReason::ServerLost),
        (users.clone(), DisconnectReason::ClientClose),
    ];
    for (who, reason) in expect {
        for u in who {
            let got = reasons(&s, &u);
            anyhow::ensure!(count(&u, reason) == 1, "{u}: {got:?}, not one {reason:?}");
        }
    }
    let subscribed = s
        .values()
        .filter(|x| x.events.iter().any(|e| e.0 == EventKind::Subscribed))
        .count();
    anyhow::ensure!(
        subscribed >= users.len(),
        "{subscribed} sessions subscribed"
    );
    stored_closed(&stack, &users).await?;
    stack.stop().await;
    Ok(())
}

/// Waits until every session in the topic is complete (see `complete`).
async fn all_complete(stack: &Stack) -> anyhow::Result<BTreeMap<Uuid, Story>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let s = stories(stack).await?;
        match complete(&s) {
            Ok(()) => return Ok(s),
            Err(e) if tokio::time::Instant::now() > deadline => anyhow::bail!("after 40 s: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// The persister's view: no session open, a last_seen for each of `users`.
async fn stored_closed(stack: &Stack, users: &[String]) -> anyhow::Result<()> {
    let store = store::Store::connect(&stack.database_url).await?;
    let all: Vec<u32> = (0..stack.partitions).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let open = store.open_sessions(&all).await?;
        if open.is_empty() {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "open in the store: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ids = users
        .iter()
        .map(protocol::UserId::new)
        .collect::<Result<Vec<_>, _>>()?;
    let seen: HashMap<_, _> = store.last_seen(&ids).await?.into_iter().collect();
    anyhow::ensure!(seen.len() == users.len(), "last_seen of {seen:?}");
    Ok(())
}

/// Waits until each of `moved` has a session in the topic that is `place`.
async fn reconnected(
    stack: &Stack,
    moved: &[String],
    place: impl Fn(&Story) -> bool,
) -> anyhow::Result<()> {
    let place = &place;
    wait_until(
        "moved users reconnected",
        Duration::from_secs(30),
        || async move {
            let s = stories(stack).await.unwrap_or_default();
            let there = |u: &String| s.values().any(|x| x.user == *u && place(x));
            moved.iter().all(there)
        },
    )
    .await
}
