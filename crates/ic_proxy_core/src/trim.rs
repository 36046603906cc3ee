//! When a shell should give freed memory back to the system.

use crate::status::StatusBoard;

/// When to give freed memory back to the system (`malloc_trim` in the
/// shells): once the proxy has gone quiet after doing work. Under a steady
/// load it never trims, so the allocator keeps the pages the load reuses;
/// when the load stops, the next quiet tick returns what it left behind.
#[derive(Debug, Default)]
pub struct TrimPolicy {
    last: Option<u64>,
    worked: bool,
}

impl TrimPolicy {
    /// Called on a regular tick (a second or so apart); true when the shell
    /// should trim now.
    pub fn tick(&mut self, board: &StatusBoard) -> bool {
        self.observe(board.activity())
    }

    fn observe(&mut self, now: u64) -> bool {
        let changed = self.last.is_some_and(|l| l != now);
        self.last = Some(now);
        if changed {
            self.worked = true;
            false
        } else {
            std::mem::take(&mut self.worked)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;

    use super::*;
    use crate::address_map::PeerAddr;
    use crate::status::{PeerState, PeerStats};

    #[test]
    fn trim_policy_trims_once_when_work_stops_and_never_during_it() {
        let b = StatusBoard::new();
        let mut t = TrimPolicy::default();
        assert!(!t.tick(&b), "nothing happened yet");
        assert!(!t.tick(&b));
        // A connection opens and data moves: no trim while it goes on.
        b.counters.sessions_total.fetch_add(1, Relaxed);
        b.counters.sessions_open.fetch_add(1, Relaxed);
        assert!(!t.tick(&b));
        let peer = Arc::new(PeerStats::new(
            PeerAddr {
                dbid: 2,
                content: 0,
                host: "127.0.0.1".into(),
                port: 1,
            },
            PeerState::Connecting,
        ));
        b.set_peers(vec![peer.clone()]);
        peer.bytes_out.fetch_add(8192, Relaxed);
        assert!(!t.tick(&b));
        peer.bytes_in.fetch_add(64, Relaxed);
        assert!(!t.tick(&b));
        // Quiet: one trim, then none until more work.
        assert!(t.tick(&b));
        assert!(!t.tick(&b));
        assert!(!t.tick(&b));
        // Closing the connection is work too.
        b.counters.sessions_open.fetch_sub(1, Relaxed);
        assert!(!t.tick(&b));
        assert!(t.tick(&b));
        assert!(!t.tick(&b));
    }
}
