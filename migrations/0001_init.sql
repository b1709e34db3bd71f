-- Conversations and their members. Direct conversations ("dm:a,b") are
-- implicit and never stored here.
CREATE TABLE conversations (
    conversation_id TEXT PRIMARY KEY,
    created_by      TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE conversation_members (
    conversation_id TEXT NOT NULL REFERENCES conversations ON DELETE CASCADE,
    user_id         TEXT NOT NULL,
    added_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX conversation_members_by_user ON conversation_members (user_id);

-- One row per chat message (msg_id is deterministic, so retries collapse).
-- The body is JSON, not JSONB: it is stored and replayed byte for byte.
CREATE TABLE messages (
    msg_id          UUID PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    sender          TEXT NOT NULL,
    sender_device   TEXT NOT NULL,
    body            JSON NOT NULL,
    sent_at_ms      BIGINT NOT NULL,
    kafka_partition INT NOT NULL,
    kafka_offset    BIGINT NOT NULL
);
CREATE INDEX messages_history ON messages (conversation_id, sent_at_ms DESC, msg_id DESC);

-- One row per recipient of a message, keyed by the recipient's position in
-- its partition: a resume after a cursor is one index range scan.
CREATE TABLE deliveries (
    user_id         TEXT NOT NULL,
    kafka_partition INT NOT NULL,
    kafka_offset    BIGINT NOT NULL,
    msg_id          UUID NOT NULL,
    PRIMARY KEY (user_id, kafka_partition, kafka_offset)
);
-- A retried send can land twice in Kafka; a user still gets it once.
CREATE UNIQUE INDEX deliveries_user_msg ON deliveries (user_id, msg_id);

-- The persister's Kafka positions, written in the same transaction as rows.
CREATE TABLE persister_offsets (
    topic           TEXT NOT NULL,
    kafka_partition INT NOT NULL,
    next_offset     BIGINT NOT NULL,
    PRIMARY KEY (topic, kafka_partition)
);
