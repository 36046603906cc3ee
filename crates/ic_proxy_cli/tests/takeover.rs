//! `ic-proxy run --take-over` beside a stand-in for the built-in proxy that
//! every Cloudberry / Greenplum build starts: whether the stand-in takes the
//! backend socket's path before ours starts, after, or again later, ours
//! takes it back within 2 s and a stream through the path works; sessions
//! already connected are not disturbed. Without the flag a live socket is
//! left alone, as before.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{free_port, instance_command, spec_1_to_2, stream_megabyte, ProxyProcess};
use ic_proxy_client::{ClientOptions, LogicalConn, RecvItem};
use ic_proxy_cluster_tests::builtin::{file_id, BuiltinProxy};

const DEADLINE: Duration = Duration::from_secs(60);
/// How soon the path must be ours again after the stand-in took it.
const TAKE_BACK: Duration = Duration::from_secs(2);
/// Slack for a loaded 2-core machine on top of [`TAKE_BACK`].
const SLACK: Duration = Duration::from_millis(500);

/// `ic-proxy run --addresses MAP` for instance `dbid` with `extra`, not
/// waited for.
fn start(dir: &Path, dbid: u16, map: &str, extra: &[&str]) -> ProxyProcess {
    let (cmd, names) = instance_command(dir, dbid, &[&["--addresses", map][..], extra].concat());
    ProxyProcess::spawn_named(cmd, names)
}

/// The log of `p` once it contains `needle`.
async fn logged(p: &ProxyProcess, needle: &str) -> String {
    let until = Instant::now() + DEADLINE;
    loop {
        let log = p.log();
        if log.contains(needle) {
            return log;
        }
        assert!(Instant::now() < until, "{needle:?} not logged:\n{log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the stand-in no longer holds the path; returns how long.
async fn taken_back(b: &BuiltinProxy) -> Duration {
    let start = Instant::now();
    while b.holds_path() {
        assert!(start.elapsed() < DEADLINE, "the path was never taken back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

async fn wait_socket(path: &Path) {
    let until = Instant::now() + DEADLINE;
    while file_id(path).is_none() {
        assert!(Instant::now() < until, "no socket {}", path.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn mesh_map() -> String {
    format!(
        "1:-1:127.0.0.1:{},2:0:127.0.0.1:{}",
        free_port(),
        free_port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_path_is_taken_back_after_the_built_in_proxy_takes_it_and_again_later() {
    let dir = tempfile::tempdir().unwrap();
    let map = mesh_map();
    let p1 = start(dir.path(), 1, &map, &["--take-over"]);
    let p2 = start(dir.path(), 2, &map, &[]);
    wait_socket(p1.socket()).await;
    wait_socket(p2.socket()).await;
    logged(&p1, "peer dbid 2 (content 0) connected").await;
    stream_megabyte(p1.socket(), p2.socket(), spec_1_to_2(9, 1), 1, DEADLINE)
        .await
        .unwrap();

    // A session connected before the takeover keeps working through it.
    let opts = ClientOptions::default();
    let (tx, rx) = tokio::join!(
        LogicalConn::connect(p1.socket(), spec_1_to_2(9, 2), &opts),
        LogicalConn::connect(p2.socket(), spec_1_to_2(9, 2).reversed(), &opts)
    );
    let (mut tx, mut rx) = (tx.unwrap(), rx.unwrap());
    tx.send_packet(b"before").await.unwrap();

    let mut builtin = BuiltinProxy::start(p1.socket());
    let took = taken_back(&builtin).await;
    assert!(took <= TAKE_BACK + SLACK, "taken back after {took:?}");
    let log = logged(
        &p1,
        "was served by another process, most likely the built-in",
    )
    .await;
    assert!(
        log.contains("Leave gp_interconnect_proxy_addresses empty"),
        "{log}"
    );
    stream_megabyte(p1.socket(), p2.socket(), spec_1_to_2(9, 3), 3, DEADLINE)
        .await
        .unwrap();

    tx.send_packet(b"after").await.unwrap();
    tx.finish().await.unwrap();
    assert_eq!(
        rx.recv().await.unwrap(),
        RecvItem::Packet(b"before"[..].into())
    );
    assert_eq!(
        rx.recv().await.unwrap(),
        RecvItem::Packet(b"after"[..].into())
    );
    assert_eq!(rx.recv().await.unwrap(), RecvItem::Eof);

    // The built-in proxy restarts (after a crash) and takes the path again.
    builtin.restart();
    let took = taken_back(&builtin).await;
    assert!(took <= TAKE_BACK + SLACK, "taken back after {took:?}");
    logged(&p1, "back from another process (takeover 2)").await;
    stream_megabyte(p1.socket(), p2.socket(), spec_1_to_2(9, 4), 4, DEADLINE)
        .await
        .unwrap();
    // One WARNING, not one per takeover.
    assert_eq!(p1.log().matches("most likely the built-in").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_path_is_taken_over_when_the_built_in_proxy_started_first() {
    let dir = tempfile::tempdir().unwrap();
    let map = mesh_map();
    let p1_socket = dir.path().join(".s.PGSQL.ic_proxy.5001.40001");
    let builtin = BuiltinProxy::start(&p1_socket);
    let p1 = start(dir.path(), 1, &map, &["--take-over"]);
    let p2 = start(dir.path(), 2, &map, &[]);
    assert_eq!(p1.socket(), p1_socket);
    let took = taken_back(&builtin).await;
    assert!(took <= DEADLINE);
    logged(&p1, "most likely the built-in").await;
    wait_socket(p2.socket()).await;
    logged(&p1, "peer dbid 2 (content 0) connected").await;
    stream_megabyte(p1.socket(), p2.socket(), spec_1_to_2(9, 1), 1, DEADLINE)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_take_over_a_live_socket_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let map = mesh_map();
    let p1 = start(dir.path(), 1, &map, &[]);
    wait_socket(p1.socket()).await;
    let builtin = BuiltinProxy::start(p1.socket());
    logged(&p1, "Not taking it back (ic-proxy run --take-over does)").await;
    assert!(builtin.holds_path());
    // Started while the stand-in holds the path: it waits, and says why.
    let dir2 = tempfile::tempdir().unwrap();
    let other = dir2.path().join(".s.PGSQL.ic_proxy.5001.40001");
    let builtin2 = BuiltinProxy::start(&other);
    let p = start(dir2.path(), 1, &map, &[]);
    logged(&p, "is in use by another live proxy").await;
    assert!(builtin2.holds_path());
}
