//! Seeing a running `ic-proxy run` without SQL: `ic-proxy status` and
//! `ic-proxy ping` over its control socket, and `--metrics-listen`, against
//! a mesh of real proxy processes on loopback.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::{free_port, http_get, ic_proxy, metrics_addr, sample, text, ProxyProcess, BIN, POLL};
use ic_proxy_client::{ClientOptions, ConnSpec, Endpoint, LogicalConn, RecvItem};

/// Bound on every wait; generous because other builds share the 2 cores.
const DEADLINE: Duration = Duration::from_secs(60);

/// `ic-proxy run --addresses MAP` for instance `dbid` with `extra`, once
/// its backend socket exists.
fn start(dir: &Path, dbid: u16, map: &str, extra: &[&str]) -> ProxyProcess {
    ProxyProcess::start(dir, dbid, &[&["--addresses", map][..], extra].concat())
}

fn control_arg(p: &ProxyProcess) -> String {
    p.names.control.display().to_string()
}

/// The map of dbid 1 (content -1) and dbid 2 (content 0), and their ports.
fn two_proxy_map() -> (String, [u16; 2]) {
    let ports = [free_port(), free_port()];
    let map = format!("1:-1:127.0.0.1:{},2:0:127.0.0.1:{}", ports[0], ports[1]);
    (map, ports)
}

/// `ic-proxy status` once dbid `of` shows `state` in its row.
fn status_when(proxy: &ProxyProcess, of: &str, state: &str) -> String {
    let until = Instant::now() + DEADLINE;
    loop {
        let out = ic_proxy(&["status", "--control", &control_arg(proxy)]);
        let stdout = text(&out.stdout);
        if out.status.code() == Some(0) && row(&stdout, of).contains(&state) {
            return stdout;
        }
        assert!(
            Instant::now() < until,
            "dbid {of} not {state} within {DEADLINE:?}: {}{}",
            stdout,
            text(&out.stderr)
        );
        thread::sleep(POLL);
    }
}

/// The words of the table row whose first column is `dbid`.
fn row<'a>(table: &'a str, dbid: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&dbid))
        .unwrap_or_default()
}

#[test]
fn status_and_ping_show_a_two_proxy_mesh() {
    let dir = tempfile::tempdir().unwrap();
    let (map, ports) = two_proxy_map();
    let mut p1 = start(dir.path(), 1, &map, &[]);
    let mut p2 = start(dir.path(), 2, &map, &[]);

    let mode = std::fs::metadata(&p1.names.control)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "{}", p1.names.control.display());

    // --socket-dir and --port name the control socket, as `run` was given them.
    let dir_arg = dir.path().display().to_string();
    let stdout = status_when(&p1, "2", "connected");
    let out = ic_proxy(&["status", "--socket-dir", &dir_arg, "--port", "5001"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let again = text(&out.stdout);
    for needle in [
        "running               true",
        "dbid                  1\n",
        "content               -1\n",
        "peer listener         up (127.0.0.1:",
        &format!("backend socket        up ({})", p1.socket().display()),
        "dialect               c\n",
        "rejected connections  0\n",
        "dbid  content  address",
        "last_error\n",
    ] {
        assert!(again.contains(needle), "{needle:?} not in\n{again}");
    }
    let port = |i: usize| ports[i].to_string();
    assert_eq!(
        row(&stdout, "1")[..5],
        ["1", "-1", "127.0.0.1", &port(0), "self"],
        "{stdout}"
    );
    assert_eq!(
        row(&stdout, "2")[..5],
        ["2", "0", "127.0.0.1", &port(1), "connected"],
        "{stdout}"
    );

    // --data-dir: the port is line 4 of postmaster.pid.
    let data = tempfile::tempdir().unwrap();
    std::fs::write(
        data.path().join("postmaster.pid"),
        "40002\n/data\n1700000000\n5002\n/tmp\n*\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["status", "--json", "--socket-dir", &dir_arg, "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json = text(&out.stdout);
    assert!(json.starts_with("{\"proxy\":{\"running\":true,"), "{json}");
    assert!(json.contains("\"dbid\":2,\"content\":0,"), "{json}");
    assert!(json.contains("\"state\":\"connected\""), "{json}");
    assert!(
        json.contains("\"tls\":\"off\",\"tls_certificate\":\"\",\"tls_certificate_expires\":\"\""),
        "{json}"
    );

    // ping: every peer, by default.
    let out = ic_proxy(&["ping", "--control", &control_arg(&p1)]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert_eq!(
        stdout.lines().next(),
        Some("dbid  content  ok    rtt_ms  error")
    );
    let r = row(&stdout, "2");
    assert_eq!(r[..3], ["2", "0", "true"], "{stdout}");
    let rtt: f64 = r[3].parse().expect("rtt_ms");
    assert!(rtt > 0.0 && rtt < 3000.0, "{rtt}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");

    // The other way, one dbid.
    let out = ic_proxy(&["ping", "--control", &control_arg(&p2), "--dbid", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(row(&text(&out.stdout), "1")[..3], ["1", "-1", "true"]);

    // An entry the map does not have: exit 1 and why.
    let out = ic_proxy(&[
        "ping",
        "--control",
        &control_arg(&p1),
        "--dbid",
        "9",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "[{\"dbid\":9,\"content\":null,\"ok\":false,\"rtt_ms\":null,\"error\":\"dbid 9 is not in the address map\"}]\n"
    );
    // Its own entry is not a peer.
    let out = ic_proxy(&["ping", "--control", &control_arg(&p1), "--dbid", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("this is this instance's own entry"),
        "{}",
        text(&out.stdout)
    );

    // A peer that went away: the ping says so and fails.
    p2.stop_with(libc::SIGTERM);
    let out = ic_proxy(&["ping", "--control", &control_arg(&p1)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert_eq!(row(&stdout, "2")[..3], ["2", "0", "false"], "{stdout}");
    p1.stop_with(libc::SIGTERM);
}

#[test]
fn status_and_ping_without_a_proxy_exit_2_and_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".s.PGSQL.ic_proxy.6999.control");
    for cmd in ["status", "ping"] {
        let out = Command::new(BIN)
            .args([cmd, "--control"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        assert!(text(&out.stdout).is_empty());
        let stderr = text(&out.stderr);
        assert!(
            stderr.starts_with(&format!(
                "ic-proxy: no ic-proxy answers on {}: is it running? (",
                path.display()
            )),
            "{stderr}"
        );
    }
    // A file nobody listens on (a proxy that was killed) is no answer either.
    drop(UnixListener::bind(&path).unwrap());
    let out = Command::new(BIN)
        .args(["status", "--socket-dir"])
        .arg(dir.path())
        .args(["--port", "6999"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("Connection refused"),
        "{}",
        text(&out.stderr)
    );
    // A data directory without a running server.
    let out = Command::new(BIN)
        .args(["status", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(
            "postmaster.pid: No such file or directory (os error 2): is the server running?"
        ),
        "{}",
        text(&out.stderr)
    );
}

/// The answer of the control socket to `request`, sent as is.
fn raw_control(path: &Path, request: &[u8]) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    // The proxy may answer and close before it takes all of a long request
    let _ = s.write_all(request);
    // ... and then the rest of it resets the connection after the answer.
    let mut answer = Vec::new();
    if let Err(e) = s.read_to_end(&mut answer) {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    String::from_utf8(answer).unwrap()
}

#[test]
fn the_control_socket_refuses_what_it_does_not_know_and_replaces_only_a_dead_file() {
    let dir = tempfile::tempdir().unwrap();
    let (map, _) = two_proxy_map();
    // A file left by a dead proxy is replaced.
    let stale = dir.path().join(".s.PGSQL.ic_proxy.5001.control");
    drop(UnixListener::bind(&stale).unwrap());
    let mut p1 = start(dir.path(), 1, &map, &[]);
    p1.wait_for(|p| p.log().contains("control socket"), "control socket");

    assert_eq!(
        raw_control(&p1.names.control, b"HELLO\n"),
        "error\tmessage=unknown request \"HELLO\": expected status, ping all or ping <dbid>\nend\n"
    );
    assert_eq!(
        raw_control(&p1.names.control, &[b'x'; 1000]),
        "error\tmessage=a request line longer than 256 bytes\nend\n"
    );
    // A backend's HELLO is not a request either.
    let answer = raw_control(
        &p1.names.control,
        &[0xBA, 0xDD, 0xCA, 0xFE, 0, 0, 0, 0, b'\n'],
    );
    assert!(answer.starts_with("error\tmessage="), "{answer:?}");
    // At most 8 control connections at once: 8 silent clients hold them
    // (until the 2 s request timeout), the 9th is told so.
    let silent: Vec<UnixStream> = (0..8)
        .map(|_| UnixStream::connect(&p1.names.control).unwrap())
        .collect();
    assert_eq!(
        raw_control(&p1.names.control, b"status\n"),
        "error\tmessage=the proxy is serving 8 control connections already; try again\nend\n"
    );
    for mut s in silent {
        let mut answer = String::new();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "error\tmessage=no request line within 2s\nend\n");
    }
    let answer = raw_control(&p1.names.control, b"status\n");
    assert!(answer.starts_with("proxy\trunning=true\tpid="), "{answer}");
    assert!(answer.ends_with("\nend\n"), "{answer}");

    // A live one (here a listener of the test's) is left alone.
    let live_path = dir.path().join(".s.PGSQL.ic_proxy.5002.control");
    let live = UnixListener::bind(&live_path).unwrap();
    let mut p2 = start(dir.path(), 2, &map, &[]);
    p2.wait_for(|p| p.log().contains("no control socket"), "refusal");
    assert!(
        p2.log().contains("is in use by another live proxy"),
        "{}",
        p2.log()
    );
    drop(UnixStream::connect(&live_path).expect("still the test's socket"));
    live.accept().expect("the test's listener still has it");
    status_when(&p1, "2", "connected");

    p1.stop_with(libc::SIGTERM);
    // p2's stop leaves the test's file alone.
    // SAFETY: kill(2) with a pid we spawned and have not yet reaped.
    assert_eq!(
        unsafe { libc::kill(p2.child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    assert!(p2.child.wait().unwrap().success());
    assert!(live_path.exists());
}

#[test]
fn metrics_are_served_in_the_prometheus_format_and_move_with_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let (map, _) = two_proxy_map();
    let mut p1 = start(dir.path(), 1, &map, &["--metrics-listen", "127.0.0.1:0"]);
    let p2 = start(dir.path(), 2, &map, &[]);
    let addr = metrics_addr(&mut p1);
    status_when(&p1, "2", "connected");

    let (status, before) = http_get(&addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    for line in [
        "# TYPE ic_proxy_peer_bytes_out_total counter",
        "# HELP ic_proxy_rejected_connections_total ",
        "# TYPE ic_proxy_logical_connections gauge",
        "ic_proxy_peer_state{dbid=\"2\",content=\"0\",state=\"connected\"} 1",
        "ic_proxy_peer_state{dbid=\"2\",content=\"0\",state=\"down\"} 0",
        "ic_proxy_peer_state{dbid=\"1\",content=\"-1\",state=\"self\"} 1",
        "ic_proxy_info{dbid=\"1\",content=\"-1\",dialect=\"c\",pid=\"",
        "ic_proxy_peer_listener_up 1",
        "ic_proxy_backend_socket_up 1",
    ] {
        assert!(before.contains(line), "{line:?} not in\n{before}");
    }
    // No TLS certificate, no expiry series (tests/tls.rs has one).
    assert!(!before.contains("ic_proxy_tls_certificate"), "{before}");
    let out = "ic_proxy_peer_bytes_out_total{dbid=\"2\",content=\"0\"}";
    let packets = "ic_proxy_peer_packets_out_total{dbid=\"2\",content=\"0\"}";
    let (bytes0, packets0) = (sample(&before, out), sample(&before, packets));

    // 64 ic-tcp packets of 1000 bytes from dbid 1 to dbid 2.
    let spec = ConnSpec {
        session_id: 5,
        command_id: 1,
        send_slice: 1,
        recv_slice: 0,
        local: Endpoint {
            content: -1,
            dbid: 1,
            pid: 111,
        },
        remote: Endpoint {
            content: 0,
            dbid: 2,
            pid: 222,
        },
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let opts = ClientOptions::default();
        let (mut tx, mut rx) = tokio::try_join!(
            LogicalConn::connect(p1.socket(), spec, &opts),
            LogicalConn::connect(p2.socket(), spec.reversed(), &opts),
        )
        .expect("both ends connect");
        let payload = [7u8; 1000];
        for _ in 0..64 {
            tx.send_packet(&payload).await.unwrap();
        }
        tx.finish().await.unwrap();
        let mut got = 0;
        loop {
            match tokio::time::timeout(DEADLINE, rx.recv()).await {
                Ok(Ok(RecvItem::Packet(p))) => got += p.len(),
                Ok(Ok(RecvItem::Eof)) => break,
                other => panic!("receiver: {other:?}"),
            }
        }
        assert_eq!(got, 64_000);
    });

    let (_, after) = http_get(&addr, "/metrics");
    assert!(
        sample(&after, out) >= bytes0 + 64_000.0,
        "{bytes0} -> {}",
        sample(&after, out)
    );
    // A DATA packet between proxies may carry several of the backend's.
    assert!(sample(&after, packets) > packets0);
    assert!(sample(&after, "ic_proxy_logical_connections_total") >= 1.0);

    assert_eq!(http_get(&addr, "/").0, "HTTP/1.1 404 Not Found");
    p1.stop_with(libc::SIGTERM);
    drop(p2);
}

#[test]
fn a_metrics_address_in_use_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["run", "--addresses", "1:-1:127.0.0.1:1", "--dbid", "1"])
        .args(["--port", "5001", "--pid", "1", "--socket-dir"])
        .arg(dir.path())
        .args(["--metrics-listen", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "ic-proxy: cannot listen for metrics on {addr} (--metrics-listen): Address already in use"
        )),
        "{stderr}"
    );
    // Nothing was left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
