//! Made-up histories: a clean one passes; each kind of fault in it is caught
//! and put in the window it happened in.

use super::*;
use protocol::{ClientMsgId, UserId};

fn id(n: u32) -> MsgId {
    let u = UserId::new("u").expect("user");
    MsgId::derive(&u, &ClientMsgId::new(format!("m{n}")).expect("cmid"))
}

fn e(t_ms: u64, device: u32, op: Op) -> Entry {
    Entry { t_ms, device, op }
}

fn send(t: u64, dev: u32, n: u32, to: &[u32]) -> Entry {
    e(
        t,
        dev,
        Op::Send {
            msg_id: id(n),
            kind: Kind::Chat,
            dm: true,
            to: to.to_vec(),
        },
    )
}

fn ack(t: u64, dev: u32, n: u32) -> Entry {
    e(t, dev, Op::Ack { msg_id: id(n) })
}

fn deliver(t: u64, dev: u32, n: u32, offset: i64) -> Entry {
    e(
        t,
        dev,
        Op::Deliver {
            msg_id: id(n),
            cursor: Some(format!("ep:{offset}")),
            replay: false,
        },
    )
}

fn dup(t: u64, dev: u32, n: u32, offset: i64) -> Entry {
    e(
        t,
        dev,
        Op::Duplicate {
            msg_id: id(n),
            cursor: Some(format!("ep:{offset}")),
            replay: true,
        },
    )
}

fn connect(t: u64, dev: u32, server: &str) -> Entry {
    e(
        t,
        dev,
        Op::Connect {
            server: server.into(),
            resumed: true,
            partition: 0,
        },
    )
}

fn window(at: u64, end: u64) -> Window {
    Window {
        fault: "freeze".into(),
        target: "ms0".into(),
        at_ms: at,
        healed_ms: at,
        end_ms: end,
    }
}

fn run(faults: Vec<Window>) -> RunInfo {
    RunInfo {
        devices: 3,
        sealed_ms: None,
        faults,
        maps: Vec::new(),
        map_conflicts: Vec::new(),
    }
}

/// Device 0 sends m1, then (after its ack) m2 to device 1; both arrive in order.
fn clean() -> Vec<Entry> {
    vec![
        connect(0, 0, "ms0"),
        connect(0, 1, "ms0"),
        send(10, 0, 1, &[1]),
        ack(20, 0, 1),
        deliver(25, 1, 1, 5),
        send(30, 0, 2, &[1]),
        ack(40, 0, 2),
        deliver(45, 1, 2, 6),
    ]
}

#[test]
fn a_clean_history_passes() {
    let f = check(&run(vec![]), &clean());
    assert!(f.passed(), "{f:?}");
    assert_eq!(f.total, Tally::default());
    assert_eq!((f.sends, f.acked_chat_checked, f.deliveries), (2, 2, 2));
}

#[test]
fn a_lost_message_is_caught_in_its_window() {
    let mut h = clean();
    h.retain(|x| !matches!(&x.op, Op::Deliver { msg_id, .. } if *msg_id == id(2)));
    let f = check(&run(vec![window(28, 100)]), &h);
    assert!(!f.passed());
    assert_eq!(
        (f.total.lost, f.windows[0].tally.lost, f.steady.lost),
        (1, 1, 0)
    );
}

#[test]
fn an_unacknowledged_or_sealed_send_is_not_lost() {
    let mut h = clean();
    h.retain(|x| !matches!(&x.op, Op::Deliver { msg_id, .. } if *msg_id == id(2)));
    let mut r = run(vec![]);
    r.sealed_ms = Some(35);
    assert!(check(&r, &h).passed());
    h.retain(|x| !matches!(&x.op, Op::Ack { msg_id } if *msg_id == id(2)));
    assert!(check(&run(vec![]), &h).passed());
}

#[test]
fn an_app_duplicate_fails_a_protocol_duplicate_is_counted() {
    let mut h = clean();
    h.push(dup(50, 1, 1, 5));
    h.push(dup(51, 1, 2, 9));
    let f = check(&run(vec![]), &h);
    assert!(f.passed(), "protocol duplicates are allowed: {f:?}");
    assert_eq!(f.total.protocol_duplicates, 2);
    assert_eq!(
        (
            f.total.duplicates_same_record,
            f.total.duplicates_other_record
        ),
        (1, 1)
    );
    h.push(deliver(60, 1, 1, 5));
    let f = check(&run(vec![]), &h);
    assert!(!f.passed());
    assert_eq!(f.total.app_duplicates, 1);
}

#[test]
fn a_reordered_dm_is_caught() {
    let mut h = clean();
    // m2 (sent after m1's ack) reaches device 1 first.
    h.retain(|x| !matches!(x.op, Op::Deliver { .. }));
    h.push(deliver(45, 1, 2, 6));
    h.push(deliver(46, 1, 1, 7));
    let f = check(&run(vec![]), &h);
    assert!(!f.passed());
    assert_eq!(f.total.dm_order_violations, 1);
}

#[test]
fn concurrent_sends_may_arrive_in_either_order() {
    let h = vec![
        send(10, 0, 1, &[1]),
        send(11, 0, 2, &[1]),
        ack(20, 0, 1),
        ack(21, 0, 2),
        deliver(25, 1, 2, 5),
        deliver(26, 1, 1, 6),
    ];
    let f = check(&run(vec![]), &h);
    assert!(f.passed(), "{f:?}");
}

#[test]
fn a_cursor_going_back_is_a_regression() {
    let mut h = clean();
    h.push(e(
        50,
        1,
        Op::Deliver {
            msg_id: id(3),
            cursor: Some("ep:4".into()),
            replay: true,
        },
    ));
    let f = check(&run(vec![]), &h);
    assert_eq!(f.total.cursor_regressions, 1);
    assert!(!f.passed());
    // A new log epoch starts its offsets again.
    let mut h = clean();
    h.push(e(
        50,
        1,
        Op::Deliver {
            msg_id: id(3),
            cursor: Some("ep2:0".into()),
            replay: true,
        },
    ));
    assert!(check(&run(vec![]), &h).passed());
}

#[test]
fn a_delivery_by_the_old_owner_after_the_new_one_delivered_is_stale() {
    let maps = vec![
        MapAt {
            t_ms: 0,
            epoch: 1,
            owners: vec![Some("ms0".into())],
        },
        MapAt {
            t_ms: 100,
            epoch: 2,
            owners: vec![Some("ms1".into())],
        },
    ];
    let mut r = run(vec![window(90, 300)]);
    r.maps = maps;
    let h = vec![
        connect(0, 0, "ms0"),
        connect(110, 1, "ms1"),
        deliver(50, 0, 1, 1),
        deliver(120, 1, 1, 1),
        // Device 0 is still on ms0, which delivers after ms1 took over.
        deliver(130, 0, 2, 2),
    ];
    let f = check(&r, &h);
    assert_eq!(f.total.stale_deliveries, 1, "{:?}", f.examples);
    assert_eq!(f.windows[0].tally.stale_deliveries, 1);
    // A new owner serving just before the polled map names it is not stale.
    let mut early = h.clone();
    early.push(connect(95, 2, "ms1"));
    early.push(deliver(96, 2, 3, 3));
    assert_eq!(check(&r, &early).total.stale_deliveries, 1);
    // Before the new owner delivered anything it is a handover, not stale.
    let h: Vec<Entry> = h.into_iter().filter(|x| x.t_ms != 120).collect();
    assert_eq!(check(&r, &h).total.stale_deliveries, 0);
}

#[test]
fn unavailability_runs_from_injection_to_ack_and_resume() {
    let h = vec![
        connect(0, 0, "ms0"),
        send(1000, 0, 1, &[1]),
        e(1100, 0, Op::Close { code: None }),
        connect(3000, 0, "ms1"),
        ack(3100, 0, 1),
        send(3200, 0, 2, &[1]),
        ack(3300, 0, 2),
        // Device 2 is not touched by the fault.
        send(1200, 2, 3, &[1]),
        ack(1210, 2, 3),
    ];
    let f = check(&run(vec![window(900, 5000)]), &h);
    let w = &f.windows[0];
    assert_eq!(w.affected_devices, 1);
    assert_eq!((w.resumed.count, w.resumed.max_ms), (1, 2100));
    // m1, stuck through the fault, is acknowledged after the reconnect.
    assert_eq!((w.acked_again.count, w.acked_again.max_ms), (1, 2200));
    assert_eq!((w.never_acked_again, w.never_resumed), (0, 0));
    assert_eq!(
        (w.send_wait.count, w.send_wait.p50_ms, w.send_wait.max_ms),
        (2, 100, 2100)
    );
    assert_eq!(w.sends_never_acked, 0);
}

#[test]
fn spread_percentiles() {
    let s = Spread::of((1..=100).collect());
    assert_eq!((s.count, s.p50_ms, s.p99_ms, s.max_ms), (100, 50, 99, 100));
    assert_eq!(Spread::of(Vec::new()), Spread::default());
}

#[test]
fn two_maps_under_one_epoch_fail_the_run() {
    let rec = crate::history::record::Recorder::new(1);
    rec.map("c0", 3, vec![Some("ms0".into())]);
    rec.map("c1", 3, vec![Some("ms0".into())]);
    rec.map("c0", 4, vec![Some("ms1".into())]);
    let r = rec.run_info();
    assert_eq!((r.maps.len(), r.map_conflicts.len()), (2, 0));
    // A stale replica answers with an older epoch: kept out, no conflict.
    rec.map("c1", 3, vec![Some("ms0".into())]);
    assert!(check(&rec.run_info(), &[]).passed());
    rec.map("c1", 4, vec![Some("ms2".into())]);
    let f = check(&rec.run_info(), &[]);
    assert_eq!(f.map_conflicts, 1);
    assert!(!f.passed());
}

#[test]
fn what_follows_a_fault_counts_for_it_until_the_next_one() {
    let mut h = clean();
    h.push(dup(150, 1, 1, 9));
    h.push(dup(250, 1, 2, 9));
    h.push(dup(20_000, 1, 2, 9));
    // The second window starts before the aftermath of the first ends.
    let f = check(&run(vec![window(100, 120), window(200, 220)]), &h);
    assert_eq!(f.windows[0].tally.protocol_duplicates, 1);
    assert_eq!(f.windows[1].tally.protocol_duplicates, 1);
    assert_eq!(f.steady.protocol_duplicates, 1);
}
