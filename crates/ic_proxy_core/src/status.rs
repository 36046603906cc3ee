//! The status board: atomics the runtime updates as it works and any thread
//! can read without stopping it. The extension copies a snapshot into shared
//! memory; the standalone binary logs it.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::address_map::PeerAddr;
use crate::sync::{Mutex, RwLock};

/// The state of the link to one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PeerState {
    /// This instance's own entry.
    SelfEntry = 0,
    /// Dialing, or waiting for the peer to dial us (it has the higher content).
    Connecting = 1,
    Connected = 2,
    /// The link was lost or refused; retrying.
    Down = 3,
    /// Never linked: same content (primary/mirror pair) or both content -1.
    Unlinked = 4,
}

impl PeerState {
    /// The state as one byte.
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn name(self) -> &'static str {
        match self {
            PeerState::SelfEntry => "self",
            PeerState::Connecting => "connecting",
            PeerState::Connected => "connected",
            PeerState::Down => "down",
            PeerState::Unlinked => "unlinked",
        }
    }

    /// The state a code of [`PeerState::code`] stands for (shared memory
    /// keeps the code).
    pub fn from_u8(v: u8) -> PeerState {
        match v {
            0 => PeerState::SelfEntry,
            1 => PeerState::Connecting,
            2 => PeerState::Connected,
            3 => PeerState::Down,
            _ => PeerState::Unlinked,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Counters of one peer; updated on the data path with relaxed atomics.
#[derive(Debug)]
pub struct PeerStats {
    pub addr: PeerAddr,
    state: AtomicU8,
    since_ms: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub packets_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub logical_conns: AtomicI64,
    /// DATA waiting in this proxy to be sent to the peer (at most
    /// `ProxySettings::peer_queue_bytes`).
    pub cached_bytes: AtomicI64,
    pub drops: AtomicU64,
    pub reconnects: AtomicU64,
    last_error: Mutex<String>,
    /// How the link is protected: `plaintext`, `TLS1.3 <cipher suite>`,
    /// each with `+ auth` when authenticated by the secret; empty before
    /// the first link.
    protection: Mutex<String>,
}

impl PeerStats {
    pub fn new(addr: PeerAddr, state: PeerState) -> Self {
        PeerStats {
            addr,
            state: AtomicU8::new(state as u8),
            since_ms: AtomicU64::new(now_ms()),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            packets_in: AtomicU64::new(0),
            packets_out: AtomicU64::new(0),
            logical_conns: AtomicI64::new(0),
            cached_bytes: AtomicI64::new(0),
            drops: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            last_error: Mutex::new(String::new()),
            protection: Mutex::new(String::new()),
        }
    }

    pub fn set_state(&self, s: PeerState) {
        if self.state.swap(s as u8, Relaxed) != s as u8 {
            self.since_ms.store(now_ms(), Relaxed);
        }
    }

    pub fn state(&self) -> PeerState {
        PeerState::from_u8(self.state.load(Relaxed))
    }

    pub fn set_error(&self, e: impl Into<String>) {
        *self.last_error.lock() = e.into();
    }

    pub fn set_protection(&self, p: impl Into<String>) {
        *self.protection.lock() = p.into();
    }

    pub fn snapshot(&self) -> PeerSnapshot {
        PeerSnapshot {
            addr: self.addr.clone(),
            state: self.state(),
            traffic: PeerTraffic {
                since_ms: self.since_ms.load(Relaxed),
                bytes_in: self.bytes_in.load(Relaxed),
                bytes_out: self.bytes_out.load(Relaxed),
                packets_in: self.packets_in.load(Relaxed),
                packets_out: self.packets_out.load(Relaxed),
                logical_conns: self.logical_conns.load(Relaxed).max(0) as u64,
                cached_bytes: self.cached_bytes.load(Relaxed).max(0) as u64,
                drops: self.drops.load(Relaxed),
                reconnects: self.reconnects.load(Relaxed),
            },
            last_error: self.last_error.lock().clone(),
            protection: self.protection.lock().clone(),
        }
    }
}

/// One peer as the status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSnapshot {
    pub addr: PeerAddr,
    pub state: PeerState,
    pub traffic: PeerTraffic,
    pub last_error: String,
    /// How the last link was protected (see `PeerStats`).
    pub protection: String,
}

/// A peer's numbers at one moment, as plain integers: the same struct in a
/// [`PeerSnapshot`] and in the extension's shared-memory rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PeerTraffic {
    /// When the peer entered its state (ms since the epoch).
    pub since_ms: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    /// Logical connections open with the peer.
    pub logical_conns: u64,
    /// DATA waiting in this proxy to be sent to the peer.
    pub cached_bytes: u64,
    pub drops: u64,
    pub reconnects: u64,
}

/// A listener's health.
#[derive(Debug, Default)]
pub struct ListenerStatus {
    up: AtomicU8,
    detail: Mutex<String>,
}

impl ListenerStatus {
    pub fn set_up(&self, where_: impl Into<String>) {
        self.up.store(1, Relaxed);
        *self.detail.lock() = where_.into();
    }
    pub fn set_failed(&self, error: impl Into<String>) {
        self.up.store(2, Relaxed);
        *self.detail.lock() = error.into();
    }
    pub fn set_down(&self, why: impl Into<String>) {
        self.up.store(0, Relaxed);
        *self.detail.lock() = why.into();
    }
    /// ("up" | "failed" | "down", address or error)
    pub fn get(&self) -> (&'static str, String) {
        let s = match self.up.load(Relaxed) {
            1 => "up",
            2 => "failed",
            _ => "down",
        };
        (s, self.detail.lock().clone())
    }
}

/// Counters of the whole proxy.
#[derive(Debug, Default)]
pub struct ProxyCounters {
    pub map_generation: AtomicU64,
    pub started_ms: AtomicU64,
    pub sessions_open: AtomicI64,
    pub sessions_total: AtomicU64,
    pub early_cache_bytes: AtomicI64,
    pub early_dropped_conns: AtomicU64,
    pub early_dropped_bytes: AtomicU64,
    /// Connections dropped for malformed or hostile input (peers and backends).
    pub rejected_connections: AtomicU64,
    /// Packets dropped because nobody could take them (late DATA_ACK, misrouted).
    pub dropped_packets: AtomicU64,
    pub flow_violations: AtomicU64,
    /// Peer links refused because authentication failed.
    pub auth_failures: AtomicU64,
    /// Times the backend socket's path was taken over from another process
    /// (the built-in proxy of Cloudberry/Greenplum).
    pub socket_takeovers: AtomicU64,
    /// RLIMIT_NOFILE of the hosting process after the shell raised it
    /// (`fd_limit::raise_nofile`); 0 until the shell sets them.
    pub fd_soft_limit: AtomicU64,
    pub fd_hard_limit: AtomicU64,
}

#[derive(Debug, Default)]
pub struct StatusBoard {
    pub counters: ProxyCounters,
    pub peer_listener: ListenerStatus,
    pub backend_listener: ListenerStatus,
    peers: RwLock<Vec<Arc<PeerStats>>>,
}

/// The whole proxy at one moment.
#[derive(Clone, Debug)]
pub struct StatusSnapshot {
    pub peer_listener: (&'static str, String),
    pub backend_listener: (&'static str, String),
    pub totals: ProxyTotals,
    pub peers: Vec<PeerSnapshot>,
}

/// The proxy's counters at one moment, as plain integers: the same struct
/// in a [`StatusSnapshot`] and in the extension's shared-memory header.
/// Each is documented on [`ProxyCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ProxyTotals {
    pub map_generation: u64,
    pub started_ms: u64,
    pub sessions_open: u64,
    pub sessions_total: u64,
    pub early_cache_bytes: u64,
    pub early_dropped_conns: u64,
    pub early_dropped_bytes: u64,
    pub rejected_connections: u64,
    pub dropped_packets: u64,
    pub flow_violations: u64,
    pub auth_failures: u64,
    pub socket_takeovers: u64,
    pub fd_soft_limit: u64,
    pub fd_hard_limit: u64,
}

impl StatusBoard {
    pub fn new() -> Arc<Self> {
        let b = StatusBoard::default();
        b.counters.started_ms.store(now_ms(), Relaxed);
        Arc::new(b)
    }

    /// Replaces the list of peers (on start and on every reload), sorted by dbid.
    pub fn set_peers(&self, mut peers: Vec<Arc<PeerStats>>) {
        peers.sort_by_key(|p| p.addr.dbid);
        *self.peers.write() = peers;
    }

    pub fn peer(&self, dbid: u16) -> Option<Arc<PeerStats>> {
        self.peers
            .read()
            .iter()
            .find(|p| p.addr.dbid == dbid)
            .cloned()
    }

    pub fn snapshot(&self) -> StatusSnapshot {
        let c = &self.counters;
        StatusSnapshot {
            peer_listener: self.peer_listener.get(),
            backend_listener: self.backend_listener.get(),
            totals: ProxyTotals {
                map_generation: c.map_generation.load(Relaxed),
                started_ms: c.started_ms.load(Relaxed),
                sessions_open: c.sessions_open.load(Relaxed).max(0) as u64,
                sessions_total: c.sessions_total.load(Relaxed),
                early_cache_bytes: c.early_cache_bytes.load(Relaxed).max(0) as u64,
                early_dropped_conns: c.early_dropped_conns.load(Relaxed),
                early_dropped_bytes: c.early_dropped_bytes.load(Relaxed),
                rejected_connections: c.rejected_connections.load(Relaxed),
                dropped_packets: c.dropped_packets.load(Relaxed),
                flow_violations: c.flow_violations.load(Relaxed),
                auth_failures: c.auth_failures.load(Relaxed),
                socket_takeovers: c.socket_takeovers.load(Relaxed),
                fd_soft_limit: c.fd_soft_limit.load(Relaxed),
                fd_hard_limit: c.fd_hard_limit.load(Relaxed),
            },
            peers: self.peers.read().iter().map(|p| p.snapshot()).collect(),
        }
    }
}

impl StatusBoard {
    /// A number that changes whenever the proxy does work: logical
    /// connections opened or closed, bytes moved on any link.
    pub fn activity(&self) -> u64 {
        let c = &self.counters;
        let opened = c.sessions_total.load(Relaxed);
        let open = c.sessions_open.load(Relaxed).max(0) as u64;
        let moved: u64 = self
            .peers
            .read()
            .iter()
            .map(|p| {
                p.bytes_in
                    .load(Relaxed)
                    .wrapping_add(p.bytes_out.load(Relaxed))
            })
            .fold(0, u64::wrapping_add);
        // Closing a connection changes `open` and nothing else.
        opened
            .wrapping_mul(2)
            .wrapping_sub(open)
            .wrapping_add(moved)
    }
}
