//! The status area in shared memory: plain data, written by the worker's
//! main thread from the runtime's status board and read by any backend
//! (`ic_proxy_status()`, `ic_proxy_info()`). Reserved at postmaster start
//! through the shmem hooks of shared_preload_libraries: a fixed header under
//! an LWLock, and beside it one row per map entry, as many as
//! `ic_proxy.max_status_entries` says, guarded by the same lock. Entries
//! that do not fit are counted, never dropped silently.

use ic_proxy_core::address_map::AddressMap;
use ic_proxy_core::tls::TlsPolicy;
use ic_proxy_core::{PeerState, PeerTraffic, ProxyTotals, StatusSnapshot};
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};

use crate::gucs;

/// The `state` of a row whose proxy is not running.
pub const STATE_NOT_RUNNING: &str = "not running";
/// The `state` of every row while this instance's dbid is not in the map:
/// the proxy runs but links nothing.
pub const STATE_NOT_IN_MAP: &str = "not in map";
/// The row code of [`STATE_NOT_IN_MAP`]: beyond the core's `PeerState`s.
const NOT_IN_MAP: u8 = 255;
const TEXT: usize = 128;
const ERROR_TEXT: usize = 512;
const HOST: usize = 64;
const PATH: usize = 108;
const PROTECTION: usize = 64;

#[derive(Copy, Clone)]
#[repr(C)]
pub struct PeerRow {
    pub dbid: u16,
    pub content: i16,
    pub port: u16,
    pub state: u8,
    pub traffic: PeerTraffic,
    host: [u8; HOST],
    last_error: [u8; TEXT],
    protection: [u8; PROTECTION],
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
    pub totals: ProxyTotals,
    /// Rows written beside the header (at most the area's capacity).
    pub npeers: u32,
    /// Map entries the worker had; `total_peers - npeers` did not fit.
    pub total_peers: u32,
    /// False while this instance's dbid is not in the worker's map.
    pub self_in_map: bool,
    peer_listener: [u8; 8],
    peer_listener_detail: [u8; TEXT],
    backend_listener: [u8; 8],
    backend_listener_detail: [u8; TEXT],
    socket_path: [u8; PATH],
    /// Why the worker stopped or never started; empty while it runs.
    last_error: [u8; ERROR_TEXT],
    /// `ic_proxy.tls` in force, and this proxy's certificate (subject and
    /// expiry, seconds since the epoch; 0: none loaded).
    tls_mode: [u8; 8],
    tls_subject: [u8; TEXT],
    pub tls_not_after: u64,
}

unsafe impl PGRXSharedMemory for StatusArea {}

impl Default for PeerRow {
    fn default() -> Self {
        // All-zero is a valid value of every field: plain integers and bytes.
        unsafe { std::mem::zeroed() }
    }
}

impl Default for StatusArea {
    fn default() -> Self {
        // All-zero is a valid value of every field: plain integers and bytes.
        unsafe { std::mem::zeroed() }
    }
}

static STATUS: PgLwLock<StatusArea> = unsafe { PgLwLock::new(c"cloudberry_ic_proxy status") };

/// The row array: its address in this process and its capacity, set once
/// by the shmem startup hook in the postmaster (children inherit them) and
/// only read afterwards. Read and written under [`STATUS`]'s lock.
static mut ROWS: *mut PeerRow = std::ptr::null_mut();
static mut ROWS_CAPACITY: usize = 0;
const ROWS_NAME: &std::ffi::CStr = c"cloudberry_ic_proxy status rows";

static mut PREV_SHMEM_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREV_SHMEM_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

pub fn init() {
    pg_shmem_init!(STATUS);
    // After pgrx's hooks, so ours run after them and chain to them.
    unsafe {
        PREV_SHMEM_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(request_rows);
        PREV_SHMEM_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(attach_rows);
    }
}

fn rows_bytes(capacity: usize) -> usize {
    capacity * std::mem::size_of::<PeerRow>()
}

/// Reserves the rows once the postmaster has read its settings:
/// `ic_proxy.max_status_entries` is a server-start setting, so the size
/// asked for here is the size every process sees.
#[pg_guard]
unsafe extern "C-unwind" fn request_rows() {
    unsafe {
        if let Some(prev) = PREV_SHMEM_REQUEST_HOOK {
            prev();
        }
        ROWS_CAPACITY = gucs::max_status_entries();
        pg_sys::RequestAddinShmemSpace(rows_bytes(ROWS_CAPACITY));
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn attach_rows() {
    unsafe {
        if let Some(prev) = PREV_SHMEM_STARTUP_HOOK {
            prev();
        }
        if ROWS_CAPACITY == 0 {
            // The request hook did not run in this process (EXEC_BACKEND).
            ROWS_CAPACITY = gucs::max_status_entries();
        }
        let bytes = rows_bytes(ROWS_CAPACITY);
        // AddinShmemInitLock is MainLWLockArray[21] (lwlocknames.h), as pgrx does.
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let p = pg_sys::ShmemInitStruct(ROWS_NAME.as_ptr(), bytes, &mut found);
        if !found {
            // All-zero is a valid row: plain integers and bytes.
            std::ptr::write_bytes(p.cast::<u8>(), 0, bytes);
        }
        ROWS = p.cast::<PeerRow>();
        pg_sys::LWLockRelease(init_lock);
    }
}

/// The row array; only under the lock of the guard `_held`.
fn rows_mut(_held: &mut StatusArea) -> &mut [PeerRow] {
    // SAFETY: ROWS points to ROWS_CAPACITY rows of shared memory that live
    // as long as the server; the caller holds STATUS exclusively.
    unsafe {
        let (p, n) = (ROWS, ROWS_CAPACITY);
        if p.is_null() {
            return &mut [];
        }
        std::slice::from_raw_parts_mut(p, n)
    }
}

fn rows_ref(_held: &StatusArea) -> &[PeerRow] {
    // SAFETY: as rows_mut, under a shared lock.
    unsafe {
        let (p, n) = (ROWS, ROWS_CAPACITY);
        if p.is_null() {
            return &[];
        }
        std::slice::from_raw_parts(p, n)
    }
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
    /// The worker's map: while `content` is None (its dbid is not in it),
    /// its entries are the rows, in state [`STATE_NOT_IN_MAP`].
    pub map: &'a AddressMap,
    pub tls: &'a TlsPolicy,
}

pub fn publish(id: &Identity<'_>, s: &StatusSnapshot, running: bool) {
    let mut guard = STATUS.exclusive();
    let a = &mut *guard;
    a.generation += 1;
    a.running = running;
    a.worker_pid = id.worker_pid;
    a.dbid = id.dbid;
    a.content = id.content.unwrap_or(i16::MIN);
    a.threads = id.threads;
    a.dialect = id.dialect.as_bytes().first().copied().unwrap_or(b'?');
    a.max_packet_size = id.max_packet_size;
    a.updated_ms = ic_proxy_core::status::now_ms();
    a.totals = s.totals;
    put(&mut a.peer_listener, s.peer_listener.0);
    put(&mut a.peer_listener_detail, &s.peer_listener.1);
    put(&mut a.backend_listener, s.backend_listener.0);
    put(&mut a.backend_listener_detail, &s.backend_listener.1);
    put(&mut a.socket_path, id.socket_path);
    put(&mut a.last_error, "");
    put(&mut a.tls_mode, id.tls.mode.name());
    let cert = id.tls.material.as_ref().map(|m| &m.identity);
    put(&mut a.tls_subject, cert.map_or("", |c| c.subject.as_str()));
    a.tls_not_after = cert.map_or(0, |c| c.not_after);
    a.self_in_map = id.content.is_some();
    if !a.self_in_map {
        let why = format!("this instance's dbid {} is not in the address map", id.dbid);
        put(&mut a.peer_listener_detail, &why);
        let entries = id.map.entries();
        a.total_peers = entries.len() as u32;
        let rows = rows_mut(a);
        let n = entries.len().min(rows.len());
        for (row, e) in rows.iter_mut().zip(entries.iter()) {
            *row = PeerRow::default();
            row.dbid = e.dbid;
            row.content = e.content;
            row.port = e.port;
            row.state = NOT_IN_MAP;
            put(&mut row.host, &e.host);
            put(&mut row.last_error, &why);
        }
        a.npeers = n as u32;
        return;
    }
    a.total_peers = s.peers.len() as u32;
    let rows = rows_mut(a);
    let n = s.peers.len().min(rows.len());
    for (row, p) in rows.iter_mut().zip(s.peers.iter()) {
        row.dbid = p.addr.dbid;
        row.content = p.addr.content;
        row.port = p.addr.port;
        row.state = p.state.code();
        row.traffic = p.traffic;
        put(&mut row.host, &p.addr.host);
        put(&mut row.last_error, &p.last_error);
        put(&mut row.protection, &p.protection);
    }
    a.npeers = n as u32;
}

/// Marks the status as stale when the worker stops; `error` says why it
/// stopped or could not start (empty: a clean stop).
pub fn mark_stopped(error: &str) {
    let mut a = STATUS.exclusive();
    a.generation += 1;
    a.running = false;
    a.updated_ms = ic_proxy_core::status::now_ms();
    put(&mut a.peer_listener, "down");
    put(&mut a.backend_listener, "down");
    put(&mut a.last_error, error);
}

/// Runs `f` on a consistent view, under the shared lock (the rows are too
/// many to copy onto the stack).
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
    /// The rows written at the last publish.
    pub fn rows(&self) -> &[PeerRow] {
        let all = rows_ref(self);
        &all[..(self.npeers as usize).min(all.len())]
    }
    /// Map entries the last publish could not fit into the area.
    pub fn entries_missing(&self) -> u32 {
        self.total_peers.saturating_sub(self.npeers)
    }
    /// Why the worker stopped or never started; empty if it did not say.
    pub fn last_error(&self) -> String {
        get(&self.last_error)
    }
    pub fn tls_mode(&self) -> String {
        get(&self.tls_mode)
    }
    pub fn tls_subject(&self) -> String {
        get(&self.tls_subject)
    }
}

impl PeerRow {
    pub fn host(&self) -> String {
        get(&self.host)
    }
    pub fn last_error(&self) -> String {
        get(&self.last_error)
    }
    pub fn protection(&self) -> String {
        get(&self.protection)
    }
    pub fn state_name(&self) -> &'static str {
        if self.state == NOT_IN_MAP {
            return STATE_NOT_IN_MAP;
        }
        PeerState::from_u8(self.state).name()
    }
}
