use super::*;

fn ch(s: &str) -> ChannelName {
    ChannelName::new(s).unwrap()
}

fn sub(conn: u64, queue: usize) -> (Subscriber, mpsc::Receiver<Text>) {
    let (tx, rx) = mpsc::channel(queue);
    let to = Subscriber {
        user: UserId::new(format!("u{conn}")).unwrap(),
        session: Some(session(conn)),
        conn,
        queue: tx,
    };
    (to, rx)
}

fn session(conn: u64) -> uuid::Uuid {
    uuid::Uuid::from_u128(u128::from(conn) + 1000)
}

/// Hands one publication of `channel` at `offset` of `partition` out.
fn dispatch(
    hub: &ChannelHub,
    partition: u32,
    offset: i64,
    channel: &ChannelName,
    frame: &Text,
) -> Dispatched {
    dispatch_record(
        hub,
        partition,
        offset,
        publication(channel),
        frame,
        &Targets::new(),
    )
}

fn publication(channel: &ChannelName) -> ChannelRecord {
    ChannelRecord {
        v: 1,
        msg_id: protocol::MsgId(uuid::Uuid::new_v4()),
        kind: protocol::Kind::Chat,
        channel: channel.clone(),
        sender: UserId::new("sender").unwrap(),
        sender_device: protocol::DeviceId::new("d").unwrap(),
        body: serde_json::value::RawValue::from_string("1".into()).unwrap(),
        sent_at_ms: 0,
        anycast: false,
        key: None,
        handled: None,
    }
}

fn dispatch_record(
    hub: &ChannelHub,
    partition: u32,
    offset: i64,
    record: ChannelRecord,
    frame: &Text,
    targets: &Targets,
) -> Dispatched {
    let entry = Entry {
        partition,
        offset,
        record,
        frame: frame.clone(),
    };
    hub.dispatch_batch(&[entry], targets)
}

#[test]
fn an_anycast_publication_reaches_its_target_alone_and_a_mark_reaches_nobody() {
    let hub = ChannelHub::new(16);
    hub.open(&[(0, 0)]);
    let c = ch("ch:jobs");
    let mut rxs: Vec<_> = (1..=3)
        .map(|conn| {
            let (to, rx) = sub(conn, 8);
            hub.subscribe(&c, to, false).unwrap();
            rx
        })
        .collect();
    let mut any = publication(&c);
    any.anycast = true;
    let targets = Targets::from([(any.msg_id, session(2))]);
    dispatch_record(&hub, 0, 0, any.clone(), &frame(0), &targets);
    let mut mark = publication(&c);
    mark.handled = Some(any.msg_id);
    dispatch_record(&hub, 0, 1, mark, &frame(1), &Targets::new());
    let got: Vec<Vec<String>> = rxs.iter_mut().map(drain).collect();
    assert_eq!(got, [vec![], vec!["0".to_owned()], vec![]]);
    // Offered again (by the re-choice task): to a session held here, or not.
    assert_eq!(hub.offer(&c, session(3), &frame(0)), Offered::Delivered);
    assert_eq!(hub.offer(&c, session(9), &frame(0)), Offered::NotHere);
    assert_eq!(drain(&mut rxs[2]), ["0"]);
}

fn frame(offset: i64) -> Text {
    Text::from(offset.to_string())
}

fn drain(rx: &mut mpsc::Receiver<Text>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(f) = rx.try_recv() {
        out.push(f.to_string());
    }
    out
}

#[test]
fn nothing_before_the_consumer_opens_and_counts_follow_subscriptions() {
    let hub = ChannelHub::new(16);
    let (to, _rx) = sub(1, 4);
    assert_eq!(hub.subscribe(&ch("ch:a"), to.clone(), false), None);
    assert_eq!(hub.partition_of(&ch("ch:a")), None);
    hub.open(&[(0, 10), (1, 20)]);
    let p = hub.partition_of(&ch("ch:a")).unwrap();
    assert_eq!(
        hub.subscribe(&ch("ch:a"), to.clone(), false),
        Some([10, 20][p as usize])
    );
    // A second subscribe of the same connection replaces the first.
    hub.subscribe(&ch("ch:a"), to.clone(), false);
    hub.subscribe(&ch("ch:b"), to, false);
    assert_eq!(hub.counts(), (2, 2));
    assert!(hub.unsubscribe(&ch("ch:a"), 1));
    assert!(!hub.unsubscribe(&ch("ch:a"), 1));
    assert_eq!(hub.counts(), (1, 1));
}

#[test]
fn one_publication_reaches_every_subscriber_of_its_channel_only() {
    let hub = ChannelHub::new(16);
    hub.open(&[(0, 0)]);
    let (a, mut ra) = sub(1, 4);
    let (b, mut rb) = sub(2, 4);
    hub.subscribe(&ch("ch:news"), a, false);
    hub.subscribe(&ch("ch:news"), b.clone(), false);
    hub.subscribe(&ch("ch:other"), b, false);
    let d = dispatch(&hub, 0, 0, &ch("ch:news"), &frame(0));
    assert_eq!((d.delivered, d.overflowed.len()), (2, 0));
    dispatch(&hub, 0, 1, &ch("ch:nobody"), &frame(1));
    assert_eq!(
        (drain(&mut ra), drain(&mut rb)),
        (vec!["0".to_string()], vec!["0".to_string()])
    );
    assert_eq!(hub.next_offset(0), Some(2));
}

#[test]
fn a_full_queue_closes_the_connection_and_nothing_follows_the_gap() {
    let hub = ChannelHub::new(16);
    hub.open(&[(0, 0)]);
    let (a, mut ra) = sub(7, 1);
    hub.subscribe(&ch("ch:x"), a, false);
    assert!(dispatch(&hub, 0, 0, &ch("ch:x"), &frame(0))
        .overflowed
        .is_empty());
    let d = dispatch(&hub, 0, 1, &ch("ch:x"), &frame(1));
    assert_eq!(d.overflowed, vec![(UserId::new("u7").unwrap(), 7)]);
    drain(&mut ra);
    let d = dispatch(&hub, 0, 2, &ch("ch:x"), &frame(2));
    assert_eq!((d.delivered, d.overflowed.len()), (0, 0));
    assert!(drain(&mut ra).is_empty());
}
