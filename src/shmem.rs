//! The status area in shared memory: fixed-size, plain data, written by the
//! worker's main thread from the runtime's status board and read by any
//! backend (`ic_proxy_status()`, `ic_proxy_info()`). Reserved at postmaster
//! start through the shmem hooks of shared_preload_libraries.

use ic_proxy_core::{PeerState, StatusSnapshot};
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};

/// Peers shown in status; a larger map is shown truncated (and says so).
pub const MAX_PEERS: usize = 1024;
const TEXT: usize = 128;
const HOST: usize = 64;
const PATH: usize = 108;

#[derive(Copy, Clone)]
#[repr(C)]
pub struct PeerRow {
    pub dbid: u16,
    pub content: i16,
    pub port: u16,
    pub state: u8,
    pub since_ms: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub logical_conns: u64,
    pub cached_bytes: u64,
    pub drops: u64,
    pub reconnects: u64,
    host: [u8; HOST],
    last_error: [u8; TEXT],
}

#[derive(Copy, Clone)]
#[repr(C)]
pub struct StatusArea {
    /// Bumped at every publish; 0 = never published (no worker yet).
    pub generation: u64,
    pub worker_pid: i32,
    pub dbid: u16,
    pub content: i16,
    pub threads: u16,
    pub dialect: u8,
    pub running: bool,
    pub max_packet_size: u32,
    pub updated_ms: u64,
    pub started_ms: u64,
    pub map_generation: u64,
    pub sessions_open: u64,
    pub sessions_total: u64,
    pub early_cache_bytes: u64,
    pub early_dropped_conns: u64,
    pub early_dropped_bytes: u64,
    pub rejected_connections: u64,
    pub dropped_packets: u64,
    pub flow_violations: u64,
    pub auth_failures: u64,
    pub npeers: u32,
    pub truncated: bool,
    peer_listener: [u8; 8],
    peer_listener_detail: [u8; TEXT],
    backend_listener: [u8; 8],
    backend_listener_detail: [u8; TEXT],
    socket_path: [u8; PATH],
    pub peers: [PeerRow; MAX_PEERS],
}

unsafe impl PGRXSharedMemory for StatusArea {}

impl Default for StatusArea {
    fn default() -> Self {
        // All-zero is a valid value of every field: plain integers and bytes.
        unsafe { std::mem::zeroed() }
    }
}

pub static STATUS: PgLwLock<StatusArea> = unsafe { PgLwLock::new(c"cloudberry_ic_proxy status") };

pub fn init() {
    pg_shmem_init!(STATUS);
}

fn put(dst: &mut [u8], s: &str) {
    dst.fill(0);
    // Keep room for the terminating zero; cut on a character boundary.
    let mut n = s.len().min(dst.len() - 1);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

fn get(src: &[u8]) -> String {
    let end = src.iter().position(|b| *b == 0).unwrap_or(src.len());
    String::from_utf8_lossy(&src[..end]).into_owned()
}

/// What the worker knows besides the status board.
pub struct Identity<'a> {
    pub worker_pid: i32,
    pub dbid: u16,
    pub content: Option<i16>,
    pub threads: u16,
    pub dialect: &'a str,
    pub max_packet_size: u32,
    pub socket_path: &'a str,
}

pub fn publish(id: &Identity<'_>, s: &StatusSnapshot, running: bool) {
    let mut a = STATUS.exclusive();
    a.generation += 1;
    a.running = running;
    a.worker_pid = id.worker_pid;
    a.dbid = id.dbid;
    a.content = id.content.unwrap_or(i16::MIN);
    a.threads = id.threads;
    a.dialect = id.dialect.as_bytes().first().copied().unwrap_or(b'?');
    a.max_packet_size = id.max_packet_size;
    a.updated_ms = ic_proxy_core::status::now_ms();
    a.started_ms = s.started_ms;
    a.map_generation = s.map_generation;
    a.sessions_open = s.sessions_open;
    a.sessions_total = s.sessions_total;
    a.early_cache_bytes = s.early_cache_bytes;
    a.early_dropped_conns = s.early_dropped_conns;
    a.early_dropped_bytes = s.early_dropped_bytes;
    a.rejected_connections = s.rejected_connections;
    a.dropped_packets = s.dropped_packets;
    a.flow_violations = s.flow_violations;
    a.auth_failures = s.auth_failures;
    put(&mut a.peer_listener, s.peer_listener.0);
    put(&mut a.peer_listener_detail, &s.peer_listener.1);
    put(&mut a.backend_listener, s.backend_listener.0);
    put(&mut a.backend_listener_detail, &s.backend_listener.1);
    put(&mut a.socket_path, id.socket_path);
    a.truncated = s.peers.len() > MAX_PEERS;
    a.npeers = s.peers.len().min(MAX_PEERS) as u32;
    for (row, p) in a.peers.iter_mut().zip(s.peers.iter()) {
        row.dbid = p.addr.dbid;
        row.content = p.addr.content;
        row.port = p.addr.port;
        row.state = p.state as u8;
        row.since_ms = p.since_ms;
        row.bytes_in = p.bytes_in;
        row.bytes_out = p.bytes_out;
        row.packets_in = p.packets_in;
        row.packets_out = p.packets_out;
        row.logical_conns = p.logical_conns;
        row.cached_bytes = p.cached_bytes;
        row.drops = p.drops;
        row.reconnects = p.reconnects;
        put(&mut row.host, &p.addr.host);
        put(&mut row.last_error, &p.last_error);
    }
}

/// Marks the status as stale when the worker stops.
pub fn mark_stopped() {
    let mut a = STATUS.exclusive();
    a.generation += 1;
    a.running = false;
    a.updated_ms = ic_proxy_core::status::now_ms();
    put(&mut a.peer_listener, "down");
    put(&mut a.backend_listener, "down");
}

/// Runs `f` on a consistent view, under the shared lock (the area is too
/// large to copy onto the stack).
pub fn with<R>(f: impl FnOnce(&StatusArea) -> R) -> R {
    f(&STATUS.share())
}

impl StatusArea {
    pub fn peer_listener(&self) -> (String, String) {
        (get(&self.peer_listener), get(&self.peer_listener_detail))
    }
    pub fn backend_listener(&self) -> (String, String) {
        (
            get(&self.backend_listener),
            get(&self.backend_listener_detail),
        )
    }
    pub fn socket_path(&self) -> String {
        get(&self.socket_path)
    }
    pub fn rows(&self) -> &[PeerRow] {
        &self.peers[..self.npeers as usize]
    }
}

impl PeerRow {
    pub fn host(&self) -> String {
        get(&self.host)
    }
    pub fn last_error(&self) -> String {
        get(&self.last_error)
    }
    pub fn state_name(&self) -> &'static str {
        let s = match self.state {
            0 => PeerState::SelfEntry,
            1 => PeerState::Connecting,
            2 => PeerState::Connected,
            3 => PeerState::Down,
            _ => PeerState::Unlinked,
        };
        s.name()
    }
}
