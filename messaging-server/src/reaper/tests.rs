use super::*;
use protocol::{DeviceId, ServerId, UserId};

fn session(n: u128, incarnation: u128, partition: u32) -> OpenSession {
    OpenSession {
        session: Uuid::from_u128(n),
        user: UserId::new(format!("u{n}")).unwrap(),
        device: DeviceId::new("d").unwrap(),
        server: ServerId::new("ms-1").unwrap(),
        incarnation: Uuid::from_u128(incarnation),
        partition,
    }
}

fn live(ids: &[u128]) -> HashSet<Uuid> {
    ids.iter().map(|i| Uuid::from_u128(*i)).collect()
}

fn ids(r: &Round) -> Vec<u128> {
    r.report.iter().map(|s| s.session.as_u128()).collect()
}

#[test]
fn sessions_of_live_registrations_are_never_reported() {
    let mut r = Reaper::default();
    let open = vec![session(1, 100, 0), session(2, 200, 1)];
    let round = r.plan(open, &live(&[100, 200]), &BTreeMap::new());
    assert_eq!(
        round,
        Round {
            report: vec![],
            need_end: vec![]
        }
    );
}

#[test]
fn a_lost_session_waits_for_the_persister_to_pass_the_end_seen_first() {
    let mut r = Reaper::default();
    let open = || vec![session(1, 100, 0), session(2, 200, 0)];
    let first = r.plan(open(), &live(&[200]), &BTreeMap::from([(0, 5)]));
    assert_eq!((ids(&first), first.need_end.clone()), (vec![], vec![0]));
    r.wait_for(0, 9);
    let behind = r.plan(open(), &live(&[200]), &BTreeMap::from([(0, 8)]));
    assert_eq!(
        (ids(&behind), behind.need_end),
        (vec![], vec![]),
        "stored 8 < end 9"
    );
    let passed = r.plan(open(), &live(&[200]), &BTreeMap::from([(0, 9)]));
    assert_eq!(
        ids(&passed),
        vec![1],
        "only the lost registration's session"
    );
}

#[test]
fn a_session_is_reported_once_while_the_store_still_shows_it_open() {
    let mut r = Reaper::default();
    r.wait_for(3, 0);
    let open = || vec![session(1, 100, 3)];
    assert_eq!(ids(&r.plan(open(), &live(&[]), &BTreeMap::new())), vec![1]);
    let again = r.plan(open(), &live(&[]), &BTreeMap::new());
    assert_eq!(
        (ids(&again), again.need_end),
        (vec![], vec![]),
        "reported already"
    );
    // Stored closed: forgotten, and nothing is waited for any more.
    let closed = r.plan(vec![], &live(&[]), &BTreeMap::new());
    assert_eq!(
        closed,
        Round {
            report: vec![],
            need_end: vec![]
        }
    );
    assert!(r.reported.is_empty() && r.waiting.is_empty());
}

#[test]
fn a_new_loss_in_a_partition_reads_its_end_again() {
    let mut r = Reaper::default();
    r.wait_for(0, 4);
    assert_eq!(
        ids(&r.plan(
            vec![session(1, 100, 0)],
            &live(&[]),
            &BTreeMap::from([(0, 4)])
        )),
        vec![1]
    );
    let _ = r.plan(vec![], &live(&[]), &BTreeMap::from([(0, 6)]));
    let next = r.plan(
        vec![session(2, 300, 0)],
        &live(&[]),
        &BTreeMap::from([(0, 6)]),
    );
    assert_eq!(
        (ids(&next), next.need_end),
        (vec![], vec![0]),
        "a fresh end, not the old one"
    );
}
