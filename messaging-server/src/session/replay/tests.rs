use super::*;
use crate::hub::tests::record;
use protocol::Kind;

/// A log of chat records for `bob` at offsets `log_start..end`, of which
/// the persister wrote those before `persisted`; `db_down` fails the store.
struct Fake {
    log_start: i64,
    end: i64,
    persisted: i64,
    db_down: bool,
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
        Ok(range.map(|o| (o, at(o))).collect())
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
    };
    let (offsets, last) = replayed(&source, 9, source.end).await.unwrap();
    assert_eq!(offsets, (10..100).collect::<Vec<_>>());
    assert_eq!(last, 99);
}

#[tokio::test]
async fn a_cursor_at_the_seam_replays_nothing() {
    let source = Fake {
        log_start: 0,
        end: 50,
        persisted: 50,
        db_down: false,
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
    };
    let (offsets, _) = replayed(&source, 29, 60).await.unwrap();
    assert_eq!(offsets, (30..60).collect::<Vec<_>>());
    let refused = replayed(&source, 5, 60).await;
    assert!(
        refused.is_err(),
        "a gap only PostgreSQL holds must not be skipped"
    );
}
