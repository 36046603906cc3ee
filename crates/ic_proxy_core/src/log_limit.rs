//! A bound on how often one kind of warning is logged: hostile input can
//! trigger some warnings (a dropped packet, a refused connection) millions
//! of times a second.

use crate::sync::Mutex;

/// A warning that hostile input can trigger millions of times a second (a
/// dropped packet, a refused connection) is logged for the first
/// [`LogLimit::BURST`] events of each second; the rest are counted (the
/// status counters have them all) and the next line logged says how many
/// were left out.
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    /// (start of the current second, lines logged in it, lines left out).
    state: Mutex<Option<(std::time::Instant, u32, u64)>>,
}

impl LogLimit {
    pub const BURST: u32 = 10;

    /// Some(n) when this event may be logged, n = events left out before it.
    pub fn allow(&self) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut g = self.state.lock();
        let (start, logged, skipped) = g.get_or_insert((now, 0, 0));
        if now.duration_since(*start) >= std::time::Duration::from_secs(1) {
            *start = now;
            *logged = 0;
        }
        if *logged < Self::BURST {
            *logged += 1;
            Some(std::mem::take(skipped))
        } else {
            *skipped += 1;
            None
        }
    }

    /// Logs the warning `line()` builds, if the limit allows.
    pub fn warn(&self, what: &str, line: impl FnOnce() -> String) {
        if let Some(skipped) = self.allow() {
            if skipped > 0 {
                log::warn!("ic-proxy: {skipped} more {what} were not logged");
            }
            log::warn!("{}", line());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limit_allows_a_burst_then_counts_what_it_left_out() {
        let l = LogLimit::default();
        for _ in 0..LogLimit::BURST {
            assert_eq!(l.allow(), Some(0));
        }
        for _ in 0..5 {
            assert_eq!(l.allow(), None);
        }
        // A second later the next line reports the five left out.
        {
            let mut g = l.state.lock();
            let s = g.as_mut().unwrap();
            s.0 -= std::time::Duration::from_secs(1);
        }
        assert_eq!(l.allow(), Some(5));
        assert_eq!(l.allow(), Some(0));
    }
}
