use super::*;
use proptest::prelude::*;

fn ch(s: &str) -> ChannelName {
    ChannelName::new(s).unwrap()
}

fn sub(conn: u64, queue: usize) -> (Subscriber, mpsc::Receiver<Utf8Bytes>) {
    let (tx, rx) = mpsc::channel(queue);
    let to = Subscriber {
        user: UserId::new(format!("u{conn}")).unwrap(),
        conn,
        queue: tx,
    };
    (to, rx)
}

fn frame(offset: i64) -> Utf8Bytes {
    Utf8Bytes::from(offset.to_string())
}

fn drain(rx: &mut mpsc::Receiver<Utf8Bytes>) -> Vec<String> {
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
    hub.open(vec![10, 20]);
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
    hub.open(vec![0]);
    let (a, mut ra) = sub(1, 4);
    let (b, mut rb) = sub(2, 4);
    hub.subscribe(&ch("ch:news"), a, false);
    hub.subscribe(&ch("ch:news"), b.clone(), false);
    hub.subscribe(&ch("ch:other"), b, false);
    let d = hub.dispatch(0, 0, &ch("ch:news"), &frame(0));
    assert_eq!((d.delivered, d.overflowed.len()), (2, 0));
    hub.dispatch(0, 1, &ch("ch:nobody"), &frame(1));
    assert_eq!(
        (drain(&mut ra), drain(&mut rb)),
        (vec!["0".to_string()], vec!["0".to_string()])
    );
    assert_eq!(hub.next_offset(0), Some(2));
}

#[test]
fn a_full_queue_closes_the_connection_and_nothing_follows_the_gap() {
    let hub = ChannelHub::new(16);
    hub.open(vec![0]);
    let (a, mut ra) = sub(7, 1);
    hub.subscribe(&ch("ch:x"), a, false);
    assert!(hub
        .dispatch(0, 0, &ch("ch:x"), &frame(0))
        .overflowed
        .is_empty());
    let d = hub.dispatch(0, 1, &ch("ch:x"), &frame(1));
    assert_eq!(d.overflowed, vec![(UserId::new("u7").unwrap(), 7)]);
    drain(&mut ra);
    let d = hub.dispatch(0, 2, &ch("ch:x"), &frame(2));
    assert_eq!((d.delivered, d.overflowed.len()), (0, 0));
    assert!(drain(&mut ra).is_empty());
}

proptest! {
    /// Whatever the recovery read returns up to the seam and whenever the
    /// live records arrive, the device sees every offset from its cursor on
    /// exactly once, in order.
    #[test]
    fn recovery_and_live_meet_without_gap_or_duplicate(
        cursor in 0i64..20,
        before in 0i64..20,
        during in 0i64..20,
    ) {
        let hub = ChannelHub::new(1024);
        let start = cursor + before;
        hub.open(vec![start]);
        let (a, mut ra) = sub(1, 1024);
        let live_from = hub.subscribe(&ch("ch:p"), a, true).unwrap();
        for o in live_from..live_from + during {
            hub.dispatch(0, o, &ch("ch:p"), &frame(o));
        }
        // The recovery read covers (cursor, live_from).
        let recovered: Vec<i64> = (cursor + 1..live_from).collect();
        let last = recovered.last().copied().unwrap_or(cursor);
        let buffered = hub.finish_recovery(&ch("ch:p"), 1, last);
        let mut seen: Vec<i64> = recovered;
        seen.extend(buffered.iter().map(|f| f.parse::<i64>().unwrap()));
        let o = live_from + during;
        hub.dispatch(0, o, &ch("ch:p"), &frame(o));
        hub.dispatch(0, o, &ch("ch:p"), &frame(o));
        seen.extend(drain(&mut ra).iter().map(|f| f.parse::<i64>().unwrap()));
        let want: Vec<i64> = (cursor + 1..=o).collect();
        prop_assert_eq!(seen, want);
    }
}

/// Connections 1..=4 subscribed to ch:a (all) and ch:b (even ones) with
/// queues of `queue`, and what each received after `dispatch`.
fn received_after(queue: usize, dispatch: impl FnOnce(&ChannelHub)) -> Vec<Vec<String>> {
    let hub = ChannelHub::new(queue);
    hub.open(vec![0, 0]);
    let mut rxs = Vec::new();
    for conn in 1..=4u64 {
        let (to, rx) = sub(conn, queue);
        hub.subscribe(&ch("ch:a"), to.clone(), false);
        if conn % 2 == 0 {
            hub.subscribe(&ch("ch:b"), to, false);
        }
        rxs.push(rx);
    }
    dispatch(&hub);
    rxs.iter_mut().map(drain).collect()
}

proptest! {
    /// A run dispatched at once gives every connection exactly the frames,
    /// in the order, that dispatching one by one gives — a queue that
    /// overflows included (nothing after the gap).
    #[test]
    fn a_run_delivers_what_single_dispatches_deliver(
        on_b in proptest::collection::vec(proptest::bool::ANY, 0..30),
        queue in 1usize..40,
        cut in 0usize..30,
    ) {
        let names: Vec<ChannelName> = on_b.iter().map(|b| ch(if *b { "ch:b" } else { "ch:a" })).collect();
        let frames: Vec<Utf8Bytes> = (0..names.len() as i64).map(frame).collect();
        // Offsets count per partition, as the log does.
        let at = |i: usize| {
            let p = protocol::partition_for(names[i].as_str(), 2);
            let offset = names[..i].iter().filter(|n| protocol::partition_for(n.as_str(), 2) == p).count();
            (p, offset as i64)
        };
        let one_by_one = received_after(queue, |hub| {
            for i in 0..names.len() {
                let (p, o) = at(i);
                hub.dispatch(p, o, &names[i], &frames[i]);
            }
        });
        let batched = received_after(queue, |hub| {
            let all: Vec<Publication<'_>> = (0..names.len())
                .map(|i| {
                    let (partition, offset) = at(i);
                    Publication { partition, offset, channel: &names[i], frame: &frames[i] }
                })
                .collect();
            let (first, rest) = all.split_at(cut.min(all.len()));
            hub.dispatch_batch(first);
            hub.dispatch_batch(rest);
        });
        prop_assert_eq!(one_by_one, batched);
    }
}
