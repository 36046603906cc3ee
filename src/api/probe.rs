//! `ic_proxy_ping()`: a probe through the real mesh. This backend connects
//! to its local proxy as an interconnect backend does, with a probe key; the
//! local proxy sends the packet over the peer link; the peer proxy echoes it
//! back. What the seed document tests with PGOPTIONS and a user table, with
//! nothing but the proxies involved.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::{Duration, Instant};

use ic_proxy_core::config::PeerAddr;
use ic_proxy_core::protocol::{Dialect, Endpoint, Header, LogicalConnKey, PacketType};
use ic_proxy_core::{socket_path, PROBE_SESSION_ID};
use pgrx::prelude::*;

use crate::{gucs, shmem};

const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
static PROBE_SEQ: AtomicU32 = AtomicU32::new(1);

/// Probes one peer (`dbid`) or every peer this instance exchanges traffic
/// with: this backend -> local proxy -> peer proxy -> back.
#[pg_extern(volatile, parallel_unsafe)]
fn ic_proxy_ping(
    dbid: default!(Option<i32>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(dbid, i16),
        name!(content, i16),
        name!(ok, bool),
        name!(rtt_ms, Option<f64>),
        name!(error, Option<String>),
    ),
> {
    let map = gucs::addresses();
    let Some(me) = gucs::dbid() else {
        return TableIterator::new(error_rows(
            &map,
            dbid,
            "the proxy is off: ic_proxy.dbid is not set",
        ));
    };
    let Some(my_entry) = map.get(me).cloned() else {
        return TableIterator::new(error_rows(
            &map,
            dbid,
            "this instance's dbid is not in ic_proxy.addresses",
        ));
    };
    let targets: Vec<PeerAddr> = match dbid {
        Some(d) => match map.entries().iter().find(|e| i32::from(e.dbid) == d) {
            Some(e) => vec![e.clone()],
            None => {
                return TableIterator::new(vec![(
                    d as i16,
                    -2,
                    false,
                    None,
                    Some(format!("dbid {d} is not in ic_proxy.addresses")),
                )])
            }
        },
        // Every entry traffic can flow to: not ourselves, not our own content.
        None => map
            .entries()
            .iter()
            .filter(|e| e.dbid != me && e.content != my_entry.content)
            .cloned()
            .collect(),
    };
    let states = shmem::with(|a| {
        a.rows()
            .iter()
            .map(|r| (r.dbid, r.state_name(), r.last_error()))
            .collect::<Vec<_>>()
    });
    let running = shmem::with(|a| a.running);
    let (port, pm_pid, my_pid) = unsafe {
        (
            pg_sys::PostPortNumber as u16,
            pg_sys::PostmasterPid as u32,
            pg_sys::MyProcPid,
        )
    };
    let socket = socket_path(&gucs::socket_dir(), port, pm_pid);
    let dialect = gucs::dialect();
    let mut rows = Vec::with_capacity(targets.len());
    for t in targets {
        check_for_interrupts!();
        let fail = |e: String| (t.dbid as i16, t.content, false, None, Some(e));
        if t.dbid == me {
            rows.push(fail("this is this instance's own entry".into()));
            continue;
        }
        if t.content == my_entry.content {
            rows.push(fail(format!(
                "no link: content {} is this instance's own content (primary/mirror or coordinator/standby)",
                t.content
            )));
            continue;
        }
        if !running {
            rows.push(fail(
                "the proxy worker is not running (see the server log)".into(),
            ));
            continue;
        }
        match states.iter().find(|(d, _, _)| *d == t.dbid) {
            Some((_, "connected", _)) => {}
            Some((_, state, err)) => {
                let why = if err.is_empty() {
                    String::new()
                } else {
                    format!(": {err}")
                };
                rows.push(fail(format!("peer is {state}{why}")));
                continue;
            }
            None => {
                rows.push(fail(
                    "the proxy does not know this peer yet (reload in progress?)".into(),
                ));
                continue;
            }
        }
        let me_ep = Endpoint {
            content: my_entry.content,
            dbid: me,
            pid: my_pid,
        };
        let peer_ep = Endpoint {
            content: t.content,
            dbid: t.dbid,
            pid: 0,
        };
        match probe(&socket, dialect, me_ep, peer_ep) {
            Ok(rtt) => rows.push((
                t.dbid as i16,
                t.content,
                true,
                Some(rtt.as_secs_f64() * 1000.0),
                None,
            )),
            Err(e) => rows.push(fail(e)),
        }
    }
    TableIterator::new(rows)
}

fn error_rows(
    map: &ic_proxy_core::config::AddressMap,
    dbid: Option<i32>,
    why: &str,
) -> Vec<(i16, i16, bool, Option<f64>, Option<String>)> {
    map.entries()
        .iter()
        .filter(|e| dbid.is_none_or(|d| i32::from(e.dbid) == d))
        .map(|e| (e.dbid as i16, e.content, false, None, Some(why.to_string())))
        .collect()
}

/// One probe: HELLO, one DATA out and back, BYE out and back.
fn probe(socket: &Path, d: Dialect, me: Endpoint, peer: Endpoint) -> Result<Duration, String> {
    let key = LogicalConnKey {
        local: me,
        remote: peer,
        session_id: PROBE_SESSION_ID,
        command_id: PROBE_SEQ.fetch_add(1, Relaxed),
        send_slice: 0,
        recv_slice: 0,
    };
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let mut s = UnixStream::connect(socket).map_err(|e| {
        io(
            &format!("cannot reach the local proxy at {}", socket.display()),
            e,
        )
    })?;
    s.set_read_timeout(Some(PROBE_TIMEOUT))
        .map_err(|e| io("socket", e))?;
    s.set_write_timeout(Some(PROBE_TIMEOUT))
        .map_err(|e| io("socket", e))?;
    s.write_all(&key.header(PacketType::Hello, d, 0).encode(d))
        .map_err(|e| io("sending HELLO", e))?;
    let mut ack = vec![0u8; d.header_len()];
    s.read_exact(&mut ack)
        .map_err(|e| io("waiting for HELLO ACK", e))?;
    let ack = Header::decode(&ack, d, 0).map_err(|e| format!("bad HELLO ACK: {e}"))?;
    if ack.ptype != PacketType::HelloAck {
        return Err(format!("expected HELLO ACK, got {}", ack.ptype));
    }
    let stamp = Instant::now();
    let nonce = u64::from(key.command_id) << 32 | u64::from(me.pid as u32);
    let mut packet = Vec::with_capacity(12);
    packet.extend_from_slice(&12u32.to_ne_bytes());
    packet.extend_from_slice(&nonce.to_ne_bytes());
    s.write_all(&packet)
        .map_err(|e| io("sending the probe", e))?;
    let mut echo = [0u8; 12];
    s.read_exact(&mut echo).map_err(|e| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            format!("no answer within {PROBE_TIMEOUT:?}")
        } else {
            io("waiting for the echo", e)
        }
    })?;
    let rtt = stamp.elapsed();
    if echo[..] != packet[..] {
        return Err("the echo does not match the probe".into());
    }
    // BYE out; the peer's BYE comes back as end of stream.
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| io("closing", e))?;
    let mut rest = [0u8; 16];
    match s.read(&mut rest) {
        Ok(0) => Ok(rtt),
        Ok(_) => Err("unexpected data after the echo".into()),
        Err(e) => Err(io("waiting for the closing BYE", e)),
    }
}
