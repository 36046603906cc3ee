//! Real proxies in one process, real sockets: data moves intact and in order
//! through meshes of two and three proxies, locally, late, under flow
//! control, across reloads and peer deaths.

use std::time::Duration;

use ic_proxy_client::{pattern_payload, ClientError, LogicalConn, RecvItem};
use ic_proxy_core::PeerState;
use ic_proxy_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_carry_many_connections_both_ways() {
    let mesh = Mesh::start(&[-1, 0]);
    mesh.wait_connected().await;
    let mut tasks = Vec::new();
    for n in 0..32u32 {
        // Even connections flow 1 -> 2, odd ones 2 -> 1.
        let (a, b) = if n % 2 == 0 { (1, 2) } else { (2, 1) };
        let (tx, rx) = open_pair(&mesh, a, b, n).await;
        let seed = u64::from(n);
        let len = 100 + (n as usize * 97) % 8000;
        tasks.push(tokio::spawn(async move {
            let (sent, got) = tokio::join!(send_stream(tx, seed, 200, len), recv_stream(rx));
            let (got, count) = got.expect("receiver");
            assert_eq!(sent.expect("sender"), got, "connection {n} corrupted");
            assert_eq!(count, 200);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s1 = mesh.proxy(1).status.snapshot();
    let peer2 = s1.peers.iter().find(|p| p.addr.dbid == 2).unwrap();
    assert!(
        peer2.traffic.bytes_in > 1_000_000 && peer2.traffic.bytes_out > 1_000_000,
        "{peer2:?}"
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_proxies_every_pair_both_directions() {
    let mesh = Mesh::start(&[-1, 0, 1]);
    mesh.wait_connected().await;
    let mut tasks = Vec::new();
    let mut n = 0;
    for a in 1..=3u16 {
        for b in 1..=3u16 {
            if a == b {
                continue;
            }
            for _ in 0..4 {
                n += 1;
                let (tx, rx) = open_pair(&mesh, a, b, n).await;
                let seed = u64::from(n) * 31;
                tasks.push(tokio::spawn(async move {
                    let (sent, got) =
                        tokio::join!(send_stream(tx, seed, 300, 4000), recv_stream(rx));
                    assert_eq!(sent.unwrap(), got.unwrap().0);
                }));
            }
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_route_between_backends_of_one_instance() {
    let mesh = Mesh::start(&[-1, 0]);
    let (tx, rx) = open_pair(&mesh, 2, 2, 1).await;
    let (sent, got) = tokio::join!(send_stream(tx, 9, 500, 8188), recv_stream(rx));
    let (got, count) = got.unwrap();
    assert_eq!(sent.unwrap(), got);
    assert_eq!(count, 500);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_receiver_gets_every_early_packet_in_order() {
    let mesh = Mesh::start(&[-1, 0]);
    mesh.wait_connected().await;
    let (p1, p2) = (mesh.proxy(1), mesh.proxy(2));
    let s = spec(&p1.addr, &p2.addr, 3);
    let opts = mesh.client_options();
    let mut tx = LogicalConn::connect(&p1.socket, s, &opts).await.unwrap();
    for i in 0..50 {
        tx.send_packet(&pattern_payload(4, i, 1000)).await.unwrap();
    }
    tx.finish().await.unwrap();
    // Everything, BYE included, now waits in proxy 2's early cache.
    wait_until("packets cached on proxy 2", || {
        p2.status.snapshot().totals.early_cache_bytes >= 50 * 1004
    })
    .await;
    let rx = LogicalConn::connect(&p2.socket, s.reversed(), &opts)
        .await
        .unwrap();
    let (got, count) = recv_stream(rx).await.unwrap();
    assert_eq!(got, expected_digest(4, 50, 1000));
    assert_eq!(count, 50);
    assert_eq!(p2.status.snapshot().totals.early_cache_bytes, 0);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_early_cache_cap_drops_the_oldest_connection_not_the_proxy() {
    let opts = MeshOptions {
        early_cache_bytes: 1 << 20,
        ..MeshOptions::default()
    };
    let mesh = Mesh::start_with(&[-1, 0], opts);
    mesh.wait_connected().await;
    let (p1, p2) = (mesh.proxy(1), mesh.proxy(2));
    let copts = mesh.client_options();
    // 8 connections x 40 x 8 KB = 2.6 MB for nobody, against a 1 MB cap.
    for n in 0..8u32 {
        let mut tx = LogicalConn::connect(&p1.socket, spec(&p1.addr, &p2.addr, 100 + n), &copts)
            .await
            .unwrap();
        for i in 0..40 {
            tx.send_packet(&pattern_payload(1, i, 8000)).await.unwrap();
        }
        tx.finish().await.unwrap();
    }
    wait_until("cache drops counted", || {
        p2.status.snapshot().totals.early_dropped_conns >= 5
    })
    .await;
    let s = p2.status.snapshot();
    assert!(
        s.totals.early_cache_bytes <= 1 << 20,
        "cache over its cap: {}",
        s.totals.early_cache_bytes
    );
    // The proxy still carries a healthy connection.
    let (tx, rx) = open_pair(&mesh, 1, 2, 1).await;
    let (sent, got) = tokio::join!(send_stream(tx, 2, 100, 3000), recv_stream(rx));
    assert_eq!(sent.unwrap(), got.unwrap().0);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_control_pauses_a_fast_sender_against_a_slow_receiver() {
    let mesh = Mesh::start(&[-1, 0]);
    mesh.wait_connected().await;
    let (tx, mut rx) = open_pair(&mesh, 1, 2, 1).await;
    const PACKETS: u64 = 4000; // 32 MB: far more than every buffer on the way.
    let sender = tokio::spawn(send_stream(tx, 5, PACKETS, 8188));
    // The receiver reads nothing; the proxies must stop pulling from the
    // sender once 100 DATA packets are unacknowledged.
    let p2 = mesh.proxy(2);
    let mut last = 0;
    let mut still = 0;
    wait_until("the sender to be paused", || {
        let now = p2
            .status
            .snapshot()
            .peers
            .iter()
            .find(|p| p.addr.dbid == 1)
            .unwrap()
            .traffic
            .packets_in;
        if now == last && now > 0 {
            still += 1;
        } else {
            still = 0;
            last = now;
        }
        still >= 100 // 0.5 s without a packet
    })
    .await;
    // 100 unacknowledged DATA packets, plus what the receiving backend's
    // socket buffer absorbed (about 200 KB), plus one ACK interval.
    assert!(
        last <= 200,
        "{last} packets crossed while the receiver read nothing"
    );
    assert!(!sender.is_finished());
    // Now drain everything: all of it arrives, intact.
    let mut d = ic_proxy_client::StreamDigest::new();
    let mut n = 0;
    while let RecvItem::Packet(p) = rx.recv().await.unwrap() {
        d.update(&p);
        n += 1;
    }
    rx.finish().await.unwrap();
    assert_eq!(n, PACKETS);
    assert_eq!(sender.await.unwrap().unwrap(), d);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_small_packet_is_delivered_without_waiting_for_more() {
    let mesh = Mesh::start(&[-1, 0]);
    mesh.wait_connected().await;
    let (mut tx, mut rx) = open_pair(&mesh, 1, 2, 1).await;
    // Ping-pong: impossible through a proxy that holds small packets.
    for i in 0..50u64 {
        let ping = pattern_payload(i, 0, 64);
        tx.send_packet(&ping).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("delivered promptly");
        assert_eq!(got.unwrap(), RecvItem::Packet(ping.into()));
        rx.send_packet(b"pong-pong").await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(5), tx.recv())
            .await
            .expect("reply promptly");
        assert_eq!(
            back.unwrap(),
            RecvItem::Packet(bytes::Bytes::from_static(b"pong-pong"))
        );
    }
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_3000_byte_packets_never_stall() {
    // Two of them merge into one DATA packet; credit is counted in DATA
    // packets on both sides, so the stream never stalls.
    let mesh = Mesh::start(&[-1, 0]);
    mesh.wait_connected().await;
    let (tx, rx) = open_pair(&mesh, 1, 2, 1).await;
    let (sent, got) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(send_stream(tx, 8, 5000, 2996), recv_stream(rx))
    })
    .await
    .expect("no stall");
    let (got, count) = got.unwrap();
    assert_eq!(count, 5000);
    assert_eq!(sent.unwrap(), got);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_ends_its_connections_and_spares_the_others() {
    let mut mesh = Mesh::start(&[-1, 0, 1]);
    mesh.wait_connected().await;
    // A healthy stream 1 -> 2 and a doomed one 1 -> 3, both mid-flight.
    let (h_tx, h_rx) = open_pair(&mesh, 1, 2, 1).await;
    let (mut d_tx, d_rx) = open_pair(&mesh, 1, 3, 2).await;
    d_tx.send_packet(b"before the crash").await.unwrap();
    let healthy =
        tokio::spawn(
            async move { tokio::join!(send_stream(h_tx, 1, 3000, 4000), recv_stream(h_rx)) },
        );
    drop(d_rx);
    mesh.stop(3).await;
    // The sender on proxy 1 sees its connection end (EOF = stop, or an error).
    let end = tokio::time::timeout(DEADLINE, d_tx.recv())
        .await
        .expect("doomed connection ends");
    assert!(
        matches!(end, Ok(RecvItem::Eof) | Ok(RecvItem::Stop) | Err(_)),
        "{end:?}"
    );
    let p1 = mesh.proxy(1);
    wait_until("peer 3 down on proxy 1", || {
        p1.status
            .snapshot()
            .peers
            .iter()
            .any(|p| p.addr.dbid == 3 && p.state == PeerState::Down)
    })
    .await;
    let (sent, got) = healthy.await.unwrap();
    assert_eq!(
        sent.unwrap(),
        got.unwrap().0,
        "the healthy stream lost bytes"
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_sees_a_premature_end_when_the_sending_side_dies() {
    let mut mesh = Mesh::start(&[-1, 0]);
    mesh.wait_connected().await;
    let (mut tx, mut rx) = open_pair(&mesh, 2, 1, 1).await;
    // Half an ic-tcp packet never completes: the stream is cut mid-packet.
    tx.send_packet(b"complete").await.unwrap();
    assert_eq!(
        rx.recv().await.unwrap(),
        RecvItem::Packet(bytes::Bytes::from_static(b"complete"))
    );
    mesh.stop(2).await;
    let end = tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("receiver learns promptly");
    assert!(matches!(end, Ok(RecvItem::Eof) | Err(_)), "{end:?}");
    drop(tx);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_a_peer_without_disturbing_the_others() {
    let mut mesh = Mesh::start(&[-1, 0]);
    mesh.wait_connected().await;
    let (tx, rx) = open_pair(&mesh, 1, 2, 1).await;
    let stream =
        tokio::spawn(async move { tokio::join!(send_stream(tx, 3, 4000, 6000), recv_stream(rx)) });

    // Add instance 3 everywhere while the stream flows.
    let (l, addr3) = reserve(3, 1);
    let mut entries = mesh.map().entries().to_vec();
    entries.push(addr3.clone());
    let bigger = ic_proxy_core::address_map::AddressMap::from_entries(entries).unwrap();
    for p in &mesh.proxies {
        p.reload(mesh.runtime_config(bigger.clone()));
    }
    mesh.spawn(addr3, l, bigger);
    mesh.wait_connected().await;
    let (t3, r3) = open_pair(&mesh, 3, 1, 9).await;
    let (a, b) = tokio::join!(send_stream(t3, 11, 100, 500), recv_stream(r3));
    assert_eq!(a.unwrap(), b.unwrap().0);

    // Remove it again.
    mesh.stop(3).await;
    let smaller = ic_proxy_core::address_map::AddressMap::from_entries(
        mesh.proxies
            .iter()
            .filter(|p| p.addr.dbid != 3)
            .map(|p| p.addr.clone())
            .collect(),
    )
    .unwrap();
    for p in mesh.proxies.iter().filter(|p| p.addr.dbid != 3) {
        p.reload(mesh.runtime_config(smaller.clone()));
    }
    let p1 = mesh.proxy(1);
    wait_until("peer 3 gone from proxy 1", || {
        let s = p1.status.snapshot();
        s.totals.map_generation >= 3 && s.peers.iter().all(|p| p.addr.dbid != 3)
    })
    .await;
    let (sent, got) = stream.await.unwrap();
    let (got, n) = got.unwrap();
    assert_eq!(n, 4000);
    assert_eq!(
        sent.unwrap(),
        got,
        "reloads disturbed an unchanged peer's stream"
    );
    let s = p1.status.snapshot();
    let p2 = s.peers.iter().find(|p| p.addr.dbid == 2).unwrap();
    assert_eq!(
        p2.traffic.reconnects, 0,
        "the link to an unchanged peer was cut"
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialect_b_backend_is_refused_clearly_instead_of_hanging() {
    let mesh = Mesh::start(&[-1, 0]);
    let p1 = mesh.proxy(1);
    let opts = ic_proxy_client::ClientOptions {
        dialect: ic_proxy_core::protocol::Dialect::B,
        ..mesh.client_options()
    };
    let r = tokio::time::timeout(
        DEADLINE,
        LogicalConn::connect(&p1.socket, spec(&p1.addr, &mesh.proxy(2).addr, 1), &opts),
    )
    .await
    .expect("answered, not hung");
    assert!(
        matches!(r, Err(ClientError::ClosedBeforeAck)),
        "{:?}",
        r.err()
    );
    wait_until("the refusal counted", || {
        p1.status.snapshot().totals.rejected_connections == 1
    })
    .await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialect_b_meshes_work_end_to_end() {
    let opts = MeshOptions {
        dialect: ic_proxy_core::protocol::Dialect::B,
        ..MeshOptions::default()
    };
    let mesh = Mesh::start_with(&[-1, 0, 1], opts);
    mesh.wait_connected().await;
    let (tx, rx) = open_pair(&mesh, 3, 1, 1).await;
    let (sent, got) = tokio::join!(send_stream(tx, 6, 500, 8188), recv_stream(rx));
    assert_eq!(sent.unwrap(), got.unwrap().0);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_byte_reaches_the_sender() {
    let mesh = Mesh::start(&[-1, 0]);
    mesh.wait_connected().await;
    let (mut tx, mut rx) = open_pair(&mesh, 1, 2, 1).await;
    tx.send_packet(b"first").await.unwrap();
    assert_eq!(
        rx.recv().await.unwrap(),
        RecvItem::Packet(bytes::Bytes::from_static(b"first"))
    );
    rx.stop().await.unwrap();
    let got = tokio::time::timeout(DEADLINE, tx.recv())
        .await
        .expect("stop arrives");
    assert_eq!(got.unwrap(), RecvItem::Stop);
    mesh.shutdown().await;
}
