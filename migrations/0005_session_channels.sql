-- The channel subscriptions of open sessions, from the connection events
-- (`subscribed`/`unsubscribed`; a `disconnected` removes its session's).
-- A starting server loads them with the open sessions (channel presence).
CREATE TABLE session_channels (
    session_id UUID NOT NULL,
    channel    TEXT NOT NULL,
    PRIMARY KEY (session_id, channel)
);
