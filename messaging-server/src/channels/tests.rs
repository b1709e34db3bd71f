use super::*;

fn ch(s: &str) -> ChannelName {
    ChannelName::new(s).unwrap()
}

fn sub(conn: u64, queue: usize) -> (Subscriber, mpsc::Receiver<Text>) {
    let (tx, rx) = mpsc::channel(queue);
    let to = Subscriber {
        user: UserId::new(format!("u{conn}")).unwrap(),
        conn,
        queue: tx,
    };
    (to, rx)
}

/// Hands one publication of `channel` at `offset` of `partition` out.
fn dispatch(
    hub: &ChannelHub,
    partition: u32,
    offset: i64,
    channel: &ChannelName,
    frame: &Text,
) -> Dispatched {
    let record = ChannelRecord {
        v: 1,
        msg_id: protocol::MsgId(uuid::Uuid::new_v4()),
        kind: protocol::Kind::Chat,
        channel: channel.clone(),
        sender: UserId::new("sender").unwrap(),
        sender_device: protocol::DeviceId::new("d").unwrap(),
        body: serde_json::value::RawValue::from_string("1".into()).unwrap(),
        sent_at_ms: 0,
    };
    hub.dispatch_batch(&[Entry {
        partition,
        offset,
        record,
        frame: frame.clone(),
    }])
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
