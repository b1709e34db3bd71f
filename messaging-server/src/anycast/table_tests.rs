use super::*;

const TIMEOUT: Duration = Duration::from_secs(2);

fn table(max_pending: usize) -> Table {
    Table::new(Settings {
        handle_timeout: TIMEOUT,
        max_pending,
        max_wait: Duration::from_secs(60),
    })
}

fn ch() -> ChannelName {
    ChannelName::new("ch:jobs").unwrap()
}

fn id(n: u128) -> MsgId {
    MsgId(Uuid::from_u128(n))
}

fn s(n: u128) -> Uuid {
    Uuid::from_u128(n << 64 | n)
}

fn publish(t: &mut Table, n: u128, chat: bool, sessions: &[Uuid], now: Instant) -> Option<Uuid> {
    let (channel, frame) = (ch(), Text::from(n.to_string()));
    let offer = Chosen {
        channel: &channel,
        frame: &frame,
        sessions,
        now,
    };
    t.publish(id(n), &n.to_string(), chat, offer)
}

#[test]
fn an_unanswered_offer_moves_to_another_subscriber_once_each() {
    let (mut t, t0) = (table(10), Instant::now());
    let subs = [s(1), s(2), s(3)];
    let first = publish(&mut t, 7, true, &subs, t0).unwrap();
    assert!(t.reconsider(t0 + TIMEOUT / 2, |_| subs.to_vec()).is_empty());
    let mut offered = vec![first];
    for k in 1..3 {
        let offers = t.reconsider(t0 + TIMEOUT * k, |_| subs.to_vec());
        assert_eq!(offers.len(), 1, "round {k}: {offers:?}");
        offered.push(offers[0].session);
    }
    offered.sort();
    assert_eq!(offered, subs, "each subscriber offered it exactly once");
    // Everyone has had it: it waits for a new subscriber, never a repeat.
    assert!(t.reconsider(t0 + TIMEOUT * 3, |_| subs.to_vec()).is_empty());
    assert!(t.waiting());
    let more = [s(1), s(2), s(3), s(4)];
    let offers = t.reconsider(t0 + TIMEOUT * 3, |_| more.to_vec());
    assert_eq!(offers.iter().map(|o| o.session).collect::<Vec<_>>(), [s(4)]);
}

#[test]
fn a_handled_publication_is_offered_no_more() {
    let (mut t, t0) = (table(10), Instant::now());
    let subs = [s(1), s(2)];
    publish(&mut t, 7, true, &subs, t0).unwrap();
    assert!(t.handled(&id(7)));
    assert!(!t.handled(&id(7)));
    assert!(t.reconsider(t0 + TIMEOUT * 5, |_| subs.to_vec()).is_empty());
    assert_eq!(t.len(), 0);
}

#[test]
fn a_subscriber_that_leaves_hands_its_offers_on_after_the_grace() {
    let (mut t, t0) = (table(10), Instant::now());
    let subs = [s(1), s(2)];
    let first = publish(&mut t, 7, true, &subs, t0).unwrap();
    let rest: Vec<Uuid> = subs.iter().copied().filter(|x| *x != first).collect();
    let left = t0 + Duration::from_millis(100);
    assert!(t.reconsider(left, |_| rest.clone()).is_empty());
    assert_eq!(
        t.next_due(),
        Some(left + LEAVE_GRACE),
        "woken at the grace's end"
    );
    // Reconsidered again meanwhile: the grace does not start over.
    assert!(t
        .reconsider(left + LEAVE_GRACE / 2, |_| rest.clone())
        .is_empty());
    let offers = t.reconsider(left + LEAVE_GRACE, |_| rest.clone());
    assert_eq!(offers.iter().map(|o| o.session).collect::<Vec<_>>(), rest);
}

/// The chosen session handled it and left; a server reads the leaving
/// before the handled mark (two topics): the mark within the grace ends it.
#[test]
fn a_mark_read_after_its_subscriber_left_is_not_offered_again() {
    let (mut t, t0) = (table(10), Instant::now());
    let subs = [s(1), s(2), s(3)];
    let first = publish(&mut t, 7, true, &subs, t0).unwrap();
    let rest: Vec<Uuid> = subs.iter().copied().filter(|x| *x != first).collect();
    let left = t0 + Duration::from_millis(50);
    assert!(t.reconsider(left, |_| rest.clone()).is_empty());
    assert!(t.handled(&id(7)), "still followed when its mark comes");
    assert!(t
        .reconsider(left + LEAVE_GRACE, |_| rest.clone())
        .is_empty());
    assert_eq!(t.len(), 0);
}

/// A grace never outlasts the offer's own time to answer.
#[test]
fn the_grace_ends_with_the_handle_timeout_when_that_comes_first() {
    let (mut t, t0) = (table(10), Instant::now());
    let subs = [s(1), s(2)];
    publish(&mut t, 7, true, &subs, t0).unwrap();
    let left = t0 + TIMEOUT - LEAVE_GRACE / 4;
    assert!(t.reconsider(left, |_| vec![]).is_empty());
    assert_eq!(t.next_due(), Some(t0 + TIMEOUT));
}

#[test]
fn with_nobody_subscribed_a_chat_publication_waits_and_an_ephemeral_one_is_dropped() {
    let (mut t, t0) = (table(10), Instant::now());
    assert_eq!(publish(&mut t, 1, true, &[], t0), None);
    assert_eq!(publish(&mut t, 2, false, &[], t0), None);
    assert_eq!(t.len(), 1);
    let offers = t.reconsider(t0 + Duration::from_secs(10), |_| vec![s(9)]);
    assert_eq!(offers.len(), 1);
    assert_eq!((offers[0].msg_id, offers[0].session), (id(1), s(9)));
}

#[test]
fn a_repeated_msg_id_goes_to_nobody_and_the_oldest_gives_way() {
    let (mut t, t0) = (table(2), Instant::now());
    let subs = [s(1)];
    assert!(publish(&mut t, 1, true, &subs, t0).is_some());
    assert_eq!(publish(&mut t, 1, true, &subs, t0), None);
    publish(&mut t, 2, true, &subs, t0);
    publish(&mut t, 3, true, &subs, t0);
    assert_eq!(t.len(), 2);
    assert_eq!(t.given_up.overflowed, 1);
    assert!(!t.handled(&id(1)), "the oldest was pushed out");
}

#[test]
fn a_publication_nobody_handles_expires() {
    let (mut t, t0) = (table(10), Instant::now());
    publish(&mut t, 1, true, &[], t0);
    assert!(t
        .reconsider(t0 + Duration::from_secs(61), |_| vec![])
        .is_empty());
    assert_eq!((t.len(), t.given_up.expired), (0, 1));
}
