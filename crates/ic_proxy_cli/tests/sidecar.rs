//! `ic-proxy run --data-dir`, the sidecar beside a server, as a user runs
//! it: beside a real PostgreSQL 15 server (run as `postgres` by the cluster
//! harness) it serves the postmaster's socket, follows a restart within 5 s,
//! serves nothing while the server is stopped and keeps its peer link all
//! along; and what it does with a data directory that is missing, has no
//! or a garbled postmaster.pid, or tells no dbid.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::{Duration, Instant};

use ic_proxy_cluster_tests::{
    command_as_server_user, free_port, pg_bindir, wait_until, PgInstance,
};

use common::{run_command, spec_1_to_2, text, ProxyProcess, BIN};

/// Bound on set-up waits; generous because other builds share the 2 cores.
const DEADLINE: Duration = Duration::from_secs(60);
/// What the sidecar promises after a restart.
const FOLLOW_WITHIN: Duration = Duration::from_secs(5);

/// Polls `probe` (with the harness's [`wait_until`]) until it is true;
/// fails with `what` and `context()` after `within`.
fn wait_for(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    wait_until(what, within, || probe().then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", context()));
}

/// The ic-proxy sockets in `dir`, sorted.
fn proxy_sockets(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.starts_with(".s.PGSQL.ic_proxy.") && !n.ends_with(".control")
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

fn socket_of(dir: &Path, port: u16, pid: u32) -> PathBuf {
    dir.join(format!(".s.PGSQL.ic_proxy.{port}.{pid}"))
}

/// The sidecar's situation lines in `log`, in order, in short.
fn situations(log: &str) -> Vec<&'static str> {
    log.lines()
        .filter_map(|line| {
            Some(if line.contains("runs (postmaster pid") {
                "runs"
            } else if !line.contains("; no backend socket until the server") {
                return None;
            } else if line.contains("does not exist;") {
                "the data directory does not exist"
            } else if line.contains(": the server is not running;") {
                "the server is not running"
            } else if line.contains("which is not running (left by a crash?);") {
                "a stale pid"
            } else if line.contains(" is garbled: ") {
                "garbled"
            } else {
                "other"
            })
        })
        .collect()
}

/// Writes a postmaster.pid as PostgreSQL 15 lays it out, in one rename so
/// the sidecar never reads half of it.
fn write_pid_file(data_dir: &Path, contents: &str) {
    let tmp = data_dir.join("postmaster.pid.tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, data_dir.join("postmaster.pid")).unwrap();
}

fn pid_file_text(pid: u32, data_dir: &Path, port: u16, socket_dir: &Path) -> String {
    format!(
        "{pid}\n{}\n1700000000\n{port}\n{}\n*\n  {port}001         0\nready   \n",
        data_dir.display(),
        socket_dir.display()
    )
}

/// `ic-proxy run ARGS`, its log in `log`.
fn spawn(log: PathBuf, args: &[&str]) -> ProxyProcess {
    ProxyProcess::spawn(run_command(&log, args), log)
}

/// A checked stream of at least 1 MiB from a backend behind `from` (dbid
/// 1) to one behind `to` (dbid 2). Err says which end failed and how.
fn stream_megabyte(from: &Path, to: &Path, session: i32) -> Result<(), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(common::stream_megabyte(
            from,
            to,
            spec_1_to_2(session, 1),
            session as u64,
            DEADLINE,
        ))
}

/// `pg_ctl restart -m fast -w` as the server user.
fn pg_ctl_restart(pg: &PgInstance) {
    let out = command_as_server_user(pg_bindir().join("pg_ctl"))
        .current_dir(pg.root_dir())
        .arg("-D")
        .arg(pg.data_dir())
        .arg("-l")
        .arg(pg.log_path())
        .args(["-t", "60", "-m", "fast", "-w", "restart"])
        .output()
        .expect("run pg_ctl");
    assert!(
        out.status.success(),
        "pg_ctl restart: {}{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        pg.log()
    );
}

#[test]
fn the_sidecar_follows_a_real_server_through_restart_and_stop() {
    let mut pg = PgInstance::start_new(&[]).expect("a PostgreSQL 15 server");
    let socket_dir = pg.socket_dir();
    let other_dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let map = format!(
        "1:-1:127.0.0.1:{},2:0:127.0.0.1:{}",
        free_port(),
        free_port()
    );
    let first_pid = pg.postmaster_pid().expect("the server runs");
    let first_socket = socket_of(&socket_dir, pg.port(), first_pid);

    let mut sidecar = spawn(
        logs.path().join("sidecar.log"),
        &[
            "--addresses",
            &map,
            "--dbid",
            "1",
            "--data-dir",
            pg.data_dir().to_str().unwrap(),
            "--socket-dir",
            socket_dir.to_str().unwrap(),
        ],
    );
    let other_socket = socket_of(other_dir.path(), 5002, 40_002);
    let mut other = spawn(
        logs.path().join("other.log"),
        &[
            "--addresses",
            &map,
            "--dbid",
            "2",
            "--port",
            "5002",
            "--pid",
            "40002",
            "--socket-dir",
            other_dir.path().to_str().unwrap(),
        ],
    );
    let context = || {
        format!(
            "---- sidecar ----\n{}",
            std::fs::read_to_string(logs.path().join("sidecar.log")).unwrap_or_default()
        )
    };
    wait_for(
        "the sidecar's socket",
        DEADLINE,
        || first_socket.exists(),
        context,
    );
    wait_for(
        "the other proxy's socket",
        DEADLINE,
        || other_socket.exists(),
        context,
    );
    other.wait_for_log("peer dbid 1 (content -1) connected");
    let log = sidecar.log();
    assert!(
        log.contains(&format!(
            "runs (postmaster pid {first_pid}, port {}); backends connect to {}",
            pg.port(),
            first_socket.display()
        )),
        "{log}"
    );
    stream_megabyte(&first_socket, &other_socket, 1)
        .unwrap_or_else(|e| panic!("before the restart: {e}\n{}", context()));

    pg_ctl_restart(&pg);
    let restarted = Instant::now();
    let second_pid = pg.postmaster_pid().expect("the server runs again");
    assert_ne!(second_pid, first_pid);
    let second_socket = socket_of(&socket_dir, pg.port(), second_pid);
    wait_for(
        "the restarted server's socket, and the old one gone",
        FOLLOW_WITHIN,
        || second_socket.exists() && !first_socket.exists(),
        || format!("sockets {:?}\n{}", proxy_sockets(&socket_dir), context()),
    );
    println!(
        "sidecar: the new socket served {:?} after pg_ctl restart returned",
        restarted.elapsed()
    );
    assert_eq!(proxy_sockets(&socket_dir), vec![second_socket.clone()]);
    stream_megabyte(&second_socket, &other_socket, 2)
        .unwrap_or_else(|e| panic!("after the restart: {e}\n{}", context()));

    pg.stop().expect("pg_ctl stop");
    wait_for(
        "no socket while the server is stopped",
        FOLLOW_WITHIN,
        || proxy_sockets(&socket_dir).is_empty(),
        || format!("sockets {:?}\n{}", proxy_sockets(&socket_dir), context()),
    );
    sidecar.wait_for_log("postmaster.pid: the server is not running; no backend socket");
    assert!(sidecar.is_running());

    pg.start().expect("pg_ctl start");
    let third_pid = pg.postmaster_pid().expect("the server runs again");
    let third_socket = socket_of(&socket_dir, pg.port(), third_pid);
    wait_for(
        "the started server's socket",
        FOLLOW_WITHIN,
        || third_socket.exists(),
        || format!("sockets {:?}\n{}", proxy_sockets(&socket_dir), context()),
    );
    stream_megabyte(&third_socket, &other_socket, 3)
        .unwrap_or_else(|e| panic!("after the stop and start: {e}\n{}", context()));

    // One link all along: made once, never lost, on either end.
    let other_log = other.log();
    assert_eq!(
        other_log
            .matches("peer dbid 1 (content -1) connected")
            .count(),
        1,
        "{other_log}"
    );
    assert!(!other_log.contains("link lost"), "{other_log}");
    let sidecar_log = sidecar.log();
    assert!(!sidecar_log.contains("link lost"), "{sidecar_log}");
    // Seen without SQL: `ic-proxy status --data-dir` reaches the sidecar's
    // control socket (named after the server's port) and shows the link.
    let status = Command::new(BIN)
        .args(["status", "--data-dir"])
        .arg(pg.data_dir())
        .arg("--socket-dir")
        .arg(&socket_dir)
        .output()
        .unwrap();
    let out = text(&status.stdout);
    assert!(status.status.success(), "{out}{}", text(&status.stderr));
    assert!(out.contains("connected"), "{out}");
    assert!(
        sidecar_log.contains(&format!(
            "restarted (postmaster pid {first_pid} -> {second_pid}"
        )),
        "{sidecar_log}"
    );

    sidecar.stop_with(libc::SIGTERM);
    other.stop_with(libc::SIGTERM);
    assert!(
        proxy_sockets(&socket_dir).is_empty(),
        "{:?}",
        proxy_sockets(&socket_dir)
    );
}

#[test]
fn the_sidecar_waits_for_a_missing_data_directory_and_postmaster_pid() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let map = format!("1:-1:127.0.0.1:{}", free_port());
    let mut sidecar = spawn(
        dir.path().join("sidecar.log"),
        &[
            "--addresses",
            &map,
            "--dbid",
            "1",
            "--data-dir",
            data.to_str().unwrap(),
            "--socket-dir",
            dir.path().to_str().unwrap(),
        ],
    );
    sidecar.wait_for_log(&format!(
        "the data directory {} does not exist; no backend socket until the server in {} runs",
        data.display(),
        data.display()
    ));
    assert!(sidecar.is_running());
    assert_eq!(proxy_sockets(dir.path()), Vec::<PathBuf>::new());

    std::fs::create_dir(&data).unwrap();
    sidecar.wait_for_log(&format!(
        "no {}: the server is not running",
        data.join("postmaster.pid").display()
    ));
    assert!(sidecar.is_running());
    assert_eq!(proxy_sockets(dir.path()), Vec::<PathBuf>::new());

    // A "server" that is alive: this test process.
    let me = std::process::id();
    write_pid_file(&data, &pid_file_text(me, &data, 6543, dir.path()));
    let socket = socket_of(dir.path(), 6543, me);
    wait_for(
        "the socket once postmaster.pid appears",
        FOLLOW_WITHIN,
        || socket.exists(),
        || sidecar.log(),
    );

    // The file gone again (the server stopped): no socket.
    std::fs::remove_file(data.join("postmaster.pid")).unwrap();
    wait_for(
        "no socket once postmaster.pid is gone",
        FOLLOW_WITHIN,
        || !socket.exists(),
        || sidecar.log(),
    );
    // A file left by a crash: its pid is not alive.
    let dead = {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    };
    write_pid_file(&data, &pid_file_text(dead, &data, 6543, dir.path()));
    sidecar.wait_for_log(&format!("names pid {dead}, which is not running"));
    assert_eq!(proxy_sockets(dir.path()), Vec::<PathBuf>::new());

    // Each situation is logged when it begins, not at every read.
    let log = sidecar.log();
    assert_eq!(
        situations(&log),
        [
            "the data directory does not exist",
            "the server is not running",
            "runs",
            "the server is not running",
            "a stale pid",
        ],
        "{log}"
    );
    sidecar.stop_with(libc::SIGTERM);
}

#[test]
fn a_garbled_postmaster_pid_is_reported_once_and_waited_out() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    write_pid_file(&data, "garbage\n");
    let map = format!("1:-1:127.0.0.1:{}", free_port());
    let mut sidecar = spawn(
        dir.path().join("sidecar.log"),
        &[
            "--addresses",
            &map,
            "--dbid",
            "1",
            "--data-dir",
            data.to_str().unwrap(),
            "--socket-dir",
            dir.path().to_str().unwrap(),
        ],
    );
    let pid_file = data.join("postmaster.pid");
    sidecar.wait_for_log(&format!(
        "{} is garbled: it has 1 line(s), and the port is on line 4; no backend socket",
        pid_file.display()
    ));
    let me = std::process::id();
    write_pid_file(
        &data,
        &format!("{me}\n{}\n1700000000\nfivefourthree\n", data.display()),
    );
    sidecar.wait_for_log(&format!(
        "{} is garbled: line 4 \"fivefourthree\" is not a port",
        pid_file.display()
    ));
    assert!(sidecar.is_running());
    assert_eq!(proxy_sockets(dir.path()), Vec::<PathBuf>::new());

    write_pid_file(&data, &pid_file_text(me, &data, 6544, dir.path()));
    let socket = socket_of(dir.path(), 6544, me);
    wait_for(
        "the socket once postmaster.pid is whole",
        FOLLOW_WITHIN,
        || socket.exists(),
        || sidecar.log(),
    );
    // Each situation is logged when it begins, not at every read.
    let log = sidecar.log();
    assert_eq!(situations(&log), ["garbled", "garbled", "runs"], "{log}");
    sidecar.stop_with(libc::SIGTERM);
    assert!(!socket.exists());
}

#[test]
fn without_a_dbid_anywhere_the_sidecar_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let run = |extra: &[&str]| {
        Command::new(BIN)
            .args(["run", "--addresses", "1:-1:127.0.0.1:7000", "--data-dir"])
            .arg(&data)
            .arg("--socket-dir")
            .arg(dir.path())
            .args(extra)
            .output()
            .unwrap()
    };
    let conf = data.join("internal.auto.conf");
    let hint = "hint: Pass --dbid N with this instance's dbid in gp_segment_configuration \
                (Greenplum 6/7 and Cloudberry keep it as gp_dbid in the data directory's internal.auto.conf).";

    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        format!(
            "ic-proxy: no dbid: --dbid was not given and cannot read {}: No such file or directory (os error 2)\n{hint}\n",
            conf.display()
        )
    );

    std::fs::write(
        &conf,
        "# Do not edit this file manually!\ngp_contentid = 0\n",
    )
    .unwrap();
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        format!(
            "ic-proxy: no dbid: --dbid was not given and {} has no gp_dbid line\n{hint}\n",
            conf.display()
        )
    );

    std::fs::write(&conf, "gp_dbid = 'two'\n").unwrap();
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!(
            "{}: gp_dbid = 'two' is not a dbid in 1..32767",
            conf.display()
        )),
        "{}",
        text(&out.stderr)
    );

    // --data-dir names the port and pid: --pid or --port too is a usage error.
    let out = run(&["--dbid", "1", "--pid", "42"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cannot be used with"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(proxy_sockets(dir.path()), Vec::<PathBuf>::new());
}

#[test]
fn the_sidecar_takes_its_dbid_from_internal_auto_conf() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(
        data.join("internal.auto.conf"),
        "# Do not edit this file manually!\ngp_contentid=0\ngp_dbid = '2'\n",
    )
    .unwrap();
    let me = std::process::id();
    write_pid_file(&data, &pid_file_text(me, &data, 6545, dir.path()));
    let map = format!(
        "1:-1:127.0.0.1:{},2:0:127.0.0.1:{}",
        free_port(),
        free_port()
    );
    let mut sidecar = spawn(
        dir.path().join("sidecar.log"),
        &[
            "--addresses",
            &map,
            "--data-dir",
            data.to_str().unwrap(),
            "--socket-dir",
            dir.path().to_str().unwrap(),
        ],
    );
    let other_dir = tempfile::tempdir().unwrap();
    let mut other = spawn(
        dir.path().join("other.log"),
        &[
            "--addresses",
            &map,
            "--dbid",
            "1",
            "--port",
            "5001",
            "--pid",
            "40001",
            "--socket-dir",
            other_dir.path().to_str().unwrap(),
        ],
    );
    let socket = socket_of(dir.path(), 6545, me);
    let log = sidecar.wait_for_log(&format!(
        "ic-proxy: dbid 2: backends connect to {}",
        socket.display()
    ));
    assert!(
        log.contains(&format!(
            "ic-proxy: dbid 2 (gp_dbid in {})",
            data.join("internal.auto.conf").display()
        )),
        "{log}"
    );
    // The mesh sees it as dbid 2, content 0.
    other.wait_for_log("peer dbid 2 (content 0) connected");
    wait_for("the socket", DEADLINE, || socket.exists(), || sidecar.log());
    sidecar.stop_with(libc::SIGTERM);
    other.stop_with(libc::SIGTERM);
}
