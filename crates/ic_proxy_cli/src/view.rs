//! What the observers (the control socket, the metrics endpoint, the probes
//! the control socket runs) read of a running proxy, and how an answer is
//! written: one place they all import, none of them importing another.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ic_proxy_core::protocol::Dialect;
use ic_proxy_core::status::now_ms;
use ic_proxy_core::tls::cert_info::format_utc;
use ic_proxy_core::tls::CertInfo;
use ic_proxy_core::{
    BackendSocket, PeerTraffic, ProxySettings, RuntimeConfig, StatusBoard, StatusSnapshot,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Time a client has to take each part of the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

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
                    traffic: p.traffic,
                    last_error: p.last_error.clone(),
                    protection: p.protection.clone(),
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
                    traffic: PeerTraffic::default(),
                    last_error: format!(
                        "this instance's dbid {} is not in the address map",
                        self.dbid
                    ),
                    protection: String::new(),
                })
                .collect(),
        };
        Report {
            pid: self.pid,
            dbid: self.dbid,
            content: me.map(|e| e.content),
            tls: config.tls.mode.name(),
            certificate: config.tls.material.as_ref().map(|m| m.identity.clone()),
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
    /// TLS on peer links: off, on or require.
    pub tls: &'static str,
    /// This proxy's certificate in force, if it has one.
    pub certificate: Option<CertInfo>,
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
    /// All 0 for an entry shown while this instance is not in the map
    /// (`since_ms` 0: never).
    pub traffic: PeerTraffic,
    pub last_error: String,
    /// How the link is protected (empty before the first link).
    pub protection: String,
}

impl Report {
    /// Seconds since the proxy started.
    pub fn uptime_secs(&self) -> f64 {
        self.now_ms.saturating_sub(self.snap.totals.started_ms) as f64 / 1000.0
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
            .field("started_ms", s.totals.started_ms)
            .field("now_ms", self.now_ms)
            .field("uptime_s", format!("{:.3}", self.uptime_secs()))
            .field("map_generation", s.totals.map_generation)
            .field("logical_connections", s.totals.sessions_open)
            .field("logical_connections_total", s.totals.sessions_total)
            .field("early_cache_bytes", s.totals.early_cache_bytes)
            .field("early_dropped_connections", s.totals.early_dropped_conns)
            .field("early_dropped_bytes", s.totals.early_dropped_bytes)
            .field("rejected_connections", s.totals.rejected_connections)
            .field("dropped_packets", s.totals.dropped_packets)
            .field("flow_violations", s.totals.flow_violations)
            .field("auth_failures", s.totals.auth_failures)
            .field("socket_takeovers", s.totals.socket_takeovers)
            .field("fd_soft_limit", opt(s.totals.fd_soft_limit))
            .field("fd_hard_limit", opt(s.totals.fd_hard_limit))
            .field("tls", self.tls)
            .field(
                "tls_certificate",
                self.certificate.as_ref().map_or("", |c| c.subject.as_str()),
            )
            .field(
                "tls_certificate_expires",
                self.certificate
                    .as_ref()
                    .map_or(String::new(), |c| format_utc(c.not_after)),
            );
        let mut out = vec![proxy];
        for r in &self.rows {
            let mut peer = Record::new("peer");
            peer.field("dbid", r.dbid)
                .field("content", r.content)
                .field("address", &r.address)
                .field("port", r.port)
                .field("state", r.state)
                .field("since_ms", opt(r.traffic.since_ms))
                .field("bytes_in", r.traffic.bytes_in)
                .field("bytes_out", r.traffic.bytes_out)
                .field("packets_in", r.traffic.packets_in)
                .field("packets_out", r.traffic.packets_out)
                .field("logical_connections", r.traffic.logical_conns)
                .field("cached_bytes", r.traffic.cached_bytes)
                .field("drops", r.traffic.drops)
                .field("reconnects", r.traffic.reconnects)
                .field("protection", &r.protection)
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

/// Writes an answer's records, each write bounded by [`WRITE_TIMEOUT`].
pub struct AnswerWriter<'a, W> {
    write: &'a mut W,
}

impl<'a, W: AsyncWriteExt + Unpin> AnswerWriter<'a, W> {
    pub fn new(write: &'a mut W) -> Self {
        AnswerWriter { write }
    }

    pub async fn records(&mut self, records: &[Record]) -> io::Result<()> {
        let mut text = String::new();
        for r in records {
            text.push_str(&r.encode());
        }
        self.bytes(text.as_bytes()).await
    }

    pub async fn end(&mut self) -> io::Result<()> {
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

/// After an observer's listener failed to accept (out of descriptors or
/// the like; the listener itself is fine): logs it and pauses so the loop
/// does not spin. False when `shutdown` came first.
pub async fn pause_after_accept_error(
    what: &str,
    e: &io::Error,
    shutdown: &CancellationToken,
) -> bool {
    log::warn!("ic-proxy: accepting a {what} connection failed: {e}");
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(ACCEPT_PAUSE) => true,
    }
}

/// How long an observer's listener waits after a failed accept.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
