//! What a proxy needs to know besides the address map: its identity, the
//! wire dialect and its knobs. Fixed for the life of a runtime, except the
//! parts of [`RuntimeConfig`] that a reload may change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::address_map::AddressMap;
use crate::flow::FlowParams;
use crate::protocol::{Dialect, DEFAULT_PACKET_SIZE};
use crate::tls::TlsPolicy;

/// The socket a backend connects to: `<dir>/.s.PGSQL.ic_proxy.<port>.<pid>`,
/// with the postmaster's port and pid, exactly where Cloudberry looks.
pub fn socket_path(dir: &Path, postmaster_port: u16, postmaster_pid: u32) -> PathBuf {
    dir.join(format!(
        ".s.PGSQL.ic_proxy.{postmaster_port}.{postmaster_pid}"
    ))
}

#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// This instance's dbid; its content comes from its entry in the map.
    pub dbid: u16,
    /// The pid this proxy puts in PEER_HELLO / PEER_HELLO_ACK.
    pub pid: i32,
    pub dialect: Dialect,
    /// Largest DATA payload (gp_max_packet_size).
    pub max_packet_size: usize,
    pub socket_path: PathBuf,
    pub flow: FlowParams,
    /// How long a new connection may take to say its HELLO / PEER_HELLO.
    pub handshake_timeout: Duration,
    /// Delay of the first dial after start or after a peer is added.
    pub first_dial_delay: Duration,
    /// DATA bytes all logical connections to one peer may queue in this
    /// proxy while its link is busy; past it, their backends wait.
    pub peer_queue_bytes: usize,
    /// Peer connections that may wait for their PEER_HELLO (and the rest of
    /// the handshake) at once; a new one past it is closed at once. None: a
    /// quarter of the descriptor limit at start (an N-instance cluster makes
    /// at most N-1 peer handshakes at once).
    pub max_pending_peers: Option<usize>,
    /// The same per source address (IPv6: per /64); default
    /// [`DEFAULT_PENDING_PEERS_PER_SOURCE`].
    pub max_pending_peers_per_source: usize,
    /// Backend connections that may wait for their HELLO at once; a new one
    /// past it is closed at once. None: a quarter of the descriptor limit at
    /// start (a backend sends its HELLO as soon as it connects).
    pub max_pending_backends: Option<usize>,
    /// Descriptors the peer listener leaves to backends: a peer connection
    /// accepted with fewer than this many left is closed at once. None: an
    /// eighth of the descriptor limit at start.
    pub descriptor_reserve: Option<usize>,
    /// Take the backend socket's path over from another live process, at
    /// start and whenever it takes the path again (Cloudberry's built-in
    /// proxy binds the same path at every start). Off: a live socket is left
    /// alone and retried.
    pub take_over: bool,
}

/// Per source address of peer connections in their handshake, by default.
/// One remote instance has at most one dial to this proxy in progress, so
/// this is the number of instances one host may run and still have all of
/// them (re)link at the same moment; beyond it, the excess retry a retry
/// interval later.
pub const DEFAULT_PENDING_PEERS_PER_SOURCE: usize = 64;

/// Default of [`ProxySettings::peer_queue_bytes`]: 16 MiB.
pub const DEFAULT_PEER_QUEUE_BYTES: usize = 16 << 20;

impl ProxySettings {
    pub fn new(dbid: u16, socket_path: PathBuf) -> Self {
        ProxySettings {
            dbid,
            pid: std::process::id() as i32,
            dialect: Dialect::C,
            max_packet_size: DEFAULT_PACKET_SIZE,
            socket_path,
            flow: FlowParams::default(),
            handshake_timeout: Duration::from_secs(10),
            first_dial_delay: Duration::from_millis(100),
            peer_queue_bytes: DEFAULT_PEER_QUEUE_BYTES,
            max_pending_peers: None,
            max_pending_peers_per_source: DEFAULT_PENDING_PEERS_PER_SOURCE,
            max_pending_backends: None,
            descriptor_reserve: None,
            take_over: false,
        }
    }
}

/// What a reload can change while the proxy runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub map: AddressMap,
    pub early_cache_bytes: usize,
    pub early_packet_ttl: Duration,
    pub retry_interval: Duration,
    /// The shared secret of peer authentication; None: peers are not
    /// authenticated (C proxies can join).
    pub peer_secret: Option<Arc<[u8]>>,
    /// Where backends reach the proxy now: a sidecar follows its server's
    /// restarts (the path names the postmaster's pid) and serves no socket
    /// while the server is down.
    pub backend_socket: BackendSocket,
    /// TLS on peer links (off by default, so C proxies can join).
    pub tls: TlsPolicy,
}

/// The backend socket a runtime serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum BackendSocket {
    /// [`ProxySettings::socket_path`] (the extension's worker, `ic-proxy
    /// run --pid`).
    #[default]
    FromSettings,
    /// This path instead (a sidecar after its server restarted).
    At(PathBuf),
    /// None, and why (a sidecar whose server is down).
    Off(String),
}

impl RuntimeConfig {
    pub fn new(map: AddressMap) -> Self {
        RuntimeConfig {
            map,
            early_cache_bytes: 64 << 20,
            early_packet_ttl: Duration::from_secs(60),
            retry_interval: Duration::from_secs(1),
            peer_secret: None,
            backend_socket: BackendSocket::FromSettings,
            tls: TlsPolicy::off(),
        }
    }
}
