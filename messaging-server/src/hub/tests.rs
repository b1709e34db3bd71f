use super::*;
use crate::delivery::Overflow;
use serde_json::value::RawValue;

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}
fn did(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

pub(crate) fn record(kind: Kind, sender: &str, device: &str, to: &[&str]) -> Record {
    Record {
        v: 1,
        msg_id: protocol::MsgId(uuid::Uuid::new_v4()),
        kind,
        conversation_id: protocol::ConversationId::new("room").unwrap(),
        sender: uid(sender),
        sender_device: did(device),
        recipients: to.iter().map(|u| uid(u)).collect(),
        body: RawValue::from_string("1".into()).unwrap(),
        sent_at_ms: 0,
    }
}

fn frame(n: i64) -> Text {
    Text::from(n.to_string())
}

fn drain(h: &mut DeviceHandle) -> Vec<String> {
    let mut v = Vec::new();
    while let Ok(f) = h.rx.try_recv() {
        v.push(f.to_string());
    }
    v
}

#[test]
fn unserved_partition_is_refused() {
    let hub = Hub::new(16, 32);
    assert_eq!(
        hub.register(&uid("a"), &did("d"), 3, false).err(),
        Some(Refused::NotServed(3))
    );
}

#[test]
fn every_device_of_every_recipient_gets_it_and_ephemeral_skips_sender_device() {
    let hub = Hub::new(16, 32);
    hub.open_partition(0, 10);
    let (mut a1, from) = hub.register(&uid("a"), &did("1"), 0, false).unwrap();
    let (mut a2, _) = hub.register(&uid("a"), &did("2"), 0, false).unwrap();
    let (mut b1, _) = hub.register(&uid("b"), &did("1"), 0, false).unwrap();
    assert_eq!(from, 10);
    let d = hub.dispatch(
        0,
        10,
        &record(Kind::Chat, "a", "1", &["a", "b"]),
        &frame(10),
    );
    assert_eq!(d.delivered, 3);
    hub.dispatch(
        0,
        11,
        &record(Kind::Ephemeral, "a", "1", &["a", "b"]),
        &frame(11),
    );
    assert_eq!(drain(&mut a1), vec!["10"]);
    assert_eq!(drain(&mut a2), vec!["10", "11"]);
    assert_eq!(drain(&mut b1), vec!["10", "11"]);
}

#[test]
fn re_read_records_are_not_delivered_twice() {
    let hub = Hub::new(16, 32);
    hub.open_partition(0, 5);
    let (mut a, _) = hub.register(&uid("a"), &did("1"), 0, false).unwrap();
    for o in [5, 6, 5, 6, 7] {
        hub.dispatch(0, o, &record(Kind::Chat, "x", "x", &["a"]), &frame(o));
    }
    assert_eq!(drain(&mut a), vec!["5", "6", "7"]);
}

#[test]
fn replay_seam_has_no_gap_and_no_duplicate() {
    let hub = Hub::new(16, 32);
    hub.open_partition(0, 0);
    for o in 0..3 {
        hub.dispatch(0, o, &record(Kind::Chat, "x", "x", &["a"]), &frame(o));
    }
    let (mut a, live_from) = hub.register(&uid("a"), &did("1"), 0, true).unwrap();
    assert_eq!(live_from, 3);
    for o in 3..6 {
        hub.dispatch(0, o, &record(Kind::Chat, "x", "x", &["a"]), &frame(o));
    }
    assert!(drain(&mut a).is_empty(), "nothing goes out while replaying");
    // The replay read up to offset 3 (it may overlap the live stream).
    let buffered: Vec<String> = hub
        .finish_replay(&uid("a"), a.id, 3)
        .iter()
        .map(|f| f.to_string())
        .collect();
    assert_eq!(buffered, vec!["4", "5"]);
    hub.dispatch(0, 6, &record(Kind::Chat, "x", "x", &["a"]), &frame(6));
    assert_eq!(drain(&mut a), vec!["6"]);
}

#[test]
fn overflow_closes_with_4004_and_partition_loss_closes_its_devices() {
    let hub = Hub::new(16, 32);
    hub.open_partition(0, 0);
    hub.open_partition(1, 0);
    let (mut slow, _) = hub.register(&uid("a"), &did("1"), 0, false).unwrap();
    let (mut other, _) = hub.register(&uid("b"), &did("1"), 1, false).unwrap();
    for o in 0..17 {
        hub.dispatch(0, o, &record(Kind::Chat, "x", "x", &["a"]), &frame(o));
    }
    assert_eq!(
        slow.close.try_recv().ok(),
        Some(Ending::TooSlow(Overflow::Queue))
    );
    hub.close_partition(1, |_| Ending::Moved(None));
    assert_eq!(other.close.try_recv().ok(), Some(Ending::Moved(None)));
    assert!(!hub.is_open(1));
    hub.unregister(&uid("a"), slow.id);
    hub.unregister(&uid("b"), other.id);
    assert_eq!(hub.connections(), 0);
}

#[test]
fn nothing_is_queued_after_an_overflow() {
    let hub = Hub::new(16, 32);
    hub.open_partition(0, 0);
    let (mut slow, _) = hub.register(&uid("a"), &did("1"), 0, false).unwrap();
    for o in 0..17 {
        hub.dispatch(0, o, &record(Kind::Chat, "x", "x", &["a"]), &frame(o));
    }
    // The session drains its queue; offset 16 was dropped, so 17 must not follow.
    assert_eq!(drain(&mut slow).len(), 16);
    hub.dispatch(0, 17, &record(Kind::Chat, "x", "x", &["a"]), &frame(17));
    assert!(
        drain(&mut slow).is_empty(),
        "a frame after the gap reached a closed device"
    );
    assert_eq!(
        slow.close.try_recv().ok(),
        Some(Ending::TooSlow(Overflow::Queue))
    );
}

#[test]
fn devices_per_user_are_bounded_and_a_reconnect_counts_once() {
    let hub = Hub::new(16, 2);
    hub.open_partition(0, 0);
    let _one = hub.register(&uid("a"), &did("1"), 0, false).unwrap();
    let _two = hub.register(&uid("a"), &did("2"), 0, false).unwrap();
    assert_eq!(
        hub.register(&uid("a"), &did("3"), 0, false).err(),
        Some(Refused::TooManyDevices(2))
    );
    assert!(
        hub.register(&uid("a"), &did("2"), 0, false).is_ok(),
        "same device again"
    );
    assert!(
        hub.register(&uid("b"), &did("1"), 0, false).is_ok(),
        "another user"
    );
}

/// (recipients among a..d, ephemeral, sender among a..d, sender device 1..2)
type Spec = (Vec<u8>, bool, u8, u8);

fn spec_record(s: &Spec) -> Record {
    let names = ["a", "b", "c", "d"];
    let to: Vec<&str> = s.0.iter().map(|i| names[*i as usize % 4]).collect();
    let kind = if s.1 { Kind::Ephemeral } else { Kind::Chat };
    let device = if s.3 % 2 == 0 { "1" } else { "2" };
    record(kind, names[s.2 as usize % 4], device, &to)
}

/// Every device a..d × 1..2 on partition 0, and what each received.
fn devices_after(dispatch: impl FnOnce(&Hub)) -> Vec<Vec<String>> {
    let hub = Hub::new(1024, 32);
    hub.open_partition(0, 0);
    let mut handles: Vec<DeviceHandle> = ["a", "b", "c", "d"]
        .iter()
        .flat_map(|u| ["1", "2"].map(|d| (uid(u), did(d))))
        .map(|(u, d)| hub.register(&u, &d, 0, false).unwrap().0)
        .collect();
    dispatch(&hub);
    handles.iter_mut().map(drain).collect()
}

proptest::proptest! {
    /// A run dispatched at once reaches every device with exactly the
    /// frames, in the order, that dispatching record by record gives.
    #[test]
    fn a_run_delivers_what_single_dispatches_deliver(
        specs in proptest::collection::vec(
            (proptest::collection::vec(0u8..4, 0..4), proptest::bool::ANY, 0u8..4, 0u8..2),
            0..40,
        ),
        cut in 0usize..40,
    ) {
        let records: Vec<Record> = specs.iter().map(spec_record).collect();
        let frames: Vec<Text> = (0..records.len() as i64).map(frame).collect();
        let one_by_one = devices_after(|hub| {
            for (i, r) in records.iter().enumerate() {
                hub.dispatch(0, i as i64, r, &frames[i]);
            }
        });
        let batched = devices_after(|hub| {
            let all: Vec<Consumed> = records
                .iter()
                .zip(&frames)
                .enumerate()
                .map(|(i, (record, frame))| Entry { partition: 0, offset: i as i64, record: record.clone(), frame: frame.clone() })
                .collect();
            let (first, rest) = all.split_at(cut.min(all.len()));
            hub.dispatch_batch(first);
            hub.dispatch_batch(rest);
        });
        proptest::prop_assert_eq!(one_by_one, batched);
    }
}
