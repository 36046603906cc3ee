//! The real `ic-proxy` binary, run as a user runs it: map checks, refusal of
//! a bad map, 1 MB carried between two proxy processes by `send` and `recv`,
//! reloads on SIGHUP and clean stops on SIGTERM / SIGINT.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    assert_run_refused, free_port, ic_proxy, signal, text, wait_exit, ProxyProcess, BIN, POLL,
};
use ic_proxy_client::{ClientOptions, ConnSpec, Endpoint, LogicalConn, RecvItem};
use ic_proxy_core::address_map::AddressMap;

/// Bound on every wait; generous because other builds share the 2 cores.
const DEADLINE: Duration = Duration::from_secs(60);

/// `ic-proxy run` for instance `dbid` with `map_args` (--addresses or
/// --addresses-file) and `extra`, once its backend socket exists.
fn start(dir: &Path, dbid: u16, map_args: &[&str], extra: &[&str]) -> ProxyProcess {
    ProxyProcess::start(dir, dbid, &[map_args, extra].concat())
}

#[test]
fn check_accepts_a_valid_map_and_prints_it_canonically() {
    let out = ic_proxy(&["check", " 1:-1:cdw:7000, 2:0:[::1]:7002 "]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "valid: 2 entries\n1:-1:cdw:7000,2:0:[::1]:7002\n"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("map");
    std::fs::write(&file, "1:-1:cdw:7000,\n2:0:sdw1:7002,\n3:1:sdw2:7003\n").unwrap();
    let out = ic_proxy(&["check", "--file", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("valid: 3 entries\n"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn check_reports_every_problem_with_its_hint() {
    let map = "1:-1:cdw:7000,x:0:sdw1:7002,3:0:sdw1:99999";
    let out = ic_proxy(&["check", map]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(
        lines[0],
        r#"entry 2 "x:0:sdw1:7002": dbid "x" is not a number"#
    );
    assert_eq!(
        lines[2],
        r#"entry 3 "3:0:sdw1:99999": port 99999 is outside 1..65535"#
    );
    // Word for word what the core says, hints included.
    let problems = AddressMap::check(map);
    assert_eq!(problems.len(), 2);
    for (i, p) in problems.iter().enumerate() {
        assert_eq!(lines[2 * i], p.message());
        assert_eq!(lines[2 * i + 1], format!("hint: {}", p.hint()));
    }
}

#[test]
fn check_refuses_a_dbid_beyond_smallint() {
    // gp_segment_configuration.dbid is a smallint: 40000 cannot be a dbid.
    let out = ic_proxy(&["check", "1:-1:cdw:7000,40000:0:sdw1:7002"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "entry 2 \"40000:0:sdw1:7002\": dbid 40000 is outside 1..32767\n\
         hint: Take the dbid from gp_segment_configuration; dbids run from 1 to 32767.\n"
    );
}

#[test]
fn run_refuses_an_invalid_map_before_binding_anything() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "run",
            "--addresses",
            "1:-1:127.0.0.1:7000,1:0:127.0.0.1:7001",
        ])
        .args(["--dbid", "1", "--port", "5432", "--pid", "77"])
        .arg("--socket-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(r#"entry 2 "1:0:127.0.0.1:7001": dbid 1 appears twice (first in entry 1)"#),
        "{stderr}"
    );
    assert!(
        stderr.contains("\nhint: Each instance needs its own dbid"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    // Out-of-range knobs are refused by the argument parser, also with 2.
    let out = ic_proxy(&[
        "run",
        "--addresses",
        "1:-1:h:1",
        "--dbid",
        "1",
        "--port",
        "1",
        "--pid",
        "1",
        "--max-packet-size",
        "100",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("100 is outside 512..=65471"));
}

#[test]
fn send_and_recv_carry_a_megabyte_between_two_proxy_processes() {
    let dir = tempfile::tempdir().unwrap();
    let map = format!(
        "1:-1:127.0.0.1:{},2:0:127.0.0.1:{}",
        free_port(),
        free_port()
    );
    // The sending proxy's window is wider than its peer's (it pauses at 400
    // unacknowledged packets, the peer at 100); the peer acknowledges every
    // 10 as a C proxy does, whatever the sender's window.
    let wide = [
        "--flow-pause-threshold",
        "400",
        "--flow-resume-threshold",
        "120",
    ];
    let mut p1 = start(dir.path(), 1, &["--addresses", &map], &wide);
    let mut p2 = start(dir.path(), 2, &["--addresses", &map], &["--threads", "1"]);

    let key = [
        "--session",
        "7",
        "--command",
        "3",
        "--send-slice",
        "1",
        "--recv-slice",
        "0",
    ];
    let recv_err = dir.path().join("recv.err");
    let mut recv = Command::new(BIN)
        .arg("recv")
        .arg("--socket")
        .arg(p2.socket())
        .args(key)
        .args(["--local", "0:2:202", "--remote", "-1:1:101", "--count"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&recv_err).unwrap())
        .spawn()
        .unwrap();
    let send_err = dir.path().join("send.err");
    // The socket computed from --socket-dir, --port and --pid, as a backend does.
    let mut send = Command::new(BIN)
        .arg("send")
        .arg("--socket-dir")
        .arg(dir.path())
        .args(["--port", "5001", "--pid", "40001"])
        .args(key)
        .args(["--local", "-1:1:101", "--remote", "0:2:202"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(File::create(&send_err).unwrap())
        .spawn()
        .unwrap();

    let input: Vec<u8> = (0..1usize << 20)
        .map(|i| (i ^ (i >> 8) ^ (i >> 16)).wrapping_mul(31) as u8)
        .collect();
    let mut stdin = send.stdin.take().unwrap();
    let data = input.clone();
    let writer = thread::spawn(move || stdin.write_all(&data));
    let mut stdout = recv.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        stdout.read_to_end(&mut got).map(|_| got)
    });

    let send_status = wait_exit(&mut send, "send", DEADLINE);
    let recv_status = wait_exit(&mut recv, "recv", DEADLINE);
    let send_log = std::fs::read_to_string(&send_err).unwrap();
    let recv_log = std::fs::read_to_string(&recv_err).unwrap();
    writer.join().unwrap().expect("write send's stdin");
    let got = reader.join().unwrap().expect("read recv's stdout");
    assert!(send_status.success(), "send: {send_status}: {send_log}");
    assert!(recv_status.success(), "recv: {recv_status}: {recv_log}");
    assert_eq!(got.len(), input.len());
    assert!(got == input, "the received bytes differ from the input");
    assert!(recv_log.contains(", 1048576 bytes"), "{recv_log}");

    let log1 = p1.log();
    assert!(log1.contains(&format!(
        "backends connect to {}, peers to 127.0.0.1:",
        p1.socket().display()
    )));
    p1.stop_with(libc::SIGTERM);
    p2.stop_with(libc::SIGTERM);
}

#[test]
fn send_stops_cleanly_when_the_receiver_asks() {
    let dir = tempfile::tempdir().unwrap();
    let map = format!(
        "1:-1:127.0.0.1:{},2:0:127.0.0.1:{}",
        free_port(),
        free_port()
    );
    let mut p1 = start(dir.path(), 1, &["--addresses", &map], &[]);
    let mut p2 = start(dir.path(), 2, &["--addresses", &map], &[]);
    let send_err = dir.path().join("send.err");
    let mut send = Command::new(BIN)
        .arg("send")
        .arg("--socket")
        .arg(p1.socket())
        .args(["--session", "9", "--command", "1", "--send-slice", "2"])
        .args([
            "--recv-slice",
            "1",
            "--local",
            "-1:1:101",
            "--remote",
            "0:2:202",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(File::create(&send_err).unwrap())
        .spawn()
        .unwrap();
    // Far more than the proxies buffer; ends early with EPIPE once send exits.
    let mut stdin = send.stdin.take().unwrap();
    let writer = thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..4096 {
            if stdin.write_all(&chunk).is_err() {
                return;
            }
        }
    });

    // The receiving backend, which wants one packet and then asks to stop.
    let spec = ConnSpec {
        session_id: 9,
        command_id: 1,
        send_slice: 2,
        recv_slice: 1,
        local: Endpoint {
            content: 0,
            dbid: 2,
            pid: 202,
        },
        remote: Endpoint {
            content: -1,
            dbid: 1,
            pid: 101,
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let after_stop = runtime.block_on(async {
        let mut rx = LogicalConn::connect(p2.socket(), spec, &ClientOptions::default())
            .await
            .expect("receiver connects");
        let first = rx.recv().await.expect("first packet");
        assert!(matches!(first, RecvItem::Packet(p) if p.len() == 8188));
        rx.stop().await.expect("stop");
        let mut after = 0;
        loop {
            match tokio::time::timeout(DEADLINE, rx.recv()).await {
                Ok(Ok(RecvItem::Packet(_))) => after += 1,
                Ok(Ok(RecvItem::Eof)) => return after,
                other => panic!("receiver after STOP: {other:?}"),
            }
        }
    });

    let status = wait_exit(&mut send, "send", DEADLINE);
    let log = std::fs::read_to_string(&send_err).unwrap();
    assert!(status.success(), "send: {status}: {log}");
    assert!(log.contains("the receiver asked to stop after"), "{log}");
    writer.join().unwrap();
    // In flight when STOP was sent; bounded by the proxies' buffers.
    assert!(after_stop < 4096 * 8, "{after_stop} packets after STOP");
    p1.stop_with(libc::SIGTERM);
    p2.stop_with(libc::SIGTERM);
}

#[test]
fn sighup_rereads_the_map_file_and_keeps_the_old_map_when_the_new_one_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("addresses");
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let map = format!("1:-1:127.0.0.1:{p1},2:0:127.0.0.1:{p2}");
    std::fs::write(&file, &map).unwrap();
    let file_arg = file.to_str().unwrap();
    let mut proxy = start(dir.path(), 1, &["--addresses-file", file_arg], &[]);

    std::fs::write(&file, format!("1:-1:127.0.0.1:{p1},2:0:127.0.0.1:99999")).unwrap();
    signal(&proxy.child, libc::SIGHUP);
    let log = proxy.wait_for_log("hint: Use a TCP port");
    assert!(
        log.contains(r#"entry 2 "2:0:127.0.0.1:99999": port 99999 is outside 1..65535"#),
        "{log}"
    );
    assert!(
        log.contains("keeping the map in force (2 entries)"),
        "{log}"
    );
    assert!(proxy.is_running(), "{log}");
    assert!(proxy.socket().exists());

    // One entry per line is fine: whitespace around entries is ignored.
    std::fs::write(&file, format!("{map},\n3:1:127.0.0.1:{p3}\n")).unwrap();
    signal(&proxy.child, libc::SIGHUP);
    proxy.wait_for_log("applying 3 entries (1 added, 0 removed, 0 changed)");
    assert!(proxy.is_running());

    proxy.stop_with(libc::SIGINT);
    assert!(proxy.log().contains("SIGINT received, stopping"));
}

#[test]
fn run_refuses_flow_thresholds_under_which_a_paused_sender_never_resumes() {
    let dir = tempfile::tempdir().unwrap();
    assert_run_refused(
        dir.path(),
        &["--flow-pause-threshold", "30"],
        "--flow-pause-threshold 30 --flow-resume-threshold 30 --flow-ack-interval 10: the resume threshold (30) must be below the pause threshold (30)",
    );
    assert_run_refused(
        dir.path(),
        &["--flow-ack-interval", "32"],
        "the DATA_ACK interval (32) must not exceed the resume threshold + 1 (31)",
    );
    // Nothing was bound.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn run_refuses_a_peer_auth_secret_that_is_too_short() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "short\n").unwrap();
    assert_run_refused(
        dir.path(),
        &["--peer-auth-secret-file", &secret.display().to_string()],
        "the secret is 5 bytes; at least 16 are needed",
    );
}

#[test]
fn sighup_rereads_the_peer_auth_secret_file_and_relinks_with_the_new_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (s1, s2) = (dir.path().join("secret1"), dir.path().join("secret2"));
    std::fs::write(&s1, "the first shared secret\n").unwrap();
    std::fs::write(&s2, "the first shared secret\n").unwrap();
    let map = format!(
        "1:-1:127.0.0.1:{},2:0:127.0.0.1:{}",
        free_port(),
        free_port()
    );
    let secret_arg = |p: &PathBuf| {
        [
            "--peer-auth-secret-file".to_string(),
            p.display().to_string(),
        ]
    };
    let a1 = secret_arg(&s1);
    let a2 = secret_arg(&s2);
    let a1: Vec<&str> = a1.iter().map(String::as_str).collect();
    let a2: Vec<&str> = a2.iter().map(String::as_str).collect();
    let mut proxy1 = start(dir.path(), 1, &["--addresses", &map], &a1);
    let mut proxy2 = start(dir.path(), 2, &["--addresses", &map], &a2);
    proxy1.wait_for_log("peer dbid 2 (content 0) connected");

    // A new secret on dbid 1 only: its link, made with the old one, ends,
    // and dbid 2 (still on the old secret) is refused.
    std::fs::write(&s1, "the second shared secret\n").unwrap();
    signal(&proxy1.child, libc::SIGHUP);
    proxy1.wait_for_log("a new peer authentication secret");
    proxy1.wait_for_log("a reload changed the peer authentication secret; ending the link");
    proxy2.wait_for_log("peer authentication failed");

    // The same secret on dbid 2: the mesh links again.
    std::fs::write(&s2, "the second shared secret\n").unwrap();
    signal(&proxy2.child, libc::SIGHUP);
    let until = Instant::now() + DEADLINE;
    while proxy1
        .log()
        .matches("peer dbid 2 (content 0) connected")
        .count()
        < 2
    {
        assert!(Instant::now() < until, "no new link:\n{}", proxy1.log());
        thread::sleep(POLL);
    }
}
