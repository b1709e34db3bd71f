//! The infrastructure under us goes away for 30 s under traffic, each on a
//! container of the test's own: etcd (sessions stay, the map stays, nothing
//! moves when it returns) and PostgreSQL (DMs flow, group sends and history
//! answer `unavailable` once the cache is stale, resume falls back to Kafka).
//! Each prints what was sent, delivered, lost and persisted.

use harness::stack::Backing;
use harness::traffic::{drive, expect_delivered, expect_persisted, Outcomes};
use harness::{Event, Infra, Receivers, Stack, WsClient};
use protocol::{Cursor, MsgId, ServerFrame};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const OUTAGE: Duration = Duration::from_secs(30);
/// Traffic before the outage, during it, and after it.
const TRAFFIC: Duration = Duration::from_secs(45);
pub(crate) const OUTAGE_STARTS: Duration = Duration::from_secs(5);

/// DMs from `senders` senders to the receivers in turn; group = receiver index.
pub(crate) fn dms(
    prefix: &'static str,
    users: &[String],
) -> impl Fn(usize, usize) -> (String, usize, serde_json::Value) + Send + Sync + 'static {
    let to = users.to_vec();
    move |s, n| {
        let g = (s + n) % to.len();
        let body = json!({"client_msg_id": format!("{prefix}{s}-{n}"), "to": {"user": to[g]}, "body": {"n": n}});
        (format!("{prefix}send{s}"), g, body)
    }
}

/// What the coordinator and the servers answered while a dependency was down.
#[derive(Debug, Default)]
pub(crate) struct Watched {
    pub routes_ok: usize,
    pub routes_failed: usize,
    pub not_ready: usize,
}

/// Polls routes and readiness every 500 ms for `how_long`.
pub(crate) async fn watch(stack: &Stack, user: &str, how_long: Duration) -> Watched {
    let mut w = Watched::default();
    let until = Instant::now() + how_long;
    let mut urls: Vec<String> = stack.servers.iter().map(|s| s.url()).collect();
    urls.push(stack.coordinator.url());
    while Instant::now() < until {
        match stack.route(user).await {
            Ok(_) => w.routes_ok += 1,
            Err(_) => w.routes_failed += 1,
        }
        for u in &urls {
            let ready = reqwest::get(format!("{u}/readyz"))
                .await
                .is_ok_and(|r| r.status().is_success());
            w.not_ready += usize::from(!ready);
        }
        // Never past `until`: a stall test's freeze lasts exactly its length.
        let left = until.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(Duration::from_millis(500))).await;
    }
    w
}

pub(crate) fn report(what: &str, o: &Outcomes, delivered: usize, persisted: usize) {
    eprintln!(
        "    {what}: sent {}, acked {}, unavailable {}, delivered {delivered}, lost 0, persisted {persisted}, slowest answer {:?}",
        o.acked.len() + o.unavailable + o.other.len(),
        o.acked.len(),
        o.unavailable,
        o.slowest
    );
}

pub async fn etcd_down_30s_keeps_sessions_and_the_map(infra: Arc<Infra>) -> anyhow::Result<()> {
    let (etcd, url) = infra.private_etcd("etcd-outage").await?;
    let backing = Backing::shared(&infra).etcd(&url);
    let stack = Stack::start_on(&infra, backing, "etcdout", 2, true, |_| {}).await?;
    let users: Vec<String> = (0..6).map(|i| format!("eo{i}")).collect();
    let receivers = Receivers::start(&stack.coordinator.url(), &users).await?;
    let before = stack.assignment().await?;
    let traffic = drive(
        &stack,
        4,
        Duration::from_millis(100),
        Instant::now() + TRAFFIC,
        dms("e", &users),
    );
    let outage = async {
        tokio::time::sleep(OUTAGE_STARTS).await;
        etcd.stop().await?;
        let watched = watch(&stack, &users[0], OUTAGE).await;
        etcd.start().await?;
        let back = Instant::now();
        for s in &stack.servers {
            harness::wait_until(
                "the server confirms its lease again",
                Duration::from_secs(20),
                || async {
                    harness::metric(&s.url(), "switchboard_server_etcd_reachable").await == 1.0
                },
            )
            .await?;
        }
        anyhow::Ok((watched, back.elapsed()))
    };
    let (o, watched) = tokio::join!(traffic, outage);
    let (watched, reconfirmed) = watched?;
    eprintln!("    during the etcd outage: {watched:?}; leases confirmed {reconfirmed:?} after etcd returned");
    anyhow::ensure!(
        o.unavailable == 0 && o.other.is_empty(),
        "sends failed while etcd was down: {} unavailable, {:?}",
        o.unavailable,
        o.other
    );
    anyhow::ensure!(
        watched.routes_failed == 0 && watched.not_ready == 0,
        "{watched:?}"
    );
    expect_delivered(&receivers, &o.acked, |g| vec![g]).await?;
    expect_persisted(&stack, &o.acked).await?;
    for (i, inbox) in receivers.inboxes.iter().enumerate() {
        let inbox = inbox.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        anyhow::ensure!(
            inbox.sessions == 1 && inbox.close_codes.is_empty(),
            "receiver {i} lost its session: {:?}",
            inbox.close_codes
        );
    }
    let after = stack.assignment().await?;
    let moved = before.moved_to(&after);
    anyhow::ensure!(
        moved.is_empty(),
        "partitions moved after etcd returned: {moved:?}"
    );
    report("etcd down 30 s", &o, o.acked.len(), o.acked.len());
    receivers.stop().await;
    stack.stop().await;
    Ok(())
}

/// A device that was here, left with `cursor`, and comes back.
struct Late {
    user: &'static str,
    cursor: Cursor,
}

impl Late {
    async fn leave(stack: &Stack, user: &'static str) -> anyhow::Result<Self> {
        let (_, ws_url) = stack.route(user).await?;
        let mut c = WsClient::connect(&ws_url).await?;
        let cursor = match c.hello(&Stack::token(user), "d", None).await? {
            Event::Frame(ServerFrame::Welcome(w)) => w.cursor,
            other => anyhow::bail!("expected welcome, got {other:?}"),
        };
        Ok(Self { user, cursor })
    }

    /// Comes back with its cursor; returns the replayed msg_ids once synced.
    async fn come_back(&self, stack: &Stack) -> anyhow::Result<Vec<MsgId>> {
        let (_, ws_url) = stack.route(self.user).await?;
        let mut c = WsClient::connect(&ws_url).await?;
        let token = Stack::token(self.user);
        match c.hello(&token, "d", Some(self.cursor.clone())).await? {
            Event::Frame(ServerFrame::Welcome(w)) if w.resumed => {}
            other => anyhow::bail!("expected a resumed welcome, got {other:?}"),
        }
        let mut replayed = Vec::new();
        loop {
            match c.frame(Duration::from_secs(15)).await? {
                ServerFrame::Message(m) if m.replay => replayed.push(m.msg_id),
                ServerFrame::Synced(_) => return Ok(replayed),
                other => anyhow::bail!("unexpected frame during the replay: {other:?}"),
            }
        }
    }
}

async fn post(stack: &Stack, user: &str, body: &serde_json::Value) -> anyhow::Result<MsgId> {
    harness::traffic::post_send(&stack.servers[0].url(), user, body).await
}

/// What a user sees of PostgreSQL while it is down: history and group sends
/// answer `unavailable` (fast), and a resume whose gap Kafka holds works.
async fn while_postgres_is_down(stack: &Stack, late: &Late) -> anyhow::Result<()> {
    let base = stack.servers[0].url();
    let history = reqwest::Client::new()
        .get(format!(
            "{base}/v1/conversations/dm:pgfriend,pglate/messages"
        ))
        .bearer_auth(Stack::token("pglate"))
        .send()
        .await?;
    let status = history.status();
    let body: protocol::ErrorBody = history.json().await?;
    anyhow::ensure!(
        status == 503 && body.code == protocol::ErrorCode::Unavailable,
        "history while PostgreSQL is down: {status} {body:?}"
    );
    let mut sent = Vec::new();
    for i in 0..3 {
        let body = json!({"client_msg_id": format!("late{i}"), "to": {"user": "pglate"}, "body": {"i": i}});
        sent.push(post(stack, "pgfriend", &body).await?);
    }
    let replayed = late.come_back(stack).await?;
    anyhow::ensure!(
        replayed == sent,
        "replay from Kafka: {replayed:?}, want {sent:?}"
    );
    Ok(())
}

/// A group send every 500 ms for `how_long`: (answered ok, unavailable, slowest answer).
async fn group_sends(stack: &Stack, how_long: Duration) -> (usize, usize, Duration) {
    let (mut ok, mut unavailable, mut slowest) = (0, 0, Duration::ZERO);
    let until = Instant::now() + how_long;
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        let body = json!({"client_msg_id": format!("g{n}"), "to": {"conversation": "pgroom"}, "body": {"n": n}});
        let started = Instant::now();
        match post(stack, "pgowner", &body).await {
            Ok(_) => ok += 1,
            Err(_) => unavailable += 1,
        }
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    (ok, unavailable, slowest)
}

pub async fn postgres_down_30s_degrades_and_recovers(infra: Arc<Infra>) -> anyhow::Result<()> {
    let (pg, db) = infra.private_postgres("pg-outage").await?;
    let backing = Backing::shared(&infra).database(&db);
    let stack = Stack::start_on(&infra, backing, "pgout", 2, true, |_| {}).await?;
    let users: Vec<String> = (0..4).map(|i| format!("pg{i}")).collect();
    let receivers = Receivers::start(&stack.coordinator.url(), &users).await?;
    let create = json!({"conversation_id": "pgroom", "members": users});
    reqwest::Client::new()
        .post(format!("{}/v1/conversations", stack.servers[0].url()))
        .bearer_auth(Stack::token("pgowner"))
        .json(&create)
        .send()
        .await?
        .error_for_status()?;
    let late = Late::leave(&stack, "pglate").await?;
    let traffic = drive(
        &stack,
        4,
        Duration::from_millis(100),
        Instant::now() + TRAFFIC,
        dms("p", &users),
    );
    let outage = async {
        tokio::time::sleep(OUTAGE_STARTS).await;
        pg.stop().await?;
        let started = Instant::now();
        while_postgres_is_down(&stack, &late).await?;
        let groups = group_sends(&stack, OUTAGE.saturating_sub(started.elapsed())).await;
        pg.start().await?;
        let back = Instant::now();
        let again = json!({"client_msg_id": "after", "to": {"conversation": "pgroom"}, "body": {}});
        harness::wait_until(
            "group sends work again",
            Duration::from_secs(30),
            || async { post(&stack, "pgowner", &again).await.is_ok() },
        )
        .await?;
        anyhow::Ok((groups, back.elapsed()))
    };
    let (o, groups) = tokio::join!(traffic, outage);
    let ((group_ok, group_unavailable, group_slowest), recovered) = groups?;
    eprintln!("    group sends work again {recovered:?} after PostgreSQL returned");
    eprintln!("    group sends during the outage: {group_ok} ok (member cache), {group_unavailable} unavailable, slowest {group_slowest:?}");
    anyhow::ensure!(
        group_unavailable > 0,
        "group sends never noticed the outage"
    );
    anyhow::ensure!(group_slowest < Duration::from_secs(5), "a group send hung");
    anyhow::ensure!(
        o.unavailable == 0 && o.other.is_empty(),
        "DMs failed while PostgreSQL was down: {} unavailable, {:?}",
        o.unavailable,
        o.other
    );
    let again = json!({"client_msg_id": "after", "to": {"conversation": "pgroom"}, "body": {}});
    let group_again = harness::wait_until(
        "group sends work again",
        Duration::from_secs(30),
        || async { post(&stack, "pgowner", &again).await.is_ok() },
    );
    group_again.await?;
    expect_delivered(&receivers, &o.acked, |g| vec![g]).await?;
    expect_persisted(&stack, &o.acked).await?;
    report(
        "PostgreSQL down 30 s (DMs)",
        &o,
        o.acked.len(),
        o.acked.len(),
    );
    receivers.stop().await;
    stack.stop().await;
    Ok(())
}
