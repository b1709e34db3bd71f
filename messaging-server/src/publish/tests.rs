use super::*;
use crate::send::tests::{uid, Fake};
use crate::send::Topic;
use protocol::Record;
use std::collections::HashMap;

fn publication(to: &str, from: &str, key: &str) -> Publish {
    serde_json::from_str(&format!(
        r#"{{"to":{to},"body":{{"n":1}},"from":"{from}","idempotency_key":"{key}"}}"#
    ))
    .unwrap()
}

async fn code(dir: &Fake, p: Publish) -> Option<ErrorCode> {
    prepare(dir, p).await.err().map(|e| e.code)
}

#[tokio::test]
async fn users_get_one_record_per_partition_from_the_system_sender() {
    let dir = Fake::default();
    let p = prepare(
        &dir,
        publication(r#"{"users":["a","b","c","a"]}"#, "system:orders", "o-1"),
    )
    .await
    .unwrap();
    assert_eq!(p.topic(), Topic::Users);
    let again = prepare(
        &dir,
        publication(r#"{"users":["a"]}"#, "system:orders", "o-1"),
    )
    .await
    .unwrap();
    assert_eq!(
        p.msg_id(),
        again.msg_id(),
        "the idempotency key decides the msg_id"
    );
    let mut to: Vec<String> = Vec::new();
    for (_, _, bytes) in p.records() {
        let r = Record::decode(bytes).unwrap();
        assert_eq!(
            (r.sender.as_str(), r.sender_device.as_str()),
            ("system:orders", "api")
        );
        assert_eq!(r.conversation_id.as_str(), "system:orders");
        to.extend(r.recipients.iter().map(|u| u.to_string()));
    }
    to.sort();
    assert_eq!(to, ["a", "b", "c"], "each user once");
}

#[tokio::test]
async fn a_conversation_publication_reaches_its_members_and_refusals_have_codes() {
    let room = protocol::ConversationId::new("room").unwrap();
    let dir = Fake {
        groups: HashMap::from([(room, vec![uid("a"), uid("b")])]),
        ..Fake::default()
    };
    let p = prepare(
        &dir,
        publication(r#"{"conversation":"room"}"#, "system:x", "k"),
    )
    .await
    .unwrap();
    let members: usize = p
        .records()
        .iter()
        .map(|(_, _, b)| Record::decode(b).unwrap().recipients.len())
        .sum();
    assert_eq!(members, 2);
    let user_sender = publication(r#"{"users":["a"]}"#, "alice", "k");
    assert_eq!(code(&dir, user_sender).await, Some(ErrorCode::InvalidField));
    let nobody = publication(r#"{"users":[]}"#, "system:x", "k");
    assert_eq!(code(&dir, nobody).await, Some(ErrorCode::InvalidField));
    let missing = publication(r#"{"conversation":"gone"}"#, "system:x", "k");
    assert_eq!(code(&dir, missing).await, Some(ErrorCode::NotMember));
    let mut big = publication(r#"{"users":["a"]}"#, "system:x", "k");
    big.body = serde_json::value::RawValue::from_string(format!(
        "\"{}\"",
        "x".repeat(protocol::MAX_BODY_BYTES)
    ))
    .unwrap();
    assert_eq!(code(&dir, big).await, Some(ErrorCode::TooLarge));
}

#[tokio::test]
async fn a_channel_publication_is_one_channel_record() {
    let p = prepare(
        &Fake::default(),
        publication(r#"{"channel":"ch:prices"}"#, "system:feed", "t-9"),
    )
    .await
    .unwrap();
    assert_eq!((p.topic(), p.records().len()), (Topic::Channels, 1));
}
