//! `ping` on the control socket: the proxy probes its peers as
//! `ic_proxy_ping()` does from a backend. Each probe is a logical connection
//! to this proxy's own backend socket with session id
//! [`PROBE_SESSION_ID`] and remote pid 0, which the peer's proxy answers by
//! echoing the DATA and the BYE. It adds nothing to the core: to the proxy
//! it is one more backend.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use ic_proxy_client::{ClientOptions, ConnSpec, Endpoint, LogicalConn, RecvItem};
use ic_proxy_core::address_map::PeerAddr;
use ic_proxy_core::PROBE_SESSION_ID;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::view::{AnswerWriter, ProxyView, Record};

/// Bound of one probe, as `ic_proxy_ping()`'s.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Probes in flight at once: a large map is probed in waves.
const PROBES_AT_ONCE: usize = 32;
/// The probe's command id: a new logical connection key every time.
static PROBE_SEQ: AtomicU32 = AtomicU32::new(1);

/// The answer to one probed entry.
#[derive(Debug)]
struct PingRow {
    dbid: u16,
    /// None: the dbid is not in the map.
    content: Option<i16>,
    rtt: Result<Duration, String>,
}

impl PingRow {
    fn fail(dbid: u16, content: Option<i16>, why: impl Into<String>) -> PingRow {
        PingRow {
            dbid,
            content,
            rtt: Err(why.into()),
        }
    }

    fn record(&self) -> Record {
        let mut r = Record::new("ping");
        r.field("dbid", self.dbid).field(
            "content",
            self.content.map(|c| c.to_string()).unwrap_or_default(),
        );
        match &self.rtt {
            Ok(rtt) => r
                .field("ok", "true")
                .field("rtt_ms", format!("{:.3}", rtt.as_secs_f64() * 1000.0))
                .field("error", ""),
            Err(e) => r.field("ok", "false").field("rtt_ms", "").field("error", e),
        };
        r
    }
}

/// Probes `which` (one dbid, or every peer this instance exchanges traffic
/// with) and writes one `ping` record per entry as its probe ends.
pub async fn answer<W: AsyncWriteExt + Unpin>(
    view: &ProxyView,
    which: Option<u16>,
    out: &mut AnswerWriter<'_, W>,
) -> std::io::Result<()> {
    let (ready, probes) = plan(view, which);
    for row in &ready {
        out.records(&[row.record()]).await?;
    }
    let Some((socket, opts, me, probes)) = probes else {
        return Ok(());
    };
    let wave = Arc::new(Semaphore::new(PROBES_AT_ONCE));
    // Dropped with the connection: the probes still running are aborted.
    let mut running = JoinSet::new();
    for peer in probes {
        let (socket, opts, wave) = (socket.clone(), opts.clone(), wave.clone());
        running.spawn(async move {
            let _turn = wave.acquire_owned().await;
            let remote = Endpoint {
                content: peer.content,
                dbid: peer.dbid,
                pid: 0,
            };
            PingRow {
                dbid: peer.dbid,
                content: Some(peer.content),
                rtt: probe(&socket, &opts, me, remote).await,
            }
        });
    }
    while let Some(done) = running.join_next().await {
        if let Ok(row) = done {
            out.records(&[row.record()]).await?;
        }
    }
    Ok(())
}

type Probes = (PathBuf, ClientOptions, Endpoint, Vec<PeerAddr>);

/// The rows known without a probe, and what to probe through which socket.
fn plan(view: &ProxyView, which: Option<u16>) -> (Vec<PingRow>, Option<Probes>) {
    let config = view.config();
    let map = &config.map;
    let me = view.dbid;
    let targets: Vec<PeerAddr> = match which {
        Some(d) => match map.get(d) {
            Some(e) => vec![e.clone()],
            None => {
                return (
                    vec![PingRow::fail(
                        d,
                        None,
                        format!("dbid {d} is not in the address map"),
                    )],
                    None,
                )
            }
        },
        None if map.get(me).is_some() => map.linked_to(me),
        // Not in the map: every entry gets the reason below.
        None => map.entries().to_vec(),
    };
    let Some(mine) = map.get(me).cloned() else {
        let why = format!("this instance's dbid {me} is not in the address map");
        let rows = targets
            .iter()
            .map(|t| PingRow::fail(t.dbid, Some(t.content), why.clone()))
            .collect();
        return (rows, None);
    };
    let socket = match view.backend_socket() {
        Ok(s) => s,
        Err(why) => {
            let why = format!("this proxy serves no backend socket: {why}");
            let rows = targets
                .iter()
                .map(|t| PingRow::fail(t.dbid, Some(t.content), why.clone()))
                .collect();
            return (rows, None);
        }
    };
    let snap = view.status.snapshot();
    let mut ready = Vec::new();
    let mut probes = Vec::new();
    for t in targets {
        let fail = |why: String| PingRow::fail(t.dbid, Some(t.content), why);
        if t.dbid == me {
            ready.push(fail("this is this instance's own entry".into()));
        } else if t.content == mine.content {
            ready.push(fail(format!(
                "no link: content {} is this instance's own content (primary/mirror or coordinator/standby)",
                t.content
            )));
        } else {
            match snap.peers.iter().find(|p| p.addr.dbid == t.dbid) {
                Some(p) if p.state == ic_proxy_core::PeerState::Connected => probes.push(t),
                Some(p) if p.last_error.is_empty() => {
                    ready.push(fail(format!("peer is {}", p.state.name())))
                }
                Some(p) => ready.push(fail(format!(
                    "peer is {}: {}",
                    p.state.name(),
                    p.last_error
                ))),
                None => ready.push(fail(
                    "the proxy does not know this peer yet (reload in progress?)".into(),
                )),
            }
        }
    }
    let opts = ClientOptions {
        dialect: view.dialect,
        max_packet_size: view.max_packet_size,
        connect_deadline: PROBE_TIMEOUT,
        ..ClientOptions::default()
    };
    // A backend of this instance; the proxy's own pid, never 0 (pid 0 at
    // both ends is a probe between the proxies themselves).
    let local = Endpoint {
        content: mine.content,
        dbid: me,
        pid: view.pid as i32,
    };
    (ready, Some((socket, opts, local, probes)))
}

/// One probe: HELLO, one DATA out and back, BYE out and back, all within
/// [`PROBE_TIMEOUT`]; the round trip of the DATA.
async fn probe(
    socket: &std::path::Path,
    opts: &ClientOptions,
    local: Endpoint,
    remote: Endpoint,
) -> Result<Duration, String> {
    let spec = ConnSpec {
        session_id: PROBE_SESSION_ID,
        command_id: PROBE_SEQ.fetch_add(1, Relaxed),
        send_slice: 0,
        recv_slice: 0,
        local,
        remote,
    };
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let steps = async {
        let mut conn = LogicalConn::connect(socket, spec, opts)
            .await
            .map_err(|e| format!("cannot reach the backend socket {}: {e}", socket.display()))?;
        let nonce = (u64::from(spec.command_id) << 32 | u64::from(local.pid as u32)).to_ne_bytes();
        let sent = Instant::now();
        conn.send_packet(&nonce)
            .await
            .map_err(|e| format!("sending the probe: {e}"))?;
        let rtt = match conn.recv().await {
            Ok(RecvItem::Packet(p)) if p[..] == nonce[..] => sent.elapsed(),
            Ok(RecvItem::Packet(_)) => return Err("the echo does not match the probe".into()),
            Ok(_) => return Err("the connection ended without an echo".into()),
            Err(e) => return Err(format!("waiting for the echo: {e}")),
        };
        // BYE out; the peer's BYE comes back as end of stream.
        conn.finish().await.map_err(|e| format!("closing: {e}"))?;
        match conn.recv().await {
            Ok(RecvItem::Eof) => Ok(rtt),
            Ok(_) => Err("unexpected data after the echo".into()),
            Err(e) => Err(format!("waiting for the closing BYE: {e}")),
        }
    };
    match tokio::time::timeout_at(deadline, steps).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}
