//! The send path: validate, check membership, group recipients by partition,
//! produce one record per partition, succeed only when every record is acked.

use crate::auth::Verified;
use crate::members::{MemberCache, Members};
use crate::metrics::Stage;
use crate::state::AppState;
use protocol::frames::{FrameError, Send};
use protocol::{
    partition_for, ChannelName, ChannelRecord, ConversationId, DeviceId, ErrorCode, MsgId, Record,
    Target, UserId,
};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Instant;
use store::StoreError;

/// What turning a message into records looks up: a conversation's members
/// and how the two topics are partitioned (the server's state; a map in
/// tests).
pub trait Directory: Sync {
    /// Members of a conversation; `None` if it does not exist.
    fn members(
        &self,
        conversation: &ConversationId,
    ) -> impl Future<Output = Result<Option<Members>, StoreError>> + std::marker::Send;
    /// The users' topic's partitions, once a map exists.
    fn user_partitions(&self) -> Option<u32>;
    /// The channel topic's partition for `channel`, once it is open.
    fn channel_partition(&self, channel: &ChannelName) -> Option<u32>;
    /// Whether this server knows `channel`'s subscribers cluster-wide
    /// (channel presence), which anycast chooses among.
    fn knows_subscribers(&self, channel: &ChannelName) -> bool;
}

impl Directory for AppState {
    async fn members(&self, c: &ConversationId) -> Result<Option<Members>, StoreError> {
        MemberCache::members(&self.members, c).await
    }

    fn user_partitions(&self) -> Option<u32> {
        self.assignment().map(|a| a.partitions)
    }

    fn channel_partition(&self, channel: &ChannelName) -> Option<u32> {
        self.channels.partition_of(channel)
    }

    fn knows_subscribers(&self, channel: &ChannelName) -> bool {
        self.presence.covers(channel)
    }
}

fn refuse(send: &Send, code: ErrorCode, message: impl Into<String>) -> FrameError {
    FrameError::new(send.id.clone(), code, message)
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
    dir: &impl Directory,
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
        Target::Channel(_) => {
            return Err(refuse(
                send,
                ErrorCode::Internal,
                "a channel has no members",
            ))
        }
    };
    let members = dir
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

/// Which topic a message's records go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// The users' topic, partitioned by recipient.
    Users,
    /// The channel topic, partitioned by channel name.
    Channels,
}

/// A send that passed validation: its records, ready to be produced.
pub struct Prepared {
    id: Option<serde_json::Value>,
    msg_id: MsgId,
    topic: Topic,
    /// (partition, key, encoded record), one per partition with a recipient.
    records: Vec<(u32, String, Vec<u8>)>,
    started: Instant,
}

/// Validates and resolves on behalf of `sender` (the token's subject, never
/// the frame's) and builds one record per partition holding a recipient,
/// or for a channel the one record of the channel (if `publish` allows it).
pub async fn prepare(
    dir: &impl Directory,
    sender: &Verified,
    device: &DeviceId,
    send: Send,
) -> Result<Prepared, FrameError> {
    send.check_body()?;
    if let Target::Channel(channel) = &send.to {
        if !protocol::channel::allowed(&sender.publish, channel) {
            let message = format!("the token's publish claim does not allow {channel}");
            return Err(refuse(&send, ErrorCode::Forbidden, message));
        }
        let channel = channel.clone();
        return build_channel(
            dir,
            outgoing(&sender.user, device, send, (&channel).into()),
            &channel,
        );
    }
    let (conversation_id, members) = resolve(dir, &sender.user, &send).await?;
    build(
        dir,
        outgoing(&sender.user, device, send, conversation_id),
        &members,
    )
}

fn outgoing<'a>(
    sender: &'a UserId,
    device: &'a DeviceId,
    send: Send,
    conversation_id: ConversationId,
) -> Outgoing<'a> {
    Outgoing {
        msg_id: MsgId::derive(sender, &send.client_msg_id),
        id: send.id,
        conversation_id,
        sender,
        device,
        kind: send.kind,
        body: send.body,
        anycast: send.anycast,
        key: send.key,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The one record of a channel publication, however many subscribe.
pub fn build_channel(
    dir: &impl Directory,
    m: Outgoing<'_>,
    channel: &ChannelName,
) -> Result<Prepared, FrameError> {
    let started = Instant::now();
    let fail = |code, message: String| FrameError::new(m.id.clone(), code, message);
    if m.anycast && !dir.knows_subscribers(channel) {
        let message =
            format!("anycast needs channel presence for {channel} (SWITCHBOARD_PRESENCE_CHANNELS)");
        return Err(fail(ErrorCode::InvalidField, message));
    }
    let partition = dir
        .channel_partition(channel)
        .ok_or_else(|| fail(ErrorCode::Unavailable, "channels are not open yet".into()))?;
    let record = ChannelRecord {
        v: protocol::record::RECORD_VERSION,
        msg_id: m.msg_id,
        kind: m.kind,
        channel: channel.clone(),
        sender: m.sender.clone(),
        sender_device: m.device.clone(),
        body: m.body,
        sent_at_ms: now_ms(),
        anycast: m.anycast,
        key: m.key,
        handled: None,
    };
    let bytes = record
        .encode()
        .map_err(|e| fail(ErrorCode::InvalidField, e.to_string()))?;
    Ok(Prepared {
        id: m.id,
        msg_id: m.msg_id,
        topic: Topic::Channels,
        records: vec![(partition, channel.to_string(), bytes)],
        started,
    })
}

/// A message about to become records, whoever sent it.
pub struct Outgoing<'a> {
    pub id: Option<serde_json::Value>,
    pub msg_id: MsgId,
    pub conversation_id: ConversationId,
    pub sender: &'a UserId,
    pub device: &'a DeviceId,
    pub kind: protocol::Kind,
    pub body: Box<serde_json::value::RawValue>,
    /// To one subscriber of the channel (checked: only to a channel).
    pub anycast: bool,
    pub key: Option<String>,
}

/// One record per partition that holds a recipient.
pub fn build(
    dir: &impl Directory,
    m: Outgoing<'_>,
    recipients: &[UserId],
) -> Result<Prepared, FrameError> {
    let started = Instant::now();
    let fail = |code, message: String| FrameError::new(m.id.clone(), code, message);
    let partitions = dir
        .user_partitions()
        .ok_or_else(|| fail(ErrorCode::Unavailable, "no partition map yet".into()))?;
    let sent_at_ms = now_ms();
    let mut records = Vec::new();
    for (partition, recipients) in group_by_partition(recipients, partitions) {
        let key = recipients
            .first()
            .map(|u| u.to_string())
            .unwrap_or_default();
        let record = Record {
            v: protocol::record::RECORD_VERSION,
            msg_id: m.msg_id,
            kind: m.kind,
            conversation_id: m.conversation_id.clone(),
            sender: m.sender.clone(),
            sender_device: m.device.clone(),
            recipients,
            body: m.body.clone(),
            sent_at_ms,
        };
        let bytes = record
            .encode()
            .map_err(|e| fail(ErrorCode::InvalidField, e.to_string()))?;
        records.push((partition, key, bytes));
    }
    Ok(Prepared {
        id: m.id,
        msg_id: m.msg_id,
        topic: Topic::Users,
        records,
        started,
    })
}

impl Prepared {
    #[cfg(test)]
    pub fn msg_id(&self) -> MsgId {
        self.msg_id
    }

    #[cfg(test)]
    pub fn topic(&self) -> Topic {
        self.topic
    }

    /// (partition, key, encoded record), one per partition with a recipient.
    #[cfg(test)]
    pub fn records(&self) -> &[(u32, String, Vec<u8>)] {
        &self.records
    }

    /// Hands every record to the producer now — so one connection's sends
    /// reach Kafka in the order they were made — and returns the wait for
    /// their acks (acks=all), which may run alongside other sends.
    pub fn enqueue(
        self,
        state: &AppState,
    ) -> impl std::future::Future<Output = Result<MsgId, FrameError>> + use<> {
        let unavailable = |id: &Option<serde_json::Value>, e: String| {
            FrameError::new(id.clone(), ErrorCode::Unavailable, e)
        };
        let topic = match self.topic {
            Topic::Users => state.topic(),
            Topic::Channels => &state.channel_topic,
        };
        let handed = state.producer.enqueue(topic, &self.records);
        let handed_at = Instant::now();
        let (metrics, producer) = (state.metrics.clone(), state.producer.clone());
        async move {
            let acks = handed.map_err(|e| unavailable(&self.id, e.to_string()))?;
            metrics.stage(Stage::Handed, (handed_at - self.started).as_secs_f64());
            if let Err(e) = acks.wait().await {
                producer.report(&e);
                return Err(unavailable(&self.id, format!("kafka unavailable: {e}")));
            }
            metrics.stage(Stage::Acked, handed_at.elapsed().as_secs_f64());
            metrics.sends.inc();
            metrics
                .send_ack_seconds
                .observe(self.started.elapsed().as_secs_f64());
            Ok(self.msg_id)
        }
    }
}

/// The whole send, for `POST /v1/messages`.
pub async fn send(
    state: &AppState,
    sender: &Verified,
    device: &DeviceId,
    send: Send,
) -> Result<MsgId, FrameError> {
    prepare(state, sender, device, send)
        .await?
        .enqueue(state)
        .await
}

#[cfg(test)]
pub(crate) mod tests;
