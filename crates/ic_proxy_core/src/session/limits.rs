//! Every byte bound of a backend session in one place: what a waiting
//! packet and a waiting logical connection cost (for the early cache's cap
//! and a session's queue bound), how much a session may have queued for its
//! backend, and its read and write sizes.

use crate::config::ProxySettings;

/// What one waiting packet costs besides its payload (its queue slot, with
/// the queue's growth slack, and its allocation), for the early cache's cap
/// and a session's queue bound.
pub(crate) const PACKET_COST: usize = 96;
/// What one waiting logical connection costs besides its packets (its map
/// and order entries, the first allocation of its queue). Without it, a
/// flood of 1-byte packets for distinct keys costs ~500 bytes of memory
/// per byte the cap counts.
pub(crate) const KEY_COST: usize = 512;

// A waiting connection's bookkeeping outweighs one waiting packet's.
const _: () = assert!(KEY_COST > PACKET_COST);

/// Bytes a session may have waiting for its backend: two flow-control
/// windows of full packets. A sender that overruns it breaks the rules.
pub(crate) fn queued_cap(settings: &ProxySettings) -> usize {
    2 * (settings.flow.pause_at as usize + settings.flow.ack_interval as usize)
        * settings.max_packet_size.max(4096)
}

/// Room kept free in a session's read buffer before each read.
pub(crate) const READ_ROOM: usize = 64 * 1024;
/// A batch written to the backend in one call once it reaches this size.
pub(crate) const WRITE_BATCH: usize = 256 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_bound_is_two_windows_of_full_packets() {
        let s = ProxySettings::new(1, "/tmp/x".into());
        // 2 x (pause 100 + ack 10) x 8192.
        assert_eq!(queued_cap(&s), 2 * 110 * 8192);
        let mut small = s.clone();
        small.max_packet_size = 512;
        // Packets count as at least 4 KiB each.
        assert_eq!(queued_cap(&small), 2 * 110 * 4096);
    }
}
