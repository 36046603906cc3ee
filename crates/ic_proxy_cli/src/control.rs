//! The control socket of `ic-proxy run`: `<socket dir>/.s.PGSQL.ic_proxy.<port>.control`,
//! mode 0700, where `ic-proxy status` and `ic-proxy ping` ask a running
//! proxy what `ic_proxy_info()`, `ic_proxy_status()` and `ic_proxy_ping()`
//! show in SQL. It owns that socket, its small text protocol and the report
//! both it and the metrics endpoint serve; it never speaks the backend
//! protocol and never changes the proxy.
//!
//! The protocol: one request line (`status`, `ping all` or `ping <dbid>`, at
//! most [`REQUEST_MAX`] bytes, within [`REQUEST_TIMEOUT`]), then the answer:
//! records, one a line, `<kind>\t<name>=<value>\t...` with `\`, tab, CR and
//! LF escaped in values, ending with a line `end`; then the proxy closes.
//! Kinds: `proxy` and `peer` (status), `ping` (one per probed entry, in the
//! order the probes end), `error` (`message=`, a refused request).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ic_proxy_core::protocol::Dialect;
use ic_proxy_core::status::now_ms;
use ic_proxy_core::{BackendSocket, ProxySettings, RuntimeConfig, StatusBoard, StatusSnapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::ping;

/// Longest request line, newline included.
pub const REQUEST_MAX: usize = 256;
/// Time a client has to send its request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Time a client has to take each part of the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Control connections served at once; one more is told so and closed.
pub const MAX_CONTROL_CONNECTIONS: usize = 8;

/// The control socket of the proxy of the server on `port`: named from the
/// port only, so it stays the same across postmaster restarts (the backend
/// socket's name has the postmaster's pid).
pub fn control_path(socket_dir: &Path, port: u16) -> PathBuf {
    socket_dir.join(format!(".s.PGSQL.ic_proxy.{port}.control"))
}

/// What the observers (control socket, metrics) read of a running proxy.
#[derive(Debug)]
pub struct ProxyView {
    pub status: Arc<StatusBoard>,
    pub dbid: u16,
    /// The proxy process.
    pub pid: u32,
    pub dialect: Dialect,
    pub threads: u16,
    pub max_packet_size: usize,
    /// The backend socket of [`BackendSocket::FromSettings`].
    pub settings_socket: PathBuf,
    /// The configuration in force (map, backend socket).
    pub config: watch::Receiver<Arc<RuntimeConfig>>,
}

impl ProxyView {
    pub fn new(
        settings: &ProxySettings,
        threads: u16,
        status: Arc<StatusBoard>,
        config: watch::Receiver<Arc<RuntimeConfig>>,
    ) -> ProxyView {
        ProxyView {
            status,
            dbid: settings.dbid,
            pid: std::process::id(),
            dialect: settings.dialect,
            threads,
            max_packet_size: settings.max_packet_size,
            settings_socket: settings.socket_path.clone(),
            config,
        }
    }

    /// The configuration in force now.
    pub fn config(&self) -> Arc<RuntimeConfig> {
        self.config.borrow().clone()
    }

    /// Where backends reach the proxy now, or why they cannot.
    pub fn backend_socket(&self) -> Result<PathBuf, String> {
        match &self.config().backend_socket {
            BackendSocket::FromSettings => Ok(self.settings_socket.clone()),
            BackendSocket::At(p) => Ok(p.clone()),
            BackendSocket::Off(why) => Err(why.clone()),
        }
    }

    /// One consistent reading of the board, with the map's view of it.
    pub fn report(&self) -> Report {
        let config = self.config();
        let me = config.map.get(self.dbid).cloned();
        let snap = self.status.snapshot();
        let rows = match &me {
            Some(_) => snap
                .peers
                .iter()
                .map(|p| PeerRow {
                    dbid: p.addr.dbid,
                    content: p.addr.content,
                    address: p.addr.host.clone(),
                    port: p.addr.port,
                    state: p.state.name(),
                    since_ms: p.since_ms,
                    bytes_in: p.bytes_in,
                    bytes_out: p.bytes_out,
                    packets_in: p.packets_in,
                    packets_out: p.packets_out,
                    logical_connections: p.logical_conns,
                    cached_bytes: p.cached_bytes,
                    drops: p.drops,
                    reconnects: p.reconnects,
                    last_error: p.last_error.clone(),
                })
                .collect(),
            // As ic_proxy_status() shows it: every entry, and why nothing links.
            None => config
                .map
                .entries()
                .iter()
                .map(|e| PeerRow {
                    dbid: e.dbid,
                    content: e.content,
                    address: e.host.clone(),
                    port: e.port,
                    state: STATE_NOT_IN_MAP,
                    since_ms: 0,
                    bytes_in: 0,
                    bytes_out: 0,
                    packets_in: 0,
                    packets_out: 0,
                    logical_connections: 0,
                    cached_bytes: 0,
                    drops: 0,
                    reconnects: 0,
                    last_error: format!(
                        "this instance's dbid {} is not in the address map",
                        self.dbid
                    ),
                })
                .collect(),
        };
        Report {
            pid: self.pid,
            dbid: self.dbid,
            content: me.map(|e| e.content),
            dialect: self.dialect.name(),
            threads: self.threads,
            max_packet_size: self.max_packet_size,
            now_ms: now_ms(),
            snap,
            rows,
        }
    }
}

/// The state of every entry while this instance's dbid is not in the map.
pub const STATE_NOT_IN_MAP: &str = "not in map";

/// The proxy and its map entries at one moment.
#[derive(Debug)]
pub struct Report {
    pub pid: u32,
    pub dbid: u16,
    /// None while this instance's dbid is not in the map.
    pub content: Option<i16>,
    pub dialect: &'static str,
    pub threads: u16,
    pub max_packet_size: usize,
    pub now_ms: u64,
    pub snap: StatusSnapshot,
    pub rows: Vec<PeerRow>,
}

/// One map entry, as `ic_proxy_status()` shows it.
#[derive(Debug)]
pub struct PeerRow {
    pub dbid: u16,
    pub content: i16,
    pub address: String,
    pub port: u16,
    pub state: &'static str,
    /// 0: never (an entry shown while this instance is not in the map).
    pub since_ms: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub logical_connections: u64,
    pub cached_bytes: u64,
    pub drops: u64,
    pub reconnects: u64,
    pub last_error: String,
}

impl Report {
    /// Seconds since the proxy started.
    pub fn uptime_secs(&self) -> f64 {
        self.now_ms.saturating_sub(self.snap.started_ms) as f64 / 1000.0
    }

    /// The `proxy` record, then one `peer` record per map entry.
    pub fn records(&self) -> Vec<Record> {
        let s = &self.snap;
        let opt = |v: u64| if v == 0 { String::new() } else { v.to_string() };
        let mut proxy = Record::new("proxy");
        proxy
            .field("running", "true")
            .field("pid", self.pid)
            .field("dbid", self.dbid)
            .field(
                "content",
                self.content.map(|c| c.to_string()).unwrap_or_default(),
            )
            .field("peer_listener", s.peer_listener.0)
            .field("peer_listener_detail", &s.peer_listener.1)
            .field("backend_socket", s.backend_listener.0)
            .field("backend_socket_detail", &s.backend_listener.1)
            .field("dialect", self.dialect)
            .field("threads", self.threads)
            .field("max_packet_size", self.max_packet_size)
            .field("started_ms", s.started_ms)
            .field("now_ms", self.now_ms)
            .field("uptime_s", format!("{:.3}", self.uptime_secs()))
            .field("map_generation", s.map_generation)
            .field("logical_connections", s.sessions_open)
            .field("logical_connections_total", s.sessions_total)
            .field("early_cache_bytes", s.early_cache_bytes)
            .field("early_dropped_connections", s.early_dropped_conns)
            .field("early_dropped_bytes", s.early_dropped_bytes)
            .field("rejected_connections", s.rejected_connections)
            .field("dropped_packets", s.dropped_packets)
            .field("flow_violations", s.flow_violations)
            .field("auth_failures", s.auth_failures)
            .field("socket_takeovers", s.socket_takeovers)
            .field("fd_soft_limit", opt(s.fd_soft_limit))
            .field("fd_hard_limit", opt(s.fd_hard_limit));
        let mut out = vec![proxy];
        for r in &self.rows {
            let mut peer = Record::new("peer");
            peer.field("dbid", r.dbid)
                .field("content", r.content)
                .field("address", &r.address)
                .field("port", r.port)
                .field("state", r.state)
                .field("since_ms", opt(r.since_ms))
                .field("bytes_in", r.bytes_in)
                .field("bytes_out", r.bytes_out)
                .field("packets_in", r.packets_in)
                .field("packets_out", r.packets_out)
                .field("logical_connections", r.logical_connections)
                .field("cached_bytes", r.cached_bytes)
                .field("drops", r.drops)
                .field("reconnects", r.reconnects)
                .field("last_error", &r.last_error);
            out.push(peer);
        }
        out
    }
}

/// One line of an answer: a kind and named values, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: String,
    pub fields: Vec<(String, String)>,
}

impl Record {
    pub fn new(kind: &str) -> Record {
        Record {
            kind: kind.to_string(),
            fields: Vec::new(),
        }
    }

    pub fn field(&mut self, name: &str, value: impl ToString) -> &mut Record {
        self.fields.push((name.to_string(), value.to_string()));
        self
    }

    /// The value of `name`; "" when absent.
    pub fn get(&self, name: &str) -> &str {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// The record as one line, newline included.
    pub fn encode(&self) -> String {
        let mut line = self.kind.clone();
        for (name, value) in &self.fields {
            line.push('\t');
            line.push_str(name);
            line.push('=');
            for c in value.chars() {
                match c {
                    '\\' => line.push_str("\\\\"),
                    '\t' => line.push_str("\\t"),
                    '\n' => line.push_str("\\n"),
                    '\r' => line.push_str("\\r"),
                    c => line.push(c),
                }
            }
        }
        line.push('\n');
        line
    }

    /// A line [`Record::encode`] made (without its newline).
    pub fn decode(line: &str) -> Result<Record, String> {
        let mut parts = line.split('\t');
        let kind = parts.next().unwrap_or_default();
        if kind.is_empty() {
            return Err(format!("a line without a kind: {line:?}"));
        }
        let mut fields = Vec::new();
        for part in parts {
            let Some((name, raw)) = part.split_once('=') else {
                return Err(format!("a field without '=': {part:?}"));
            };
            let mut value = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c != '\\' {
                    value.push(c);
                    continue;
                }
                match chars.next() {
                    Some('\\') => value.push('\\'),
                    Some('t') => value.push('\t'),
                    Some('n') => value.push('\n'),
                    Some('r') => value.push('\r'),
                    other => return Err(format!("a bad escape \\{other:?} in {part:?}")),
                }
            }
            fields.push((name.to_string(), value));
        }
        Ok(Record {
            kind: kind.to_string(),
            fields,
        })
    }
}

/// What a control client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Status,
    /// One map entry, or (None) every peer this instance exchanges traffic with.
    Ping(Option<u16>),
}

impl Request {
    pub fn line(self) -> String {
        match self {
            Request::Status => "status\n".into(),
            Request::Ping(None) => "ping all\n".into(),
            Request::Ping(Some(d)) => format!("ping {d}\n"),
        }
    }

    pub fn parse(line: &str) -> Result<Request, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            ["status"] => Ok(Request::Status),
            ["ping"] | ["ping", "all"] => Ok(Request::Ping(None)),
            ["ping", d] => match d.parse::<u16>() {
                Ok(d) if (1..=32767).contains(&d) => Ok(Request::Ping(Some(d))),
                _ => Err(format!("dbid {d:?} is not a number in 1..32767")),
            },
            _ => Err(format!(
                "unknown request {:?}: expected status, ping all or ping <dbid>",
                quote(line)
            )),
        }
    }
}

/// At most 64 characters of what a client sent.
fn quote(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The bound control socket; [`ControlServer::spawn`] serves it.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlServer {
    /// Binds `path` with mode 0700. A file left by a dead process is
    /// replaced; one a live proxy answers on is left alone (AddrInUse), the
    /// backend socket's rule.
    /// Call it inside the runtime.
    pub fn bind(path: &Path) -> io::Result<ControlServer> {
        let std_listener = ic_proxy_core::bind_backend_socket(path)?;
        let listener = std_listener
            .set_nonblocking(true)
            .and_then(|()| UnixListener::from_std(std_listener));
        match listener {
            Ok(listener) => Ok(ControlServer {
                listener,
                path: path.to_owned(),
            }),
            Err(e) => {
                let _ = std::fs::remove_file(path);
                Err(e)
            }
        }
    }

    /// Serves until `shutdown`, then removes the socket file (also when the
    /// runtime drops the task instead).
    pub fn spawn(
        self,
        view: Arc<ProxyView>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(serve(self, view, shutdown))
    }
}

/// The observers `ic-proxy run` starts beside its runtime.
#[derive(Debug)]
pub struct Observe {
    /// The control socket ([`control_path`]); None: none.
    pub control: Option<PathBuf>,
    /// `--metrics-listen`.
    pub metrics: Option<std::net::SocketAddr>,
    /// Runtime worker threads, for the report.
    pub threads: u16,
}

/// The running observers; dropping them stops them.
#[derive(Debug)]
pub struct Observers {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _stop: tokio_util::sync::DropGuard,
}

impl Observers {
    /// Binds and serves what `observe` asks for, until `shutdown` or until
    /// dropped. Err only when the metrics address cannot be bound: a control
    /// socket that cannot be made is logged and left out, as the proxy
    /// itself works without it.
    pub async fn start(
        observe: &Observe,
        view: Arc<ProxyView>,
        shutdown: &CancellationToken,
    ) -> Result<Observers, String> {
        let stop = shutdown.child_token();
        let mut tasks = Vec::new();
        if let Some(addr) = observe.metrics {
            let server = crate::metrics::MetricsServer::bind(addr)
                .await
                .map_err(|e| {
                    format!("cannot listen for metrics on {addr} (--metrics-listen): {e}")
                })?;
            tasks.push(server.spawn(view.clone(), stop.clone()));
        }
        if let Some(path) = &observe.control {
            match ControlServer::bind(path) {
                Ok(server) => tasks.push(server.spawn(view, stop.clone())),
                Err(e) => log::warn!(
                    "ic-proxy: no control socket ({e}): ic-proxy status and ping cannot reach this proxy at {}",
                    path.display()
                ),
            }
        }
        Ok(Observers {
            tasks,
            _stop: stop.drop_guard(),
        })
    }

    /// Stops them and waits until they have (the control socket removed).
    pub async fn stop(self) {
        let Observers { tasks, _stop } = self;
        drop(_stop);
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Removes the socket file when dropped.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if std::fs::remove_file(&self.0).is_ok() {
            log::info!("ic-proxy: removed {}", self.0.display());
        }
    }
}

async fn serve(server: ControlServer, view: Arc<ProxyView>, shutdown: CancellationToken) {
    let _file = SocketFile(server.path.clone());
    log::info!(
        "ic-proxy: control socket {} (ic-proxy status, ic-proxy ping)",
        server.path.display()
    );
    let slots = Arc::new(Semaphore::new(MAX_CONTROL_CONNECTIONS));
    let refusals = Arc::new(Semaphore::new(MAX_CONTROL_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = server.listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => match slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let (view, stop) = (view.clone(), shutdown.clone());
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = answer(stream, &view) => {}
                        }
                        drop(slot);
                    });
                }
                // Told why, once its request is read (closing on an unread
                // request would reset the connection before the client reads
                // the answer); past twice the cap, closed at once.
                Err(_) => {
                    if let Ok(slot) = refusals.clone().try_acquire_owned() {
                        let stop = shutdown.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = stop.cancelled() => {}
                                _ = refuse_busy(stream) => {}
                            }
                            drop(slot);
                        });
                    }
                }
            },
            Err(e) => {
                log::warn!("ic-proxy: accepting a control connection failed: {e}");
                // Out of descriptors or the like: let it pass.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

/// One control connection: its request, the answer, close.
async fn answer(stream: UnixStream, view: &ProxyView) {
    let (mut read, mut write) = stream.into_split();
    let request = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut read)).await {
        Ok(Ok(line)) => Request::parse(&line),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no request line within {REQUEST_TIMEOUT:?}")),
    };
    let mut out = AnswerWriter { write: &mut write };
    let written = match request {
        Ok(Request::Status) => out.records(&view.report().records()).await,
        Ok(Request::Ping(which)) => ping::answer(view, which, &mut out).await,
        Err(message) => {
            let mut r = Record::new("error");
            r.field("message", message);
            out.records(&[r]).await
        }
    };
    if written.is_ok() {
        let _ = out.end().await;
    }
}

/// Answers a control connection past [`MAX_CONTROL_CONNECTIONS`].
async fn refuse_busy(stream: UnixStream) {
    let (mut read, mut write) = stream.into_split();
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut read)).await;
    let mut busy = Record::new("error");
    busy.field(
        "message",
        format!(
            "the proxy is serving {MAX_CONTROL_CONNECTIONS} control connections already; try again"
        ),
    );
    let mut out = AnswerWriter { write: &mut write };
    if out.records(&[busy]).await.is_ok() {
        let _ = out.end().await;
    }
}

/// The request line, without its newline.
async fn read_request(read: &mut (impl AsyncReadExt + Unpin)) -> Result<String, String> {
    let mut buf = [0u8; REQUEST_MAX];
    let mut len = 0;
    loop {
        if let Some(end) = buf[..len].iter().position(|&b| b == b'\n') {
            len = end;
            break;
        }
        if len == REQUEST_MAX {
            return Err(format!("a request line longer than {REQUEST_MAX} bytes"));
        }
        match read.read(&mut buf[len..]).await {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) => return Err(format!("reading the request: {e}")),
        }
    }
    std::str::from_utf8(&buf[..len])
        .map(|s| s.trim_end_matches('\r').to_string())
        .map_err(|_| "a request line that is not UTF-8".to_string())
}

/// Writes an answer's records, each write bounded by [`WRITE_TIMEOUT`].
pub struct AnswerWriter<'a, W> {
    write: &'a mut W,
}

impl<W: AsyncWriteExt + Unpin> AnswerWriter<'_, W> {
    pub async fn records(&mut self, records: &[Record]) -> io::Result<()> {
        let mut text = String::new();
        for r in records {
            text.push_str(&r.encode());
        }
        self.bytes(text.as_bytes()).await
    }

    async fn end(&mut self) -> io::Result<()> {
        self.bytes(b"end\n").await?;
        self.write.shutdown().await
    }

    async fn bytes(&mut self, b: &[u8]) -> io::Result<()> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.write.write_all(b)).await {
            Ok(r) => r,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_is_named_from_the_port_only() {
        assert_eq!(
            control_path(Path::new("/tmp"), 5432),
            PathBuf::from("/tmp/.s.PGSQL.ic_proxy.5432.control")
        );
    }

    #[test]
    fn records_round_trip_whatever_their_values_hold() {
        let mut r = Record::new("peer");
        r.field("dbid", 2)
            .field("last_error", "a\tb\nc\\d\re=f")
            .field("empty", "");
        let line = r.encode();
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with('\n'));
        let back = Record::decode(line.trim_end_matches('\n')).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.get("last_error"), "a\tb\nc\\d\re=f");
        assert_eq!(back.get("missing"), "");
        assert!(Record::decode("").is_err());
        assert!(Record::decode("peer\tnoequals").is_err());
        assert!(Record::decode("peer\ta=\\x").is_err());
    }

    #[test]
    fn requests_parse_and_refuse_with_the_reason() {
        assert_eq!(Request::parse("status"), Ok(Request::Status));
        assert_eq!(Request::parse(" ping  all "), Ok(Request::Ping(None)));
        assert_eq!(Request::parse("ping"), Ok(Request::Ping(None)));
        assert_eq!(Request::parse("ping 7"), Ok(Request::Ping(Some(7))));
        for r in [Request::Status, Request::Ping(None), Request::Ping(Some(9))] {
            assert_eq!(Request::parse(r.line().trim_end()), Ok(r));
        }
        assert_eq!(
            Request::parse("ping 40000"),
            Err("dbid \"40000\" is not a number in 1..32767".into())
        );
        assert!(Request::parse("HELLO")
            .unwrap_err()
            .starts_with("unknown request \"HELLO\""));
    }

    #[tokio::test]
    async fn a_request_line_is_bounded() {
        let long = vec![b'x'; REQUEST_MAX + 10];
        let mut r = &long[..];
        assert_eq!(
            read_request(&mut r).await,
            Err(format!("a request line longer than {REQUEST_MAX} bytes"))
        );
        let mut r = &b"status\r\nmore"[..];
        assert_eq!(read_request(&mut r).await, Ok("status".into()));
        let mut r = &b"ping 2"[..];
        assert_eq!(read_request(&mut r).await, Ok("ping 2".into()));
    }
}
