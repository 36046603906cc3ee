//! `ic_proxy_ping()`: a probe through the real mesh. This backend connects
//! to its local proxy as an interconnect backend does, with a probe key; the
//! local proxy sends the packet over the peer link; the peer proxy echoes it
//! back. What the seed document tests with PGOPTIONS and a user table, with
//! nothing but the proxies involved.
//!
//! The backend never blocks in a system call for long: the socket is
//! non-blocking and every wait is a `poll` of at most [`POLL_SLICE`], after
//! which a query cancel or termination is served and an interrupted call
//! (a SIGHUP from `pg_reload_conf()`, say) is simply repeated, all within
//! the probe's deadline.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::{Duration, Instant};

use ic_proxy_core::address_map::PeerAddr;
use ic_proxy_core::protocol::{Dialect, Endpoint, Header, LogicalConnKey, PacketType};
use ic_proxy_core::{socket_path, PROBE_SESSION_ID};
use pgrx::prelude::*;

use crate::api::status::not_running_reason;
use crate::{errors, gucs, shmem};

const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest a probe waits without looking for a query cancel.
const POLL_SLICE: Duration = Duration::from_millis(50);
static PROBE_SEQ: AtomicU32 = AtomicU32::new(1);

/// Probes one peer (`dbid`) or every peer this instance exchanges traffic
/// with: this backend -> local proxy -> peer proxy -> back.
#[pg_extern(volatile, parallel_unsafe)]
fn ic_proxy_ping(
    dbid: default!(Option<i32>, "NULL"),
) -> Result<
    TableIterator<
        'static,
        (
            name!(dbid, i16),
            name!(content, i16),
            name!(ok, bool),
            name!(rtt_ms, Option<f64>),
            name!(error, Option<String>),
        ),
    >,
    pgrx::pg_sys::panic::ErrorReport,
> {
    if let Some(d) = dbid {
        if !(1..=i32::from(i16::MAX)).contains(&d) {
            return Err(errors::error(
                PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
                format!("dbid {d} is outside 1..{}", i16::MAX),
                "Give the dbid of an entry of ic_proxy.addresses (see ic_proxy_addresses()), or no argument to ping every peer.",
            ));
        }
    }
    let map = gucs::addresses();
    let (running, last_error) = shmem::with(|a| (a.running, a.last_error()));
    let me = match gucs::dbid() {
        Some(me) if running => me,
        // Whatever the map says, nothing can be probed: say why.
        _ => {
            return Ok(TableIterator::new(error_rows(
                &map,
                dbid,
                &not_running_reason(&last_error),
            )))
        }
    };
    let Some(my_entry) = map.get(me).cloned() else {
        return Ok(TableIterator::new(error_rows(
            &map,
            dbid,
            &format!("this instance's dbid {me} is not in the address map"),
        )));
    };
    let targets: Vec<PeerAddr> = match dbid {
        Some(d) => match map.entries().iter().find(|e| i32::from(e.dbid) == d) {
            Some(e) => vec![e.clone()],
            None => {
                return Ok(TableIterator::new(vec![(
                    d as i16,
                    -2,
                    false,
                    None,
                    Some(format!("dbid {d} is not in ic_proxy.addresses")),
                )]))
            }
        },
        None => map.linked_to(me),
    };
    let states = shmem::with(|a| {
        a.rows()
            .iter()
            .map(|r| (r.dbid, r.state_name(), r.last_error()))
            .collect::<Vec<_>>()
    });
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
    Ok(TableIterator::new(rows))
}

fn error_rows(
    map: &ic_proxy_core::address_map::AddressMap,
    dbid: Option<i32>,
    why: &str,
) -> Vec<(i16, i16, bool, Option<f64>, Option<String>)> {
    map.entries()
        .iter()
        .filter(|e| dbid.is_none_or(|d| i32::from(e.dbid) == d))
        .map(|e| (e.dbid as i16, e.content, false, None, Some(why.to_string())))
        .collect()
}

/// One probe: HELLO, one DATA out and back, BYE out and back, all within
/// [`PROBE_TIMEOUT`].
fn probe(socket: &Path, d: Dialect, me: Endpoint, peer: Endpoint) -> Result<Duration, String> {
    let key = LogicalConnKey {
        local: me,
        remote: peer,
        session_id: PROBE_SESSION_ID,
        command_id: PROBE_SEQ.fetch_add(1, Relaxed),
        send_slice: 0,
        recv_slice: 0,
    };
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let io = |what: &str, e: std::io::Error| {
        if e.kind() == ErrorKind::TimedOut {
            format!("{what}: no answer within {PROBE_TIMEOUT:?}")
        } else {
            format!("{what}: {e}")
        }
    };
    let mut s = connect(socket, deadline).map_err(|e| {
        io(
            &format!("cannot reach the local proxy at {}", socket.display()),
            e,
        )
    })?;
    s.set_nonblocking(true).map_err(|e| io("socket", e))?;
    write_all(
        &mut s,
        &key.header(PacketType::Hello, d, 0).encode(d),
        deadline,
    )
    .map_err(|e| io("sending HELLO", e))?;
    let mut ack = vec![0u8; d.header_len()];
    read_exact(&mut s, &mut ack, deadline).map_err(|e| io("waiting for HELLO ACK", e))?;
    let ack = Header::decode(&ack, d, 0).map_err(|e| format!("bad HELLO ACK: {e}"))?;
    if ack.ptype != PacketType::HelloAck {
        return Err(format!("expected HELLO ACK, got {}", ack.ptype));
    }
    let stamp = Instant::now();
    let nonce = u64::from(key.command_id) << 32 | u64::from(me.pid as u32);
    let mut packet = Vec::with_capacity(12);
    packet.extend_from_slice(&12u32.to_ne_bytes());
    packet.extend_from_slice(&nonce.to_ne_bytes());
    write_all(&mut s, &packet, deadline).map_err(|e| io("sending the probe", e))?;
    let mut echo = [0u8; 12];
    read_exact(&mut s, &mut echo, deadline).map_err(|e| io("waiting for the echo", e))?;
    let rtt = stamp.elapsed();
    if echo[..] != packet[..] {
        return Err("the echo does not match the probe".into());
    }
    // BYE out; the peer's BYE comes back as end of stream.
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| io("closing", e))?;
    let mut rest = [0u8; 16];
    match read_some(&mut s, &mut rest, deadline) {
        Ok(0) => Ok(rtt),
        Ok(_) => Err("unexpected data after the echo".into()),
        Err(e) => Err(io("waiting for the closing BYE", e)),
    }
}

/// Connects, repeating a connect a signal interrupted; a Unix socket
/// connect only waits while the listener's backlog is full.
fn connect(socket: &Path, deadline: Instant) -> std::io::Result<UnixStream> {
    loop {
        check_for_interrupts!();
        match UnixStream::connect(socket) {
            Err(e) if e.kind() == ErrorKind::Interrupted && Instant::now() < deadline => continue,
            r => return r,
        }
    }
}

/// Waits until `s` is ready for `events` (POLLIN or POLLOUT), serving query
/// cancels every [`POLL_SLICE`] and repeating a poll a signal interrupted;
/// TimedOut at `deadline`.
fn wait_ready(s: &UnixStream, events: libc::c_short, deadline: Instant) -> std::io::Result<()> {
    loop {
        check_for_interrupts!();
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        let mut pfd = libc::pollfd {
            fd: s.as_raw_fd(),
            events,
            revents: 0,
        };
        let slice = left.min(POLL_SLICE).as_millis().max(1) as libc::c_int;
        // SAFETY: one pollfd on the stack, for a descriptor `s` owns.
        let n = unsafe { libc::poll(&mut pfd, 1, slice) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n > 0 {
            // Readable, writable, or an error/hang-up the next call reports.
            return Ok(());
        }
    }
}

/// One read of at least a byte (0: end of stream).
fn read_some(s: &mut UnixStream, buf: &mut [u8], deadline: Instant) -> std::io::Result<usize> {
    loop {
        match s.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => wait_ready(s, libc::POLLIN, deadline)?,
            Err(e) => return Err(e),
        }
    }
}

fn read_exact(s: &mut UnixStream, mut buf: &mut [u8], deadline: Instant) -> std::io::Result<()> {
    while !buf.is_empty() {
        match read_some(s, buf, deadline)? {
            0 => return Err(ErrorKind::UnexpectedEof.into()),
            n => buf = &mut buf[n..],
        }
    }
    Ok(())
}

fn write_all(s: &mut UnixStream, mut buf: &[u8], deadline: Instant) -> std::io::Result<()> {
    while !buf.is_empty() {
        match s.write(buf) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => wait_ready(s, libc::POLLOUT, deadline)?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
