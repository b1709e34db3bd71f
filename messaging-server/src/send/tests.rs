use super::*;
use proptest::prelude::*;
use std::collections::HashMap;

proptest! {
    #[test]
    fn one_group_per_partition_and_every_recipient_once(users in proptest::collection::vec("[a-z]{1,8}", 1..200), p in 1u32..64) {
        let ids: Vec<UserId> = users.iter().map(|u| UserId::new(u.as_str()).unwrap()).collect();
        let groups = group_by_partition(&ids, p);
        prop_assert!(groups.len() <= p as usize);
        let mut seen: Vec<&UserId> = groups.values().flatten().collect();
        for (part, g) in &groups {
            for u in g { prop_assert_eq!(partition_for(u.as_str(), p), *part); }
        }
        seen.sort();
        let mut want: Vec<&UserId> = ids.iter().collect();
        want.sort();
        want.dedup();
        prop_assert_eq!(seen, want);
    }
}

/// Members from a map, partitions fixed: what the send path looks up.
pub(crate) struct Fake {
    pub groups: HashMap<ConversationId, Vec<UserId>>,
    pub partitions: Option<u32>,
    pub channel_partitions: Option<u32>,
    pub down: bool,
}

impl Default for Fake {
    fn default() -> Self {
        Self {
            groups: HashMap::new(),
            partitions: Some(8),
            channel_partitions: Some(4),
            down: false,
        }
    }
}

impl Directory for Fake {
    async fn members(&self, c: &ConversationId) -> Result<Option<Members>, StoreError> {
        if self.down {
            return Err(StoreError::Row("database down".into()));
        }
        if let Some((a, b)) = c.direct_members() {
            return Ok(Some(std::sync::Arc::new(vec![a, b])));
        }
        Ok(self.groups.get(c).cloned().map(std::sync::Arc::new))
    }

    fn user_partitions(&self) -> Option<u32> {
        self.partitions
    }

    /// Channel presence covers `ch:pool.*` here.
    fn knows_subscribers(&self, channel: &ChannelName) -> bool {
        channel.as_str().starts_with("ch:pool.")
    }

    fn channel_partition(&self, channel: &ChannelName) -> Option<u32> {
        self.channel_partitions
            .map(|n| partition_for(channel.as_str(), n))
    }
}

pub(crate) fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn who(user: &str, publish: &[&str]) -> Verified {
    Verified {
        user: uid(user),
        exp: u64::MAX,
        channels: Vec::new(),
        publish: publish.iter().map(|s| s.to_string()).collect(),
    }
}

fn send(to: &str) -> Send {
    serde_json::from_str(&format!(
        r#"{{"id":7,"client_msg_id":"c-1","to":{to},"body":{{"t":"hi"}}}}"#
    ))
    .unwrap()
}

async fn refused(dir: &Fake, user: &str, to: &str) -> ErrorCode {
    let device = DeviceId::new("phone").unwrap();
    match prepare(dir, &who(user, &[]), &device, send(to)).await {
        Ok(_) => panic!("a send to {to} was accepted"),
        Err(e) => {
            assert_eq!(
                e.id,
                Some(serde_json::json!(7)),
                "the refusal answers the request"
            );
            e.code
        }
    }
}

/// Every record decoded, by partition.
fn decoded(p: &Prepared) -> BTreeMap<u32, Record> {
    p.records()
        .iter()
        .map(|(partition, key, bytes)| {
            let r = Record::decode(bytes).unwrap();
            assert_eq!(
                key,
                r.recipients[0].as_str(),
                "keyed by its first recipient"
            );
            (*partition, r)
        })
        .collect()
}

#[tokio::test]
async fn a_group_send_is_one_record_per_partition_with_every_member_once() {
    let room = ConversationId::new("room").unwrap();
    let members: Vec<UserId> = (0..40).map(|i| uid(&format!("u{i}"))).collect();
    let dir = Fake {
        groups: HashMap::from([(room.clone(), members.clone())]),
        ..Fake::default()
    };
    let device = DeviceId::new("phone").unwrap();
    let p = prepare(
        &dir,
        &who("u3", &[]),
        &device,
        send(r#"{"conversation":"room"}"#),
    )
    .await
    .unwrap();
    assert_eq!(p.topic(), Topic::Users);
    assert_eq!(
        p.msg_id(),
        MsgId::derive(&uid("u3"), &"c-1".parse().unwrap())
    );
    let records = decoded(&p);
    let mut got: Vec<UserId> = Vec::new();
    for (partition, r) in &records {
        assert_eq!(
            (r.msg_id, &r.conversation_id, r.sender.as_str()),
            (p.msg_id(), &room, "u3")
        );
        assert_eq!(r.body.get(), r#"{"t":"hi"}"#);
        for u in &r.recipients {
            assert_eq!(partition_for(u.as_str(), 8), *partition);
        }
        got.extend(r.recipients.iter().cloned());
    }
    got.sort();
    let mut want = members;
    want.sort();
    assert_eq!(
        got, want,
        "every member once, the sender's other devices included"
    );
}

#[tokio::test]
async fn the_same_client_msg_id_gives_the_same_msg_id() {
    let dir = Fake::default();
    let device = DeviceId::new("phone").unwrap();
    let first = prepare(&dir, &who("a", &[]), &device, send(r#"{"user":"b"}"#))
        .await
        .unwrap();
    let again = prepare(&dir, &who("a", &[]), &device, send(r#"{"user":"b"}"#))
        .await
        .unwrap();
    assert_eq!(first.msg_id(), again.msg_id());
    let dm = decoded(&first);
    let conversation = dm.values().next().unwrap().conversation_id.clone();
    assert_eq!(conversation, ConversationId::direct(&uid("a"), &uid("b")));
    let recipients: usize = dm.values().map(|r| r.recipients.len()).sum();
    assert_eq!(recipients, 2, "both ends of a direct message");
}

#[tokio::test]
async fn refusals_carry_their_code() {
    let room = ConversationId::new("room").unwrap();
    let dir = Fake {
        groups: HashMap::from([(room, vec![uid("a"), uid("b")])]),
        ..Fake::default()
    };
    assert_eq!(
        refused(&dir, "a", r#"{"user":"a"}"#).await,
        ErrorCode::InvalidField
    );
    assert_eq!(
        refused(&dir, "c", r#"{"conversation":"room"}"#).await,
        ErrorCode::NotMember
    );
    assert_eq!(
        refused(&dir, "a", r#"{"conversation":"nowhere"}"#).await,
        ErrorCode::NotMember
    );
    assert_eq!(
        refused(&dir, "a", r#"{"channel":"ch:news"}"#).await,
        ErrorCode::Forbidden
    );
    let down = Fake {
        down: true,
        ..Fake::default()
    };
    assert_eq!(
        refused(&down, "a", r#"{"conversation":"room"}"#).await,
        ErrorCode::Unavailable
    );
    let no_map = Fake {
        partitions: None,
        ..Fake::default()
    };
    assert_eq!(
        refused(&no_map, "a", r#"{"user":"b"}"#).await,
        ErrorCode::Unavailable
    );
}

#[tokio::test]
async fn a_channel_publication_is_one_record_in_the_channels_partition() {
    let dir = Fake::default();
    let device = DeviceId::new("phone").unwrap();
    let p = prepare(
        &dir,
        &who("a", &["ch:news"]),
        &device,
        send(r#"{"channel":"ch:news"}"#),
    )
    .await
    .unwrap();
    assert_eq!(p.topic(), Topic::Channels);
    let [(partition, key, bytes)] = p.records() else {
        panic!("{} records", p.records().len());
    };
    assert_eq!(
        (*partition, key.as_str()),
        (partition_for("ch:news", 4), "ch:news")
    );
    let r = ChannelRecord::decode(bytes).unwrap();
    assert_eq!((r.channel.as_str(), r.msg_id), ("ch:news", p.msg_id()));
    let closed = Fake {
        channel_partitions: None,
        ..Fake::default()
    };
    let err = prepare(
        &closed,
        &who("a", &["ch:*"]),
        &device,
        send(r#"{"channel":"ch:news"}"#),
    )
    .await;
    assert_eq!(err.err().map(|e| e.code), Some(ErrorCode::Unavailable));
}

#[tokio::test]
async fn anycast_is_one_marked_record_and_needs_channel_presence() {
    let dir = Fake::default();
    let device = DeviceId::new("phone").unwrap();
    let anycast = |to: &str| {
        let mut s = send(to);
        s.anycast = true;
        s.key = Some("conv-9".into());
        s
    };
    let p = prepare(
        &dir,
        &who("a", &["ch:*"]),
        &device,
        anycast(r#"{"channel":"ch:pool.a"}"#),
    )
    .await
    .unwrap();
    let [(_, _, bytes)] = p.records() else {
        panic!("{} records", p.records().len());
    };
    let r = ChannelRecord::decode(bytes).unwrap();
    assert!(r.anycast && r.key.as_deref() == Some("conv-9") && r.handled.is_none());
    let err = prepare(
        &dir,
        &who("a", &["ch:*"]),
        &device,
        anycast(r#"{"channel":"ch:news"}"#),
    )
    .await;
    assert_eq!(err.err().map(|e| e.code), Some(ErrorCode::InvalidField));
}
