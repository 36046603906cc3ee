//! The client against a fake proxy: a Unix listener in a temp dir that plays
//! the proxy's side of the handshake and of the data stream by hand. The
//! thing under test is the client, so the fake writes and checks raw bytes.

use std::io::ErrorKind;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use ic_proxy_client::{
    pattern_payload, wait_for_socket, ClientError, ClientOptions, ConnSpec, Dialect, Endpoint,
    LogicalConn, RecvItem, StreamDigest,
};
use ic_proxy_core::protocol::{FrameError, Header, HeaderError, PacketType};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

const BOTH: [Dialect; 2] = [Dialect::B, Dialect::C];

fn spec() -> ConnSpec {
    ConnSpec {
        session_id: 7,
        command_id: 0x0102,
        send_slice: 1,
        recv_slice: 0,
        local: Endpoint {
            content: 0,
            dbid: 2,
            pid: 0x1234,
        },
        remote: Endpoint {
            content: -1,
            dbid: 1,
            pid: 0x0056_789A,
        },
    }
}

fn opts(dialect: Dialect) -> ClientOptions {
    ClientOptions {
        dialect,
        ..ClientOptions::default()
    }
}

/// A socket path in a fresh temp dir, nothing listening yet.
struct SocketDir {
    _dir: TempDir,
    path: PathBuf,
}

fn socket_dir() -> SocketDir {
    let dir = tempfile::tempdir().unwrap();
    let path = ic_proxy_client::socket_path(dir.path(), 7000, 4242);
    SocketDir { _dir: dir, path }
}

struct FakeProxy {
    /// The temp dir, when this fake made its own.
    _dir: Option<TempDir>,
    path: PathBuf,
    listener: UnixListener,
}

impl FakeProxy {
    fn new() -> FakeProxy {
        let SocketDir { _dir, path } = socket_dir();
        FakeProxy {
            listener: UnixListener::bind(&path).unwrap(),
            _dir: Some(_dir),
            path,
        }
    }

    fn bind_at(path: &std::path::Path) -> FakeProxy {
        FakeProxy {
            _dir: None,
            path: path.to_owned(),
            listener: UnixListener::bind(path).unwrap(),
        }
    }

    fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Accept one backend and read exactly its HELLO's bytes.
    async fn accept_hello(&self, d: Dialect) -> (UnixStream, Vec<u8>) {
        let (mut s, _) = self.listener.accept().await.unwrap();
        let mut hello = vec![0; d.header_len()];
        s.read_exact(&mut hello).await.unwrap();
        (s, hello)
    }

    /// Accept, check the HELLO parses, answer with the proper HELLO ACK and
    /// `then` in the same write.
    async fn accept_and_ack(&self, d: Dialect, then: &[u8]) -> UnixStream {
        let (mut s, hello) = self.accept_hello(d).await;
        let mut out = proper_ack(&hello, d);
        out.extend_from_slice(then);
        s.write_all(&out).await.unwrap();
        s
    }
}

/// What a proxy answers: the HELLO with src and dst swapped, type HELLO ACK.
fn proper_ack(hello: &[u8], d: Dialect) -> Vec<u8> {
    let h = Header::decode(hello, d, 8192).unwrap();
    assert_eq!(h.ptype, PacketType::Hello);
    Header {
        ptype: PacketType::HelloAck,
        src: h.dst,
        dst: h.src,
        ..h
    }
    .encode(d)
    .to_vec()
}

/// A connected pair: the client's connection and the fake proxy's stream.
/// `then` is written in the same write as the HELLO ACK.
async fn connected(d: Dialect, then: &[u8]) -> (LogicalConn, UnixStream, FakeProxy) {
    let fake = FakeProxy::new();
    let o = opts(d);
    let (conn, stream) = tokio::join!(
        LogicalConn::connect(fake.path(), spec(), &o),
        fake.accept_and_ack(d, then)
    );
    (conn.unwrap(), stream, fake)
}

fn ictcp(payload: &[u8]) -> Vec<u8> {
    let mut v = (4 + payload.len() as u32).to_ne_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

fn packet(bytes: &[u8]) -> RecvItem {
    RecvItem::Packet(Bytes::copy_from_slice(bytes))
}

// ---- handshake bytes -------------------------------------------------------

/// spec()'s HELLO in dialect C, written out field by field (little-endian).
#[cfg(target_endian = "little")]
const HELLO_C: [u8; 36] = [
    0xFE, 0xCA, 0xDD, 0xBA, // magic 0xBADDCAFE
    0x24, 0x00, // len 36
    0x04, 0x00, // type HELLO
    0x00, 0x00, // src content 0
    0x02, 0x00, // src dbid 2
    0x34, 0x12, 0x00, 0x00, // src pid 0x1234
    0xFF, 0xFF, // dst content -1
    0x01, 0x00, // dst dbid 1
    0x9A, 0x78, 0x56, 0x00, // dst pid 0x56789A
    0x07, 0x00, 0x00, 0x00, // session 7
    0x02, 0x01, 0x00, 0x00, // command 0x0102
    0x01, 0x00, // send slice 1
    0x00, 0x00, // recv slice 0
];

/// The same HELLO in dialect B: no magic, len 32.
#[cfg(target_endian = "little")]
const HELLO_B: [u8; 32] = [
    0x20, 0x00, // len 32
    0x04, 0x00, // type HELLO
    0x00, 0x00, 0x02, 0x00, 0x34, 0x12, 0x00, 0x00, // src 0 / 2 / 0x1234
    0xFF, 0xFF, 0x01, 0x00, 0x9A, 0x78, 0x56, 0x00, // dst -1 / 1 / 0x56789A
    0x07, 0x00, 0x00, 0x00, // session 7
    0x02, 0x01, 0x00, 0x00, // command 0x0102
    0x01, 0x00, 0x00, 0x00, // slices 1 -> 0
];

/// The proxy's answer in dialect C: src and dst swapped, type HELLO ACK.
#[cfg(target_endian = "little")]
const ACK_C: [u8; 36] = [
    0xFE, 0xCA, 0xDD, 0xBA, // magic
    0x24, 0x00, // len 36
    0x05, 0x00, // type HELLO ACK
    0xFF, 0xFF, 0x01, 0x00, 0x9A, 0x78, 0x56, 0x00, // src = the remote backend
    0x00, 0x00, 0x02, 0x00, 0x34, 0x12, 0x00, 0x00, // dst = this backend
    0x07, 0x00, 0x00, 0x00, // session 7
    0x02, 0x01, 0x00, 0x00, // command 0x0102
    0x01, 0x00, 0x00, 0x00, // slices 1 -> 0
];

#[cfg(target_endian = "little")]
const ACK_B: [u8; 32] = [
    0x20, 0x00, 0x05, 0x00, // len 32, type HELLO ACK
    0xFF, 0xFF, 0x01, 0x00, 0x9A, 0x78, 0x56, 0x00, // src = the remote backend
    0x00, 0x00, 0x02, 0x00, 0x34, 0x12, 0x00, 0x00, // dst = this backend
    0x07, 0x00, 0x00, 0x00, 0x02, 0x01, 0x00, 0x00, // session, command
    0x01, 0x00, 0x00, 0x00, // slices 1 -> 0
];

/// Connect with `d` against a fake that checks the HELLO is exactly `hello`
/// and answers with `ack` bytes, then closes.
async fn handshake_with(d: Dialect, hello: &[u8], ack: &[u8]) -> Result<LogicalConn, ClientError> {
    let fake = FakeProxy::new();
    let o = opts(d);
    let (conn, ()) = tokio::join!(LogicalConn::connect(fake.path(), spec(), &o), async {
        let (mut s, got) = fake.accept_hello(d).await;
        assert_eq!(got, hello, "HELLO bytes in dialect {d}");
        s.write_all(ack).await.unwrap();
    });
    conn
}

#[cfg(target_endian = "little")]
#[tokio::test]
async fn hello_is_the_exact_header_and_a_literal_ack_is_accepted() {
    for (d, hello, ack) in [
        (Dialect::C, &HELLO_C[..], &ACK_C[..]),
        (Dialect::B, &HELLO_B[..], &ACK_B[..]),
    ] {
        let conn = handshake_with(d, hello, ack).await.unwrap();
        assert_eq!(*conn.spec(), spec());
    }
}

#[cfg(target_endian = "little")]
#[tokio::test]
async fn wrong_hello_acks_are_rejected() {
    let d = Dialect::C;
    let with = |at: usize, bytes: &[u8]| {
        let mut v = ACK_C.to_vec();
        v[at..at + bytes.len()].copy_from_slice(bytes);
        v
    };
    let expected = spec().hello_ack(d);
    let decoded = |b: &[u8]| Header::decode(b, d, 8192).unwrap();

    // Mismatches: a well-formed header, but not our HELLO answered.
    let not_swapped = {
        let mut v = HELLO_C.to_vec();
        v[6] = 0x05;
        v
    };
    let mismatches = [
        ("echoed HELLO", HELLO_C.to_vec()),
        ("wrong type DATA", with(6, &[0x00, 0x00])),
        ("wrong type BYE", with(6, &[0x06, 0x00])),
        ("src and dst not swapped", not_swapped),
        ("other session", with(24, &[0x08])),
        ("other command", with(28, &[0x03])),
        ("other slices", with(32, &[0x00, 0x00, 0x01, 0x00])),
        ("other dst pid", with(20, &[0x35])),
    ];
    for (what, ack) in mismatches {
        match handshake_with(d, &HELLO_C, &ack).await {
            Err(ClientError::HelloAckMismatch { expected: e, got }) => {
                assert_eq!(e, expected, "{what}");
                assert_eq!(got, decoded(&ack), "{what}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }

    // Malformed headers.
    let malformed = [
        (
            "bad magic",
            with(0, &[0xFF]),
            HeaderError::BadMagic { found: 0xBADD_CAFF },
        ),
        (
            "unknown type",
            with(6, &[0x09, 0x00]),
            HeaderError::UnknownType { value: 9 },
        ),
        (
            "payload on a message",
            with(4, &[0x28, 0x00]),
            HeaderError::PayloadOnMessage {
                ptype: PacketType::HelloAck,
                len: 40,
            },
        ),
        (
            "length below the header",
            with(4, &[0x10, 0x00]),
            HeaderError::LengthBelowHeader {
                len: 16,
                header: 36,
            },
        ),
    ];
    for (what, ack, want) in malformed {
        match handshake_with(d, &HELLO_C, &ack).await {
            Err(ClientError::BadHelloAck(e)) => assert_eq!(e, want, "{what}"),
            other => panic!("{what}: {other:?}"),
        }
    }

    // Dialect B has no magic to check, but the rest is checked the same way.
    let mut ack = ACK_B.to_vec();
    ack[2] = 0x04;
    assert!(matches!(
        handshake_with(Dialect::B, &HELLO_B, &ack).await,
        Err(ClientError::HelloAckMismatch { got, .. }) if got.ptype == PacketType::Hello
    ));
}

#[tokio::test]
async fn mismatch_error_names_both_headers() {
    let d = Dialect::C;
    let fake = FakeProxy::new();
    let o = opts(d);
    let (conn, ()) = tokio::join!(LogicalConn::connect(fake.path(), spec(), &o), async {
        let (mut s, hello) = fake.accept_hello(d).await;
        s.write_all(&hello).await.unwrap();
    });
    let text = conn.unwrap_err().to_string();
    assert_eq!(
        text,
        "the proxy's HELLO ACK does not answer our HELLO: expected \
         HELLO ACK [con7,cmd258,slice[1->0] 36 bytes seg-1:dbid1:p5666970->seg0:dbid2:p4660], \
         got HELLO [con7,cmd258,slice[1->0] 36 bytes seg0:dbid2:p4660->seg-1:dbid1:p5666970]"
    );
}

#[tokio::test]
async fn eof_before_a_whole_ack_is_closed_before_ack() {
    for d in BOTH {
        for sent in [0, 1, d.header_len() - 1] {
            let fake = FakeProxy::new();
            let o = opts(d);
            let (conn, ()) = tokio::join!(LogicalConn::connect(fake.path(), spec(), &o), async {
                let (mut s, hello) = fake.accept_hello(d).await;
                s.write_all(&proper_ack(&hello, d)[..sent]).await.unwrap();
                // Dropping the stream closes it.
            });
            assert!(
                matches!(conn, Err(ClientError::ClosedBeforeAck)),
                "{d} after {sent} bytes: {conn:?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn no_ack_before_the_deadline_is_a_timeout() {
    let fake = FakeProxy::new();
    let o = ClientOptions {
        connect_deadline: Duration::from_secs(2),
        ..opts(Dialect::C)
    };
    let started = Instant::now();
    let (conn, (_stream, hello)) = tokio::join!(
        LogicalConn::connect(fake.path(), spec(), &o),
        fake.accept_hello(Dialect::C)
    );
    assert!(matches!(conn, Err(ClientError::Timeout)), "{conn:?}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(hello, spec().hello(Dialect::C).encode(Dialect::C).to_vec());
}

// ---- connecting ------------------------------------------------------------

#[tokio::test]
async fn connect_retries_until_the_socket_appears() {
    let sock = socket_dir();
    let o = ClientOptions {
        retry_interval: Duration::from_millis(20),
        ..opts(Dialect::C)
    };
    let delay = 5 * o.retry_interval;
    assert!(!sock.path.exists());
    let started = Instant::now();
    // join! polls the client first, so its first attempt fails before the
    // listener exists; the listener then appears `delay` later.
    let (conn, (bound_at, _stream)) =
        tokio::join!(LogicalConn::connect(&sock.path, spec(), &o), async {
            tokio::time::sleep(delay).await;
            let fake = FakeProxy::bind_at(&sock.path);
            let bound_at = Instant::now();
            (bound_at, fake.accept_and_ack(Dialect::C, b"").await)
        });
    let connected_at = Instant::now();
    let conn = conn.unwrap();
    assert_eq!(*conn.spec(), spec());
    assert!(bound_at - started >= delay);
    assert!(connected_at >= bound_at);
    assert!(connected_at - started < o.connect_deadline);
}

#[tokio::test(start_paused = true)]
async fn connect_gives_up_at_the_deadline() {
    let sock = socket_dir();
    let o = ClientOptions {
        connect_deadline: Duration::from_secs(3),
        ..opts(Dialect::C)
    };
    let started = Instant::now();
    let err = LogicalConn::connect(&sock.path, spec(), &o)
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    match &err {
        ClientError::Connect {
            path,
            source,
            waited,
        } => {
            assert_eq!(path, &sock.path);
            assert_eq!(source.kind(), ErrorKind::NotFound);
            assert!(*waited >= o.connect_deadline, "{waited:?}");
            assert!(
                *waited < o.connect_deadline + o.retry_interval,
                "{waited:?}"
            );
            assert!(elapsed >= o.connect_deadline);
        }
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "could not connect to the interconnect proxy at {} within 3000 ms: ",
            sock.path.display()
        )),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn wait_for_socket_sees_it_appear_or_times_out() {
    let fake = FakeProxy::new();
    wait_for_socket(fake.path(), Duration::ZERO).await.unwrap();

    let sock = socket_dir();
    let (waited, listener) =
        tokio::join!(wait_for_socket(&sock.path, Duration::from_secs(5)), async {
            tokio::time::sleep(Duration::from_millis(250)).await;
            UnixListener::bind(&sock.path).unwrap()
        });
    waited.unwrap();
    drop(listener);

    let missing = socket_dir();
    let started = Instant::now();
    match wait_for_socket(&missing.path, Duration::from_secs(1)).await {
        Err(ClientError::Connect { source, waited, .. }) => {
            assert_eq!(source.kind(), ErrorKind::NotFound);
            assert!(waited >= Duration::from_secs(1));
            assert!(started.elapsed() >= Duration::from_secs(1));
        }
        other => panic!("{other:?}"),
    }

    let file = socket_dir();
    std::fs::write(&file.path, b"not a socket").unwrap();
    match wait_for_socket(&file.path, Duration::from_millis(100)).await {
        Err(ClientError::Connect { source, .. }) => {
            assert_eq!(source.kind(), ErrorKind::InvalidInput)
        }
        other => panic!("{other:?}"),
    }
}

// ---- sending ---------------------------------------------------------------

#[cfg(target_endian = "little")]
#[tokio::test]
async fn send_writes_exact_ictcp_framing_then_half_closes() {
    for d in BOTH {
        let (mut conn, mut s, _fake) = connected(d, b"").await;
        conn.send_packet(b"hello").await.unwrap();
        conn.send_packets(&[&b""[..], &b"ab"[..]]).await.unwrap();
        conn.finish().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(
            got,
            [
                9, 0, 0, 0, b'h', b'e', b'l', b'l', b'o', //
                4, 0, 0, 0, //
                6, 0, 0, 0, b'a', b'b',
            ]
        );
    }
}

#[tokio::test]
async fn packets_above_max_packet_size_are_refused_and_nothing_is_written() {
    let (mut conn, mut s, _fake) = connected(Dialect::C, b"").await;
    let max = ClientOptions::default().max_packet_size;
    let biggest = pattern_payload(1, 0, max - 4);
    let too_big = vec![0u8; max - 3];
    let err = conn.send_packet(&too_big).await.unwrap_err();
    assert!(
        matches!(err, ClientError::PacketTooLarge { len, max: m } if len == max + 1 && m == max),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "ic-tcp packet of 8193 bytes exceeds gp_max_packet_size 8192"
    );
    let err = conn
        .send_packets(&[&b"fine"[..], &too_big, &b"fine"[..]])
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::PacketTooLarge { .. }));
    conn.send_packet(&biggest).await.unwrap();
    conn.finish().await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, ictcp(&biggest));
}

#[tokio::test]
async fn stop_writes_one_byte_then_half_closes() {
    let (mut conn, mut s, _fake) = connected(Dialect::C, b"").await;
    conn.stop().await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"S");
    // Our read side stays open: the proxy may still deliver.
    s.write_all(&ictcp(b"late")).await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(conn.recv().await.unwrap(), packet(b"late"));
    assert_eq!(conn.recv().await.unwrap(), RecvItem::Eof);
}

// ---- receiving -------------------------------------------------------------

#[tokio::test]
async fn data_in_the_same_write_as_the_ack_is_not_lost() {
    for d in BOTH {
        let mut then = ictcp(b"first");
        then.extend_from_slice(&ictcp(b""));
        then.extend_from_slice(&ictcp(b"second"));
        let (mut conn, mut s, _fake) = connected(d, &then).await;
        s.shutdown().await.unwrap();
        assert_eq!(conn.recv().await.unwrap(), packet(b"first"));
        assert_eq!(conn.recv().await.unwrap(), packet(b""));
        assert_eq!(conn.recv().await.unwrap(), packet(b"second"));
        assert_eq!(conn.recv().await.unwrap(), RecvItem::Eof);
    }
}

#[tokio::test]
async fn lone_stop_byte_then_eof_is_stop() {
    for then in [&b"S"[..], &[ictcp(b"x"), b"S".to_vec()].concat()] {
        let (mut conn, mut s, _fake) = connected(Dialect::C, then).await;
        s.shutdown().await.unwrap();
        if then.len() > 1 {
            assert_eq!(conn.recv().await.unwrap(), packet(b"x"));
        }
        assert_eq!(conn.recv().await.unwrap(), RecvItem::Stop);
        assert_eq!(conn.recv().await.unwrap(), RecvItem::Eof);
        assert_eq!(conn.recv().await.unwrap(), RecvItem::Eof);
    }
}

#[tokio::test]
async fn clean_eof_is_eof_every_time() {
    let (mut conn, s, _fake) = connected(Dialect::B, b"").await;
    drop(s);
    assert_eq!(conn.recv().await.unwrap(), RecvItem::Eof);
    assert_eq!(conn.recv().await.unwrap(), RecvItem::Eof);
}

#[tokio::test]
async fn eof_inside_a_packet_is_closed_prematurely() {
    let whole = ictcp(b"payload");
    let cases: [(&str, Vec<u8>); 5] = [
        ("one byte of the length", whole[..1].to_vec()),
        ("three bytes of the length", whole[..3].to_vec()),
        ("length only", whole[..4].to_vec()),
        ("half the payload", whole[..7].to_vec()),
        ("STOP plus a byte", b"SS".to_vec()),
    ];
    for (what, then) in cases {
        let (mut conn, mut s, _fake) = connected(Dialect::C, &then).await;
        s.shutdown().await.unwrap();
        match conn.recv().await {
            Err(e @ ClientError::ClosedPrematurely) => assert_eq!(
                e.to_string(),
                "interconnect error: connection closed prematurely \
                 (EOF inside an ic-tcp packet)"
            ),
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn impossible_lengths_are_bad_frames() {
    for (len, want) in [
        (2u32, FrameError::LengthBelowMinimum { len: 2 }),
        (
            8193,
            FrameError::LengthAboveMax {
                len: 8193,
                max: 8192,
            },
        ),
    ] {
        let (mut conn, _s, _fake) = connected(Dialect::C, &len.to_ne_bytes()).await;
        match conn.recv().await {
            Err(ClientError::BadFrame(e)) => assert_eq!(e, want),
            other => panic!("{len}: {other:?}"),
        }
    }
}

/// Payload sizes covering empty, tiny, odd and maximum packets.
const SIZES: [usize; 14] = [0, 1, 2, 3, 4, 5, 100, 8188, 7, 4000, 0, 8188, 1, 255];

fn stream_of(sizes: &[usize]) -> (Vec<Vec<u8>>, Vec<u8>, Vec<usize>) {
    let payloads: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| pattern_payload(42, i as u64, n))
        .collect();
    let mut bytes = Vec::new();
    let mut ends = Vec::new();
    for p in &payloads {
        bytes.extend_from_slice(&ictcp(p));
        ends.push(bytes.len());
    }
    (payloads, bytes, ends)
}

#[tokio::test]
async fn recv_frames_packets_split_inside_lengths_and_payloads() {
    let (payloads, bytes, ends) = stream_of(&SIZES);
    // Cut i falls r bytes into packet i: inside the length field for
    // r < 4, inside the payload otherwise.
    let cuts: Vec<usize> = (0..payloads.len())
        .map(|i| {
            let start = if i == 0 { 0 } else { ends[i - 1] };
            let len = ends[i] - start;
            let r = [1, 2, 3, 4, 5, len - 1, len / 2][i % 7];
            start + r.clamp(1, len - 1)
        })
        .collect();
    let (conn, mut s, _fake) = connected(Dialect::C, &bytes[..cuts[0]]).await;
    let mut conn = conn;
    let (got_tx, mut got_rx) = mpsc::unbounded_channel::<usize>();

    let writer = async {
        for i in 0..payloads.len() {
            let end = cuts.get(i + 1).copied().unwrap_or(bytes.len());
            // Completes packet i and starts packet i + 1.
            s.write_all(&bytes[cuts[i]..end]).await.unwrap();
            // Nothing more until the client has returned packet i, so it
            // had to frame packet i + 1 from a partial read.
            assert_eq!(got_rx.recv().await, Some(i));
        }
        s.shutdown().await.unwrap();
    };
    let reader = async {
        for (i, want) in payloads.iter().enumerate() {
            match conn.recv().await.unwrap() {
                RecvItem::Packet(p) => assert_eq!(&p[..], &want[..], "packet {i}"),
                other => panic!("packet {i}: {other:?}"),
            }
            got_tx.send(i).unwrap();
        }
        assert_eq!(conn.recv().await.unwrap(), RecvItem::Eof);
    };
    tokio::join!(writer, reader);
}

#[tokio::test]
async fn recv_frames_a_stream_written_byte_by_byte() {
    let (payloads, bytes, _) = stream_of(&SIZES[..7]);
    let (mut conn, mut s, _fake) = connected(Dialect::B, b"").await;
    let writer = async {
        for b in &bytes {
            s.write_all(std::slice::from_ref(b)).await.unwrap();
            tokio::task::yield_now().await;
        }
        s.shutdown().await.unwrap();
    };
    let reader = async {
        let mut got = Vec::new();
        loop {
            match conn.recv().await.unwrap() {
                RecvItem::Packet(p) => got.push(p.to_vec()),
                RecvItem::Eof => break got,
                RecvItem::Stop => panic!("no STOP was sent"),
            }
        }
    };
    let ((), got) = tokio::join!(writer, reader);
    assert_eq!(got, payloads);
}

// ---- full duplex -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_halves_run_full_duplex_through_an_echoing_proxy() {
    let (conn, s, _fake) = connected(Dialect::C, b"").await;
    let (mut send, mut recv) = conn.into_split();
    assert_eq!(*send.spec(), spec());
    assert_eq!(*recv.spec(), spec());
    // The fake echoes raw bytes, so the client reads back the very ic-tcp
    // stream it wrote. Far more than the socket buffers hold in flight.
    let echo = tokio::spawn(async move {
        let (mut r, mut w) = s.into_split();
        tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
    });
    const PACKETS: u64 = 3000;
    const BATCH: u64 = 20;
    let sender = async {
        let mut digest = StreamDigest::new();
        for first in (0..PACKETS).step_by(BATCH as usize) {
            let batch: Vec<Vec<u8>> = (first..first + BATCH)
                .map(|i| pattern_payload(9, i, (i as usize * 977) % 8189))
                .collect();
            for p in &batch {
                digest.update(p);
            }
            let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
            send.send_packets(&refs).await.unwrap();
        }
        send.finish().await.unwrap();
        digest
    };
    let receiver = async {
        let mut digest = StreamDigest::new();
        let mut count = 0u64;
        loop {
            match recv.recv().await.unwrap() {
                RecvItem::Packet(p) => {
                    assert_eq!(p.len(), (count as usize * 977) % 8189, "packet {count}");
                    digest.update(&p);
                    count += 1;
                }
                RecvItem::Eof => break (digest, count),
                RecvItem::Stop => panic!("no STOP was sent"),
            }
        }
    };
    let (sent, (received, count)) = tokio::join!(sender, receiver);
    echo.await.unwrap();
    assert_eq!(count, PACKETS);
    assert!(sent.bytes() > 10 * 1024 * 1024, "{}", sent.bytes());
    assert_eq!(received, sent);
}
