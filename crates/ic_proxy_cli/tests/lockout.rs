//! Nobody who can reach the peer port or the backend socket can lock the
//! local backends out. Real `ic-proxy run` processes run under a descriptor
//! limit of 1024 (soft and hard, so raising the soft limit cannot help);
//! the test holds more idle connections than that on the peer port or the
//! backend socket, and a backend must still be answered at once, and
//! served, with its stream intact. Refusals must be logged rate-limited.

mod common;

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;

use std::sync::Once;
use std::thread;
use std::time::{Duration, Instant};

use common::{carry, free_port, instance_command, spec_1_to_2, ProxyProcess, MEGABYTE_PACKETS};
use ic_proxy_client::{ClientError, ClientOptions, ConnSpec, LogicalConn};

/// Bound on every wait; generous because other builds share the 2 cores.
const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);
/// The proxies' descriptor limit, soft and hard.
const PROXY_NOFILE: u64 = 1024;
/// What a backend may wait for its HELLO_ACK (or its refusal) under a flood.
const PROMPT: Duration = Duration::from_secs(1);
/// The proxy's default caps at a limit of 1024: a quarter of it may be in
/// their handshake, 64 per source address (ic_proxy_core::pending).
const PENDING_CAP: usize = PROXY_NOFILE as usize / 4;
/// Lines one LogLimit window may log: its burst and the "N more" line.
const LINES_PER_WINDOW: usize = 10 + 1;

/// The test process holds thousands of sockets: raise its own soft limit
/// to its hard one.
fn raise_own_nofile() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit with a valid, owned struct.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
            r.rlim_cur = r.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
        }
        assert!(
            r.rlim_cur >= 8192,
            "these tests hold ~4,000 sockets at once: they need a hard open-file limit of at least 8192, not {}",
            r.rlim_cur
        );
    });
}

/// `ic-proxy run --addresses MAP --threads 2` for instance `dbid`; with
/// `limited`, under RLIMIT_NOFILE 1024:1024, otherwise with the test's own
/// limit.
fn start(dir: &Path, dbid: u16, map: &str, limited: bool) -> ProxyProcess {
    let (mut cmd, names) = instance_command(dir, dbid, &["--addresses", map, "--threads", "2"]);
    // SAFETY: between fork and exec only setrlimit, which is
    // async-signal-safe, on a struct on this stack.
    unsafe {
        cmd.pre_exec(move || {
            if !limited {
                return Ok(());
            }
            let r = libc::rlimit {
                rlim_cur: PROXY_NOFILE,
                rlim_max: PROXY_NOFILE,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let proxy = ProxyProcess::spawn_named(cmd, names);
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", proxy.child.id())).expect("proc limits");
    let nofile: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files")
        .split_whitespace()
        .collect();
    if limited {
        assert_eq!(nofile[3..5], ["1024", "1024"], "{limits}");
    }
    proxy
}

/// Descriptors the proxy has open now.
fn open_descriptors(p: &ProxyProcess) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", p.child.id()))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Two proxies, dbid 1 (content -1) and dbid 2 (content 0), linked; the
/// first under the 1024 limit, the second too when `both_limited`.
fn mesh(dir: &Path, both_limited: bool) -> (ProxyProcess, ProxyProcess, u16) {
    raise_own_nofile();
    let port1 = free_port();
    let map = format!("1:-1:127.0.0.1:{port1},2:0:127.0.0.1:{}", free_port());
    let mut p1 = start(dir, 1, &map, true);
    let mut p2 = start(dir, 2, &map, both_limited);
    p1.wait_for_log("peer dbid 2 (content 0) connected");
    p2.wait_for_log("peer dbid 1 (content -1) connected");
    (p1, p2, port1)
}

/// Logical connection `session_id` from dbid 1 to dbid 2.
fn spec(session_id: i32) -> ConnSpec {
    // The proxy tells connections apart by command, not by session.
    spec_1_to_2(session_id, session_id as u32)
}

fn options(deadline: Duration) -> ClientOptions {
    ClientOptions {
        connect_deadline: deadline,
        ..ClientOptions::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A backend on `p1` whose HELLO_ACK must come within [`PROMPT`] sends at
/// least 1 MiB to a backend on `p2`, which must receive it intact and in
/// order.
fn stream_a_megabyte(p1: &ProxyProcess, p2: &ProxyProcess, session_id: i32) {
    let spec = spec(session_id);
    runtime().block_on(async {
        let rx = LogicalConn::connect(p2.socket(), spec.reversed(), &options(DEADLINE))
            .await
            .expect("the receiver on proxy 2 connects");
        let started = Instant::now();
        let tx = LogicalConn::connect(p1.socket(), spec, &options(PROMPT)).await;
        let waited = started.elapsed();
        let tx = tx.unwrap_or_else(|e| {
            panic!(
                "the sender on proxy 1 got no HELLO_ACK within {PROMPT:?} ({e}):\n{}",
                p1.log()
            )
        });
        assert!(waited < PROMPT, "HELLO_ACK after {waited:?}");
        eprintln!("lockout: session {session_id}: HELLO_ACK after {waited:?}");

        carry(tx, rx, 7, MEGABYTE_PACKETS, DEADLINE)
            .await
            .unwrap_or_else(|e| panic!("the stream after the HELLO_ACK: {e}"));
    });
}

/// Opens `n` idle TCP connections to `port`; every other one from
/// 127.0.0.1, the rest spread over 127.0.1.1..=127.0.1.100 (all loopback),
/// so both the per-source and the total cap are met.
fn tcp_flood(port: u16, n: usize) -> Vec<TcpStream> {
    let target: SocketAddr = (Ipv4Addr::LOCALHOST, port).into();
    (0..n)
        .map(|i| {
            let source = if i % 2 == 0 {
                Ipv4Addr::LOCALHOST
            } else {
                Ipv4Addr::new(127, 0, 1, (i / 2 % 100) as u8 + 1)
            };
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            s.bind(&SocketAddr::from((source, 0)).into())
                .expect("bind a loopback source address");
            match s.connect_timeout(&target.into(), DEADLINE) {
                Ok(()) => {}
                // Connected, then refused (and reset) before connect saw it.
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
                Err(e) => panic!("flood connection {i}: {e}"),
            }
            s.into()
        })
        .collect()
}

/// Flushes the count of refusals left out of the log: the proxy logs "N
/// more refused connections were not logged" with the first line of a new
/// window, so refusals are provoked (`provoke` opens one more connection the
/// caps refuse) until a summary newer than everything before the call is
/// there. Returns the provoking connections.
fn flush_refusal_summary<T>(p: &mut ProxyProcess, mut provoke: impl FnMut() -> T) -> Vec<T> {
    let before = p.log().matches(SUMMARY).count();
    let mut extra = Vec::new();
    let until = Instant::now() + DEADLINE;
    while p.log().matches(SUMMARY).count() <= before {
        p.assert_running();
        assert!(
            Instant::now() < until,
            "no count of refusals left out:\n{}",
            p.log()
        );
        extra.push(provoke());
        thread::sleep(POLL);
    }
    extra
}

const SUMMARY: &str = " more refused connections were not logged";

/// Asserts that the refusals in `log` were rate-limited and counted: at most
/// one window's worth of lines in any window of a second (two windows can
/// meet within a second on the clock), and the lines logged and the ones
/// counted as left out add up to at least `refused`.
fn assert_refusals_rate_limited(log: &str, refused: usize) {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused") || l.contains("accept"))
        .collect();
    let mut per_second = std::collections::BTreeMap::<&str, usize>::new();
    for l in &lines {
        // `YYYY-MM-DDTHH:MM:SS.mmmZ LEVEL message`
        *per_second.entry(&l[..19]).or_default() += 1;
    }
    for (second, n) in &per_second {
        assert!(
            *n <= 2 * LINES_PER_WINDOW,
            "{n} refusal lines in {second}:\n{log}"
        );
    }
    let logged = lines
        .iter()
        .filter(|l| {
            l.contains("refused peer connection") || l.contains("refused backend connection")
        })
        .count();
    let left_out: usize = lines
        .iter()
        .filter_map(|l| {
            l.split_once(SUMMARY)?
                .0
                .rsplit(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert!(
        logged + left_out >= refused,
        "{logged} refusals logged and {left_out} left out, of at least {refused}:\n{log}"
    );
}

#[test]
fn idle_connections_on_the_peer_port_do_not_lock_out_backends() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p1, p2, port1) = mesh(dir.path(), true);
    stream_a_megabyte(&p1, &p2, 1);

    let flood = tcp_flood(port1, 1500);
    p1.assert_running();
    let held = open_descriptors(&p1);
    stream_a_megabyte(&p1, &p2, 2);
    p1.assert_running();
    let held = held.max(open_descriptors(&p1));
    eprintln!(
        "lockout: peer port flood of {}: proxy 1 holds {held} descriptors",
        flood.len()
    );
    // The caps bound what the flood holds: its descriptors, not 1,500.
    assert!(
        held <= PENDING_CAP + 64,
        "proxy 1 holds {held} descriptors under the flood:\n{}",
        p1.log()
    );
    let extra = flush_refusal_summary(&mut p1, || {
        TcpStream::connect((Ipv4Addr::LOCALHOST, port1)).expect("connect")
    });
    let log = p1.log();
    assert!(log.contains("are already in their handshake"), "{log}");
    // The caps kept it from running out: accept never failed.
    assert!(!log.contains("accepting a"), "{log}");
    // All but PENDING_CAP of the flood (and what flushed the count) refused.
    assert_refusals_rate_limited(&log, flood.len() + extra.len() - PENDING_CAP);
    drop((flood, extra));
}

#[test]
fn idle_connections_on_the_backend_socket_are_shed_and_the_proxy_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p1, p2, _) = mesh(dir.path(), true);

    let flood: Vec<UnixStream> = (0..2000)
        .map(|i| {
            UnixStream::connect(p1.socket()).unwrap_or_else(|e| panic!("flood connection {i}: {e}"))
        })
        .collect();
    p1.assert_running();
    // While the flood holds every handshake slot, a new backend is told at
    // once (its connection closes) instead of waiting for descriptors.
    let started = Instant::now();
    let r = runtime().block_on(LogicalConn::connect(p1.socket(), spec(3), &options(PROMPT)));
    let waited = started.elapsed();
    match r {
        Ok(_) | Err(ClientError::ClosedBeforeAck) => {}
        // Closed before our HELLO was read, which then found no reader.
        Err(ClientError::Io(e))
            if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {}
        Err(e) => panic!(
            "a backend under the flood got {e} after {waited:?}:\n{}",
            p1.log()
        ),
    }
    assert!(waited < PROMPT, "answered after {waited:?}");
    p1.assert_running();
    let socket = p1.socket().to_path_buf();
    let extra = flush_refusal_summary(&mut p1, || UnixStream::connect(&socket).expect("connect"));
    let held = open_descriptors(&p1);
    eprintln!("lockout: backend socket flood of {}: proxy 1 holds {held} descriptors, a new backend answered after {waited:?}", flood.len());
    assert!(
        held <= PENDING_CAP + 64,
        "proxy 1 holds {held} descriptors under the flood:\n{}",
        p1.log()
    );

    let refused = flood.len() + 1 + extra.len() - PENDING_CAP;
    drop((flood, extra));
    // Once the flood is gone the proxy serves backends again: the sender's
    // HELLO_ACK within a second, and its stream.
    let until = Instant::now() + DEADLINE;
    while open_descriptors(&p1) > PENDING_CAP / 4 {
        assert!(Instant::now() < until, "the flood's descriptors stay open");
        thread::sleep(POLL);
    }
    stream_a_megabyte(&p1, &p2, 4);
    p1.assert_running();
    let log = p1.log();
    assert!(
        log.contains("connections are already in their handshake"),
        "{log}"
    );
    assert!(!log.contains("accepting a"), "{log}");
    assert_refusals_rate_limited(&log, refused);
}

/// The flood's sockets are really closed by the proxy, not left waiting: a
/// refused connection reads end-of-file at once.
#[test]
fn a_refused_peer_connection_is_closed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p1, _p2, port1) = mesh(dir.path(), true);
    let flood = tcp_flood(port1, PENDING_CAP + 200);
    p1.assert_running();
    // Well within the 10 s handshake timeout, which would close them anyway.
    let until = Instant::now() + Duration::from_secs(5);
    let closed = |s: &TcpStream| {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        match std::io::Read::read(&mut &*s, &mut b) {
            Ok(0) => true,
            Err(e) => e.kind() == ErrorKind::ConnectionReset,
            Ok(_) => panic!("the proxy sent bytes to a connection that said nothing"),
        }
    };
    loop {
        let n = flood.iter().filter(|s| closed(s)).count();
        // At most PENDING_CAP wait for their handshake; the rest are closed.
        if n >= 200 {
            break;
        }
        assert!(
            Instant::now() < until,
            "only {n} of {} flood connections were closed:\n{}",
            flood.len(),
            p1.log()
        );
        thread::sleep(POLL);
    }
}

/// When established backend sessions use up every descriptor, the proxy
/// cannot serve one more; that backend is then told at once (its connection
/// is accepted with the spare descriptor and closed) instead of hanging, the
/// failures are logged rate-limited, and once sessions end new backends are
/// served again.
#[test]
fn out_of_descriptors_a_backend_is_refused_at_once_and_served_once_some_are_free() {
    let dir = tempfile::tempdir().unwrap();
    // Proxy 2 has room for the other ends of all of proxy 1's sessions.
    let (mut p1, p2, _) = mesh(dir.path(), false);
    let rt = runtime();
    let refused_after = |e: ClientError| match e {
        ClientError::ClosedBeforeAck => {}
        ClientError::Io(e)
            if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {}
        e => panic!("a backend beyond the limit got {e}:\n{}", p1.log()),
    };
    // Sessions until proxy 1 has no descriptor left for one more, each with
    // its other end on proxy 2 (so that a pair can end: each end waits for
    // the other's BYE).
    let mut sessions = Vec::new();
    loop {
        assert!(
            sessions.len() < PROXY_NOFILE as usize,
            "{} sessions and still no refusal:\n{}",
            sessions.len(),
            p1.log()
        );
        let spec = spec(1000 + sessions.len() as i32);
        let far = rt
            .block_on(LogicalConn::connect(
                p2.socket(),
                spec.reversed(),
                &options(DEADLINE),
            ))
            .expect("the other end on proxy 2 connects");
        let started = Instant::now();
        match rt.block_on(LogicalConn::connect(p1.socket(), spec, &options(PROMPT))) {
            Ok(near) => sessions.push((near, far)),
            Err(e) => {
                refused_after(e);
                assert!(started.elapsed() < PROMPT);
                break;
            }
        }
    }
    let open = sessions.len();
    // More backends meanwhile: each refused at once, none left waiting.
    for i in 0..20 {
        let started = Instant::now();
        let r = rt.block_on(LogicalConn::connect(
            p1.socket(),
            spec(-1 - i),
            &options(PROMPT),
        ));
        match r {
            Ok(_) => panic!("a session beyond the limit was served"),
            Err(e) => refused_after(e),
        }
        let waited = started.elapsed();
        assert!(waited < PROMPT, "refused after {waited:?}");
    }
    p1.assert_running();
    let log = p1.log();
    assert!(
        log.contains("accepting a backend connection failed")
            && log.contains("closed it with the spare descriptor"),
        "{log}"
    );
    // Each one shed with the spare descriptor, none left to a backoff.
    assert!(!log.contains("retrying in"), "{log}");
    assert_refusals_rate_limited(&log, 0);
    eprintln!("lockout: {open} sessions held proxy 1's descriptors; 21 more were refused at once");

    // Ten pairs end: once the proxy has closed them, a backend is served.
    drop(sessions.drain(..10));
    let until = Instant::now() + DEADLINE;
    let free = PROXY_NOFILE as usize - 10;
    while open_descriptors(&p1) > free {
        assert!(
            Instant::now() < until,
            "the ended sessions stay open ({} descriptors):\n{}",
            open_descriptors(&p1),
            p1.log()
        );
        thread::sleep(POLL);
    }
    stream_a_megabyte(&p1, &p2, 5);
    p1.assert_running();
    drop(sessions);
}
