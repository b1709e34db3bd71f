//! Kafka's default partitioner, so any Kafka producer keyed by user id agrees
//! with Switchboard about where a user lives.

/// Kafka's `Utils.murmur2` (Java), bit for bit, returned as Java's signed int.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        if tail.len() >= 3 {
            h ^= u32::from(tail[2]) << 16;
        }
        if tail.len() >= 2 {
            h ^= u32::from(tail[1]) << 8;
        }
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// `(murmur2(user_id_utf8) & 0x7fffffff) % partitions` (docs/protocol.md, "Partitioner").
///
/// # Panics
/// Never for `partitions > 0`; a topic always has at least one partition, and
/// callers validate the configured count before using it.
pub fn partition_for(user_id: &str, partitions: u32) -> u32 {
    debug_assert!(partitions > 0, "a topic has at least one partition");
    let positive = (murmur2(user_id.as_bytes()) & 0x7fff_ffff) as u32;
    positive % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Vectors from Kafka's own `UtilsTest.testMurmur2`.
    #[test]
    fn matches_kafka_murmur2_vectors() {
        let cases: &[(&str, i32)] = &[
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()), *expected, "murmur2({input:?})");
        }
    }

    #[test]
    fn partition_uses_positive_hash() {
        // murmur2("21") is negative: Kafka masks the sign bit, it does not abs().
        let expected = ((-973_932_308_i32 & 0x7fff_ffff) as u32) % 12;
        assert_eq!(partition_for("21", 12), expected);
        assert_eq!(partition_for("anything", 1), 0);
    }

    proptest! {
        #[test]
        fn partition_is_in_range(user in "[A-Za-z0-9._:@-]{1,128}", p in 1u32..4096) {
            prop_assert!(partition_for(&user, p) < p);
        }
    }

    /// Users spread over the partitions (each within 25% of the mean for
    /// 20,000 ids), so one partition's server is not everyone's: a hash that
    /// ignored bytes, or a wrong mask, fails this.
    #[test]
    fn users_spread_evenly_over_partitions() {
        for p in [2u32, 7, 12, 64] {
            let mut counts = vec![0u32; p as usize];
            for i in 0..20_000 {
                counts[partition_for(&format!("user-{i}"), p) as usize] += 1;
            }
            let mean = 20_000 / p;
            for (part, n) in counts.iter().enumerate() {
                assert!(
                    n.abs_diff(mean) * 4 <= mean,
                    "P={p}: partition {part} holds {n} of 20,000 users (mean {mean})"
                );
            }
        }
    }
}
