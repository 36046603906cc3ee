//! The runtime's log lines, written to the server log by the worker's main
//! thread: runtime threads never call PostgreSQL, so they push each line
//! into a bounded queue and the main thread drains it with elog. A full
//! queue drops lines (and says how many) rather than slow the data path.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;

use pgrx::prelude::*;

use crate::gucs;

/// Lines waiting for the main thread at most.
const QUEUE: usize = 4096;

struct Line {
    level: log::Level,
    text: String,
}

struct ChannelLog {
    tx: SyncSender<Line>,
    dropped: AtomicU64,
}

static LOGGER: OnceLock<ChannelLog> = OnceLock::new();

impl log::Log for ChannelLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = Line {
            level: r.level(),
            text: r.args().to_string(),
        };
        if let Err(TrySendError::Full(_)) = self.tx.try_send(line) {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
    fn flush(&self) {}
}

/// The main thread's end of the queue.
pub struct LogBridge(Receiver<Line>);

impl LogBridge {
    /// Makes this process's logger the queue (once per process) at the
    /// level `ic_proxy.log_verbosity` says.
    pub fn install() -> LogBridge {
        let (tx, rx) = sync_channel(QUEUE);
        let _ = LOGGER.set(ChannelLog {
            tx,
            dropped: AtomicU64::new(0),
        });
        if let Some(l) = LOGGER.get() {
            let _ = log::set_logger(l);
        }
        Self::follow_settings();
        LogBridge(rx)
    }

    /// Applies `ic_proxy.log_verbosity` (after a reload).
    pub fn follow_settings() {
        log::set_max_level(match gucs::log_verbosity() {
            gucs::LogVerbosity::Terse => log::LevelFilter::Info,
            gucs::LogVerbosity::Verbose => log::LevelFilter::Debug,
            gucs::LogVerbosity::Debug => log::LevelFilter::Trace,
        });
    }

    /// Writes out every waiting line (main thread only).
    pub fn drain(&self) {
        while let Ok(l) = self.0.try_recv() {
            match l.level {
                log::Level::Error | log::Level::Warn => warning!("{}", l.text),
                _ => log!("{}", l.text),
            }
        }
        if let Some(l) = LOGGER.get() {
            let n = l.dropped.swap(0, Relaxed);
            if n > 0 {
                warning!("ic-proxy: {n} log lines were dropped (the log queue was full)");
            }
        }
    }
}
