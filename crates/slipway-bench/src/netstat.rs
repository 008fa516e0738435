//! The host's TCP counters (`/proc/net/netstat`), to tell what a load did to the kernel's
//! queues: listen-queue overflows, and connection attempts (SYNs) sent again.

/// A counter of `/proc/net/netstat`, e.g. `("TcpExt", "TCPSynRetrans")`; 0 when unreadable.
pub fn counter(group: &str, name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    find(&text, group, name).unwrap_or(0)
}

/// SYNs sent again on the host so far.
pub fn syn_retransmits() -> u64 {
    counter("TcpExt", "TCPSynRetrans")
}

fn find(text: &str, group: &str, name: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let at = names.split_whitespace().position(|n| n == name);
        if let Some(at) = at {
            return values.split_whitespace().nth(at)?.parse().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_counter_by_name() {
        let text = "TcpExt: A B C\nTcpExt: 1 2 3\nIpExt: A\nIpExt: 9\n";
        assert_eq!(find(text, "TcpExt", "B"), Some(2));
        assert_eq!(find(text, "IpExt", "A"), Some(9));
        assert_eq!(find(text, "TcpExt", "D"), None);
    }
}
