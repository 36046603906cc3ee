//! The hostile-input catalogue: what a real peer or backend never sends,
//! sent to real proxies over raw TCP (the peer port) and raw Unix
//! connections (the backend socket). Every case asserts that only the
//! offending connection was dropped or the packet ignored, with the counter
//! that says so and the log line that explains it; and, through
//! [`Case::finish`], that the healthy checksummed streams crossing the same
//! proxies meanwhile arrived intact and in order, that the link between the
//! real proxies never dropped, and that both proxies still carry new
//! logical connections.
//!
//! The mesh of every case: proxy 1 (dbid 1, content -1) and proxy 2 (dbid 2,
//! content 0, which dials 1), plus map entry dbid 3 (content 1) with nobody
//! behind it: the identity fake peers claim. Attacks go to proxy 1.

use std::time::Duration;

use bytes::BytesMut;
use ic_proxy_client::{LogicalConn, RecvItem};
use ic_proxy_core::protocol::{ictcp_packet, Dialect, Endpoint, PacketType};
use ic_proxy_core::{PeerState, StatusSnapshot};
use ic_proxy_tests::hostile::*;
use ic_proxy_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// One catalogue case: a test with its own runtime (named after it, so its
/// log lines are its own), a [`Case`] started before the body and finished
/// after it.
macro_rules! hostile {
    ($name:ident, |$c:ident| $body:block) => {
        hostile!($name, case_options(), |$c| $body);
    };
    ($name:ident, $opts:expr, |$c:ident| $body:block) => {
        #[test]
        fn $name() {
            run_named(stringify!($name), async move {
                let $c = Case::start(stringify!($name), $opts).await;
                $body
                $c.finish().await;
            });
        }
    };
}

fn rejected(s: &StatusSnapshot) -> u64 {
    s.totals.rejected_connections
}
fn dropped(s: &StatusSnapshot) -> u64 {
    s.totals.dropped_packets
}
fn flow(s: &StatusSnapshot) -> u64 {
    s.totals.flow_violations
}
fn early_dropped(s: &StatusSnapshot) -> u64 {
    s.totals.early_dropped_conns
}
fn auth_failures(s: &StatusSnapshot) -> u64 {
    s.totals.auth_failures
}

const C: Dialect = Dialect::C;
const HL: usize = 36;
const MAX: usize = 8192;

fn fake_endpoint() -> Endpoint {
    Endpoint {
        content: FAKE_CONTENT,
        dbid: FAKE_DBID,
        pid: 4242,
    }
}

/// Sends `bytes` to proxy 1's peer port as one connection, half-closes, and
/// checks the proxy refused it: the counter moved, and a log line names this
/// connection and contains `why`.
async fn refused_on_peer_port(c: &Case, bytes: &[u8], why: &str) {
    let p1 = c.proxy(1);
    let mut s = connect_peer_port(p1).await;
    let me = s.local_addr().unwrap().to_string();
    write_ignoring_reset(&mut s, bytes).await;
    let _ = s.shutdown().await;
    read_until_closed(&mut s).await.expect("the proxy hangs up");
    c.wait_delta(1, rejected, 1).await;
    let line = c
        .wait_log(&["refused peer connection", &format!("from {me}:"), why])
        .await;
    assert!(line.starts_with("ic-proxy: "), "{line}");
    // That connection only, and one line for it.
    assert_eq!(c.delta(1, rejected), 1);
    assert_eq!(count_lines(c, &format!("from {me}:")), 1);
}

/// The same on proxy 1's backend socket.
async fn refused_on_unix_socket(c: &Case, bytes: &[u8], why: &str) {
    let mut s = UnixStream::connect(&c.proxy(1).socket).await.unwrap();
    write_ignoring_reset(&mut s, bytes).await;
    let _ = s.shutdown().await;
    read_until_closed(&mut s).await.expect("the proxy hangs up");
    c.wait_delta(1, rejected, 1).await;
    c.wait_log(&["refused backend connection", why]).await;
    assert_eq!(c.delta(1, rejected), 1);
    assert_eq!(count_lines(c, "refused backend connection"), 1);
}

// ---------------------------------------------------------------------------
// The peer port, before any handshake.

hostile!(peer_port_random_16_bytes, |c| {
    refused_on_peer_port(&c, &random_bytes(1, 16), "").await;
});

hostile!(peer_port_random_4_kib, |c| {
    refused_on_peer_port(&c, &random_bytes(2, 4096), "bad magic").await;
});

hostile!(peer_port_random_1_mib, |c| {
    refused_on_peer_port(&c, &random_bytes(3, 1 << 20), "bad magic").await;
});

hostile!(peer_port_random_bytes_on_8_connections_at_once, |c| {
    let sizes = [1usize, 35, 36, 37, 100, 4096, 65536, 1 << 20];
    let mut tasks = Vec::new();
    for (i, n) in sizes.into_iter().enumerate() {
        let mut s = connect_peer_port(c.proxy(1)).await;
        tasks.push(tokio::spawn(async move {
            write_ignoring_reset(&mut s, &random_bytes(10 + i as u64, n)).await;
            let _ = s.shutdown().await;
            read_until_closed(&mut s).await
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("the proxy hangs up");
    }
    c.wait_delta(1, rejected, 8).await;
    c.wait_log(&["refused peer connection", "bad magic"]).await;
});

hostile!(peer_port_bad_magic_then_random_bytes, |c| {
    // Upstream's ic_proxy_socket regress test: a bad magic, then long
    // random strings.
    let mut b = peer_hello(C, fake_endpoint(), proxy_endpoint(c.proxy(1)));
    b[0..4].copy_from_slice(&0xDEAD_BEEFu32.to_ne_bytes());
    b.extend(random_bytes(4, 40_000));
    refused_on_peer_port(&c, &b, "bad magic 0xdeadbeef").await;
});

hostile!(peer_port_dialect_b_peer_hello, |c| {
    let b = peer_hello(Dialect::B, fake_endpoint(), proxy_endpoint(c.proxy(1)));
    refused_on_peer_port(&c, &b, "dialect mismatch").await;
});

hostile!(peer_port_dialect_b_hello_then_40_kib, |c| {
    // What made the C proxy crash with SIGSEGV.
    let s = fake_spec(c.proxy(1), 1);
    let mut b = s.hello(Dialect::B).encode(Dialect::B).to_vec();
    b.extend(random_bytes(5, 40_000));
    refused_on_peer_port(&c, &b, "dialect mismatch").await;
});

hostile!(peer_port_length_zero, |c| {
    let b = raw_header(C, 0, 1, fake_endpoint(), proxy_endpoint(c.proxy(1)));
    refused_on_peer_port(&c, &b, "packet length 0 is below the header length 36").await;
});

hostile!(peer_port_length_one_below_the_header, |c| {
    let b = raw_header(C, 35, 1, fake_endpoint(), proxy_endpoint(c.proxy(1)));
    refused_on_peer_port(&c, &b, "packet length 35 is below the header length 36").await;
});

hostile!(peer_port_message_with_a_payload, |c| {
    // A PEER HELLO one byte longer than its header: messages carry nothing.
    let mut b = raw_header(C, 37, 1, fake_endpoint(), proxy_endpoint(c.proxy(1)));
    b.push(0);
    refused_on_peer_port(
        &c,
        &b,
        "PEER HELLO is a header-only message but its length is 37",
    )
    .await;
});

hostile!(peer_port_length_one_above_the_maximum, |c| {
    let len = (HL + MAX + 1) as u16;
    let mut b = raw_header(C, len, 0, fake_endpoint(), proxy_endpoint(c.proxy(1)));
    b.extend(random_bytes(6, MAX + 1));
    refused_on_peer_port(&c, &b, "packet length 8229 is above the maximum 8228").await;
});

hostile!(peer_port_length_65535, |c| {
    let mut b = raw_header(C, u16::MAX, 0, fake_endpoint(), proxy_endpoint(c.proxy(1)));
    b.extend(random_bytes(7, 1000));
    refused_on_peer_port(&c, &b, "packet length 65535 is above the maximum").await;
});

hostile!(peer_port_unknown_type_8, |c| {
    let b = raw_header(C, HL as u16, 8, fake_endpoint(), proxy_endpoint(c.proxy(1)));
    refused_on_peer_port(&c, &b, "unknown packet type 8").await;
});

hostile!(peer_port_unknown_type_ffff, |c| {
    let b = raw_header(
        C,
        HL as u16,
        0xFFFF,
        fake_endpoint(),
        proxy_endpoint(c.proxy(1)),
    );
    refused_on_peer_port(&c, &b, "unknown packet type 65535").await;
});

hostile!(peer_port_unknown_type_badd, |c| {
    let b = raw_header(
        C,
        HL as u16,
        0xBADD,
        fake_endpoint(),
        proxy_endpoint(c.proxy(1)),
    );
    refused_on_peer_port(&c, &b, "unknown packet type 47837").await;
});

hostile!(peer_hello_from_a_dbid_not_in_the_map, |c| {
    let me = Endpoint {
        dbid: 99,
        ..fake_endpoint()
    };
    let b = peer_hello(C, me, proxy_endpoint(c.proxy(1)));
    refused_on_peer_port(
        &c,
        &b,
        "PEER HELLO from dbid 99, which is not in the address map",
    )
    .await;
});

hostile!(peer_hello_claiming_the_proxys_own_dbid, |c| {
    let p1 = proxy_endpoint(c.proxy(1));
    let b = peer_hello(C, p1, p1);
    refused_on_peer_port(&c, &b, "claims this instance's own dbid 1").await;
});

hostile!(peer_hello_claiming_an_already_connected_dbid, |c| {
    // dbid 2 is linked: the first link wins, the impostor is refused, and
    // the real link is not touched (Case::finish checks it never dropped).
    let b = peer_hello(C, proxy_endpoint(c.proxy(2)), proxy_endpoint(c.proxy(1)));
    refused_on_peer_port(&c, &b, "dbid 2 is already connected").await;
});

hostile!(peer_hello_addressed_to_another_dbid, |c| {
    let b = peer_hello(C, fake_endpoint(), proxy_endpoint(c.proxy(2)));
    refused_on_peer_port(
        &c,
        &b,
        "PEER HELLO is addressed to dbid 2 but this instance is dbid 1",
    )
    .await;
});

hostile!(peer_hello_ack_as_the_first_packet, |c| {
    let len = HL as u16;
    let b = header(
        PacketType::PeerHelloAck,
        len,
        fake_endpoint(),
        proxy_endpoint(c.proxy(1)),
    )
    .encode(C)
    .to_vec();
    refused_on_peer_port(&c, &b, "expected PEER HELLO, got PEER HELLO ACK").await;
});

hostile!(backend_hello_as_the_first_packet_on_the_peer_port, |c| {
    let b = fake_spec(c.proxy(1), 1)
        .reversed()
        .hello(C)
        .encode(C)
        .to_vec();
    refused_on_peer_port(&c, &b, "expected PEER HELLO, got HELLO").await;
});

hostile!(data_before_peer_hello, |c| {
    let mut payload = BytesMut::new();
    ictcp_packet(b"too early", &mut payload);
    let b = packet(
        C,
        PacketType::Data,
        &fake_spec(c.proxy(1), 1).reversed(),
        &payload,
    );
    refused_on_peer_port(&c, &b, "expected PEER HELLO, got DATA").await;
});

hostile!(peer_port_half_open_connection, |c| {
    // Connects and says nothing: dropped at the handshake timeout (1 s here).
    let mut s = connect_peer_port(c.proxy(1)).await;
    let me = s.local_addr().unwrap().to_string();
    read_until_closed(&mut s)
        .await
        .expect("dropped at the timeout");
    c.wait_delta(1, rejected, 1).await;
    c.wait_log(&[&format!("from {me}:"), "no PEER HELLO in time"])
        .await;
});

hostile!(peer_port_partial_header_then_silence, |c| {
    let mut s = connect_peer_port(c.proxy(1)).await;
    let hello = peer_hello(C, fake_endpoint(), proxy_endpoint(c.proxy(1)));
    s.write_all(&hello[..10]).await.unwrap();
    read_until_closed(&mut s)
        .await
        .expect("dropped at the timeout");
    c.wait_delta(1, rejected, 1).await;
    c.wait_log(&["no PEER HELLO in time"]).await;
});

hostile!(peer_port_trickle_slower_than_the_handshake_timeout, |c| {
    // One byte every 100 ms: the 36-byte PEER HELLO would take 3.6 s.
    let mut s = connect_peer_port(c.proxy(1)).await;
    let hello = peer_hello(C, fake_endpoint(), proxy_endpoint(c.proxy(1)));
    let (mut rd, mut wr) = s.split();
    trickle_until_dropped(&mut rd, &mut wr, &hello).await;
    c.wait_delta(1, rejected, 1).await;
    c.wait_log(&["no PEER HELLO in time"]).await;
    assert_ne!(
        peer_state(c.proxy(1), FAKE_DBID),
        Some(PeerState::Connected)
    );
});

hostile!(peer_port_connection_storm, |c| {
    // 300 connections opened, then all closed at once.
    let mut conns = Vec::new();
    for _ in 0..300 {
        conns.push(connect_peer_port(c.proxy(1)).await);
    }
    drop(conns);
    c.wait_delta(1, rejected, 300).await;
    // "closed before a whole packet", or on a slow machine "no PEER HELLO
    // in time" for the first ones, which waited a second to be closed.
    c.wait_log(&["refused peer connection"]).await;
});

hostile!(
    peer_hello_claiming_a_dbid_this_proxy_dials_itself,
    MeshOptions {
        // dbid 4 (content -1, a standby nobody runs): proxy 2 (content 0)
        // dials it; proxy 1 (same content) never links with it.
        absent: vec![(FAKE_DBID, FAKE_CONTENT), (4, -1)],
        ..case_options()
    },
    |c| {
        let standby = Endpoint {
            content: -1,
            dbid: 4,
            pid: 1,
        };
        let p2 = c.proxy(2);
        let mut s = connect_peer_port(p2).await;
        write_ignoring_reset(&mut s, &peer_hello(C, standby, proxy_endpoint(p2))).await;
        read_until_closed(&mut s).await.expect("refused");
        c.wait_delta(2, rejected, 1).await;
        c.wait_log(&["refused peer connection", "dbid 4", "dials"])
            .await;
        assert_ne!(peer_state(p2, 4), Some(PeerState::Connected));
        // Same content as proxy 1: no link may exist between them at all.
        let p1 = c.proxy(1);
        let mut s = connect_peer_port(p1).await;
        write_ignoring_reset(&mut s, &peer_hello(C, standby, proxy_endpoint(p1))).await;
        read_until_closed(&mut s).await.expect("refused");
        c.wait_delta(1, rejected, 1).await;
        c.wait_log(&["refused peer connection", "dbid 4", "same content"])
            .await;
        assert_eq!(peer_state(p1, 4), Some(PeerState::Unlinked));
    }
);

// ---------------------------------------------------------------------------
// Peer authentication under attack (both real proxies share a secret).

fn auth_options() -> MeshOptions {
    MeshOptions {
        peer_secret: Some(std::sync::Arc::from(&b"the cluster's shared secret"[..])),
        ..case_options()
    }
}

/// Sends PEER HELLO as the fake, reads the ACK and the challenge; returns
/// the stream.
async fn hello_until_challenge(c: &Case) -> FakePeer {
    let mut f = FakePeer::link(c.proxy(1), fake_endpoint())
        .await
        .expect("PEER HELLO ACK");
    let challenge = f.recv().await.unwrap().expect("a challenge");
    assert_eq!(
        challenge.header.session_id,
        ic_proxy_core::auth::AUTH_SESSION_ID
    );
    f
}

hostile!(
    auth_peer_that_never_answers_the_challenge,
    auth_options(),
    |c| {
        let mut f = hello_until_challenge(&c).await;
        read_until_closed(&mut f.stream)
            .await
            .expect("dropped at the timeout");
        c.wait_delta(1, auth_failures, 1).await;
        c.wait_delta(1, rejected, 1).await;
        c.wait_log(&["did not answer the challenge"]).await;
    }
);

hostile!(
    auth_random_bytes_instead_of_the_response,
    auth_options(),
    |c| {
        let mut f = hello_until_challenge(&c).await;
        write_ignoring_reset(&mut f.stream, &random_bytes(8, 4096)).await;
        read_until_closed(&mut f.stream).await.expect("refused");
        c.wait_delta(1, auth_failures, 1).await;
        c.wait_log(&["refused peer connection", "bad magic"]).await;
    }
);

hostile!(auth_malformed_response, auth_options(), |c| {
    let mut f = hello_until_challenge(&c).await;
    let from = ConnFrom::fake_to(c.proxy(1));
    let bad = packet(C, PacketType::Data, &from.auth(), b"ICPA\x01\x02 too short");
    f.send(&bad).await.unwrap();
    read_until_closed(&mut f.stream).await.expect("refused");
    c.wait_delta(1, auth_failures, 1).await;
    c.wait_log(&["refused peer connection", "not an authentication message"])
        .await;
});

hostile!(auth_forged_response, auth_options(), |c| {
    let mut f = hello_until_challenge(&c).await;
    let from = ConnFrom::fake_to(c.proxy(1));
    let forged = ic_proxy_core::auth::AuthMessage::Response {
        nonce_c: [7; 32],
        mac: [0; 32],
    }
    .encode();
    f.send(&packet(C, PacketType::Data, &from.auth(), &forged))
        .await
        .unwrap();
    read_until_closed(&mut f.stream).await.expect("refused");
    c.wait_delta(1, auth_failures, 1).await;
    c.wait_log(&["refused peer connection", "wrong secret"])
        .await;
    assert_ne!(
        peer_state(c.proxy(1), FAKE_DBID),
        Some(PeerState::Connected)
    );
});

/// Keys of packets a fake peer sends outside any logical connection.
struct ConnFrom {
    me: Endpoint,
    to: Endpoint,
}

impl ConnFrom {
    fn fake_to(p: &TestProxy) -> ConnFrom {
        ConnFrom {
            me: fake_endpoint(),
            to: proxy_endpoint(p),
        }
    }

    /// The key of authentication messages.
    fn auth(&self) -> ic_proxy_client::ConnSpec {
        ic_proxy_client::ConnSpec {
            session_id: ic_proxy_core::auth::AUTH_SESSION_ID,
            command_id: 0,
            send_slice: 0,
            recv_slice: 0,
            local: self.me,
            remote: self.to,
        }
    }
}

// ---------------------------------------------------------------------------
// The backend socket.

fn hello_bytes(c: &Case, n: u32) -> Vec<u8> {
    let p1 = c.proxy(1);
    spec(&p1.addr, &c.proxy(2).addr, 100 + n)
        .hello(C)
        .encode(C)
        .to_vec()
}

hostile!(unix_random_16_bytes, |c| {
    refused_on_unix_socket(&c, &random_bytes(20, 16), "").await;
});

hostile!(unix_random_64_kib, |c| {
    refused_on_unix_socket(&c, &random_bytes(21, 65536), "bad magic").await;
});

hostile!(unix_random_bytes_on_8_connections_at_once, |c| {
    let sizes = [1usize, 35, 36, 37, 100, 4096, 65536, 1 << 20];
    let mut tasks = Vec::new();
    for (i, n) in sizes.into_iter().enumerate() {
        let mut s = UnixStream::connect(&c.proxy(1).socket).await.unwrap();
        tasks.push(tokio::spawn(async move {
            write_ignoring_reset(&mut s, &random_bytes(30 + i as u64, n)).await;
            let _ = s.shutdown().await;
            read_until_closed(&mut s).await
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("the proxy hangs up");
    }
    c.wait_delta(1, rejected, 8).await;
    c.wait_log(&["refused backend connection", "bad magic"])
        .await;
});

hostile!(unix_hello_with_a_bad_magic, |c| {
    let mut b = hello_bytes(&c, 1);
    b[0..4].copy_from_slice(&0x0BAD_F00Du32.to_ne_bytes());
    refused_on_unix_socket(&c, &b, "bad magic 0x0badf00d").await;
});

hostile!(unix_hello_in_dialect_b, |c| {
    let s = spec(&c.proxy(1).addr, &c.proxy(2).addr, 1);
    let b = s.hello(Dialect::B).encode(Dialect::B).to_vec();
    refused_on_unix_socket(&c, &b, "dialect mismatch").await;
});

hostile!(unix_hello_length_zero, |c| {
    let mut b = hello_bytes(&c, 1);
    b[4..6].copy_from_slice(&0u16.to_ne_bytes());
    refused_on_unix_socket(&c, &b, "packet length 0 is below the header length 36").await;
});

hostile!(unix_hello_length_above_the_maximum, |c| {
    let mut b = hello_bytes(&c, 1);
    b[4..6].copy_from_slice(&((HL + MAX + 1) as u16).to_ne_bytes());
    refused_on_unix_socket(&c, &b, "above the maximum 8228").await;
});

hostile!(unix_hello_with_a_payload, |c| {
    let mut b = hello_bytes(&c, 1);
    b[4..6].copy_from_slice(&(HL as u16 + 4).to_ne_bytes());
    b.extend_from_slice(b"more");
    refused_on_unix_socket(
        &c,
        &b,
        "HELLO is a header-only message but its length is 40",
    )
    .await;
});

hostile!(unix_unknown_type_badd, |c| {
    let mut b = hello_bytes(&c, 1);
    b[6..8].copy_from_slice(&0xBADDu16.to_ne_bytes());
    refused_on_unix_socket(&c, &b, "unknown packet type 47837").await;
});

hostile!(unix_peer_hello_instead_of_hello, |c| {
    let b = peer_hello(C, proxy_endpoint(c.proxy(1)), proxy_endpoint(c.proxy(2)));
    refused_on_unix_socket(&c, &b, "expected HELLO, got PEER HELLO").await;
});

hostile!(unix_data_before_hello, |c| {
    let s = spec(&c.proxy(1).addr, &c.proxy(2).addr, 1);
    let b = packet(C, PacketType::Data, &s, b"\x08\x00\x00\x00data");
    refused_on_unix_socket(&c, &b, "expected HELLO, got DATA").await;
});

hostile!(unix_hello_from_another_instances_dbid, |c| {
    // A HELLO whose source is a backend of dbid 2, sent to proxy 1.
    let s = spec(&c.proxy(2).addr, &c.proxy(1).addr, 1);
    let b = s.hello(C).encode(C).to_vec();
    refused_on_unix_socket(&c, &b, "HELLO from dbid 2 but this proxy serves dbid 1").await;
});

hostile!(unix_hello_to_a_dbid_not_in_the_map, |c| {
    let nowhere = ic_proxy_core::address_map::PeerAddr {
        dbid: 99,
        content: 5,
        host: String::new(),
        port: 0,
    };
    let s = spec(&c.proxy(1).addr, &nowhere, 1);
    let b = s.hello(C).encode(C).to_vec();
    refused_on_unix_socket(&c, &b, "HELLO for dbid 99, which is not in the address map").await;
});

/// A raw backend on proxy 1 that said HELLO and got its ACK, and the
/// well-behaved receiver of its logical connection on proxy 2.
async fn raw_sender(c: &Case, n: u32) -> (UnixStream, LogicalConn) {
    let p1 = c.proxy(1);
    let s = spec(&p1.addr, &c.proxy(2).addr, 100 + n);
    let opts = c.mesh.client_options();
    let rx = LogicalConn::connect(&c.proxy(2).socket, s.reversed(), &opts);
    let mut raw = UnixStream::connect(&p1.socket).await.unwrap();
    raw.write_all(&s.hello(C).encode(C)).await.unwrap();
    let mut ack = [0u8; HL];
    raw.read_exact(&mut ack).await.unwrap();
    assert_eq!(ack[..], s.hello_ack(C).encode(C)[..]);
    (raw, rx.await.expect("receiver"))
}

/// Sends one good ic-tcp packet, then a length field of `len`: the good one
/// arrives, then the receiver's stream ends; the sender is cut.
async fn bad_ictcp_length(c: &Case, n: u32, len: u32) {
    let (mut raw, mut rx) = raw_sender(c, n).await;
    let mut b = BytesMut::new();
    ictcp_packet(b"before the garbage", &mut b);
    b.extend_from_slice(&len.to_ne_bytes());
    b.extend_from_slice(&random_bytes(u64::from(len), 64));
    raw.write_all(&b).await.unwrap();
    assert_eq!(
        rx.recv().await.unwrap(),
        RecvItem::Packet(bytes::Bytes::from_static(b"before the garbage"))
    );
    let end = tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("ends");
    assert!(matches!(end, Ok(RecvItem::Eof)), "{end:?}");
    read_until_closed(&mut raw)
        .await
        .expect("the sender is cut");
}

hostile!(unix_ictcp_lengths_0_to_3_after_hello, |c| {
    for len in 0..4 {
        bad_ictcp_length(&c, len, len).await;
    }
    c.wait_delta(1, rejected, 4).await;
    for len in 0..4 {
        c.wait_log(&[&format!("ic-tcp packet length {len} is below 4"), "closing"])
            .await;
    }
});

hostile!(unix_ictcp_length_one_above_max_packet_size, |c| {
    bad_ictcp_length(&c, 1, MAX as u32 + 1).await;
    c.wait_delta(1, rejected, 1).await;
    c.wait_log(&["ic-tcp packet length 8193 is above gp_max_packet_size 8192"])
        .await;
});

hostile!(unix_ictcp_length_u32_max, |c| {
    bad_ictcp_length(&c, 1, u32::MAX).await;
    c.wait_delta(1, rejected, 1).await;
    c.wait_log(&["ic-tcp packet length 4294967295 is above"])
        .await;
});

hostile!(unix_half_open_connection, |c| {
    let mut s = UnixStream::connect(&c.proxy(1).socket).await.unwrap();
    read_until_closed(&mut s)
        .await
        .expect("dropped at the timeout");
    c.wait_delta(1, rejected, 1).await;
    c.wait_log(&["refused backend connection", "no HELLO in time"])
        .await;
});

hostile!(unix_partial_hello_then_silence, |c| {
    let mut s = UnixStream::connect(&c.proxy(1).socket).await.unwrap();
    s.write_all(&hello_bytes(&c, 1)[..20]).await.unwrap();
    read_until_closed(&mut s)
        .await
        .expect("dropped at the timeout");
    c.wait_delta(1, rejected, 1).await;
    c.wait_log(&["refused backend connection", "no HELLO in time"])
        .await;
});

hostile!(unix_trickle_slower_than_the_handshake_timeout, |c| {
    let s = UnixStream::connect(&c.proxy(1).socket).await.unwrap();
    let hello = hello_bytes(&c, 1);
    let (mut rd, mut wr) = s.into_split();
    trickle_until_dropped(&mut rd, &mut wr, &hello).await;
    c.wait_delta(1, rejected, 1).await;
    c.wait_log(&["no HELLO in time"]).await;
});

hostile!(unix_trickled_hello_and_packets_still_work, |c| {
    // One byte at a time, well within the handshake timeout: a slow
    // backend is served, and nobody else waits for it.
    let p1 = c.proxy(1);
    let s = spec(&p1.addr, &c.proxy(2).addr, 150);
    let rx = tokio::spawn({
        let path = c.proxy(2).socket.clone();
        let opts = c.mesh.client_options();
        async move { recv_stream(LogicalConn::connect(&path, s.reversed(), &opts).await?).await }
    });
    let mut raw = UnixStream::connect(&p1.socket).await.unwrap();
    for b in s.hello(C).encode(C).iter() {
        raw.write_all(&[*b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut ack = [0u8; HL];
    raw.read_exact(&mut ack).await.unwrap();
    let mut stream = BytesMut::new();
    for i in 0..3 {
        ictcp_packet(&ic_proxy_client::pattern_payload(15, i, 100), &mut stream);
    }
    for b in stream.iter() {
        raw.write_all(&[*b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    raw.shutdown().await.unwrap();
    let (got, n) = rx.await.unwrap().expect("receiver");
    assert_eq!((got, n), (expected_digest(15, 3, 100), 3));
    assert_eq!(c.delta(1, rejected), 0);
});

hostile!(unix_connection_storm, |c| {
    let mut conns = Vec::new();
    for _ in 0..300 {
        conns.push(UnixStream::connect(&c.proxy(1).socket).await.unwrap());
    }
    drop(conns);
    c.wait_delta(1, rejected, 300).await;
    c.wait_log(&["refused backend connection"]).await;
});

hostile!(unix_duplicate_hello_waits_for_the_first_session, |c| {
    // Design: a second backend with the same key (the next statement
    // reusing it, or an impostor) gets its HELLO ACK but is not read until
    // the first session closes; then it is served, in order, as the next
    // statement.
    let (p1, p2) = (c.proxy(1), c.proxy(2));
    let s = spec(&p1.addr, &p2.addr, 160);
    let opts = c.mesh.client_options();
    let (first, rx1) = tokio::join!(
        LogicalConn::connect(&p1.socket, s, &opts),
        LogicalConn::connect(&p2.socket, s.reversed(), &opts)
    );
    let (mut first, mut rx1) = (first.unwrap(), rx1.unwrap());
    // The first session is registered (after its HELLO ACK was written).
    c.wait_delta(1, |s| s.totals.sessions_total, 1).await;
    let mut second = LogicalConn::connect(&p1.socket, s, &opts).await.unwrap();
    second.send_packet(b"second statement").await.unwrap();
    second.finish().await.unwrap();
    c.wait_log(&["waiting for the previous session with this key"])
        .await;
    first.send_packet(b"first statement").await.unwrap();
    first.finish().await.unwrap();
    assert_eq!(
        rx1.recv().await.unwrap(),
        RecvItem::Packet(bytes::Bytes::from_static(b"first statement"))
    );
    assert_eq!(rx1.recv().await.unwrap(), RecvItem::Eof);
    rx1.finish().await.unwrap();
    assert_eq!(first.recv().await.unwrap(), RecvItem::Eof);
    drop(first);
    drop(rx1);
    let mut rx2 = LogicalConn::connect(&p2.socket, s.reversed(), &opts)
        .await
        .unwrap();
    assert_eq!(
        rx2.recv().await.unwrap(),
        RecvItem::Packet(bytes::Bytes::from_static(b"second statement"))
    );
    assert_eq!(rx2.recv().await.unwrap(), RecvItem::Eof);
    rx2.finish().await.unwrap();
    assert_eq!(second.recv().await.unwrap(), RecvItem::Eof);
});

// ---------------------------------------------------------------------------
// A fake peer that linked itself as the absent dbid 3, then misbehaves.

fn ictcp(payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    ictcp_packet(payload, &mut b);
    b.to_vec()
}

fn peer_stats(p: &TestProxy, dbid: u16) -> ic_proxy_core::PeerSnapshot {
    p.status
        .snapshot()
        .peers
        .into_iter()
        .find(|s| s.addr.dbid == dbid)
        .expect("peer in the status")
}

/// Waits until proxy `p` sees its link to the fake as lost, with `why` in
/// its last error.
async fn fake_link_lost(c: &Case, why: &str) {
    let p1 = c.proxy(1);
    wait_until("the fake's link dropped", || {
        let s = peer_stats(p1, FAKE_DBID);
        s.state == PeerState::Down && s.last_error.contains(why)
    })
    .await;
    c.wait_log(&["peer dbid 3: link lost", why]).await;
}

hostile!(peer_trickling_one_byte_at_a_time_still_works, |c| {
    let p1 = c.proxy(1);
    let mut s = connect_peer_port(p1).await;
    for b in peer_hello(C, fake_endpoint(), proxy_endpoint(p1)) {
        s.write_all(&[b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut ack = [0u8; HL];
    s.read_exact(&mut ack).await.expect("PEER HELLO ACK");
    let conn = fake_spec(p1, 4);
    let mut rx = LogicalConn::connect(&p1.socket, conn, &c.mesh.client_options())
        .await
        .unwrap();
    let mut bytes = packet(
        C,
        PacketType::Data,
        &conn.reversed(),
        &ictcp(b"slow but fine"),
    );
    bytes.extend(packet(C, PacketType::Bye, &conn.reversed(), b""));
    for b in bytes {
        s.write_all(&[b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        rx.recv().await.unwrap(),
        RecvItem::Packet(bytes::Bytes::from_static(b"slow but fine"))
    );
    assert_eq!(rx.recv().await.unwrap(), RecvItem::Eof);
    assert_eq!(peer_stats(p1, FAKE_DBID).traffic.packets_in, 2);
    assert_eq!(c.delta(1, rejected), 0);
});

hostile!(
    data_for_an_unknown_key_is_cached_then_expires,
    MeshOptions {
        early_packet_ttl: Duration::from_secs(1),
        ..case_options()
    },
    |c| {
        let p1 = c.proxy(1);
        let mut f = FakePeer::link_as_fake(p1).await;
        let nobody = fake_spec(p1, 7);
        f.send_packet(PacketType::Data, &nobody.reversed(), &ictcp(&[1; 1000]))
            .await
            .unwrap();
        wait_until("the packet cached", || {
            p1.status.snapshot().totals.early_cache_bytes >= 1000
        })
        .await;
        c.wait_delta(1, early_dropped, 1).await;
        c.wait_log(&["nobody claimed them in time", &nobody.to_string()])
            .await;
    }
);

hostile!(
    bye_for_an_unknown_key_is_cached_then_expires,
    MeshOptions {
        early_packet_ttl: Duration::from_secs(1),
        ..case_options()
    },
    |c| {
        let p1 = c.proxy(1);
        let mut f = FakePeer::link_as_fake(p1).await;
        let nobody = fake_spec(p1, 8);
        f.send_packet(PacketType::Bye, &nobody.reversed(), b"")
            .await
            .unwrap();
        c.wait_delta(1, early_dropped, 1).await;
        c.wait_log(&["nobody claimed them in time", &nobody.to_string()])
            .await;
    }
);

const SMALL_CAP: usize = 256 << 10;

hostile!(
    early_flood_eight_times_the_cache_cap,
    MeshOptions {
        early_cache_bytes: SMALL_CAP,
        ..case_options()
    },
    |c| {
        let p1 = c.proxy(1);
        let mut f = FakePeer::link_as_fake(p1).await;
        // 64 keys nobody claims x 8 packets x 4 KB = 2 MiB against 256 KiB.
        let mut max_seen = 0;
        for k in 0..64 {
            let nobody = fake_spec(p1, 100 + k);
            let mut b = Vec::new();
            for i in 0..8 {
                let p = ictcp(&ic_proxy_client::pattern_payload(u64::from(k), i, 4092));
                b.extend(packet(C, PacketType::Data, &nobody.reversed(), &p));
            }
            f.send(&b).await.unwrap();
            max_seen = max_seen.max(p1.status.snapshot().totals.early_cache_bytes);
        }
        c.wait_delta(1, early_dropped, 50).await;
        let s = p1.status.snapshot();
        max_seen = max_seen.max(s.totals.early_cache_bytes);
        assert!(
            max_seen <= SMALL_CAP as u64,
            "the cache reached {max_seen} bytes, over its cap {SMALL_CAP}"
        );
        c.wait_log(&["the early-packet cache is full"]).await;
        // The link that flooded is still up: dropping cached packets is
        // not a protocol error.
        assert_eq!(peer_state(p1, FAKE_DBID), Some(PeerState::Connected));
    }
);

hostile!(data_whose_source_is_not_the_links_peer, |c| {
    // DATA claiming to come from dbid 2, with the key of the healthy
    // stream 2 -> 1: never injected into it.
    let (p1, p2) = (c.proxy(1), c.proxy(2));
    let mut f = FakePeer::link_as_fake(p1).await;
    let victim = spec(&p2.addr, &p1.addr, 2);
    f.send_packet(PacketType::Data, &victim, &ictcp(b"injected"))
        .await
        .unwrap();
    c.wait_delta(1, dropped, 1).await;
    c.wait_log(&[
        "dropped a packet",
        "DATA from dbid 2 to dbid 1 arrived on the link of dbid 3",
    ])
    .await;
    assert_eq!(peer_stats(p1, FAKE_DBID).traffic.drops, 1);
});

hostile!(data_for_another_instance, |c| {
    let (p1, p2) = (c.proxy(1), c.proxy(2));
    let mut f = FakePeer::link_as_fake(p1).await;
    let elsewhere = fake_spec(p2, 1).reversed();
    f.send_packet(PacketType::Data, &elsewhere, &ictcp(b"not yours"))
        .await
        .unwrap();
    c.wait_delta(1, dropped, 1).await;
    c.wait_log(&["DATA from dbid 3 to dbid 2 arrived on the link of dbid 3"])
        .await;
});

hostile!(data_ack_for_nothing, |c| {
    let p1 = c.proxy(1);
    let mut f = FakePeer::link_as_fake(p1).await;
    let nobody = fake_spec(p1, 9);
    f.send_packet(PacketType::DataAck, &nobody.reversed(), b"")
        .await
        .unwrap();
    c.wait_delta(1, dropped, 1).await;
    c.wait_log(&["dropped a DATA ACK", &nobody.to_string()])
        .await;
    // Never cached: a late ACK has nobody to wait for.
    assert_eq!(p1.status.snapshot().totals.early_cache_bytes, 0);
});

hostile!(data_ack_credit_overflow_closes_only_that_connection, |c| {
    let p1 = c.proxy(1);
    let mut f = FakePeer::link_as_fake(p1).await;
    let opts = c.mesh.client_options();
    let victim = fake_spec(p1, 10);
    let mut tx = LogicalConn::connect(&p1.socket, victim, &opts)
        .await
        .unwrap();
    for i in 0..15 {
        tx.send_packet(&ic_proxy_client::pattern_payload(1, i, 100))
            .await
            .unwrap();
    }
    // Count the DATA packets the proxy sent (it may merge), then
    // acknowledge ten more than that.
    let mut bytes = 0;
    let mut data = 0;
    while bytes < 15 * 104 {
        let p = f.recv().await.unwrap().expect("DATA");
        assert_eq!(p.header.ptype, PacketType::Data);
        bytes += p.payload.len();
        data += 1;
    }
    for _ in 0..data / 10 + 1 {
        f.send_packet(PacketType::DataAck, &victim.reversed(), b"")
            .await
            .unwrap();
    }
    c.wait_delta(1, flow, 1).await;
    c.wait_log(&[
        &victim.to_string(),
        "DATA_ACK for 10 packets but only",
        "closing this logical connection",
    ])
    .await;
    // That logical connection ends for its backend.
    let end = tokio::time::timeout(DEADLINE, tx.recv())
        .await
        .expect("ends");
    assert!(matches!(end, Ok(RecvItem::Eof) | Err(_)), "{end:?}");
    // Another one through the same link still works.
    let other = fake_spec(p1, 11);
    let mut tx2 = LogicalConn::connect(&p1.socket, other, &opts)
        .await
        .unwrap();
    tx2.send_packet(b"unaffected").await.unwrap();
    loop {
        let p = f.recv_skipping_acks().await.unwrap().expect("a packet");
        if p.header.src.pid == other.local.pid && p.header.ptype == PacketType::Data {
            assert_eq!(&p.payload[..], &ictcp(b"unaffected")[..]);
            break;
        }
    }
    assert_eq!(peer_state(p1, FAKE_DBID), Some(PeerState::Connected));
});

hostile!(
    bye_twice,
    MeshOptions {
        early_packet_ttl: Duration::from_secs(1),
        ..case_options()
    },
    |c| {
        // Design: a BYE after the BYE belongs to the next statement that
        // reuses the key (as in the C proxy): it waits in the cache and
        // expires; the backend saw exactly one end of stream.
        let p1 = c.proxy(1);
        let mut f = FakePeer::link_as_fake(p1).await;
        let conn = fake_spec(p1, 12);
        let mut rx = LogicalConn::connect(&p1.socket, conn, &c.mesh.client_options())
            .await
            .unwrap();
        let from = conn.reversed();
        let mut b = packet(C, PacketType::Data, &from, &ictcp(b"all of it"));
        b.extend(packet(C, PacketType::Bye, &from, b""));
        b.extend(packet(C, PacketType::Bye, &from, b""));
        f.send(&b).await.unwrap();
        assert_eq!(
            rx.recv().await.unwrap(),
            RecvItem::Packet(bytes::Bytes::from_static(b"all of it"))
        );
        assert_eq!(rx.recv().await.unwrap(), RecvItem::Eof);
        rx.finish().await.unwrap();
        let bye = f.recv_skipping_acks().await.unwrap().expect("our BYE");
        assert_eq!(bye.header.ptype, PacketType::Bye);
        c.wait_delta(1, early_dropped, 1).await;
        c.wait_log(&[
            "dropped 1 early packets",
            &conn.to_string(),
            "nobody claimed them in time",
        ])
        .await;
    }
);

/// A packet of type `t` on an established link is dropped, counted and
/// logged; the link stays.
async fn unexpected_on_link(c: &Case, t: PacketType) {
    let p1 = c.proxy(1);
    let mut f = FakePeer::link_as_fake(p1).await;
    let b = header(t, HL as u16, fake_endpoint(), proxy_endpoint(p1))
        .encode(C)
        .to_vec();
    f.send(&b).await.unwrap();
    c.wait_delta(1, dropped, 1).await;
    c.wait_log(&[&format!("unexpected {} on an established link", t.name())])
        .await;
    assert_eq!(peer_state(p1, FAKE_DBID), Some(PeerState::Connected));
    // And the link still carries data afterwards.
    let conn = fake_spec(p1, 13);
    let mut rx = LogicalConn::connect(&p1.socket, conn, &c.mesh.client_options())
        .await
        .unwrap();
    f.send_packet(PacketType::Data, &conn.reversed(), &ictcp(b"after"))
        .await
        .unwrap();
    assert_eq!(
        rx.recv().await.unwrap(),
        RecvItem::Packet(bytes::Bytes::from_static(b"after"))
    );
}

hostile!(peer_hello_again_on_an_established_link, |c| {
    unexpected_on_link(&c, PacketType::PeerHello).await;
});

hostile!(peer_hello_ack_on_an_established_link, |c| {
    unexpected_on_link(&c, PacketType::PeerHelloAck).await;
});

hostile!(backend_hello_on_an_established_link, |c| {
    unexpected_on_link(&c, PacketType::Hello).await;
});

hostile!(hello_ack_on_an_established_link, |c| {
    unexpected_on_link(&c, PacketType::HelloAck).await;
});

hostile!(peer_quit_ends_only_that_link, |c| {
    let p1 = c.proxy(1);
    let mut f = FakePeer::link_as_fake(p1).await;
    let conn = fake_spec(p1, 14);
    let mut rx = LogicalConn::connect(&p1.socket, conn, &c.mesh.client_options())
        .await
        .unwrap();
    let quit = header(
        PacketType::PeerQuit,
        HL as u16,
        fake_endpoint(),
        proxy_endpoint(p1),
    );
    f.send(&quit.encode(C)).await.unwrap();
    fake_link_lost(&c, "the peer said PEER QUIT").await;
    // Its logical connections end; their backends are told.
    let end = tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("ends");
    assert!(matches!(end, Ok(RecvItem::Eof) | Err(_)), "{end:?}");
    read_until_closed(&mut f.stream).await.expect("closed");
});

/// Garbage after a good packet on an established link: the link (only it)
/// is dropped and counted.
async fn garbage_on_link(c: &Case, garbage: Vec<u8>, why: &str) {
    let p1 = c.proxy(1);
    let mut f = FakePeer::link_as_fake(p1).await;
    let conn = fake_spec(p1, 15);
    let mut rx = LogicalConn::connect(&p1.socket, conn, &c.mesh.client_options())
        .await
        .unwrap();
    let mut b = packet(C, PacketType::Data, &conn.reversed(), &ictcp(b"good"));
    b.extend(garbage);
    write_ignoring_reset(&mut f.stream, &b).await;
    assert_eq!(
        rx.recv().await.unwrap(),
        RecvItem::Packet(bytes::Bytes::from_static(b"good"))
    );
    c.wait_delta(1, rejected, 1).await;
    fake_link_lost(c, why).await;
    c.wait_log(&["malformed packet", why]).await;
    let end = tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("ends");
    assert!(matches!(end, Ok(RecvItem::Eof) | Err(_)), "{end:?}");
}

hostile!(length_above_the_maximum_mid_stream, |c| {
    // Only DATA carries a payload: any other type this long is garbage.
    let bye = PacketType::Bye as u16;
    let b = raw_header(
        C,
        u16::MAX,
        bye,
        fake_endpoint(),
        proxy_endpoint(c.proxy(1)),
    );
    garbage_on_link(&c, b, "packet length 65535 is above the maximum 8228").await;
});

hostile!(
    oversized_data_mid_stream_ends_its_connection_not_the_link,
    |c| {
        // A DATA packet over max_packet_size (a peer configured with a larger
        // gp_max_packet_size): its logical connection ends at both ends, the
        // link and the other connections on it carry on.
        let p1 = c.proxy(1);
        let mut f = FakePeer::link_as_fake(p1).await;
        let (victim, other) = (fake_spec(p1, 15), fake_spec(p1, 16));
        let copts = c.mesh.client_options();
        let (v, o) = tokio::join!(
            LogicalConn::connect(&p1.socket, victim, &copts),
            LogicalConn::connect(&p1.socket, other, &copts)
        );
        let (mut v, mut o) = (v.unwrap(), o.unwrap());
        let mut b = packet(
            C,
            PacketType::Data,
            &victim.reversed(),
            &ictcp(&[7; MAX - 3]),
        );
        b.extend(packet(
            C,
            PacketType::Data,
            &other.reversed(),
            &ictcp(b"good"),
        ));
        b.extend(packet(
            C,
            PacketType::Data,
            &victim.reversed(),
            &ictcp(b"late"),
        ));
        f.send(&b).await.unwrap();
        // The victim's receiver reads end of stream at once, nothing else.
        let end = tokio::time::timeout(Duration::from_secs(1), v.recv())
            .await
            .expect("the victim's stream ends within 1 s");
        assert_eq!(end.unwrap(), RecvItem::Eof);
        assert_eq!(
            o.recv().await.unwrap(),
            RecvItem::Packet(bytes::Bytes::from_static(b"good"))
        );
        // The sender's proxy is sent the victim's BYE.
        let bye = f.recv_skipping_acks().await.unwrap().expect("a BYE");
        assert_eq!(bye.header.ptype, PacketType::Bye);
        assert_eq!(
            (bye.header.src.pid, bye.header.dst.pid),
            (victim.local.pid, victim.remote.pid)
        );
        c.wait_log(&["DATA of 8193 bytes from dbid 3 is over ic_proxy.max_packet_size 8192"])
            .await;
        // The link stayed up all along.
        let s = p1.status.snapshot();
        let fake = s.peers.iter().find(|p| p.addr.dbid == FAKE_DBID).unwrap();
        assert_eq!(
            (fake.state, fake.traffic.reconnects),
            (PeerState::Connected, 0)
        );
        assert_eq!(c.delta(1, rejected), 0);
    }
);

hostile!(length_below_the_header_mid_stream, |c| {
    let b = raw_header(C, 3, 0, fake_endpoint(), proxy_endpoint(c.proxy(1)));
    garbage_on_link(&c, b, "packet length 3 is below the header length 36").await;
});

hostile!(unknown_type_mid_stream, |c| {
    let b = raw_header(
        C,
        HL as u16,
        0xBADD,
        fake_endpoint(),
        proxy_endpoint(c.proxy(1)),
    );
    garbage_on_link(&c, b, "unknown packet type 47837").await;
});

hostile!(bad_magic_mid_stream, |c| {
    garbage_on_link(&c, random_bytes(40, 5000), "bad magic").await;
});

hostile!(empty_data_packets_are_harmless, |c| {
    // Design: a DATA packet whose length is exactly the header is legal
    // (the C proxy accepts it) and writes nothing to the backend.
    let p1 = c.proxy(1);
    let mut f = FakePeer::link_as_fake(p1).await;
    let conn = fake_spec(p1, 16);
    let mut rx = LogicalConn::connect(&p1.socket, conn, &c.mesh.client_options())
        .await
        .unwrap();
    let from = conn.reversed();
    let mut b = Vec::new();
    for part in [&b""[..], &ictcp(b"x"), b"", b"", &ictcp(b"y"), b""] {
        b.extend(packet(C, PacketType::Data, &from, part));
    }
    b.extend(packet(C, PacketType::Bye, &from, b""));
    f.send(&b).await.unwrap();
    for want in [&b"x"[..], b"y"] {
        assert_eq!(
            rx.recv().await.unwrap(),
            RecvItem::Packet(bytes::Bytes::copy_from_slice(want))
        );
    }
    assert_eq!(rx.recv().await.unwrap(), RecvItem::Eof);
    assert_eq!(peer_stats(p1, FAKE_DBID).traffic.packets_in, 7);
    assert_eq!(c.delta(1, dropped) + c.delta(1, rejected), 0);
});

hostile!(
    data_ignoring_flow_control_to_a_backend_that_does_not_read,
    |c| {
        let p1 = c.proxy(1);
        let mut f = FakePeer::link_as_fake(p1).await;
        let conn = fake_spec(p1, 17);
        let mut rx = LogicalConn::connect(&p1.socket, conn, &c.mesh.client_options())
            .await
            .unwrap();
        // 600 full packets (4.9 MB), never waiting for a DATA ACK, to a backend
        // that reads nothing: far past two flow-control windows.
        let one = packet(
            C,
            PacketType::Data,
            &conn.reversed(),
            &ictcp(&[0x55; MAX - 4]),
        );
        let flood = one.repeat(600);
        write_ignoring_reset(&mut f.stream, &flood).await;
        c.wait_delta(1, flow, 1).await;
        c.wait_log(&[
            &conn.to_string(),
            "over the flow-control bound",
            "closing this logical connection",
        ])
        .await;
        // The backend's stream ends (after whatever its socket buffered).
        let end = tokio::time::timeout(DEADLINE, async {
            loop {
                match rx.recv().await {
                    Ok(RecvItem::Packet(_)) => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("ends");
        assert!(matches!(end, Ok(RecvItem::Eof) | Err(_)), "{end:?}");
        // Only that logical connection: the link stays.
        assert_eq!(peer_state(p1, FAKE_DBID), Some(PeerState::Connected));
    }
);

hostile!(auth_message_on_a_link_without_authentication, |c| {
    let p1 = c.proxy(1);
    let mut f = FakePeer::link_as_fake(p1).await;
    let from = ConnFrom::fake_to(p1);
    let msg = ic_proxy_core::auth::AuthMessage::Challenge { nonce_a: [1; 32] }.encode();
    f.send(&packet(C, PacketType::Data, &from.auth(), &msg))
        .await
        .unwrap();
    fake_link_lost(&c, "ic_proxy.peer_auth_secret_file is not set here").await;
});

hostile!(a_peer_that_stops_reading, |c| {
    // Eight backends stream to the fake peer, which reads nothing: the
    // proxy's writes to it back up, each sender is paused by flow control
    // (100 unacknowledged DATA packets), and nothing else slows down.
    let p1 = c.proxy(1);
    let f = FakePeer::link_as_fake(p1).await;
    let opts = c.mesh.client_options();
    let mut senders = Vec::new();
    for n in 0..8 {
        let mut tx = LogicalConn::connect(&p1.socket, fake_spec(p1, 20 + n), &opts)
            .await
            .unwrap();
        senders.push(tokio::spawn(async move {
            for i in 0..300 {
                tx.send_packet(&ic_proxy_client::pattern_payload(u64::from(n), i, MAX - 4))
                    .await?;
            }
            Ok::<_, ic_proxy_client::ClientError>(tx)
        }));
    }
    // Wait until nothing more leaves for the fake for half a second.
    let mut last = u64::MAX;
    let mut still = 0;
    wait_until("the writes to the fake peer to stop", || {
        let now = peer_stats(p1, FAKE_DBID).traffic.packets_out;
        if now == last {
            still += 1;
        } else {
            still = 0;
            last = now;
        }
        still >= 100
    })
    .await;
    assert!(
        last <= 8 * 110,
        "{last} packets were written to a peer that reads nothing"
    );
    for s in &senders {
        assert!(!s.is_finished(), "a sender was not paused");
    }
    // The healthy streams kept flowing meanwhile (Case::finish checks
    // them). Once the fake goes, its connections end.
    drop(f);
    for s in senders {
        let r = tokio::time::timeout(DEADLINE, s)
            .await
            .expect("sender ends");
        assert!(matches!(r, Ok(Err(_)) | Ok(Ok(_))), "{r:?}");
    }
    wait_until("the fake's link down", || {
        peer_state(p1, FAKE_DBID) == Some(PeerState::Down)
    })
    .await;
});

/// Lines of this case that contain `needle`.
fn count_lines(c: &Case, needle: &str) -> usize {
    c.logs().iter().filter(|l| l.contains(needle)).count()
}

hostile!(
    early_flood_of_one_byte_packets_is_charged_for_its_bookkeeping,
    MeshOptions {
        early_cache_bytes: SMALL_CAP,
        ..case_options()
    },
    |c| {
        // 20,000 keys of one 1-byte packet each: 20 KB of payload, but each
        // waiting connection costs hundreds of bytes of memory, which the
        // cap must count (it once counted 1 byte: a million such keys took
        // 480 MB under an 8 MB cap).
        let p1 = c.proxy(1);
        let mut f = FakePeer::link_as_fake(p1).await;
        let mut b = Vec::new();
        for k in 0..20_000 {
            let nobody = fake_spec(p1, 100_000 + k);
            b.extend(packet(C, PacketType::Data, &nobody.reversed(), b"x"));
        }
        f.send(&b).await.unwrap();
        c.wait_delta(1, early_dropped, 19_000).await;
        assert!(p1.status.snapshot().totals.early_cache_bytes <= SMALL_CAP as u64);
        // One warning per dropped connection would be 19,000 lines: the
        // warnings are limited to a burst a second, and say how many were
        // left out.
        c.wait_log(&["the early-packet cache is full"]).await;
        let lines = count_lines(&c, "the early-packet cache is full");
        assert!(lines <= 100, "{lines} lines for one flood");
        assert_eq!(peer_state(p1, FAKE_DBID), Some(PeerState::Connected));
    }
);

hostile!(
    a_flood_of_misrouted_packets_is_counted_but_logged_sparingly,
    |c| {
        let (p1, p2) = (c.proxy(1), c.proxy(2));
        let mut f = FakePeer::link_as_fake(p1).await;
        let elsewhere = fake_spec(p2, 1).reversed();
        let one = packet(C, PacketType::Data, &elsewhere, &ictcp(b"not yours"));
        f.send(&one.repeat(5000)).await.unwrap();
        c.wait_delta(1, dropped, 5000).await;
        let lines = count_lines(&c, "dropped a packet");
        assert!((1..=100).contains(&lines), "{lines} lines for 5000 drops");
        assert_eq!(peer_stats(p1, FAKE_DBID).traffic.drops, 5000);
    }
);

hostile!(probe_flood_from_a_peer_that_reads_nothing, |c| {
    // Probes (ic_proxy_ping) are echoed by the proxy itself; a peer that
    // sends them and never reads the echoes gets no more than 1 MiB of them
    // queued, the rest are dropped and counted.
    let p1 = c.proxy(1);
    let mut f = FakePeer::link_as_fake(p1).await;
    let probe = header(
        PacketType::Data,
        (HL + 8000) as u16,
        fake_endpoint(),
        Endpoint {
            pid: 0,
            ..proxy_endpoint(p1)
        },
    );
    let mut one = ic_proxy_core::protocol::Header {
        session_id: ic_proxy_core::PROBE_SESSION_ID,
        ..probe
    }
    .encode(C)
    .to_vec();
    one.extend_from_slice(&[0x5A; 8000]);
    // 32 MiB of probes.
    f.send(&one.repeat(4000)).await.unwrap();
    c.wait_delta(1, dropped, 1000).await;
    c.wait_log(&["dropped a packet", "probe not echoed"]).await;
    assert_eq!(peer_state(p1, FAKE_DBID), Some(PeerState::Connected));
    // Reading again, the fake gets the echoes that were queued, in order.
    let echo = f.recv().await.unwrap().expect("an echo");
    assert_eq!(echo.header.session_id, ic_proxy_core::PROBE_SESSION_ID);
    assert_eq!(&echo.payload[..], &[0x5A; 8000][..]);
});

// ---- TLS openings -------------------------------------------------------------

/// The case's proxies with `ic_proxy.tls = require` (certificates made here,
/// loaded, and their files removed).
fn tls_case_options() -> MeshOptions {
    use ic_proxy_core::tls::{TlsMode, TlsVerify};
    use ic_proxy_tests::certs::{policy, Flaw, TestCa};
    let dir = tempfile::tempdir().expect("a directory");
    let files = TestCa::new(dir.path(), "hostile").issue("proxy", "127.0.0.1", Flaw::None);
    MeshOptions {
        tls: policy(TlsMode::Require, TlsVerify::Full, &files),
        ..case_options()
    }
}

/// A fake dialer that offers TLS in its PEER_HELLO to proxy 1 and reads the
/// PEER_HELLO_ACK that accepts it.
async fn offer_tls(c: &Case) -> tokio::net::TcpStream {
    let p1 = c.proxy(1);
    let d = c.mesh.opts.dialect;
    let mut s = connect_peer_port(p1).await;
    let to = Endpoint {
        content: p1.addr.content,
        dbid: 1,
        pid: 0,
    };
    let me = Endpoint {
        content: FAKE_CONTENT,
        dbid: FAKE_DBID,
        pid: 99,
    };
    let mut hello = header(PacketType::PeerHello, d.header_len() as u16, me, to);
    hello.command_id = ic_proxy_core::tls::negotiate::OFFER;
    s.write_all(&hello.encode(d)).await.unwrap();
    let mut ack = vec![0u8; d.header_len()];
    s.read_exact(&mut ack).await.expect("a PEER_HELLO_ACK");
    s
}

/// What a refused TLS opening leaves: the connection closed, a failed
/// handshake counted, the reason on the claimed peer's row.
async fn tls_opening_refused(c: &Case, mut s: tokio::net::TcpStream, n: u64) {
    read_until_closed(&mut s)
        .await
        .expect("closed by the proxy");
    c.wait_delta(1, |s| s.totals.auth_failures, n).await;
    let row = c.proxy(1).status.snapshot().peers;
    let fake = row
        .iter()
        .find(|p| p.addr.dbid == FAKE_DBID)
        .expect("a row");
    assert!(
        fake.last_error.contains("TLS handshake failed"),
        "{}: {fake:?}",
        c.name
    );
}

hostile!(
    tls_random_bytes_instead_of_a_client_hello,
    tls_case_options(),
    |c| {
        let mut s = offer_tls(&c).await;
        s.write_all(&random_bytes(7, 600)).await.unwrap();
        tls_opening_refused(&c, s, 1).await;
    }
);

hostile!(
    tls_a_truncated_client_hello_times_out,
    tls_case_options(),
    |c| {
        let mut s = offer_tls(&c).await;
        // A TLS record header announcing 512 bytes of handshake, and 10 of them.
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03])
            .await
            .unwrap();
        tls_opening_refused(&c, s, 1).await;
    }
);

hostile!(
    tls_a_dialer_silent_after_the_ack_times_out,
    tls_case_options(),
    |c| {
        let s = offer_tls(&c).await;
        tls_opening_refused(&c, s, 1).await;
    }
);

hostile!(
    tls_a_plaintext_packet_where_tls_was_agreed,
    tls_case_options(),
    |c| {
        // DATA in plaintext after the ACK that started TLS.
        let mut s = offer_tls(&c).await;
        let spec = fake_spec(c.proxy(1), 1);
        let d = c.mesh.opts.dialect;
        s.write_all(&packet(d, PacketType::Data, &spec, b"plaintext"))
            .await
            .unwrap();
        tls_opening_refused(&c, s, 1).await;
    }
);
