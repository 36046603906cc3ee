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

use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::ping;
use crate::view::{pause_after_accept_error, AnswerWriter, ProxyView, Record};

/// Longest request line, newline included.
pub const REQUEST_MAX: usize = 256;
/// Time a client has to send its request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Control connections served at once; one more is told so and closed.
pub const MAX_CONTROL_CONNECTIONS: usize = 8;

/// The control socket of the proxy of the server on `port`: named from the
/// port only, so it stays the same across postmaster restarts (the backend
/// socket's name has the postmaster's pid).
pub fn control_path(socket_dir: &Path, port: u16) -> PathBuf {
    socket_dir.join(format!(".s.PGSQL.ic_proxy.{port}.control"))
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
                if !pause_after_accept_error("control", &e, &shutdown).await {
                    return;
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
    let mut out = AnswerWriter::new(&mut write);
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
    let mut out = AnswerWriter::new(&mut write);
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
