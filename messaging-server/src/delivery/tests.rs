use super::*;
use proptest::prelude::*;

/// A record for the keys it holds; its frame is its offset.
#[derive(Debug, Clone)]
struct Keys(Vec<char>);

impl Keyed for Keys {
    type Key = char;
    fn keys(&self) -> &[char] {
        &self.0
    }
}

type Rec = Entry<Keys, i64>;

fn rec(partition: u32, offset: i64, keys: &str) -> Rec {
    Entry {
        partition,
        offset,
        record: Keys(keys.chars().collect()),
        frame: offset,
    }
}

type F = Fanout<char, (), i64>;

impl super::Queued for i64 {}

fn join(
    f: &F,
    key: char,
    id: u64,
    p: u32,
    queue: usize,
    replaying: bool,
) -> (i64, mpsc::Receiver<i64>) {
    let (tx, rx) = mpsc::channel(queue);
    let live_from = f.lock().add(&key, id, p, (), tx, replaying).unwrap();
    (live_from, rx)
}

fn drain(rx: &mut mpsc::Receiver<i64>) -> Vec<i64> {
    let mut v = Vec::new();
    while let Ok(x) = rx.try_recv() {
        v.push(x);
    }
    v
}

fn all(_: &char, _: &(), _: &Keys) -> bool {
    true
}

impl F {
    /// Dispatches to every subscriber of the records' keys.
    fn dispatch_all(&self, run: &[Rec], wants: fn(&char, &(), &Keys) -> bool) -> Dispatched<char> {
        self.dispatch(run, wants, |seat, _| assert!(seat.is_closed()))
    }
}

#[test]
fn unopened_partitions_take_no_subscriber_and_no_record() {
    let f = F::new(4);
    let (tx, _rx) = mpsc::channel(1);
    assert_eq!(f.lock().add(&'a', 1, 0, (), tx, false), None);
    f.lock().open(0, 7);
    let (from, mut rx) = join(&f, 'a', 1, 0, 4, false);
    assert_eq!(from, 7);
    let d = f.dispatch_all(&[rec(1, 0, "a"), rec(0, 7, "a")], all);
    assert_eq!((d.delivered, d.overflowed.len()), (1, 0));
    assert_eq!(drain(&mut rx), vec![7]);
    let core = f.lock();
    assert_eq!((core.next_offset(0), core.next_offset(1)), (Some(8), None));
}

#[test]
fn re_read_records_are_not_delivered_twice_and_others_partitions_are_skipped() {
    let f = F::new(16);
    f.lock().open(0, 5);
    f.lock().open(1, 0);
    let (_, mut a) = join(&f, 'a', 1, 0, 16, false);
    for o in [5, 6, 5, 6, 7] {
        f.dispatch_all(&[rec(0, o, "a"), rec(1, o, "a")], all);
    }
    assert_eq!(drain(&mut a), vec![5, 6, 7]);
}

#[test]
fn a_full_queue_closes_and_nothing_follows_the_gap() {
    let f = F::new(16);
    f.lock().open(0, 0);
    let (_, mut a) = join(&f, 'a', 9, 0, 2, false);
    let d = f.dispatch_all(&[rec(0, 0, "a"), rec(0, 1, "a"), rec(0, 2, "a")], all);
    assert_eq!(d.delivered, 2);
    assert_eq!(d.overflowed, vec![('a', 9, Overflow::Queue)]);
    assert_eq!(drain(&mut a), vec![0, 1]);
    let d = f.dispatch_all(&[rec(0, 3, "a")], all);
    assert_eq!((d.delivered, d.overflowed.len()), (0, 0));
    assert!(drain(&mut a).is_empty(), "a frame after the gap");
}

#[test]
fn a_full_replay_buffer_closes() {
    let f = F::new(2);
    f.lock().open(0, 0);
    let (_, mut a) = join(&f, 'a', 3, 0, 8, true);
    let d = f.dispatch_all(&[rec(0, 0, "a"), rec(0, 1, "a"), rec(0, 2, "a")], all);
    assert_eq!(d.overflowed, vec![('a', 3, Overflow::Replay)]);
    assert!(f.lock().seat_mut(&'a', 3).is_some_and(|s| s.is_closed()));
    assert!(drain(&mut a).is_empty());
}

#[test]
fn counts_follow_adds_and_removes() {
    let f = F::new(4);
    f.lock().open(0, 0);
    let _a = join(&f, 'a', 1, 0, 1, false);
    let _b = join(&f, 'a', 2, 0, 1, false);
    let _c = join(&f, 'b', 1, 0, 1, false);
    assert_eq!(f.lock().counts(), (2, 3));
    assert!(f.lock().remove(&'a', 1));
    assert!(!f.lock().remove(&'a', 1));
    assert!(f.lock().remove(&'b', 1));
    assert_eq!(f.lock().counts(), (1, 1));
}

#[tokio::test]
async fn passes_wakes_when_the_consumer_reaches_the_mark() {
    let f = std::sync::Arc::new(F::new(4));
    f.lock().open(0, 0);
    let waiter = {
        let f = f.clone();
        tokio::spawn(async move {
            let t = std::time::Instant::now();
            f.passes(0, 3, Duration::from_secs(30)).await;
            t.elapsed()
        })
    };
    tokio::task::yield_now().await;
    f.dispatch_all(&[rec(0, 0, "a")], all);
    f.dispatch_all(&[rec(0, 1, "a"), rec(0, 2, "a")], all);
    let waited = waiter.await.unwrap();
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    assert_eq!(f.lock().next_offset(0), Some(3));
}

proptest! {
    /// Whatever the replay returns up to the seam and whenever the live
    /// records arrive, the subscriber sees every offset from its cursor on
    /// exactly once, in order.
    #[test]
    fn replay_and_live_meet_without_gap_or_duplicate(
        cursor in 0i64..20,
        before in 0i64..20,
        during in 0i64..20,
        overlap in 0i64..5,
    ) {
        let f = F::new(1024);
        f.lock().open(0, cursor + before);
        let (live_from, mut rx) = join(&f, 'a', 1, 0, 1024, true);
        for o in live_from..live_from + during {
            f.dispatch_all(&[rec(0, o, "a")], all);
        }
        // The replay read (cursor, live_from) and maybe a little past it.
        let end = (live_from + overlap).min(live_from + during);
        let replayed: Vec<i64> = (cursor + 1..end).collect();
        let last = replayed.last().copied().unwrap_or(cursor);
        let mut seen = replayed;
        seen.extend(f.lock().finish_replay(&'a', 1, last));
        let o = live_from + during;
        f.dispatch_all(&[rec(0, o, "a"), rec(0, o, "a")], all);
        seen.extend(drain(&mut rx));
        prop_assert_eq!(seen, (cursor + 1..=o).collect::<Vec<_>>());
    }

    /// A run dispatched at once gives each subscriber, per key, exactly the
    /// frames record-by-record dispatching gives, a closed one included
    /// (a prefix without a gap).
    #[test]
    fn a_run_delivers_per_key_what_single_dispatches_deliver(
        keys in proptest::collection::vec("[abc]{0,3}", 0..40),
        queue in 1usize..50,
        cut in 0usize..40,
    ) {
        let run: Vec<Rec> = keys.iter().enumerate().map(|(i, k)| rec(0, i as i64, k)).collect();
        let received = |batches: &[&[Rec]]| {
            let f = F::new(queue);
            f.lock().open(0, 0);
            let mut rxs: Vec<_> = "abc".chars().map(|k| join(&f, k, 1, 0, queue, false).1).collect();
            for b in batches {
                f.dispatch_all(b, all);
            }
            rxs.iter_mut().map(drain).collect::<Vec<_>>()
        };
        let one_by_one: Vec<&[Rec]> = run.chunks(1).collect();
        let (first, rest) = run.split_at(cut.min(run.len()));
        prop_assert_eq!(received(&one_by_one), received(&[first, rest]));
    }
}
