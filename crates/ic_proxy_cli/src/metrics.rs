//! `ic-proxy run --metrics-listen ADDR`: the status figures in the
//! Prometheus text exposition format at `GET /metrics`. A minimal HTTP/1.1
//! responder: one request per connection (its head read within
//! [`HEAD_TIMEOUT`], at most [`HEAD_MAX`] bytes), 200 for `/metrics`, 404
//! for any other path, 405 for any other method, then close. It only reads
//! the status board; it never changes the proxy.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::view::{pause_after_accept_error, ProxyView, Report};

/// Largest request head read.
pub const HEAD_MAX: usize = 8192;
/// Time a client has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once; another connection is closed at once.
pub const MAX_METRICS_CONNECTIONS: usize = 16;

/// The bound metrics listener; [`MetricsServer::spawn`] serves it.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
}

impl MetricsServer {
    pub async fn bind(addr: SocketAddr) -> io::Result<MetricsServer> {
        Ok(MetricsServer {
            listener: TcpListener::bind(addr).await?,
        })
    }

    /// Serves until `shutdown`.
    pub fn spawn(
        self,
        view: Arc<ProxyView>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(serve(self.listener, view, shutdown))
    }
}

async fn serve(listener: TcpListener, view: Arc<ProxyView>, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        log::info!("ic-proxy: metrics at http://{addr}/metrics");
    }
    let slots = Arc::new(Semaphore::new(MAX_METRICS_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                // Past the cap the connection closes when `stream` drops.
                if let Ok(slot) = slots.clone().try_acquire_owned() {
                    let (view, stop) = (view.clone(), shutdown.clone());
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = respond(stream, &view) => {}
                        }
                        drop(slot);
                    });
                }
            }
            Err(e) => {
                if !pause_after_accept_error("metrics", &e, &shutdown).await {
                    return;
                }
            }
        }
    }
}

async fn respond(mut stream: TcpStream, view: &ProxyView) {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Ok(Some(head)) => head,
        // Nothing sensible to answer: close.
        _ => return,
    };
    let (status, body) = route(&head, view);
    let is_head = head.starts_with("HEAD ");
    let content_type = if status == "200 OK" {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !is_head {
        response.push_str(&body);
    }
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, write).await;
}

/// The request head up to its blank line; None when it is longer than
/// [`HEAD_MAX`], not text or cut short.
async fn read_head(stream: &mut (impl AsyncReadExt + Unpin)) -> Option<String> {
    let mut buf = vec![0u8; HEAD_MAX];
    let mut len = 0;
    loop {
        let seen = &buf[..len];
        if let Some(end) = find(seen, b"\r\n\r\n").or_else(|| find(seen, b"\n\n")) {
            return String::from_utf8(buf[..end].to_vec()).ok();
        }
        if len == HEAD_MAX {
            return None;
        }
        match stream.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => len += n,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// (status line, body) for a request head.
fn route(head: &str, view: &ProxyView) -> (&'static str, String) {
    let mut words = head.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", render(&view.report())),
        ("GET" | "HEAD", _) => ("404 Not Found", "only /metrics is served here\n".into()),
        _ => (
            "405 Method Not Allowed",
            "only GET /metrics is served here\n".into(),
        ),
    }
}

/// The report in the Prometheus text exposition format (version 0.0.4).
pub fn render(r: &Report) -> String {
    let s = &r.snap;
    let mut out = String::with_capacity(4096 + r.rows.len() * 1536);
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let one = |v: u64| vec![(String::new(), v as f64)];
    let content = r.content.map_or(String::new(), |c| c.to_string());
    family(
        "ic_proxy_info",
        "gauge",
        "This proxy: its dbid, content (empty while its dbid is not in the map), dialect and pid; always 1.",
        &[(
            format!(
                "{{dbid=\"{}\",content=\"{content}\",dialect=\"{}\",pid=\"{}\"}}",
                r.dbid, r.dialect, r.pid
            ),
            1.0,
        )],
    );
    family(
        "ic_proxy_start_time_seconds",
        "gauge",
        "When the proxy started, in seconds since the Unix epoch.",
        &[(String::new(), s.totals.started_ms as f64 / 1000.0)],
    );
    family(
        "ic_proxy_uptime_seconds",
        "gauge",
        "Seconds since the proxy started.",
        &[(String::new(), r.uptime_secs())],
    );
    if let Some(c) = &r.certificate {
        family(
            "ic_proxy_tls_certificate_expiry_timestamp_seconds",
            "gauge",
            "When this proxy's TLS certificate (the one in force) expires, in seconds since the Unix epoch; absent without one.",
            &[(String::new(), c.not_after as f64)],
        );
    }
    let up = |l: &(&str, String)| if l.0 == "up" { 1 } else { 0 };
    family(
        "ic_proxy_peer_listener_up",
        "gauge",
        "1 while the peer listener accepts links, 0 otherwise.",
        &one(up(&s.peer_listener)),
    );
    family(
        "ic_proxy_backend_socket_up",
        "gauge",
        "1 while the backend socket accepts backends, 0 otherwise.",
        &one(up(&s.backend_listener)),
    );
    family(
        "ic_proxy_map_generation",
        "gauge",
        "Reloads applied since start.",
        &one(s.totals.map_generation),
    );
    family(
        "ic_proxy_logical_connections",
        "gauge",
        "Logical connections open now.",
        &one(s.totals.sessions_open),
    );
    family(
        "ic_proxy_logical_connections_total",
        "counter",
        "Logical connections opened since start.",
        &one(s.totals.sessions_total),
    );
    family(
        "ic_proxy_early_cache_bytes",
        "gauge",
        "Bytes of packets waiting for a receiver that has not connected yet.",
        &one(s.totals.early_cache_bytes),
    );
    family(
        "ic_proxy_early_dropped_connections_total",
        "counter",
        "Logical connections whose early packets were dropped (cache full or expired).",
        &one(s.totals.early_dropped_conns),
    );
    family(
        "ic_proxy_early_dropped_bytes_total",
        "counter",
        "Bytes of early packets dropped.",
        &one(s.totals.early_dropped_bytes),
    );
    family(
        "ic_proxy_rejected_connections_total",
        "counter",
        "Connections dropped for malformed or hostile input, or refused over a cap.",
        &one(s.totals.rejected_connections),
    );
    family(
        "ic_proxy_dropped_packets_total",
        "counter",
        "Packets dropped because nobody could take them.",
        &one(s.totals.dropped_packets),
    );
    family(
        "ic_proxy_flow_violations_total",
        "counter",
        "Flow-control rules broken by peers.",
        &one(s.totals.flow_violations),
    );
    family(
        "ic_proxy_auth_failures_total",
        "counter",
        "Peer links refused because authentication failed.",
        &one(s.totals.auth_failures),
    );
    family(
        "ic_proxy_socket_takeovers_total",
        "counter",
        "Times the backend socket's path was taken back from another process (the built-in proxy).",
        &one(s.totals.socket_takeovers),
    );
    if s.totals.fd_soft_limit != 0 {
        family(
            "ic_proxy_fd_soft_limit",
            "gauge",
            "The proxy's open files limit (soft, raised to the hard limit at start).",
            &one(s.totals.fd_soft_limit),
        );
    }
    if s.totals.fd_hard_limit != 0 {
        family(
            "ic_proxy_fd_hard_limit",
            "gauge",
            "The proxy's hard open files limit.",
            &one(s.totals.fd_hard_limit),
        );
    }

    // Per map entry. Only the state series carries the state, one series
    // per state (1 for the current one): a counter labelled with a state
    // would restart from zero, for Prometheus, at every state change.
    let peer = |dbid: u16, content: i16| format!("dbid=\"{dbid}\",content=\"{content}\"");
    let states = [
        "self",
        "connecting",
        "connected",
        "down",
        "unlinked",
        crate::view::STATE_NOT_IN_MAP,
    ];
    let mut samples: Vec<(String, f64)> = Vec::new();
    for row in &r.rows {
        for st in states {
            let v = if row.state == st { 1.0 } else { 0.0 };
            samples.push((
                format!("{{{},state=\"{st}\"}}", peer(row.dbid, row.content)),
                v,
            ));
        }
    }
    family(
        "ic_proxy_peer_state",
        "gauge",
        "The state of the link to each map entry: 1 for its current state, 0 for the others.",
        &samples,
    );
    type Field = fn(&crate::view::PeerRow) -> f64;
    let per_peer: [(&str, &str, &str, Field); 9] = [
        (
            "ic_proxy_peer_state_since_seconds",
            "gauge",
            "When the link entered its current state, in seconds since the Unix epoch.",
            |p| p.traffic.since_ms as f64 / 1000.0,
        ),
        (
            "ic_proxy_peer_bytes_in_total",
            "counter",
            "Bytes received from the peer.",
            |p| p.traffic.bytes_in as f64,
        ),
        (
            "ic_proxy_peer_bytes_out_total",
            "counter",
            "Bytes sent to the peer.",
            |p| p.traffic.bytes_out as f64,
        ),
        (
            "ic_proxy_peer_packets_in_total",
            "counter",
            "Packets received from the peer.",
            |p| p.traffic.packets_in as f64,
        ),
        (
            "ic_proxy_peer_packets_out_total",
            "counter",
            "Packets sent to the peer.",
            |p| p.traffic.packets_out as f64,
        ),
        (
            "ic_proxy_peer_logical_connections",
            "gauge",
            "Logical connections open with the peer.",
            |p| p.traffic.logical_conns as f64,
        ),
        (
            "ic_proxy_peer_cached_bytes",
            "gauge",
            "DATA waiting in this proxy to be sent to the peer.",
            |p| p.traffic.cached_bytes as f64,
        ),
        (
            "ic_proxy_peer_drops_total",
            "counter",
            "Logical connections with the peer this proxy dropped.",
            |p| p.traffic.drops as f64,
        ),
        (
            "ic_proxy_peer_reconnects_total",
            "counter",
            "Times the link to the peer was made again.",
            |p| p.traffic.reconnects as f64,
        ),
    ];
    for (name, kind, help, value) in per_peer {
        let samples: Vec<(String, f64)> = r
            .rows
            .iter()
            .map(|row| (format!("{{{}}}", peer(row.dbid, row.content)), value(row)))
            .collect();
        family(name, kind, help, &samples);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_head_is_bounded() {
        let mut r = &b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nbody"[..];
        assert_eq!(
            read_head(&mut r).await.as_deref(),
            Some("GET /metrics HTTP/1.1\r\nHost: x")
        );
        let long = vec![b'a'; HEAD_MAX + 1];
        let mut r = &long[..];
        assert_eq!(read_head(&mut r).await, None);
        let mut r = &b"GET /metrics HTTP/1.1\r\n"[..];
        assert_eq!(read_head(&mut r).await, None, "cut short");
    }
}
