-- The persister no longer moves its consumer group to a new epoch when the
-- group looks stuck: that worked around tansu 0.6 keeping a dead group
-- leader, and the development broker (nisshi) reassigns a restarted member's
-- partitions by itself (docs/operations.md). Offsets stay in persister_offsets.
DROP TABLE IF EXISTS persister_group_epochs;
