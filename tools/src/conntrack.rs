//! The host's connection tracking table (netfilter), which Docker's rules
//! switch on for every connection, loopback included. A reconnect storm
//! opens and closes tens of thousands of connections a minute; each closed
//! one stays in the table for two minutes (TIME_WAIT), and once the table
//! is full the kernel drops new connections' packets ("nf_conntrack: table
//! full, dropping packet"): every device's SYN is retransmitted after 1, 3,
//! 7 s… — the load generator's host, not the system under test. Measured:
//! a 36,000-device storm filled the default 262,144 entries and dropped
//! 373,544 packets; its freeze phase never came back.

use std::path::Path;

const MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";
const STATS: &str = "/proc/net/stat/nf_conntrack";

/// The table's size, if the host tracks connections.
pub fn max() -> Option<u64> {
    read_number(Path::new(MAX))
}

/// Makes the table hold at least `want` entries (needs root); the size in
/// force afterwards, if the host tracks connections.
pub fn ensure_room(want: u64) -> Option<u64> {
    let now = max()?;
    if now < want {
        if let Err(e) = std::fs::write(MAX, want.to_string()) {
            eprintln!("conntrack table holds {now} entries; could not raise it to {want}: {e}");
        }
    }
    max()
}

/// Packets the kernel dropped so far for want of a table entry, summed over
/// CPUs (`drop` + `insert_failed` + `early_drop`).
pub fn drops() -> Option<u64> {
    parse_drops(&std::fs::read_to_string(STATS).ok()?)
}

fn read_number(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Sums the drop columns of `/proc/net/stat/nf_conntrack` (a header line,
/// then one line of hexadecimal counters per CPU).
fn parse_drops(text: &str) -> Option<u64> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let columns: Vec<usize> = ["drop", "insert_failed", "early_drop"]
        .iter()
        .filter_map(|name| header.iter().position(|h| h == name))
        .collect();
    if columns.is_empty() {
        return None;
    }
    let mut total = 0;
    for line in lines {
        let cells: Vec<&str> = line.split_whitespace().collect();
        for &c in &columns {
            total += cells
                .get(c)
                .and_then(|v| u64::from_str_radix(v, 16).ok())
                .unwrap_or(0);
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_summed_over_cpus_and_columns() {
        let text = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error\n\
            00039d40 0 0 0 f0 0 0 0 0 00000002 0005b328 00000108 0\n\
            00039d40 0 0 0 f0 0 0 0 0 00000000 00000010 00000000 0\n";
        assert_eq!(parse_drops(text), Some(2 + 0x5b328 + 0x108 + 0x10));
        assert_eq!(parse_drops("entries found\n1 2\n"), None);
    }
}
