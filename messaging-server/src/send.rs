//! The send path: validate, check membership, group recipients by partition,
//! produce one record per partition, succeed only when every record is acked.

use crate::state::AppState;
use protocol::frames::{FrameError, Send};
use protocol::{partition_for, ConversationId, DeviceId, ErrorCode, MsgId, Record, Target, UserId};
use std::collections::BTreeMap;
use std::time::Instant;

fn refuse(send: &Send, code: ErrorCode, message: impl Into<String>) -> FrameError {
    FrameError {
        id: send.id.clone(),
        code,
        message: message.into(),
    }
}

/// Groups recipients by partition: at most one record per partition.
pub fn group_by_partition(recipients: &[UserId], partitions: u32) -> BTreeMap<u32, Vec<UserId>> {
    let mut groups: BTreeMap<u32, Vec<UserId>> = BTreeMap::new();
    for u in recipients {
        let g = groups
            .entry(partition_for(u.as_str(), partitions))
            .or_default();
        if !g.contains(u) {
            g.push(u.clone());
        }
    }
    groups
}

async fn resolve(
    state: &AppState,
    sender: &UserId,
    send: &Send,
) -> Result<(ConversationId, Vec<UserId>), FrameError> {
    let conversation = match &send.to {
        Target::User(u) if u == sender => {
            return Err(refuse(
                send,
                ErrorCode::InvalidField,
                "cannot send a direct message to yourself",
            ))
        }
        Target::User(u) => ConversationId::direct(sender, u),
        Target::Conversation(c) => c.clone(),
    };
    let members = state
        .store
        .members(&conversation)
        .await
        .map_err(|e| refuse(send, ErrorCode::Unavailable, e.to_string()))?
        .ok_or_else(|| {
            refuse(
                send,
                ErrorCode::NotMember,
                format!("no conversation {conversation}"),
            )
        })?;
    if !members.contains(sender) {
        return Err(refuse(
            send,
            ErrorCode::NotMember,
            format!("not a member of {conversation}"),
        ));
    }
    Ok((conversation, members.to_vec()))
}

/// Sends on behalf of `sender` (the token's subject, never the frame's).
pub async fn send(
    state: &AppState,
    sender: &UserId,
    device: &DeviceId,
    send: Send,
) -> Result<MsgId, FrameError> {
    let started = Instant::now();
    send.check_body()?;
    let assignment = state
        .assignment()
        .ok_or_else(|| refuse(&send, ErrorCode::Unavailable, "no partition map yet"))?;
    let (conversation_id, members) = resolve(state, sender, &send).await?;
    let msg_id = MsgId::derive(sender, &send.client_msg_id);
    let sent_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let groups = group_by_partition(&members, assignment.partitions);
    let produced = groups.into_iter().map(|(partition, recipients)| {
        let record = Record {
            v: protocol::record::RECORD_VERSION,
            msg_id,
            kind: send.kind,
            conversation_id: conversation_id.clone(),
            sender: sender.clone(),
            sender_device: device.clone(),
            recipients,
            body: send.body.clone(),
            sent_at_ms,
        };
        let payload = record.encode();
        let key = record
            .recipients
            .first()
            .map(|u| u.to_string())
            .unwrap_or_default();
        async move {
            crate::kafka::produce(&state.producer, &state.topic, partition, &key, &payload).await
        }
    });
    for r in futures_util::future::join_all(produced).await {
        r.map_err(|e| {
            refuse(
                &send,
                ErrorCode::Unavailable,
                format!("kafka unavailable: {e}"),
            )
        })?;
    }
    state.metrics.sends.inc();
    state
        .metrics
        .send_ack_seconds
        .observe(started.elapsed().as_secs_f64());
    Ok(msg_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
}
