//! The host's TCP listen queues (`/proc/net/netstat`, `TcpExt`): a
//! connection the kernel completed but the listener's accept queue had no
//! room for is dropped (`ListenOverflows`, counted again in `ListenDrops`
//! with the other listen drops); its client retransmits after 1, 3, 7 s…
//! A reconnect herd of thousands of lookups in one second can fill a
//! queue of 4,096 (`service::LISTEN_BACKLOG`, capped by `somaxconn`).

/// Connections dropped at a listener so far (`TcpExt: ListenDrops`).
pub fn listen_drops() -> Option<u64> {
    parse_tcp_ext(
        &std::fs::read_to_string("/proc/net/netstat").ok()?,
        "ListenDrops",
    )
}

/// The value of `name` in the `TcpExt:` pair of lines (names, then values).
fn parse_tcp_ext(text: &str, name: &str) -> Option<u64> {
    let mut rows = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (rows.next()?, rows.next()?);
    let at = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_drops_are_read_from_the_tcp_ext_pair() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPHPHits\n\
            TcpExt: 3 161455 161460 99\n\
            IpExt: InNoRoutes ListenDrops\n\
            IpExt: 0 7\n";
        assert_eq!(parse_tcp_ext(text, "ListenDrops"), Some(161_460));
        assert_eq!(parse_tcp_ext(text, "ListenOverflows"), Some(161_455));
        assert_eq!(parse_tcp_ext(text, "Missing"), None);
        assert_eq!(parse_tcp_ext("IpExt: a\nIpExt: 1\n", "ListenDrops"), None);
    }
}
