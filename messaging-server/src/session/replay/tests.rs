use super::*;
use crate::hub::tests::record;
use futures_util::{Sink, StreamExt};
use protocol::Kind;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A log of chat records for `bob` at offsets `log_start..end`, of which
/// the persister wrote those before `persisted`; `db_down` fails the store.
/// The first `busy_stores` store reads and `busy_logs` log reads fail busy
/// (no pooled connection / nothing from the broker in time); `waits`
/// counts the retries the source was told of.
#[derive(Default)]
struct Fake {
    log_start: i64,
    end: i64,
    persisted: i64,
    db_down: bool,
    busy_stores: AtomicUsize,
    busy_logs: AtomicUsize,
    waits: AtomicUsize,
    /// Plans made from the log alone, as the source was told.
    log_only: AtomicUsize,
    /// The last persister position read, while `db_down`.
    recent: Option<i64>,
    /// The store read never answers (nor fails).
    stalls: bool,
}

/// True (and one fewer left) while `left` busy answers remain.
fn still_busy(left: &AtomicUsize) -> bool {
    left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

fn bob() -> UserId {
    UserId::new("bob").unwrap()
}

fn at(offset: i64) -> Record {
    let mut r = record(Kind::Chat, "alice", "phone", &["bob"]);
    r.msg_id = protocol::MsgId(uuid::Uuid::from_u128(offset as u128));
    r
}

impl ReplaySource for Fake {
    async fn log_start(&self, _: u32) -> anyhow::Result<i64> {
        Ok(self.log_start)
    }

    async fn persisted_next(&self, _: u32) -> anyhow::Result<i64> {
        anyhow::ensure!(!self.db_down, "database down");
        Ok(self.persisted)
    }

    async fn stored(
        &self,
        _: &UserId,
        _: u32,
        range: Range<i64>,
    ) -> anyhow::Result<Vec<StoredMessage>> {
        anyhow::ensure!(!self.db_down, "database down");
        if self.stalls {
            std::future::pending::<()>().await;
        }
        if still_busy(&self.busy_stores) {
            return Err(store::StoreError::Db(sqlx::Error::PoolTimedOut).into());
        }
        assert!(
            range.end <= self.persisted,
            "read past what the persister wrote"
        );
        Ok(range
            .map(|o| {
                let r = at(o);
                StoredMessage {
                    msg_id: r.msg_id.0,
                    conversation_id: r.conversation_id.to_string(),
                    sender: r.sender.to_string(),
                    sender_device: r.sender_device.to_string(),
                    body: r.body.get().to_owned(),
                    sent_at_ms: 0,
                    kafka_offset: o,
                }
            })
            .collect())
    }

    async fn logged(
        &self,
        _: &UserId,
        _: u32,
        range: Range<i64>,
    ) -> anyhow::Result<Vec<(i64, Record)>> {
        assert!(range.start >= self.log_start, "read before the log start");
        if still_busy(&self.busy_logs) {
            let timed_out = rdkafka::types::RDKafkaErrorCode::OperationTimedOut;
            let e = rdkafka::error::KafkaError::MessageConsumption(timed_out);
            return Err(crate::log_reader::ReadError::from(e).into());
        }
        Ok(range.map(|o| (o, at(o))).collect())
    }

    fn waited(&self) {
        self.waits.fetch_add(1, Ordering::SeqCst);
    }

    fn planned_from_log(&self) {
        self.log_only.fetch_add(1, Ordering::SeqCst);
    }

    fn recent_persisted(&self, _: u32) -> Option<i64> {
        self.recent
    }
}

fn start(live_from: i64) -> Start {
    Start {
        partition: 2,
        epoch: 1,
        log_epoch: "e1".into(),
        replay_from: Some(0),
        log_start: None,
        live_from,
    }
}

/// The offsets a replay sends, each frame checked to be a replayed message.
async fn replayed(source: &Fake, after: i64, live_from: i64) -> anyhow::Result<(Vec<i64>, i64)> {
    let s = start(live_from);
    let p = plan(source, &s, after).await?;
    let missed = missed(source, &bob(), &s, &p).await?;
    let offsets = missed
        .frames
        .iter()
        .map(|f| match f {
            ServerFrame::Message(m) => {
                assert!(m.replay, "a replayed frame says so");
                let c = m.cursor.clone().expect("chat has a cursor");
                assert_eq!(c.log_epoch, "e1");
                assert_eq!(m.msg_id.0, uuid::Uuid::from_u128(c.offset as u128));
                c.offset
            }
            other => panic!("not a message: {other:?}"),
        })
        .collect();
    Ok((offsets, missed.last))
}

#[tokio::test]
async fn the_gap_comes_from_the_store_then_the_log_each_offset_once() {
    let source = Fake {
        log_start: 40,
        end: 100,
        persisted: 70,
        db_down: false,
        ..Fake::default()
    };
    let (offsets, last) = replayed(&source, 9, source.end).await.unwrap();
    assert_eq!(offsets, (10..100).collect::<Vec<_>>());
    assert_eq!(last, 99);
    assert_eq!(source.log_only.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_cursor_at_the_seam_replays_nothing() {
    let source = Fake {
        log_start: 0,
        end: 50,
        persisted: 50,
        db_down: false,
        ..Fake::default()
    };
    let (offsets, last) = replayed(&source, 49, 50).await.unwrap();
    assert!(offsets.is_empty(), "{offsets:?}");
    assert!(last < 50);
}

#[tokio::test]
async fn without_postgresql_the_log_alone_serves_a_gap_it_holds_and_refuses_one_it_does_not() {
    let source = Fake {
        log_start: 20,
        end: 60,
        persisted: 0,
        db_down: true,
        ..Fake::default()
    };
    let (offsets, _) = replayed(&source, 29, 60).await.unwrap();
    assert_eq!(offsets, (30..60).collect::<Vec<_>>());
    let refused = replayed(&source, 5, 60).await;
    assert!(
        refused.is_err(),
        "a gap only PostgreSQL holds must not be skipped"
    );
    assert_eq!(
        source.log_only.load(Ordering::SeqCst),
        1,
        "the one the log held"
    );
}

#[tokio::test]
async fn without_postgresql_a_gap_the_log_lacks_is_planned_with_the_last_position_read() {
    let mut source = Fake {
        log_start: 20,
        end: 60,
        persisted: 0,
        db_down: true,
        recent: Some(30),
        ..Fake::default()
    };
    let held = plan(&source, &start(60), 24)
        .await
        .expect("the log holds it");
    assert_eq!((held.from_store, held.from_log), (None, Some(25..60)));
    let lacked = plan(&source, &start(60), 5).await.expect("planned");
    assert_eq!(
        (lacked.from_store, lacked.from_log),
        (Some(6..30), Some(30..60))
    );
    source.recent = None;
    assert!(
        plan(&source, &start(60), 5).await.is_err(),
        "nothing to plan with"
    );
}

/// Frames from the client while nothing arrives (the socket stays open).
fn quiet() -> impl futures_util::Stream<Item = Result<WsMessage, ()>> + Unpin {
    futures_util::stream::pending()
}

/// What a keepalive wrote: (a ping, seconds since the start) or the text.
type Written = std::sync::Mutex<Vec<(String, u64)>>;

fn recorder(
    written: &Written,
    started: tokio::time::Instant,
) -> impl Sink<WsMessage, Error = ()> + '_ {
    futures_util::sink::unfold((), move |(), m: WsMessage| {
        let what = match m {
            WsMessage::Ping(_) => "ping".to_owned(),
            WsMessage::Text(t) => t.to_string(),
            other => format!("{other:?}"),
        };
        if let Ok(mut w) = written.lock() {
            w.push((what, started.elapsed().as_secs()));
        }
        async { Ok::<_, ()>(()) }
    })
}

fn taken(written: &Written) -> Vec<(String, u64)> {
    written.lock().map(|w| w.clone()).unwrap_or_default()
}

/// A read slower than the client's silence window (two ping intervals)
/// still pings the client once an interval, and its result comes through.
#[tokio::test(start_paused = true)]
async fn a_slow_replay_read_keeps_pinging_the_client() {
    let (started, written) = (tokio::time::Instant::now(), Written::default());
    let sink = recorder(&written, started);
    futures_util::pin_mut!(sink);
    let slow = async {
        tokio::time::sleep(std::time::Duration::from_millis(7_500)).await;
        42
    };
    let mut early = Early::new();
    let every = std::time::Duration::from_secs(2);
    let out = keepalive((&mut sink, &mut quiet()), &mut early, every, slow).await;
    assert_eq!(out.ok(), Some(42));
    let pings: Vec<_> = [2, 4, 6].map(|t| ("ping".to_owned(), t)).into();
    assert_eq!(
        taken(&written),
        pings,
        "one ping per interval while reading"
    );
}

/// During the read the client's `ping` is answered at once (a browser
/// cannot see WebSocket pings and asks), and its other frames wait, in
/// order, for the live loop.
#[tokio::test(start_paused = true)]
async fn the_clients_frames_during_a_replay_are_answered_or_kept() {
    let (started, written) = (tokio::time::Instant::now(), Written::default());
    let sink = recorder(&written, started);
    futures_util::pin_mut!(sink);
    let send = r#"{"type":"send","id":"s1","to":{"user":"bob"},"body":{},"kind":"chat"}"#;
    let frames = [send, r#"{"type":"ping","id":"p1"}"#, "not json"]
        .map(|t| Ok::<_, ()>(WsMessage::Text(t.into())));
    let mut stream = futures_util::stream::iter(frames).chain(futures_util::stream::pending());
    let slow = tokio::time::sleep(std::time::Duration::from_millis(500));
    let mut early = Early::new();
    let every = std::time::Duration::from_secs(2);
    let out = keepalive((&mut sink, &mut stream), &mut early, every, slow).await;
    assert!(out.is_ok());
    let written = taken(&written);
    assert_eq!(written.len(), 1, "{written:?}");
    assert!(written[0].0.contains(r#""type":"pong""#), "{written:?}");
    assert!(written[0].0.contains("p1"), "{written:?}");
    let kept: Vec<&str> = early.iter().map(|t| t.as_str()).collect();
    assert_eq!(kept, vec![send, "not json"]);
}

/// A client gone during the read ends the wait: at the next ping when the
/// socket fails, at once when it closes.
#[tokio::test(start_paused = true)]
async fn a_client_gone_during_a_replay_read_ends_it() {
    let every = std::time::Duration::from_secs(1);
    let failing = futures_util::sink::unfold((), |(), _: WsMessage| async { Err::<(), _>(()) });
    futures_util::pin_mut!(failing);
    let mut early = Early::new();
    let (never, mut stream) = (std::future::pending::<()>(), quiet());
    let wait = keepalive((&mut failing, &mut stream), &mut early, every, never);
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), wait).await;
    assert!(matches!(out, Ok(Err(_))), "the failed ping ends it");

    let (started, written) = (tokio::time::Instant::now(), Written::default());
    let sink = recorder(&written, started);
    futures_util::pin_mut!(sink);
    let mut closed = futures_util::stream::iter([Ok::<_, ()>(WsMessage::Close(None))]);
    let never = std::future::pending::<()>();
    let wait = keepalive((&mut sink, &mut closed), &mut early, every, never);
    let out = tokio::time::timeout(std::time::Duration::from_millis(10), wait).await;
    assert!(matches!(out, Ok(Err(_))), "the close ends it");
}

#[tokio::test(start_paused = true)]
async fn a_replay_waits_its_turn_when_postgresql_and_the_broker_are_busy() {
    let source = Fake {
        log_start: 40,
        end: 100,
        persisted: 70,
        busy_stores: AtomicUsize::new(5),
        busy_logs: AtomicUsize::new(3),
        ..Fake::default()
    };
    let (offsets, last) = replayed(&source, 9, source.end).await.unwrap();
    assert_eq!(offsets, (10..100).collect::<Vec<_>>());
    assert_eq!(last, 99);
    assert_eq!(source.waits.load(Ordering::SeqCst), 8, "each retry told");
}

#[tokio::test(start_paused = true)]
async fn a_replay_gives_up_once_its_patience_is_spent() {
    let source = Fake {
        log_start: 0,
        end: 100,
        persisted: 70,
        busy_stores: AtomicUsize::new(usize::MAX),
        ..Fake::default()
    };
    let started = tokio::time::Instant::now();
    let e = replayed(&source, 9, source.end).await.unwrap_err();
    let waited = started.elapsed();
    assert!(busy(&e), "{e:#}");
    assert!(
        waited <= REPLAY_PATIENCE && waited > REPLAY_PATIENCE - RETRY_PAUSE * 2,
        "gave up after {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_replay_stalled_on_anything_ends_at_its_deadline() {
    let source = Fake {
        log_start: 0,
        end: 100,
        persisted: 70,
        stalls: true,
        ..Fake::default()
    };
    let started = tokio::time::Instant::now();
    let ended = tokio::time::timeout(REPLAY_DEADLINE * 2, replayed(&source, 9, source.end)).await;
    let e = ended.expect("the replay ended by itself").unwrap_err();
    assert!(!busy(&e), "a stall is not retried: {e:#}");
    assert_eq!(started.elapsed(), REPLAY_DEADLINE, "{e:#}");
}

#[tokio::test(start_paused = true)]
async fn a_replay_does_not_retry_a_failure_that_is_not_busy() {
    let source = Fake {
        log_start: 0,
        end: 100,
        persisted: 70,
        db_down: true,
        ..Fake::default()
    };
    let s = start(source.end);
    let p = crate::resume::plan(9, 70, 0, source.end);
    let e = missed(&source, &bob(), &s, &p).await.unwrap_err();
    assert!(e.to_string().contains("database down"), "{e:#}");
    assert_eq!(source.waits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_close_the_hub_asks_for_ends_a_replay_s_wait_at_once() {
    let (tx, mut rx) = oneshot::channel();
    let (read_tx, read_rx) = oneshot::channel::<()>();
    let waiting = or_closed(read_rx, &mut rx);
    tokio::pin!(waiting);
    assert!(
        futures_util::poll!(waiting.as_mut()).is_pending(),
        "waits for the read"
    );
    tx.send(crate::ending::Ending::leaving("server draining"))
        .expect("the session listens");
    let close = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the wait ended with the close")
        .expect_err("the close comes first");
    assert_eq!(
        (close.code, close.reason),
        (protocol::CloseCode::Draining, "server draining")
    );
    drop(read_tx);
}

#[tokio::test]
async fn a_replay_read_that_ends_first_is_kept() {
    let (_tx, mut rx) = oneshot::channel::<crate::ending::Ending>();
    let out = or_closed(async { 7 }, &mut rx).await;
    assert!(matches!(out, Ok(7)));
}
