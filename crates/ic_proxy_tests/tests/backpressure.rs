//! A peer link slower than the backends that feed it. What waits in the
//! proxy for that peer stays within `peer_queue_bytes` however many logical
//! connections push (their backends wait instead), it is shown as the
//! peer's `cached_bytes`, and once the peer reads again every byte of every
//! connection arrives, in order, and the queue empties.

use std::collections::HashMap;
use std::ops::Range;

use bytes::BytesMut;
use ic_proxy_client::{pattern_payload, LogicalConn, StreamDigest};
use ic_proxy_core::protocol::{ictcp_packet, PacketType};
use ic_proxy_tests::hostile::{case_options, fake_spec, packet, FakePeer, FAKE_DBID};
use ic_proxy_tests::{run_named, wait_until, Mesh, TestProxy};

/// The budget under test: far below what the connections push.
const BUDGET: usize = 256 * 1024;
/// 64 connections × up to 100 unacknowledged 8 KB DATA packets each is
/// about 52 MB that flow control alone would let into the proxy: more than
/// the kernel's socket buffers on the link can hide.
const CONNS: u32 = 64;
const PACKETS: u64 = 256;
const LEN: usize = 8188;

fn cached(p: &TestProxy) -> u64 {
    p.status
        .snapshot()
        .peers
        .iter()
        .find(|s| s.addr.dbid == FAKE_DBID)
        .map_or(0, |s| s.traffic.cached_bytes)
}

/// The ic-tcp bytes connection `n` sends.
fn expected(n: u32) -> StreamDigest {
    let mut d = StreamDigest::new();
    let mut framed = BytesMut::new();
    for i in 0..PACKETS {
        framed.clear();
        ictcp_packet(&pattern_payload(u64::from(n), i, LEN), &mut framed);
        d.update(&framed);
    }
    d
}

#[test]
fn a_slow_peer_link_bounds_what_waits_and_loses_nothing() {
    run_named("backpressure", async {
        let mesh = budgeted_mesh();
        let p = mesh.proxy(1);
        let mut fake = FakePeer::link_as_fake(p).await;
        let client = mesh.client_options();

        // Backends stream as fast as the proxy takes their data.
        let senders: Vec<_> = (0..CONNS).map(|n| spawn_sender(p, &client, n)).collect();

        // The peer reads nothing: the queue fills up to the budget, and the
        // budget holds while every sender still has data to send.
        wait_until("the queue for the slow peer to fill", || {
            cached(p) as usize > BUDGET - 2 * 8192
        })
        .await;
        for _ in 0..200 {
            let c = cached(p) as usize;
            assert!(
                c <= BUDGET,
                "{c} bytes queued for the peer, budget {BUDGET}"
            );
            tokio::task::yield_now().await;
        }
        assert!(
            senders.iter().all(|s| !s.is_finished()),
            "a sender finished although the peer reads nothing"
        );

        // Now the peer reads, acknowledges as a proxy does and checks
        // every stream.
        let got = read_as_peer(&mut fake, p, 0..CONNS).await;
        for s in senders {
            if let Err(e) = s.await.expect("sender task") {
                let warnings: Vec<_> = ic_proxy_tests::log_lines("backpressure")
                    .into_iter()
                    .filter(|l| l.level <= log::Level::Warn)
                    .map(|l| l.text)
                    .collect();
                panic!("{e}; the proxy warned: {warnings:#?}");
            }
        }
        for n in 0..CONNS {
            assert_eq!(got[&n], expected(n), "conn {n}: the bytes differ");
        }
        wait_until("the queue to empty", || cached(p) == 0).await;
        mesh.shutdown().await;
    });
}

/// One proxy whose queue for each peer holds `BUDGET` bytes.
fn budgeted_mesh() -> Mesh {
    let mut opts = case_options();
    opts.peer_queue_bytes = BUDGET;
    Mesh::start_with(&[-1], opts)
}

/// The fake peer reads the link as a proxy does until every connection of
/// `conns` (numbered as by `fake_spec`) said BYE: a DATA ACK per 10 DATA
/// packets, a BYE for each BYE. The bytes each connection carried.
async fn read_as_peer(
    fake: &mut FakePeer,
    p: &TestProxy,
    conns: Range<u32>,
) -> HashMap<u32, StreamDigest> {
    let mut got: HashMap<u32, (StreamDigest, u64, bool)> = HashMap::new();
    let d = fake.dialect;
    let mut byes = 0;
    while byes < conns.len() {
        let pkt = fake
            .recv()
            .await
            .expect("the link stays up")
            .expect("the proxy keeps the link open");
        let h = pkt.header;
        let n = h.command_id - fake_spec(p, 0).command_id;
        assert!(conns.contains(&n), "a packet of an unknown connection: {h}");
        let e = got.entry(n).or_insert((StreamDigest::new(), 0, false));
        assert!(!e.2, "conn {n}: {} after BYE", h.ptype);
        match h.ptype {
            PacketType::Data => {
                e.0.update(&pkt.payload);
                e.1 += 1;
                if e.1.is_multiple_of(10) {
                    let ack = packet(d, PacketType::DataAck, &fake_spec(p, n).reversed(), &[]);
                    fake.send(&ack).await.expect("send DATA ACK");
                }
            }
            PacketType::Bye => {
                e.2 = true;
                byes += 1;
                let bye = packet(d, PacketType::Bye, &fake_spec(p, n).reversed(), &[]);
                fake.send(&bye).await.expect("send BYE");
            }
            other => panic!("conn {n}: unexpected {other}"),
        }
    }
    got.into_iter()
        .map(|(n, (digest, ..))| (n, digest))
        .collect()
}

/// Streams `PACKETS` packets on connection `n` of the fake peer's spec.
fn spawn_sender(
    p: &TestProxy,
    client: &ic_proxy_client::ClientOptions,
    n: u32,
) -> tokio::task::JoinHandle<Result<LogicalConn, String>> {
    let spec = fake_spec(p, n);
    let (socket, client) = (p.socket.clone(), client.clone());
    tokio::spawn(async move {
        let mut c = LogicalConn::connect(&socket, spec, &client)
            .await
            .map_err(|e| format!("conn {n}: {e}"))?;
        for i in 0..PACKETS {
            c.send_packet(&pattern_payload(u64::from(n), i, LEN))
                .await
                .map_err(|e| format!("conn {n}, packet {i}: {e}"))?;
        }
        c.finish().await.map_err(|e| format!("conn {n}: {e}"))?;
        Ok(c)
    })
}

/// A link lost while the queue for its peer is full: the logical
/// connections through it end, what was queued is discarded, and the
/// budget it held comes back whole, so the next link carries a stream of
/// many budgets' worth.
#[test]
fn a_link_lost_with_a_full_queue_gives_its_budget_back() {
    run_named("backpressure-lost", async {
        let mesh = budgeted_mesh();
        let p = mesh.proxy(1);
        let fake = FakePeer::link_as_fake(p).await;
        let client = mesh.client_options();
        let senders: Vec<_> = (0..CONNS).map(|n| spawn_sender(p, &client, n)).collect();
        wait_until("the queue for the silent peer to fill", || {
            cached(p) as usize > BUDGET - 2 * 8192
        })
        .await;

        // The link goes: every connection through it ends, visibly.
        drop(fake);
        for s in senders {
            let r = s.await.expect("sender task");
            assert!(r.is_err(), "a sender finished although its link was lost");
        }
        wait_until("the lost link's queue to give its budget back", || {
            cached(p) == 0
        })
        .await;

        // A new link: one stream of 8 budgets goes through, every byte.
        let mut fake = FakePeer::link_as_fake(p).await;
        let n = CONNS;
        let sender = spawn_sender(p, &client, n);
        let got = read_as_peer(&mut fake, p, n..n + 1).await;
        sender.await.expect("sender task").expect("the stream");
        assert_eq!(got[&n], expected(n), "the bytes differ");
        wait_until("the queue to empty", || cached(p) == 0).await;
        mesh.shutdown().await;
    });
}
