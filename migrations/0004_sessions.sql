-- Connection events (<topic>.events), as the persister stores them: one row
-- per session, closed by its `disconnected`; and each user's last_seen.
CREATE TABLE sessions (
    session_id         UUID PRIMARY KEY,
    user_id            TEXT NOT NULL,
    device_id          TEXT NOT NULL,
    server_id          TEXT NOT NULL,
    incarnation        UUID NOT NULL,
    kafka_partition    INT NOT NULL,
    connected_at_ms    BIGINT NOT NULL,
    disconnected_at_ms BIGINT,
    reason             TEXT
);
-- What a partition's owner reads to report sessions of lost registrations.
CREATE INDEX sessions_open ON sessions (kafka_partition) WHERE disconnected_at_ms IS NULL;

CREATE TABLE last_seen (
    user_id TEXT PRIMARY KEY,
    at_ms   BIGINT NOT NULL
);
