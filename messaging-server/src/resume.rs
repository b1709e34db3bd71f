//! Resume planning (pure): which offsets come from PostgreSQL, which from
//! Kafka, and whether the cursor can be honoured at all.

use std::ops::Range;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePlan {
    /// `false`: the client must reload history; nothing is replayed.
    pub resumed: bool,
    /// Offsets to read from the delivery rows.
    pub from_store: Option<Range<i64>>,
    /// Offsets to read from the log.
    pub from_log: Option<Range<i64>>,
}

impl ResumePlan {
    /// A device without a cursor: nothing to replay, not a resume.
    pub fn fresh() -> Self {
        Self {
            resumed: false,
            from_store: None,
            from_log: None,
        }
    }
}

/// `after`: the cursor's offset (last one the device has).
/// `persisted_next`: first offset the persister has not committed yet.
/// `log_start`: first offset still in Kafka.
/// `live_from`: first offset the device gets live.
pub fn plan(after: i64, persisted_next: i64, log_start: i64, live_from: i64) -> ResumePlan {
    let want = (after + 1)..live_from;
    if want.is_empty() {
        return ResumePlan {
            resumed: true,
            from_store: None,
            from_log: None,
        };
    }
    let store = want.start..persisted_next.min(want.end);
    let log = want.start.max(persisted_next)..want.end;
    // What the store lacks must still be in the log.
    if !log.is_empty() && log.start < log_start {
        return ResumePlan {
            resumed: false,
            from_store: None,
            from_log: None,
        };
    }
    ResumePlan {
        resumed: true,
        from_store: (!store.is_empty()).then_some(store),
        from_log: (!log.is_empty()).then_some(log),
    }
}

/// The plan while PostgreSQL does not answer: everything from the log, or
/// `None` when part of the gap is only in PostgreSQL (the client must retry
/// later, never be told `resumed: false` because of an outage).
pub fn plan_from_log(after: i64, log_start: i64, live_from: i64) -> Option<ResumePlan> {
    let want = (after + 1)..live_from;
    if want.is_empty() {
        return Some(plan(after, 0, log_start, live_from));
    }
    (want.start >= log_start).then_some(ResumePlan {
        resumed: true,
        from_store: None,
        from_log: Some(want),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert_eq!(
            plan(9, 0, 0, 10),
            ResumePlan {
                resumed: true,
                from_store: None,
                from_log: None
            }
        );
        assert_eq!(
            plan(4, 8, 0, 12),
            ResumePlan {
                resumed: true,
                from_store: Some(5..8),
                from_log: Some(8..12)
            }
        );
        assert_eq!(
            plan(4, 20, 0, 12),
            ResumePlan {
                resumed: true,
                from_store: Some(5..12),
                from_log: None
            }
        );
        assert_eq!(
            plan(4, 0, 0, 12),
            ResumePlan {
                resumed: true,
                from_store: None,
                from_log: Some(5..12)
            }
        );
        assert!(!plan(4, 6, 7, 12).resumed, "offset 6 is in neither store");
        assert!(plan(-1, 0, 0, 3).resumed);
    }

    #[test]
    fn without_the_store_only_what_the_log_holds() {
        assert_eq!(
            plan_from_log(4, 3, 12).and_then(|p| p.from_log),
            Some(5..12)
        );
        assert_eq!(
            plan_from_log(4, 6, 12),
            None,
            "offset 5 is only in PostgreSQL"
        );
        assert!(plan_from_log(11, 20, 12).is_some_and(|p| p.resumed && p.from_log.is_none()));
    }

    proptest! {
        #[test]
        fn covers_the_gap_exactly_once(after in -1i64..100, pn in 0i64..200, ls in 0i64..50, live in 0i64..200) {
            let p = plan(after, pn, ls, live);
            if p.resumed {
                let mut covered: Vec<i64> = p.from_store.clone().into_iter().flatten().collect();
                covered.extend(p.from_log.clone().into_iter().flatten());
                let want: Vec<i64> = ((after + 1)..live).collect();
                prop_assert_eq!(covered, want);
                if let Some(s) = p.from_store { prop_assert!(s.end <= pn); }
                if let Some(l) = p.from_log { prop_assert!(l.start >= ls); }
            }
        }
    }
}
