//! Stall detection for the consumer group. A group whose leader died can be
//! left with partitions nobody is assigned (tansu 0.6 keeps a leader that
//! missed its heartbeats in a formed group; see docs/operations.md). Every
//! replica watches for "records wait in a partition that is not mine and its
//! stored offset has not moved for 30 s", and then moves every replica to a
//! fresh group by bumping an epoch stored in PostgreSQL. Offsets live in
//! PostgreSQL, so the new group resumes exactly where the old one stopped.

use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// The Kafka group name for a base group id at an epoch.
pub fn group_name(base: &str, epoch: i64) -> String {
    if epoch == 0 {
        base.to_owned()
    } else {
        format!("{base}.e{epoch}")
    }
}

pub async fn read_epoch(pool: &PgPool, group: &str) -> Result<i64, sqlx::Error> {
    let row: Option<(i64,)> =
        sqlx::query_as("SELECT epoch FROM persister_group_epochs WHERE group_id = $1")
            .bind(group)
            .fetch_optional(pool)
            .await?;
    Ok(row.map_or(0, |r| r.0))
}

/// Moves the group from `from` to the next epoch (once, however many
/// replicas ask at the same time) and returns the epoch now in force.
pub async fn bump_epoch(pool: &PgPool, group: &str, from: i64) -> Result<i64, sqlx::Error> {
    sqlx::query(
        "INSERT INTO persister_group_epochs (group_id, epoch) VALUES ($1, $2 + 1)
         ON CONFLICT (group_id) DO UPDATE SET epoch = EXCLUDED.epoch
         WHERE persister_group_epochs.epoch = $2",
    )
    .bind(group)
    .bind(from)
    .execute(pool)
    .await?;
    read_epoch(pool, group).await
}

/// Decides from periodic observations whether the group is stuck: some
/// partition that is not this replica's has records waiting and its stored
/// offset has not moved for the whole window — no live member is writing it.
#[derive(Debug)]
pub struct StallWatch {
    window: Duration,
    started: Instant,
    stored: BTreeMap<i32, i64>,
    moved_at: BTreeMap<i32, Instant>,
}

impl StallWatch {
    pub fn new(window: Duration, now: Instant) -> Self {
        Self {
            window,
            started: now,
            stored: BTreeMap::new(),
            moved_at: BTreeMap::new(),
        }
    }

    /// `mine`: partitions assigned to this replica; `stored`: next offsets
    /// in PostgreSQL; `high`: the log's high watermarks. Returns the
    /// partitions nobody persists.
    pub fn orphaned(
        &mut self,
        now: Instant,
        mine: &BTreeSet<i32>,
        stored: &BTreeMap<i32, i64>,
        high: &BTreeMap<i32, i64>,
    ) -> Vec<i32> {
        for (p, offset) in stored {
            if self.stored.get(p) != Some(offset) {
                self.stored.insert(*p, *offset);
                self.moved_at.insert(*p, now);
            }
        }
        if now.duration_since(self.started) < self.window {
            return Vec::new();
        }
        high.iter()
            .filter(|(p, h)| !mine.contains(p) && **h > stored.get(p).copied().unwrap_or(0))
            .filter(|(p, _)| {
                let moved = self.moved_at.get(p).copied().unwrap_or(self.started);
                now.duration_since(moved) >= self.window
            })
            .map(|(p, _)| *p)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(v: &[(i32, i64)]) -> BTreeMap<i32, i64> {
        v.iter().copied().collect()
    }

    #[test]
    fn group_names() {
        assert_eq!(group_name("p", 0), "p");
        assert_eq!(group_name("p", 3), "p.e3");
    }

    fn mine(v: &[i32]) -> BTreeSet<i32> {
        v.iter().copied().collect()
    }

    #[test]
    fn orphaned_when_waiting_and_unmoved_for_the_window() {
        let t0 = Instant::now();
        let mut s = StallWatch::new(Duration::from_secs(30), t0);
        let high = offsets(&[(0, 10), (1, 5), (2, 9)]);
        let stored = offsets(&[(0, 4), (1, 5), (2, 3)]);
        let none = mine(&[]);
        assert!(s.orphaned(t0, &none, &stored, &high).is_empty());
        assert!(s
            .orphaned(t0 + Duration::from_secs(29), &none, &stored, &high)
            .is_empty());
        assert_eq!(
            s.orphaned(t0 + Duration::from_secs(31), &none, &stored, &high),
            vec![0, 2]
        );
        // A partition of this replica is never another's orphan.
        assert_eq!(
            s.orphaned(t0 + Duration::from_secs(32), &mine(&[0]), &stored, &high),
            vec![2]
        );
    }

    #[test]
    fn progress_resets_the_clock_of_that_partition() {
        let t0 = Instant::now();
        let mut s = StallWatch::new(Duration::from_secs(30), t0);
        let high = offsets(&[(0, 10), (1, 10)]);
        let none = mine(&[]);
        assert!(s
            .orphaned(t0, &none, &offsets(&[(0, 1), (1, 1)]), &high)
            .is_empty());
        // Partition 0 is being written by another replica; partition 1 is not.
        let later = offsets(&[(0, 6), (1, 1)]);
        assert_eq!(
            s.orphaned(t0 + Duration::from_secs(40), &none, &later, &high),
            vec![1]
        );
        let t = t0 + Duration::from_secs(60);
        assert_eq!(s.orphaned(t, &none, &later, &high), vec![1]);
        assert_eq!(
            s.orphaned(t + Duration::from_secs(11), &none, &later, &high),
            vec![0, 1]
        );
    }

    #[test]
    fn nothing_waiting_is_never_orphaned() {
        let t0 = Instant::now();
        let mut s = StallWatch::new(Duration::from_secs(30), t0);
        let all = offsets(&[(0, 10)]);
        assert!(s
            .orphaned(t0 + Duration::from_secs(100), &mine(&[]), &all, &all)
            .is_empty());
    }
}
