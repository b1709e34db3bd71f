//! Open files: every WebSocket session holds a descriptor, so the server
//! raises its soft limit to the hard one at start-up and keeps its
//! connection limit under what the process may open, with room left for
//! Kafka, etcd, PostgreSQL and HTTP. Past the limit an upgrade is refused
//! with 503 and `Retry-After` (a client tries again or elsewhere) instead of
//! `accept` failing with EMFILE, which would stall every socket, health
//! checks included.

/// Descriptors kept for everything other than WebSocket sessions.
pub const RESERVED: u64 = 1024;

/// Raises the soft open-file limit to the hard one; the limit now in force,
/// `None` where it cannot be read.
pub fn raise_limit() -> Option<u64> {
    rlimit::increase_nofile_limit(u64::MAX).ok()
}

/// The connection limit to enforce: the configured one, or what the
/// descriptors allow if that is fewer.
pub fn connection_limit(configured: usize, fd_limit: Option<u64>) -> usize {
    match fd_limit {
        Some(limit) => {
            let room = usize::try_from(limit.saturating_sub(RESERVED)).unwrap_or(usize::MAX);
            configured.min(room.max(1))
        }
        None => configured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_descriptor_limit_caps_the_configured_one() {
        assert_eq!(connection_limit(200_000, Some(20_000)), 18_976);
        assert_eq!(connection_limit(5_000, Some(20_000)), 5_000);
        assert_eq!(connection_limit(200_000, None), 200_000);
        assert_eq!(connection_limit(10, Some(100)), 1);
    }

    #[test]
    fn raising_never_lowers_the_limit() {
        let before = rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft);
        let after = raise_limit();
        if let (Ok(before), Some(after)) = (before, after) {
            assert!(after >= before);
        }
    }

    proptest! {
        #[test]
        fn the_limit_leaves_the_reserve(configured in 1usize..1_000_000, limit in 0u64..2_000_000) {
            let n = connection_limit(configured, Some(limit));
            prop_assert!(n >= 1 && n <= configured);
            prop_assert!(n as u64 + RESERVED <= limit.max(RESERVED + 1));
        }
    }
}
