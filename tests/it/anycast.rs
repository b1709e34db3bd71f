//! Anycast (docs/protocol.md, "Anycast"): publications to one subscriber of
//! a presence channel, spread evenly over six subscribers on three servers,
//! each handled by exactly one app; nothing lost when a subscriber's server
//! is killed; publications that wait for a first subscriber; sticky keys.

use crate::channels::{client_config, owner_of, two_per_server, KEY};
use harness::{Infra, Stack};
use protocol::{ChannelName, MsgId};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use switchboard_client::{Client, Event};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const POOL: &str = "ch:live.pool";
/// Short, so a killed subscriber's publications move on quickly; long
/// enough that a handled mark is read everywhere before it runs out.
const HANDLE_TIMEOUT: Duration = Duration::from_secs(4);

async fn start(infra: &Infra, name: &str) -> anyhow::Result<Stack> {
    Stack::start_with(infra, name, 3, false, tweak).await
}

fn tweak(c: &mut messaging_server::Config) {
    c.api_keys = vec![KEY.to_owned().into()];
    c.presence_channels = vec![format!("{POOL}*")];
    c.anycast_handle_timeout = HANDLE_TIMEOUT;
}

/// One app: handles every anycast publication it is handed (says
/// `handled`) and reports `(user, msg_id, body)`; returns its client.
fn app(
    mut c: Client,
    user: String,
    handled: mpsc::UnboundedSender<(String, MsgId, Value)>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Client> {
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                e = c.next_event() => e,
                _ = stop.cancelled() => break,
            };
            match event {
                Some(Event::Message(m)) if m.anycast => {
                    let (Some(channel), Ok(body)) =
                        (m.channel.clone(), serde_json::from_str(m.body.get()))
                    else {
                        continue;
                    };
                    let _ = c.handled(&channel, m.msg_id).await;
                    let mut body: Value = body;
                    body["handled_at_ms"] = json!(unix_ms());
                    let _ = handled.send((user.clone(), m.msg_id, body));
                }
                Some(_) => {}
                None => break,
            }
        }
        c
    })
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Six subscribed apps, two on each server, once every server counts all
/// six among the channel's subscribers.
struct Pool {
    users: Vec<String>,
    apps: Vec<tokio::task::JoinHandle<Client>>,
    handled: mpsc::UnboundedReceiver<(String, MsgId, Value)>,
    tx: mpsc::UnboundedSender<(String, MsgId, Value)>,
    /// One per app, in `users` order.
    stops: Vec<CancellationToken>,
}

impl Pool {
    async fn join(stack: &Stack, prefix: &str) -> anyhow::Result<Self> {
        let a = stack.assignment().await?;
        let users = two_per_server(&a, prefix)?;
        let (tx, handled) = mpsc::unbounded_channel();
        let mut clients = Vec::new();
        for u in &users {
            clients.push(subscribed(stack, u).await?);
        }
        wait_listed(&clients, &users).await?;
        let mut pool = Pool {
            users: Vec::new(),
            apps: Vec::new(),
            handled,
            tx,
            stops: Vec::new(),
        };
        for (c, u) in clients.into_iter().zip(&users) {
            pool.run(c, u);
        }
        Ok(pool)
    }

    fn run(&mut self, c: Client, user: &str) {
        let stop = CancellationToken::new();
        self.apps
            .push(app(c, user.to_owned(), self.tx.clone(), stop.clone()));
        self.users.push(user.to_owned());
        self.stops.push(stop);
    }

    /// `user`'s app closes its connection (it leaves the pool).
    async fn leave(&mut self, user: &str) -> anyhow::Result<()> {
        let i = self
            .users
            .iter()
            .position(|u| u == user)
            .ok_or_else(|| anyhow::anyhow!("{user} is not in the pool"))?;
        self.users.remove(i);
        self.stops.remove(i).cancel();
        self.apps.remove(i).await?.close().await;
        Ok(())
    }

    /// What was handled until `want` distinct publications were, then for
    /// `settle` more (a late duplicate would show there).
    async fn collect(
        &mut self,
        want: usize,
        within: Duration,
        settle: Duration,
    ) -> Vec<(String, MsgId, Value)> {
        let mut got = Vec::new();
        let mut distinct = HashSet::new();
        let deadline = tokio::time::Instant::now() + within;
        while distinct.len() < want {
            match tokio::time::timeout_at(deadline, self.handled.recv()).await {
                Ok(Some(h)) => {
                    distinct.insert(h.1);
                    got.push(h);
                }
                _ => return got,
            }
        }
        while let Ok(Some(h)) = tokio::time::timeout(settle, self.handled.recv()).await {
            got.push(h);
        }
        got
    }

    async fn close(self) {
        for s in &self.stops {
            s.cancel();
        }
        for a in self.apps {
            if let Ok(c) = a.await {
                c.close().await;
            }
        }
    }
}

async fn subscribed(stack: &Stack, user: &str) -> anyhow::Result<Client> {
    let c = Client::start(client_config(stack, user));
    let pool = ChannelName::new(POOL)?;
    tokio::time::timeout(Duration::from_secs(20), c.subscribe(&pool)).await??;
    Ok(c)
}

/// Until every one of `clients` (two per server) lists all of `users` as
/// the pool's subscribers: each server's view of the pool is complete.
async fn wait_listed(clients: &[Client], users: &[String]) -> anyhow::Result<()> {
    let pool = ChannelName::new(POOL)?;
    let want: HashSet<&str> = users.iter().map(String::as_str).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for c in clients {
        loop {
            let listed: HashSet<String> = match c.channel_presence(&pool, None, Some(500)).await {
                Ok(p) => p.users.iter().map(|u| u.to_string()).collect(),
                Err(_) => HashSet::new(),
            };
            if want.iter().all(|u| listed.contains(*u)) {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "a server lists {listed:?} of {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Publishes anycast publications in batches through the API; returns
/// their msg_ids.
async fn publish(
    stack: &Stack,
    items: impl IntoIterator<Item = (Value, Option<String>, &'static str)>,
) -> anyhow::Result<Vec<MsgId>> {
    let http = reqwest::Client::new();
    let items: Vec<Value> = items
        .into_iter()
        .map(|(body, key, kind)| {
            let mut p = json!({"to": {"channel": POOL}, "kind": kind, "body": body,
                "from": "system:jobs", "idempotency_key": uuid::Uuid::new_v4().to_string(),
                "anycast": true});
            if let Some(k) = key {
                p["key"] = json!(k);
            }
            p
        })
        .collect();
    let mut ids = Vec::new();
    for chunk in items.chunks(100) {
        ids.extend(publish_batch(stack, &http, chunk).await?);
    }
    Ok(ids)
}

/// One batch; again (same idempotency keys) while a server answers
/// `unavailable` — e.g. its channel consumer is still opening after a start.
async fn publish_batch(
    stack: &Stack,
    http: &reqwest::Client,
    chunk: &[Value],
) -> anyhow::Result<Vec<MsgId>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for attempt in 0usize.. {
        let urls: Vec<String> = stack.servers.iter().map(|s| s.url()).collect();
        let url = &urls[attempt % urls.len()];
        let v: Value = http
            .post(format!("{url}/v1/publish/batch"))
            .bearer_auth(KEY)
            .json(&json!({ "items": chunk }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let results = v["results"].as_array().cloned().unwrap_or_default();
        let ids: Vec<Option<MsgId>> = results
            .iter()
            .map(|r| serde_json::from_value(r["msg_id"].clone()).ok())
            .collect();
        if ids.iter().all(Option::is_some) && ids.len() == chunk.len() {
            return Ok(ids.into_iter().flatten().collect());
        }
        let retryable = results
            .iter()
            .all(|r| r["msg_id"].is_string() || r["error"]["code"] == "unavailable");
        anyhow::ensure!(
            retryable && tokio::time::Instant::now() < deadline,
            "refused: {results:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("unreachable")
}

/// How many times each publication was handled, and by whom.
/// For each publication handled more than once: the milliseconds between
/// its first and last handling.
fn handling_gaps(got: &[(String, MsgId, Value)]) -> HashMap<MsgId, u64> {
    let mut at: HashMap<MsgId, Vec<u64>> = HashMap::new();
    for (_, m, b) in got {
        at.entry(*m)
            .or_default()
            .extend(b["handled_at_ms"].as_u64());
    }
    at.into_iter()
        .filter(|(_, t)| t.len() > 1)
        .map(|(m, t)| {
            let (lo, hi) = (t.iter().min(), t.iter().max());
            (m, hi.zip(lo).map_or(0, |(h, l)| h - l))
        })
        .collect()
}

fn tally(got: &[(String, MsgId, Value)]) -> HashMap<MsgId, Vec<String>> {
    let mut by: HashMap<MsgId, Vec<String>> = HashMap::new();
    for (u, m, _) in got {
        by.entry(*m).or_default().push(u.clone());
    }
    by
}

/// 1,000 anycast publications to six subscribers on three servers: each
/// handled by exactly one app, and every app within ±30% of an even share.
/// Then sticky keys: each key's publications go to one app, and when that
/// app leaves, all of them to one other.
pub async fn anycast_spreads_over_six_subscribers_once_each(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let stack = start(&infra, "anycast-spread").await?;
    let mut pool = Pool::join(&stack, "any").await?;
    let ids = publish(&stack, (0..1000).map(|i| (json!({"i": i}), None, "chat"))).await?;
    let got = pool
        .collect(
            ids.len(),
            Duration::from_secs(90),
            HANDLE_TIMEOUT + Duration::from_secs(1),
        )
        .await;
    let by = tally(&got);
    let missing = ids.iter().filter(|m| !by.contains_key(m)).count();
    let twice = by.values().filter(|h| h.len() > 1).count();
    anyhow::ensure!(
        missing == 0 && twice == 0 && got.len() == ids.len(),
        "of {}: {missing} never handled, {twice} handled more than once ({} handlings)",
        ids.len(),
        got.len()
    );
    let mut per_app: HashMap<&str, usize> = HashMap::new();
    for (u, _, _) in &got {
        *per_app.entry(u.as_str()).or_default() += 1;
    }
    let even = ids.len() as f64 / pool.users.len() as f64;
    for u in &pool.users {
        let n = per_app.get(u.as_str()).copied().unwrap_or(0) as f64;
        anyhow::ensure!(
            (n - even).abs() <= even * 0.3,
            "{u} handled {n}, an even share is {even:.0}: {per_app:?}"
        );
    }
    eprintln!("    1,000 anycast publications over six apps: {per_app:?}");

    let keys: Vec<String> = (0..6).map(|k| format!("conv-{k}")).collect();
    let holders = sticky(&stack, &mut pool, &keys).await?;
    let distinct: HashSet<&String> = holders.values().collect();
    anyhow::ensure!(distinct.len() > 1, "every key on one app: {holders:?}");
    let gone = holders[&keys[0]].clone();
    pool.leave(&gone).await?;
    let after = sticky(&stack, &mut pool, &keys[..1]).await?;
    anyhow::ensure!(
        after[&keys[0]] != gone,
        "{gone} left but still handles {}",
        keys[0]
    );
    pool.close().await;
    stack.stop().await;
    Ok(())
}

/// Ten publications per key; each key's must all go to one app: its holder.
async fn sticky(
    stack: &Stack,
    pool: &mut Pool,
    keys: &[String],
) -> anyhow::Result<HashMap<String, String>> {
    let items = (0..keys.len() * 10).map(|i| {
        let k = &keys[i % keys.len()];
        (json!({ "key": k }), Some(k.clone()), "chat")
    });
    let ids = publish(stack, items).await?;
    let got = pool
        .collect(ids.len(), Duration::from_secs(60), Duration::from_secs(1))
        .await;
    let mut by_key: HashMap<String, HashSet<String>> = HashMap::new();
    for (u, _, body) in &got {
        let k = body["key"].as_str().unwrap_or_default().to_owned();
        by_key.entry(k).or_default().insert(u.clone());
    }
    anyhow::ensure!(
        got.len() == ids.len() && by_key.values().all(|h| h.len() == 1),
        "{} handlings of {}; apps per key: {by_key:?}",
        got.len(),
        ids.len()
    );
    Ok(by_key
        .into_iter()
        .filter_map(|(k, h)| Some((k, h.into_iter().next()?)))
        .collect())
}

/// The server of two of six subscribers is killed (kill -9) between two
/// runs of 150 publications: every publication is handled, those offered
/// to the dead server's apps by others; a publication handled twice must
/// have been handled by one of those apps (its handled mark died with the
/// server, or its new session was seen by one server a moment early), and
/// no more than those apps' share of the publications. The reconnected apps resubscribe with their cursors: anycast
/// publications are never part of that recovery.
pub async fn anycast_loses_nothing_when_a_subscribers_server_is_killed(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let mut stack = start(&infra, "anycast-kill").await?;
    let mut pool = Pool::join(&stack, "anyk").await?;
    let a = stack.assignment().await?;
    let victim = owner_of(&a, &pool.users[0]);
    let on_victim: HashSet<String> = pool
        .users
        .iter()
        .filter(|u| owner_of(&a, u) == victim)
        .cloned()
        .collect();
    let mut ids = publish(&stack, (0..150).map(|i| (json!({"i": i}), None, "chat"))).await?;
    stack
        .take_server(&victim)
        .ok_or_else(|| anyhow::anyhow!("no {victim}"))?
        .kill()
        .await;
    let killed_at = unix_ms();
    stack.add_server(tweak)?;
    ids.extend(publish(&stack, (150..300).map(|i| (json!({"i": i}), None, "chat"))).await?);
    let got = pool
        .collect(
            ids.len(),
            Duration::from_secs(120),
            HANDLE_TIMEOUT + Duration::from_secs(1),
        )
        .await;
    let by = tally(&got);
    let missing = ids.iter().filter(|m| !by.contains_key(m)).count();
    let twice: Vec<&Vec<String>> = by.values().filter(|h| h.len() > 1).collect();
    // Apps the kill did not touch may handle one publication twice only
    // as at-least-once allows: the second offer after the first went
    // unanswered for the handle timeout (under CI load a handled mark can
    // take that long). Two of them within the timeout is a double offer.
    let gaps = handling_gaps(&got);
    let late_reoffer = |m: &MsgId| {
        gaps.get(m)
            .is_some_and(|g| *g + 500 >= HANDLE_TIMEOUT.as_millis() as u64)
    };
    let unexplained: Vec<(&MsgId, Option<&u64>)> = by
        .iter()
        .filter(|(_, h)| h.len() > 1 && !h.iter().any(|u| on_victim.contains(u)))
        .filter(|(m, _)| !late_reoffer(m))
        .map(|(m, _)| (m, gaps.get(m)))
        .collect();
    let reoffered = by
        .iter()
        .filter(|(m, h)| h.len() > 1 && !h.iter().any(|u| on_victim.contains(u)) && late_reoffer(m))
        .count();
    eprintln!(
        "    {} of {} handled after the kill, {} twice ({} by apps the kill did not touch, each after the handle timeout; double offers: {:?})",
        by.len(),
        ids.len(),
        twice.len(),
        reoffered,
        unexplained
    );
    let unexplained = unexplained.len();
    // Twice only among what was offered to the killed server's apps (their
    // share: 2 of 6, +30%): a mark that died with the server, or a re-offer
    // made while their new sessions were seen by one server before the
    // others (the re-offers come in bulk when the old sessions time out).
    let before_kill = got
        .iter()
        .filter(|(u, _, b)| on_victim.contains(u) && b["handled_at_ms"].as_u64() < Some(killed_at))
        .count();
    let few = ids.len() * on_victim.len() * 13 / (pool.users.len() * 10);
    anyhow::ensure!(
        missing == 0 && unexplained == 0 && twice.len() <= few,
        "{missing} of {} never handled; {} handled twice (at most {few}, the killed server's apps' share; they handled {before_kill} before the kill), {unexplained} offered twice within the handle timeout to apps the kill did not touch",
        ids.len(),
        twice.len()
    );
    pool.close().await;
    stack.stop().await;
    Ok(())
}

/// Nobody subscribed for 10 s: 20 chat publications wait, 5 ephemeral ones
/// are dropped; the first subscriber then handles all 20 and none of the 5.
pub async fn anycast_waits_for_a_first_subscriber(infra: Arc<Infra>) -> anyhow::Result<()> {
    let stack = start(&infra, "anycast-wait").await?;
    let ids = publish(&stack, (0..20).map(|i| (json!({"i": i}), None, "chat"))).await?;
    let dropped = publish(&stack, (0..5).map(|i| (json!({"e": i}), None, "ephemeral"))).await?;
    // The case: no subscriber for ten seconds.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (tx, handled) = mpsc::unbounded_channel();
    let mut pool = Pool {
        users: Vec::new(),
        apps: Vec::new(),
        handled,
        tx,
        stops: Vec::new(),
    };
    let first = subscribed(&stack, "anyw0").await?;
    pool.run(first, "anyw0");
    let got = pool
        .collect(ids.len(), Duration::from_secs(30), Duration::from_secs(2))
        .await;
    let by = tally(&got);
    let want: HashSet<&MsgId> = ids.iter().collect();
    let handled: HashSet<&MsgId> = by.keys().collect();
    let ephemeral = dropped.iter().filter(|m| by.contains_key(m)).count();
    anyhow::ensure!(
        handled == want && got.len() == ids.len() && ephemeral == 0,
        "{} of {} handled ({} handlings), {ephemeral} ephemeral ones delivered",
        want.intersection(&handled).count(),
        ids.len(),
        got.len()
    );
    pool.close().await;
    stack.stop().await;
    Ok(())
}
