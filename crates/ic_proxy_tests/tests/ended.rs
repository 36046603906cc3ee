//! Logical connections the proxy gives up on end visibly at both ends:
//! dropped from the early cache (over its cap, past its expiry) or out of
//! date (an older session's packets); the oversized DATA case is in the
//! hostile catalogue. The
//! receiver reads end of stream, the sender's socket is closed; nothing waits
//! forever, and no stale byte reaches a newer statement.

use std::time::{Duration, Instant};

use ic_proxy_client::{pattern_payload, ConnSpec, LogicalConn, RecvItem};
use ic_proxy_tests::*;

/// How soon an end decided by the proxy must reach a backend.
const PROMPT: Duration = Duration::from_secs(1);

/// Reads until end of stream, within `within`; returns what arrived.
async fn read_to_end(c: &mut LogicalConn, within: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let r = tokio::time::timeout(within, async {
        while let Ok(RecvItem::Packet(p)) = c.recv().await {
            got.push(p.to_vec());
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "no end of stream within {within:?} (after {} packets): the backend would wait forever",
        got.len()
    );
    got
}

/// Sends `n` packets of `len` bytes for nobody yet, keeping the socket open.
async fn send_early(mesh: &Mesh, from: u16, s: ConnSpec, n: u64, len: usize) -> LogicalConn {
    let sock = &mesh.proxy(from).socket;
    let mut tx = LogicalConn::connect(sock, s, &mesh.client_options())
        .await
        .expect("sender connects");
    for i in 0..n {
        tx.send_packet(&pattern_payload(u64::from(s.command_id), i, len))
            .await
            .expect("send");
    }
    tx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_evicted_from_the_early_cache_ends_at_both_ends() {
    let mesh = Mesh::start_with(
        &[-1, 0],
        MeshOptions {
            early_cache_bytes: 1 << 20,
            ..MeshOptions::default()
        },
    );
    mesh.wait_connected().await;
    let (p1, p2) = (mesh.proxy(1), mesh.proxy(2));
    // The first sender writes 200 KB to a receiver that has not come, and
    // keeps its socket open, as a backend waiting for its teardown does.
    let victim = spec(&p1.addr, &p2.addr, 0);
    let mut first = send_early(&mesh, 1, victim, 25, 8000).await;
    wait_until("the first connection is cached", || {
        p2.status.snapshot().totals.early_cache_bytes >= 200_000
    })
    .await;
    // Twelve more senders write 200 KB each: the 1 MB cap evicts the oldest.
    let mut others = Vec::new();
    for n in 1..=12 {
        others.push(send_early(&mesh, 1, spec(&p1.addr, &p2.addr, n), 25, 8000).await);
    }
    wait_until("the first connection is evicted", || {
        p2.status.snapshot().totals.early_dropped_conns >= 1
    })
    .await;
    let evicted = Instant::now();
    // Its sender's socket is closed: it reads end of stream.
    let got = read_to_end(&mut first, PROMPT).await;
    assert!(got.is_empty(), "the sender got data back: {got:?}");
    assert!(evicted.elapsed() <= PROMPT + Duration::from_millis(200));
    // Its receiver, coming now, gets its HELLO_ACK and then end of stream.
    let mut rx = LogicalConn::connect(&p2.socket, victim.reversed(), &mesh.client_options())
        .await
        .expect("the late receiver connects");
    let got = read_to_end(&mut rx, PROMPT).await;
    assert!(
        got.is_empty(),
        "a dropped connection delivered {} packets",
        got.len()
    );
    drop(others);
    // The proxies carry a healthy connection after all that.
    let (tx, rx) = open_pair(&mesh, 1, 2, 99).await;
    let (sent, got) = tokio::join!(send_stream(tx, 5, 100, 3000), recv_stream(rx));
    assert_eq!(sent.unwrap(), got.unwrap().0);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_expired_in_the_early_cache_ends_at_both_ends() {
    let mesh = Mesh::start_with(
        &[-1, 0],
        MeshOptions {
            early_packet_ttl: Duration::from_secs(1),
            ..MeshOptions::default()
        },
    );
    mesh.wait_connected().await;
    let (p1, p2) = (mesh.proxy(1), mesh.proxy(2));
    let s = spec(&p1.addr, &p2.addr, 1);
    let mut tx = send_early(&mesh, 1, s, 10, 1000).await;
    tx.finish().await.unwrap();
    wait_until("the connection expires", || {
        p2.status.snapshot().totals.early_dropped_conns >= 1
    })
    .await;
    let got = read_to_end(&mut tx, PROMPT).await;
    assert!(got.is_empty());
    let mut rx = LogicalConn::connect(&p2.socket, s.reversed(), &mesh.client_options())
        .await
        .unwrap();
    let got = read_to_end(&mut rx, PROMPT).await;
    assert!(
        got.is_empty(),
        "an expired connection delivered {} packets",
        got.len()
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_flooding_peer_cannot_evict_another_peers_waiting_connection() {
    let mesh = Mesh::start_with(
        &[-1, 0, 1],
        MeshOptions {
            early_cache_bytes: 1 << 20,
            ..MeshOptions::default()
        },
    );
    mesh.wait_connected().await;
    let (p1, p2, p3) = (mesh.proxy(1), mesh.proxy(2), mesh.proxy(3));
    // Proxy 2's sender waits for a receiver on proxy 1 with 100 KB.
    let patient = spec(&p2.addr, &p1.addr, 0);
    let mut tx = send_early(&mesh, 2, patient, 25, 4000).await;
    tx.finish().await.unwrap();
    wait_until("the patient connection is cached", || {
        p1.status.snapshot().totals.early_cache_bytes >= 100_000
    })
    .await;
    // Proxy 3 floods proxy 1's cache with 2.4 MB for nobody.
    let mut flood = Vec::new();
    for n in 1..=12 {
        flood.push(send_early(&mesh, 3, spec(&p3.addr, &p1.addr, n), 25, 8000).await);
    }
    wait_until("the flood is evicted", || {
        p1.status.snapshot().totals.early_dropped_conns >= 6
    })
    .await;
    let s1 = p1.status.snapshot();
    let drops = |dbid| {
        s1.peers
            .iter()
            .find(|p| p.addr.dbid == dbid)
            .unwrap()
            .traffic
            .drops
    };
    assert_eq!(
        drops(2),
        0,
        "proxy 2's connection was evicted for proxy 3's flood"
    );
    assert!(drops(3) >= 6);
    // The patient connection arrives whole.
    let rx = LogicalConn::connect(&p1.socket, patient.reversed(), &mesh.client_options())
        .await
        .unwrap();
    let (got, count) = recv_stream(rx).await.unwrap();
    assert_eq!(count, 25);
    assert_eq!(
        got,
        expected_digest(u64::from(patient.command_id), 25, 4000)
    );
    // The flood's senders were told: each reads end of stream.
    for mut f in flood.into_iter().take(6) {
        read_to_end(&mut f, Duration::from_secs(5)).await;
    }
    mesh.shutdown().await;
}

/// `s` with another session id.
fn in_session(s: ConnSpec, session_id: i32) -> ConnSpec {
    ConnSpec { session_id, ..s }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_sessions_packets_never_reach_a_newer_session() {
    let mesh = Mesh::start(&[-1, 0]);
    mesh.wait_connected().await;
    let (p1, p2) = (mesh.proxy(1), mesh.proxy(2));
    let opts = mesh.client_options();
    let base = spec(&p1.addr, &p2.addr, 2);
    // Session 500 writes OLD-DATA and finishes; its receiver never comes.
    let old = in_session(base, 500);
    let mut old_tx = LogicalConn::connect(&p1.socket, old, &opts).await.unwrap();
    old_tx.send_packet(b"OLD-DATA").await.unwrap();
    old_tx.finish().await.unwrap();
    wait_until("OLD-DATA waits on proxy 2", || {
        p2.status.snapshot().totals.early_cache_bytes > 0
    })
    .await;
    // Session 501, same pids, slices and command: receiver and sender.
    let new = in_session(base, 501);
    let mut rx = LogicalConn::connect(&p2.socket, new.reversed(), &opts)
        .await
        .unwrap();
    // The old sender is told its connection is over.
    let got = read_to_end(&mut old_tx, PROMPT).await;
    assert!(got.is_empty());
    drop(old_tx);
    let mut tx = LogicalConn::connect(&p1.socket, new, &opts).await.unwrap();
    tx.send_packet(b"NEW-DATA").await.unwrap();
    tx.finish().await.unwrap();
    let got = read_to_end(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(
        String::from_utf8_lossy(&got.concat()),
        "NEW-DATA",
        "the newer session must read its own data only"
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_command_in_the_same_session_reads_its_own_data_only() {
    let mesh = Mesh::start(&[-1, 0]);
    mesh.wait_connected().await;
    let (p1, p2) = (mesh.proxy(1), mesh.proxy(2));
    let opts = mesh.client_options();
    let base = spec(&p1.addr, &p2.addr, 2);
    let old = ConnSpec {
        command_id: 7,
        ..in_session(base, 500)
    };
    let mut old_tx = LogicalConn::connect(&p1.socket, old, &opts).await.unwrap();
    old_tx.send_packet(b"OLD-DATA").await.unwrap();
    old_tx.finish().await.unwrap();
    wait_until("OLD-DATA waits on proxy 2", || {
        p2.status.snapshot().totals.early_cache_bytes > 0
    })
    .await;
    let new = ConnSpec {
        command_id: 8,
        ..old
    };
    let (tx, rx) = tokio::join!(
        LogicalConn::connect(&p1.socket, new, &opts),
        LogicalConn::connect(&p2.socket, new.reversed(), &opts)
    );
    let (mut tx, mut rx) = (tx.unwrap(), rx.unwrap());
    tx.send_packet(b"NEW-DATA").await.unwrap();
    tx.finish().await.unwrap();
    let got = read_to_end(&mut rx, Duration::from_secs(5)).await.concat();
    assert_eq!(String::from_utf8_lossy(&got), "NEW-DATA");
    mesh.shutdown().await;
}
