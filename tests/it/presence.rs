//! User presence: online/offline over two servers, watching, contacts only,
//! the backends' `GET /v1/presence`, and a watched user's server drained
//! (a resuming device: no flap) or killed (offline within the bound).

use crate::client::config;
use harness::{Infra, Stack, WsClient};
use protocol::presence::UserPresence;
use protocol::{ErrorCode, UserId};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_client::{Api, Client, Event, SendError};

const KEY: &str = "presence-key-0123456789abcdef-0123456789";

fn uid(u: &str) -> anyhow::Result<UserId> {
    Ok(UserId::new(u)?)
}

/// The first event within `within` that `pick` takes; events it passes
/// over are dropped (they are not what the caller waits for).
async fn next_picked<T>(
    c: &mut Client,
    what: &str,
    within: Duration,
    pick: impl Fn(Event) -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let e = tokio::time::timeout_at(deadline, c.next_event())
            .await
            .map_err(|_| anyhow::anyhow!("no {what} within {within:?}"))?;
        match e {
            Some(e) => {
                if let Some(t) = pick(e) {
                    return Ok(t);
                }
            }
            None => anyhow::bail!("client ended"),
        }
    }
}

/// The next presence event about `user` within `within`.
async fn next_presence(
    c: &mut Client,
    user: &str,
    within: Duration,
) -> anyhow::Result<UserPresence> {
    let what = format!("presence of {user}");
    next_picked(c, &what, within, |e| match e {
        Event::Presence(p) if p.user.as_str() == user => Some(p),
        _ => None,
    })
    .await
}

async fn start(infra: &Infra, name: &str, servers: usize) -> anyhow::Result<Stack> {
    Stack::start_with(infra, name, servers, true, |c| {
        c.api_keys = vec![KEY.to_owned().into()]
    })
    .await
}

/// Alice watches Bob (another server): online when his first device
/// connects, not again for his second, offline (with last_seen) after the
/// grace once both left; the backends' endpoint agrees from either server;
/// Carol (no conversation with Bob) is refused.
pub async fn presence_and_watch_across_two_servers(infra: Arc<Infra>) -> anyhow::Result<()> {
    let stack = start(&infra, "presence", 2).await?;
    let (alice, bob) = stack.users_on_distinct_servers("pr").await?;
    let api = Api::new(&stack.coordinator.url(), &Stack::token(&alice));
    api.create_conversation(&alice, Some("pr-room"), std::slice::from_ref(&bob))
        .await?;
    let mut a = Client::start(config(&stack, &alice, "laptop"));
    let first = a.presence(&[uid(&bob)?], true).await?;
    anyhow::ensure!(first.len() == 1 && !first[0].online, "{first:?}");
    let phone = Client::start(config(&stack, &bob, "phone"));
    let on = next_presence(&mut a, &bob, Duration::from_secs(20)).await?;
    anyhow::ensure!(on.online && on.devices >= 1, "{on:?}");
    let tablet = Client::start(config(&stack, &bob, "tablet"));
    let backend = Api::new(&stack.coordinator.url(), KEY);
    harness::wait_until("two devices", Duration::from_secs(20), || async {
        let p = backend
            .presence(&[uid(&bob).unwrap_or_else(|e| panic!("{e}"))])
            .await;
        p.is_ok_and(|p| p.first().is_some_and(|b| b.devices == 2))
    })
    .await?;
    let carol = "pr-carol";
    let c = Client::start(config(&stack, carol, "phone"));
    match c.presence(&[uid(&bob)?], false).await {
        Err(SendError::Refused {
            code: ErrorCode::Forbidden,
            ..
        }) => {}
        other => anyhow::bail!("a stranger asked bob's presence: {other:?}"),
    }
    // Carol's `connected` is written as her session starts: soon known everywhere.
    let three = [uid(&alice)?, uid(&bob)?, uid(carol)?];
    harness::wait_until("all three online", Duration::from_secs(10), || async {
        let all = backend.presence(&three).await;
        all.is_ok_and(|p| p.iter().all(|x| x.online))
    })
    .await?;
    let left = Instant::now();
    phone.close().await;
    tablet.close().await;
    let off = next_presence(&mut a, &bob, Duration::from_secs(20)).await?;
    anyhow::ensure!(!off.online && off.last_seen_ms.is_some(), "{off:?}");
    anyhow::ensure!(
        left.elapsed() >= Duration::from_millis(1500),
        "offline told after {:?}, inside the grace",
        left.elapsed()
    );
    // The backend's server applies the same events on its own: soon offline there too.
    let bob_id = [uid(&bob)?];
    harness::wait_until(
        "bob offline for the backend",
        Duration::from_secs(10),
        || async {
            let later = backend.presence(&bob_id).await;
            later.is_ok_and(|l| !l[0].online && l[0].last_seen_ms.is_some())
        },
    )
    .await?;
    // The CLI asks the same endpoint: one JSON line per user.
    let (ok, out, err) =
        crate::client::cli(&stack, &["presence", "--api-key", KEY, &alice, &bob]).await?;
    let lines: Vec<UserPresence> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let online: Vec<(&str, bool)> = lines.iter().map(|p| (p.user.as_str(), p.online)).collect();
    anyhow::ensure!(
        ok && online == [(alice.as_str(), true), (bob.as_str(), false)],
        "cli: {out} {err}"
    );
    for client in [a, c] {
        client.close().await;
    }
    stack.stop().await;
    Ok(())
}

/// Bob's server drains: his (resuming) client reconnects elsewhere and
/// Alice hears nothing. Then Dave's server (a device that does not come
/// back) is killed: Alice hears Dave offline within the bound.
pub async fn a_drain_does_not_flap_and_a_kill_reports_offline(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let mut stack = start(&infra, "presence-fail", 3).await?;
    let a = stack.assignment().await?;
    let owner = |u: &str| crate::channels::owner_of(&a, u);
    let alice = "pf-alice".to_owned();
    let pick = |not: &[String], from: usize| {
        (from..from + 500)
            .map(|i| format!("pf-{i}"))
            .find(|u| !not.contains(&owner(u)))
    };
    let bob = pick(&[owner(&alice)], 0).ok_or_else(|| anyhow::anyhow!("no bob"))?;
    let dave =
        pick(&[owner(&alice), owner(&bob)], 1000).ok_or_else(|| anyhow::anyhow!("no dave"))?;
    let api = Api::new(&stack.coordinator.url(), &Stack::token(&alice));
    api.create_conversation(&alice, Some("pf-room"), &[bob.clone(), dave.clone()])
        .await?;
    let mut w = Client::start(config(&stack, &alice, "laptop"));
    let bob_client = Client::start(config(&stack, &bob, "phone"));
    let mut dave_ws = WsClient::connect(&stack.route(&dave).await?.1).await?;
    dave_ws.hello(&Stack::token(&dave), "phone", None).await?;
    harness::wait_until("bob and dave online", Duration::from_secs(20), || async {
        let us = [UserId::new(bob.as_str()), UserId::new(dave.as_str())];
        let us: Vec<UserId> = us.into_iter().filter_map(Result::ok).collect();
        w.presence(&us, false)
            .await
            .is_ok_and(|p| p.iter().all(|x| x.online))
    })
    .await?;
    w.presence(&[uid(&bob)?, uid(&dave)?], true).await?;
    let drained = owner(&bob);
    stack
        .take_server(&drained)
        .ok_or_else(|| anyhow::anyhow!("no {drained}"))?
        .stop()
        .await;
    // Bob's client resumes on another server: no presence event about him.
    let quiet = next_presence(&mut w, &bob, Duration::from_secs(8)).await;
    anyhow::ensure!(quiet.is_err(), "a drain made bob flap: {quiet:?}");
    let killed = owner(&dave);
    let at = Instant::now();
    stack
        .take_server(&killed)
        .ok_or_else(|| anyhow::anyhow!("no {killed}"))?
        .kill()
        .await;
    let off = next_presence(&mut w, &dave, Duration::from_secs(30)).await?;
    let took = at.elapsed();
    anyhow::ensure!(!off.online, "{off:?}");
    eprintln!("    dave reported offline {took:?} after his server was killed");
    anyhow::ensure!(took <= Duration::from_secs(15), "offline after {took:?}");
    let _ = dave_ws.closed(Duration::from_secs(1)).await;
    bob_client.close().await;
    w.close().await;
    stack.stop().await;
    Ok(())
}

/// The next join or leave about `user` within `within`: true for a join.
async fn next_membership(c: &mut Client, user: &str, within: Duration) -> anyhow::Result<bool> {
    let what = format!("join/leave of {user}");
    next_picked(c, &what, within, |e| match e {
        Event::Join(m) if m.user.as_str() == user => Some(true),
        Event::Leave(m) if m.user.as_str() == user => Some(false),
        _ => None,
    })
    .await
}

/// Every user of `room`, page by page (4 a page).
async fn every_page(c: &Client, room: &protocol::ChannelName) -> anyhow::Result<Vec<String>> {
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let page = c.channel_presence(room, after, Some(4)).await?;
        anyhow::ensure!(page.users.len() <= 4, "a page of {}", page.users.len());
        listed.extend(page.users.iter().map(|u| u.to_string()));
        match page.next_after {
            Some(n) => after = Some(n),
            None => return Ok(listed),
        }
    }
}

/// Six users on three servers subscribe to a presence channel: any of
/// them pages through all six; a seventh's subscription is a `join` and
/// its unsubscription a `leave` at the others; a channel outside the
/// configured patterns is refused, and so is a channel not subscribed to.
pub async fn channel_presence_lists_and_joins_over_three_servers(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let stack = Stack::start_with(&infra, "chan-presence", 3, true, |c| {
        c.presence_channels = vec!["ch:live.room*".into()];
    })
    .await?;
    let a = stack.assignment().await?;
    let users = crate::channels::two_per_server(&a, "cp")?;
    let room = protocol::ChannelName::new("ch:live.room1")?;
    let mut clients = Vec::new();
    for u in &users {
        let c = Client::start(crate::channels::client_config(&stack, u));
        tokio::time::timeout(Duration::from_secs(20), c.subscribe(&room)).await??;
        clients.push(c);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let listed = every_page(&clients[0], &room).await?;
        if listed.len() == 6 || tokio::time::Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut want = users.clone();
    want.sort();
    anyhow::ensure!(listed == want, "listed {listed:?}, want {want:?}");
    let late = Client::start(crate::channels::client_config(&stack, "cp-late"));
    late.subscribe(&room).await?;
    let watcher = &mut clients[5];
    anyhow::ensure!(next_membership(watcher, "cp-late", Duration::from_secs(10)).await?);
    late.unsubscribe(&room).await?;
    anyhow::ensure!(!next_membership(watcher, "cp-late", Duration::from_secs(10)).await?);
    // Back on the same connection: a join again, and listed again.
    late.subscribe(&room).await?;
    anyhow::ensure!(next_membership(watcher, "cp-late", Duration::from_secs(10)).await?);
    // Each server applies the events on its own: clients[0]'s may be a moment behind.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let again = every_page(&clients[0], &room).await?;
        if again.len() == 7 && again.contains(&"cp-late".to_owned()) {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "{again:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    late.unsubscribe(&room).await?;
    let other = protocol::ChannelName::new("ch:live.other")?;
    clients[0].subscribe(&other).await?;
    let refused = clients[0].channel_presence(&other, None, None).await;
    anyhow::ensure!(
        matches!(
            refused,
            Err(SendError::Refused {
                code: ErrorCode::InvalidField,
                ..
            })
        ),
        "{refused:?}"
    );
    let unsubscribed = late.channel_presence(&room, None, None).await;
    anyhow::ensure!(
        matches!(
            unsubscribed,
            Err(SendError::Refused {
                code: ErrorCode::Forbidden,
                ..
            })
        ),
        "{unsubscribed:?}"
    );
    for c in clients.into_iter().chain([late]) {
        c.close().await;
    }
    stack.stop().await;
    Ok(())
}
