-- The persister's consumer group is named <group_id> at epoch 0 and
-- <group_id>.e<epoch> after a stall was detected (see persister/src/stall.rs):
-- offsets live in persister_offsets, so moving to a fresh group loses nothing.
CREATE TABLE persister_group_epochs (
    group_id TEXT PRIMARY KEY,
    epoch    BIGINT NOT NULL
);
