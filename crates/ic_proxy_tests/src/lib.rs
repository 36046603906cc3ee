//! A harness for the runtime's integration tests: real proxies (the core's
//! `ProxyHandle`) on loopback port 0 and temporary Unix sockets, all in one process,
//! and helpers that stream checksummed data through them with the backend
//! client.

pub mod certs;
pub mod hostile;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ic_proxy_client::{
    pattern_payload, ClientOptions, ConnSpec, Endpoint, LogicalConn, RecvItem, StreamDigest,
};
use ic_proxy_core::address_map::{AddressMap, PeerAddr};
use ic_proxy_core::protocol::Dialect;
use ic_proxy_core::tls::TlsPolicy;
use ic_proxy_core::{
    bind_backend_socket, Listeners, PeerState, ProxyHandle, ProxySettings, RuntimeConfig,
    StatusBoard,
};

/// Generous deadline for anything the tests wait on.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// One proxy of a test mesh.
pub struct TestProxy {
    pub addr: PeerAddr,
    pub socket: PathBuf,
    pub status: Arc<StatusBoard>,
    /// None once stopped.
    pub proxy: Option<ProxyHandle>,
    pub settings: ProxySettings,
    _dir: Arc<tempfile::TempDir>,
}

impl TestProxy {
    /// Hands the running proxy a new configuration.
    pub fn reload(&self, config: RuntimeConfig) {
        if let Some(p) = &self.proxy {
            p.reload(config);
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<RuntimeConfig> {
        self.proxy.as_ref().expect("a running proxy").current()
    }
}

/// Knobs a test may change before the mesh starts.
#[derive(Clone)]
pub struct MeshOptions {
    pub dialect: Dialect,
    pub max_packet_size: usize,
    pub early_cache_bytes: usize,
    pub early_packet_ttl: Duration,
    pub peer_secret: Option<Arc<[u8]>>,
    /// How long a new peer or backend connection may take to say hello.
    pub handshake_timeout: Duration,
    /// Map entries with no proxy behind them, `(dbid, content)`: the dbids a
    /// test's fake peers claim, or instances that never answer.
    pub absent: Vec<(u16, i16)>,
    /// DATA all logical connections to one peer may queue in a proxy.
    pub peer_queue_bytes: usize,
    /// TLS on peer links of every proxy (off by default) ...
    pub tls: TlsPolicy,
    /// ... but these dbids'.
    pub tls_of: Vec<(u16, TlsPolicy)>,
}

impl Default for MeshOptions {
    fn default() -> Self {
        MeshOptions {
            dialect: Dialect::C,
            max_packet_size: 8192,
            early_cache_bytes: 64 << 20,
            early_packet_ttl: Duration::from_secs(60),
            peer_secret: None,
            handshake_timeout: Duration::from_secs(2),
            absent: Vec::new(),
            peer_queue_bytes: ic_proxy_core::config::DEFAULT_PEER_QUEUE_BYTES,
            tls: TlsPolicy::off(),
            tls_of: Vec::new(),
        }
    }
}

pub struct Mesh {
    pub proxies: Vec<TestProxy>,
    pub opts: MeshOptions,
    dir: Arc<tempfile::TempDir>,
}

/// A listener on 127.0.0.1 port 0 and its entry in a map.
pub fn reserve(dbid: u16, content: i16) -> (std::net::TcpListener, PeerAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = l.local_addr().unwrap().port();
    (
        l,
        PeerAddr {
            dbid,
            content,
            host: "127.0.0.1".into(),
            port,
        },
    )
}

impl Mesh {
    /// One proxy per content in `contents`, dbids 1, 2, 3, ...
    pub fn start(contents: &[i16]) -> Mesh {
        Self::start_with(contents, MeshOptions::default())
    }

    pub fn start_with(contents: &[i16], opts: MeshOptions) -> Mesh {
        init_log();
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let reserved: Vec<_> = contents
            .iter()
            .enumerate()
            .map(|(i, c)| reserve(i as u16 + 1, *c))
            .collect();
        // Absent instances get a port nobody listens on.
        let absent = opts
            .absent
            .iter()
            .map(|(dbid, content)| reserve(*dbid, *content).1);
        let map = AddressMap::from_entries(
            reserved
                .iter()
                .map(|(_, a)| a.clone())
                .chain(absent)
                .collect(),
        )
        .expect("valid map");
        let mut mesh = Mesh {
            proxies: Vec::new(),
            opts,
            dir,
        };
        for (l, addr) in reserved {
            mesh.spawn(addr, l, map.clone());
        }
        mesh
    }

    /// The configuration of every proxy of the mesh with `map` (TLS as
    /// `opts.tls` says).
    pub fn runtime_config(&self, map: AddressMap) -> RuntimeConfig {
        RuntimeConfig {
            map,
            early_cache_bytes: self.opts.early_cache_bytes,
            early_packet_ttl: self.opts.early_packet_ttl,
            retry_interval: Duration::from_millis(200),
            peer_secret: self.opts.peer_secret.clone(),
            backend_socket: Default::default(),
            tls: self.opts.tls.clone(),
        }
    }

    /// The configuration of proxy `dbid` with `map`.
    pub fn runtime_config_of(&self, dbid: u16, map: AddressMap) -> RuntimeConfig {
        let mut c = self.runtime_config(map);
        if let Some((_, tls)) = self.opts.tls_of.iter().find(|(d, _)| *d == dbid) {
            c.tls = tls.clone();
        }
        c
    }

    /// Starts a proxy for `addr` with listener `l` and map `map`.
    pub fn spawn(&mut self, addr: PeerAddr, l: std::net::TcpListener, map: AddressMap) {
        let socket = self
            .dir
            .path()
            .join(format!(".s.PGSQL.ic_proxy.{}.{}", addr.port, addr.dbid));
        let backend = bind_backend_socket(&socket).expect("bind backend socket");
        let mut settings = ProxySettings::new(addr.dbid, socket.clone());
        settings.dialect = self.opts.dialect;
        settings.max_packet_size = self.opts.max_packet_size;
        settings.pid = 10_000 + i32::from(addr.dbid);
        settings.first_dial_delay = Duration::from_millis(10);
        settings.handshake_timeout = self.opts.handshake_timeout;
        settings.peer_queue_bytes = self.opts.peer_queue_bytes;
        let mut proxy = ProxyHandle::new(self.runtime_config_of(addr.dbid, map));
        proxy.spawn(
            &tokio::runtime::Handle::current(),
            settings.clone(),
            Listeners {
                peer: Some(l),
                backend: Some(backend),
            },
        );
        self.proxies.push(TestProxy {
            addr,
            socket,
            status: proxy.status().clone(),
            proxy: Some(proxy),
            settings,
            _dir: self.dir.clone(),
        });
    }

    pub fn proxy(&self, dbid: u16) -> &TestProxy {
        self.proxies
            .iter()
            .find(|p| p.addr.dbid == dbid)
            .expect("no such proxy")
    }

    /// The map of the running and stopped proxies (absent entries left out).
    pub fn map(&self) -> AddressMap {
        AddressMap::from_entries(self.proxies.iter().map(|p| p.addr.clone()).collect()).unwrap()
    }

    /// Waits until every proxy sees every peer it exchanges traffic with as
    /// connected.
    pub async fn wait_connected(&self) {
        let start = Instant::now();
        loop {
            let running: Vec<u16> = self
                .proxies
                .iter()
                .filter(|p| p.proxy.is_some())
                .map(|p| p.addr.dbid)
                .collect();
            let all = self.proxies.iter().filter(|p| p.proxy.is_some()).all(|p| {
                let peers = p.status.snapshot().peers;
                // Every running proxy is listed, and linked wherever traffic flows.
                running
                    .iter()
                    .all(|d| peers.iter().any(|s| s.addr.dbid == *d))
                    && peers.iter().all(|s| {
                        matches!(
                            s.state,
                            PeerState::SelfEntry | PeerState::Unlinked | PeerState::Connected
                        ) || !running.contains(&s.addr.dbid)
                    })
            });
            if all {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "mesh did not connect: {:#?}",
                self.describe()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn describe(&self) -> Vec<String> {
        self.proxies
            .iter()
            .map(|p| {
                let s = p.status.snapshot();
                format!(
                    "dbid {}: {:?}",
                    p.addr.dbid,
                    s.peers
                        .iter()
                        .map(|x| (x.addr.dbid, x.state, x.last_error.clone()))
                        .collect::<Vec<_>>()
                )
            })
            .collect()
    }

    /// Stops proxy `dbid` and waits for its runtime to finish.
    pub async fn stop(&mut self, dbid: u16) {
        let p = self
            .proxies
            .iter_mut()
            .find(|p| p.addr.dbid == dbid)
            .unwrap();
        if let Some(proxy) = p.proxy.take() {
            proxy.stop(DEADLINE).await.expect("the proxy stops cleanly");
        }
    }

    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            dialect: self.opts.dialect,
            max_packet_size: self.opts.max_packet_size,
            ..ClientOptions::default()
        }
    }

    pub async fn shutdown(mut self) {
        let ids: Vec<u16> = self.proxies.iter().map(|p| p.addr.dbid).collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

/// The key of logical connection `n` from a backend on `from` to one on `to`.
pub fn spec(from: &PeerAddr, to: &PeerAddr, n: u32) -> ConnSpec {
    ConnSpec {
        session_id: 77,
        command_id: 5 + n,
        send_slice: 1,
        recv_slice: 0,
        local: Endpoint {
            content: from.content,
            dbid: from.dbid,
            pid: 20_000 + n as i32,
        },
        remote: Endpoint {
            content: to.content,
            dbid: to.dbid,
            pid: 30_000 + n as i32,
        },
    }
}

/// Sends `packets` pattern packets of `len` bytes and finishes; returns the digest sent.
pub async fn send_stream(
    mut c: LogicalConn,
    seed: u64,
    packets: u64,
    len: usize,
) -> Result<StreamDigest, ic_proxy_client::ClientError> {
    let mut d = StreamDigest::new();
    for i in 0..packets {
        let p = pattern_payload(seed, i, len);
        d.update(&p);
        c.send_packet(&p).await?;
    }
    c.finish().await?;
    // Wait for the receiver's BYE (EOF), as a backend's teardown does.
    loop {
        match c.recv().await? {
            RecvItem::Eof | RecvItem::Stop => break,
            RecvItem::Packet(_) => {}
        }
    }
    Ok(d)
}

/// Receives until EOF; returns the digest and packet count, then finishes.
pub async fn recv_stream(
    mut c: LogicalConn,
) -> Result<(StreamDigest, u64), ic_proxy_client::ClientError> {
    let mut d = StreamDigest::new();
    let mut n = 0;
    while let RecvItem::Packet(p) = c.recv().await? {
        d.update(&p);
        n += 1;
    }
    c.finish().await?;
    Ok((d, n))
}

/// Expected digest of a pattern stream.
pub fn expected_digest(seed: u64, packets: u64, len: usize) -> StreamDigest {
    let mut d = StreamDigest::new();
    for i in 0..packets {
        d.update(&pattern_payload(seed, i, len));
    }
    d
}

/// Opens both ends of logical connection `n` between proxies `a` and `b`.
pub async fn open_pair(mesh: &Mesh, a: u16, b: u16, n: u32) -> (LogicalConn, LogicalConn) {
    let (pa, pb) = (mesh.proxy(a), mesh.proxy(b));
    let s = spec(&pa.addr, &pb.addr, n);
    let opts = mesh.client_options();
    let (sa, sb) = (pa.socket.clone(), pb.socket.clone());
    let (x, y) = tokio::join!(
        LogicalConn::connect(&sa, s, &opts),
        LogicalConn::connect(&sb, s.reversed(), &opts)
    );
    (x.expect("sender connects"), y.expect("receiver connects"))
}

/// Waits until `cond` holds, failing the test at the deadline.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The test log: every record at debug level or above is kept (with the
/// name of the thread that logged it, so a test can pick out its own
/// proxies' lines, see [`run_named`]), and printed to stderr at the level
/// IC_PROXY_TEST_LOG names, if set.
struct TestLog {
    print: Option<log::LevelFilter>,
}

/// Kept log lines; the oldest go first past this many.
const LOG_KEEP: usize = 200_000;

static LOG_LINES: ic_proxy_core::sync::Mutex<std::collections::VecDeque<LogLine>> =
    ic_proxy_core::sync::Mutex::new(std::collections::VecDeque::new());

/// One captured log record.
#[derive(Clone, Debug)]
pub struct LogLine {
    pub thread: String,
    pub level: log::Level,
    pub text: String,
}

impl log::Log for TestLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        let text = r.args().to_string();
        if self.print.is_some_and(|p| r.level() <= p) {
            eprintln!("{:?} {} {}", std::time::SystemTime::now(), r.level(), text);
        }
        let thread = std::thread::current().name().unwrap_or("").to_string();
        let mut lines = LOG_LINES.lock();
        if lines.len() >= LOG_KEEP {
            lines.pop_front();
        }
        lines.push_back(LogLine {
            thread,
            level: r.level(),
            text,
        });
    }
    fn flush(&self) {}
}

/// Installs the test log (once per test binary). Records are captured at
/// debug level and above; they are printed to stderr too when
/// IC_PROXY_TEST_LOG is set (e.g. to "debug"): `cargo test -- --nocapture`
/// shows them.
pub fn init_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let print = std::env::var("IC_PROXY_TEST_LOG")
            .ok()
            .map(|l| l.parse().unwrap_or(log::LevelFilter::Info));
        let logger = Box::leak(Box::new(TestLog { print }));
        if log::set_logger(logger).is_ok() {
            log::set_max_level(
                print
                    .unwrap_or(log::LevelFilter::Debug)
                    .max(log::LevelFilter::Debug),
            );
        }
    });
}

/// The captured lines logged by threads named `thread`.
pub fn log_lines(thread: &str) -> Vec<LogLine> {
    LOG_LINES
        .lock()
        .iter()
        .filter(|l| l.thread == thread)
        .cloned()
        .collect()
}

/// Runs `f` on a runtime of its own whose threads are named `name`: every
/// line the proxies it starts log carries that name, so tests running in
/// parallel can tell their lines apart.
pub fn run_named<F: std::future::Future>(name: &str, f: F) -> F::Output {
    init_log();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("test runtime")
        .block_on(f)
}
