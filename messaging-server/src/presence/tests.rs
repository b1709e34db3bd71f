use super::*;
use protocol::{DeviceId, ServerId};

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn event(kind: EventKind, user: &str, session: u128, at_ms: i64) -> ConnectionEvent {
    ConnectionEvent {
        v: 1,
        event: kind,
        user: uid(user),
        device: DeviceId::new("d").unwrap(),
        session: Uuid::from_u128(session),
        server: ServerId::new("ms-1").unwrap(),
        incarnation: Uuid::nil(),
        at_ms,
        reason: None,
        channel: None,
    }
}

fn loaded() -> Presence {
    let p = Presence::default();
    p.load(
        [(uid("bob"), Uuid::from_u128(1))],
        BTreeMap::from([(0, 10)]),
    );
    p
}

/// Presence frames a watcher's queue holds now.
fn told(rx: &mut mpsc::Receiver<Text>) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    while let Ok(t) = rx.try_recv() {
        match ServerFrame::parse(t.as_str()) {
            Ok(ServerFrame::Presence(p)) => out.push((p.user.to_string(), p.online)),
            other => panic!("not a presence frame: {other:?}"),
        }
    }
    out
}

#[test]
fn online_while_a_session_is_open_with_last_seen_from_the_last_close() {
    let p = loaded();
    let (tx, _rx) = mpsc::channel(8);
    p.watch(&(uid("alice"), 7), tx, &[uid("bob")]);
    let t0 = Instant::now();
    let _ = p.apply(0, 10, &event(EventKind::Connected, "bob", 2, 5), t0);
    let _ = p.apply(0, 11, &event(EventKind::Connected, "bob", 2, 5), t0);
    let bob = &p.state(&[uid("bob")])[0];
    assert_eq!(
        (bob.online, bob.devices),
        (true, 2),
        "a re-read event counts once"
    );
    let _ = p.apply(0, 12, &event(EventKind::Disconnected, "bob", 1, 40), t0);
    let _ = p.apply(0, 13, &event(EventKind::Disconnected, "bob", 2, 30), t0);
    let bob = &p.state(&[uid("bob")])[0];
    assert_eq!(
        (bob.online, bob.devices, bob.last_seen_ms),
        (false, 0, Some(40))
    );
    assert_eq!(p.positions(), vec![(0, 14)]);
}

#[test]
fn watchers_hear_online_at_once_and_offline_only_after_the_grace() {
    let p = loaded();
    let (tx, mut rx) = mpsc::channel(8);
    let watcher = (uid("alice"), 7);
    p.watch(&watcher, tx, &[uid("bob"), uid("carol")]);
    let t0 = Instant::now();
    let _ = p.apply(0, 10, &event(EventKind::Connected, "carol", 5, 1), t0);
    assert_eq!(told(&mut rx), vec![("carol".into(), true)]);
    let _ = p.apply(0, 11, &event(EventKind::Connected, "bob", 6, 1), t0);
    assert_eq!(told(&mut rx), vec![], "bob was online already");
    for (i, s) in [1u128, 6].into_iter().enumerate() {
        let _ = p.apply(
            0,
            12 + i as i64,
            &event(EventKind::Disconnected, "bob", s, 9),
            t0,
        );
    }
    assert!(p.expire(t0 + OFFLINE_GRACE / 2).is_empty());
    assert_eq!(told(&mut rx), vec![], "within the grace");
    let _ = p.expire(t0 + OFFLINE_GRACE);
    assert_eq!(told(&mut rx), vec![("bob".into(), false)]);
}

#[test]
fn a_device_back_within_the_grace_makes_no_flap() {
    let p = loaded();
    let (tx, mut rx) = mpsc::channel(8);
    p.watch(&(uid("alice"), 7), tx, &[uid("bob")]);
    let t0 = Instant::now();
    let _ = p.apply(0, 10, &event(EventKind::Disconnected, "bob", 1, 9), t0);
    let _ = p.apply(0, 11, &event(EventKind::Connected, "bob", 2, 9), t0);
    let _ = p.expire(t0 + OFFLINE_GRACE * 2);
    assert_eq!(told(&mut rx), vec![]);
}

#[test]
fn unwatched_users_are_not_told_and_a_full_queue_is_returned() {
    let p = loaded();
    let (tx, mut rx) = mpsc::channel(1);
    let watcher = (uid("alice"), 7);
    p.watch(&watcher, tx, &[uid("carol"), uid("dave")]);
    p.unwatch(&watcher, Some(&[uid("dave")]));
    assert_eq!(p.watched_by(&watcher), 1);
    let t0 = Instant::now();
    assert!(p
        .apply(0, 10, &event(EventKind::Connected, "dave", 3, 1), t0)
        .overflowed
        .is_empty());
    assert!(p
        .apply(0, 11, &event(EventKind::Connected, "carol", 4, 1), t0)
        .overflowed
        .is_empty());
    let _ = p.apply(0, 12, &event(EventKind::Disconnected, "carol", 4, 2), t0);
    let over = p.expire(t0 + OFFLINE_GRACE);
    assert_eq!(
        over,
        vec![watcher.clone()],
        "the offline notice did not fit"
    );
    assert_eq!(told(&mut rx), vec![("carol".into(), true)]);
    p.unwatch(&watcher, None);
    assert_eq!(p.watched_by(&watcher), 0);
}

fn sub(kind: EventKind, user: &str, session: u128, channel: &str) -> ConnectionEvent {
    ConnectionEvent {
        channel: Some(protocol::ChannelName::new(channel).unwrap()),
        ..event(kind, user, session, 1)
    }
}

fn rooms(limit: usize) -> Presence {
    let p = Presence::new(Rules {
        patterns: vec!["ch:room.*".into()],
        join_leave_limit: limit,
    });
    p.load([], BTreeMap::new());
    p
}

/// (join?, user) of the notices an event made.
fn notices(a: Applied) -> Vec<(bool, String)> {
    a.notices
        .iter()
        .map(|(_, t)| match ServerFrame::parse(t.as_str()).unwrap() {
            ServerFrame::Join(m) => (true, m.user.to_string()),
            ServerFrame::Leave(m) => (false, m.user.to_string()),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn a_users_first_subscription_joins_and_last_leaves_also_by_disconnect() {
    let p = rooms(10);
    let t0 = Instant::now();
    let mut at = 0;
    let mut apply = |e: ConnectionEvent| {
        at += 1;
        notices(p.apply(0, at, &e, t0))
    };
    assert_eq!(
        apply(sub(EventKind::Subscribed, "bob", 1, "ch:room.a")),
        vec![(true, "bob".into())]
    );
    assert_eq!(
        apply(sub(EventKind::Subscribed, "bob", 2, "ch:room.a")),
        vec![],
        "a second device"
    );
    assert_eq!(
        apply(sub(EventKind::Subscribed, "bob", 1, "ch:other")),
        vec![],
        "not a presence channel"
    );
    assert_eq!(
        apply(sub(EventKind::Unsubscribed, "bob", 1, "ch:room.a")),
        vec![]
    );
    assert_eq!(
        apply(event(EventKind::Disconnected, "bob", 2, 5)),
        vec![(false, "bob".into())]
    );
    let room = protocol::ChannelName::new("ch:room.a").unwrap();
    assert_eq!(p.members(&room, None, 10), (vec![], None));
}

#[test]
fn members_page_in_user_order_and_big_channels_send_no_join_or_leave() {
    let p = rooms(2);
    let t0 = Instant::now();
    let mut joins = 0;
    for (i, u) in ["dan", "ann", "cat", "bob"].iter().enumerate() {
        let e = sub(EventKind::Subscribed, u, i as u128, "ch:room.big");
        joins += notices(p.apply(0, i as i64, &e, t0)).len();
    }
    assert_eq!(joins, 2, "only while the channel had at most 2 users");
    let room = protocol::ChannelName::new("ch:room.big").unwrap();
    let first = p.members(&room, None, 3);
    assert_eq!(first.0, [uid("ann"), uid("bob"), uid("cat")]);
    assert_eq!(first.1, Some(uid("cat")));
    assert_eq!(
        p.members(&room, first.1.as_ref(), 3),
        (vec![uid("dan")], None)
    );
    let left = notices(p.apply(0, 9, &event(EventKind::Disconnected, "dan", 0, 5), t0));
    assert_eq!(left, vec![], "3 users stay: still above the limit");
}

#[test]
fn last_seen_is_kept_for_watched_users_only_and_dropped_with_the_last_watcher() {
    let p = loaded();
    let t0 = Instant::now();
    let _ = p.apply(0, 10, &event(EventKind::Disconnected, "bob", 1, 40), t0);
    assert_eq!(
        p.state(&[uid("bob")])[0].last_seen_ms,
        None,
        "unwatched: the store has it"
    );
    let (tx, _rx) = mpsc::channel(8);
    let watcher = (uid("alice"), 7);
    p.watch(&watcher, tx, &[uid("carol")]);
    let _ = p.apply(0, 11, &event(EventKind::Connected, "carol", 2, 1), t0);
    let _ = p.apply(0, 12, &event(EventKind::Disconnected, "carol", 2, 50), t0);
    assert_eq!(p.state(&[uid("carol")])[0].last_seen_ms, Some(50));
    p.unwatch(&watcher, None);
    assert_eq!(p.state(&[uid("carol")])[0].last_seen_ms, None);
}
