//! Which subscriber an anycast publication goes to: rendezvous (highest
//! random weight) hashing of the publication's seed — its `key`, else its
//! msg_id — against each subscribed session. Every server computes it alone
//! from the same inputs and gets the same answer, so no server has to ask
//! another; a session coming or going moves only the publications it wins
//! or held, and a sticky key keeps its session while that session stays.

use protocol::murmur2;
use uuid::Uuid;

/// The session's weight for `seed`; equal on every server and build.
pub fn weight(seed: &str, session: &Uuid) -> u32 {
    let mut bytes = Vec::with_capacity(seed.len() + 17);
    bytes.extend_from_slice(seed.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(session.as_bytes());
    mix(u32::from_ne_bytes(murmur2(&bytes).to_ne_bytes()))
}

/// murmur2's low bits are weak on inputs that differ only at the end:
/// the finaliser of MurmurHash3 spreads them.
fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The subscribed session `seed` goes to, leaving out the ones already
/// tried; `None` when every subscriber has been tried (or there is none).
pub fn choose(seed: &str, sessions: &[Uuid], tried: &[Uuid]) -> Option<Uuid> {
    sessions
        .iter()
        .filter(|s| !tried.contains(s))
        .max_by_key(|s| (weight(seed, s), **s))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn sessions(n: u128) -> Vec<Uuid> {
        (1..=n)
            .map(|i| Uuid::from_u128(i * 0x9e37_79b9_7f4a_7c15))
            .collect()
    }

    #[test]
    fn publications_spread_evenly_over_subscribers() {
        let subs = sessions(6);
        let mut got: HashMap<Uuid, usize> = HashMap::new();
        for _ in 0..6_000 {
            let seed = Uuid::new_v4().to_string();
            *got.entry(choose(&seed, &subs, &[]).unwrap()).or_default() += 1;
        }
        assert_eq!(got.len(), 6, "every subscriber gets some: {got:?}");
        for (s, n) in got {
            assert!((850..=1150).contains(&n), "{s} got {n} of 6,000");
        }
    }

    #[test]
    fn nobody_left_untried_is_none() {
        let subs = sessions(2);
        assert_eq!(choose("k", &subs, &subs), None);
        assert_eq!(choose("k", &[], &[]), None);
        let first = choose("k", &subs, &[]).unwrap();
        let second = choose("k", &subs, &[first]).unwrap();
        assert_ne!(first, second);
    }

    proptest! {
        /// A subscriber leaving moves only what it held; one joining takes
        /// only what it wins: a sticky key stays where it was otherwise.
        #[test]
        fn only_the_session_that_changes_moves_anything(
            n in 2u128..12,
            gone in 0usize..12,
            seed in "[a-z0-9]{1,16}",
        ) {
            let all = sessions(n);
            let gone = all[gone % all.len()];
            let rest: Vec<Uuid> = all.iter().copied().filter(|s| *s != gone).collect();
            let before = choose(&seed, &all, &[]).unwrap();
            let after = choose(&seed, &rest, &[]).unwrap();
            if before != gone {
                prop_assert_eq!(before, after);
            }
            // Joining is the same change read backwards.
            prop_assert!(before == after || before == gone);
        }

        #[test]
        fn never_a_tried_or_unknown_session(
            n in 0u128..10,
            tried in proptest::collection::vec(0usize..10, 0..10),
            seed in "[a-z0-9]{1,16}",
        ) {
            let all = sessions(n);
            let tried: Vec<Uuid> = tried.iter().filter_map(|i| all.get(*i).copied()).collect();
            match choose(&seed, &all, &tried) {
                Some(s) => prop_assert!(all.contains(&s) && !tried.contains(&s)),
                None => prop_assert!(all.iter().all(|s| tried.contains(s))),
            }
        }
    }
}
