//! Tools of the hostile-input catalogue: raw bytes in either dialect, a
//! fake peer that says what it likes on a proxy's peer port, healthy
//! checksummed streams that run through the same proxies meanwhile, and a
//! [`Case`] that checks, at its end, what every hostile case promises: the
//! healthy streams arrived intact and in order, the link between the real
//! proxies never dropped, and both proxies still set up and carry new
//! logical connections.

use std::io;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ic_proxy_client::{pattern_payload, ConnSpec, RecvItem, StreamDigest};
use ic_proxy_core::protocol::{
    encode_packet, Dialect, Endpoint, Header, Packet, PacketDecoder, PacketType,
};
use ic_proxy_core::{PeerState, StatusSnapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{log_lines, open_pair, spec, Mesh, MeshOptions, TestProxy, DEADLINE};

/// The dbid and content of the absent instance fake peers claim: content 1
/// is above both real proxies', so both wait for it to dial them.
pub const FAKE_DBID: u16 = 3;
pub const FAKE_CONTENT: i16 = 1;

/// A header with every field as given; `len` is written as is.
pub fn header(ptype: PacketType, len: u16, src: Endpoint, dst: Endpoint) -> Header {
    Header {
        len,
        ptype,
        src,
        dst,
        session_id: 0,
        command_id: 0,
        send_slice: 0,
        recv_slice: 0,
    }
}

/// A header's bytes with its `len` and type fields overwritten by raw values
/// (lengths and types no encoder would write).
pub fn raw_header(d: Dialect, len: u16, ptype: u16, src: Endpoint, dst: Endpoint) -> Vec<u8> {
    let mut b = header(PacketType::Data, 0, src, dst).encode(d).to_vec();
    let o = d.header_len() - 32;
    b[o..o + 2].copy_from_slice(&len.to_ne_bytes());
    b[o + 2..o + 4].copy_from_slice(&ptype.to_ne_bytes());
    b
}

/// A whole packet from the end `from` of logical connection `from` (src =
/// from.local, dst = from.remote), with `payload`.
pub fn packet(d: Dialect, ptype: PacketType, from: &ConnSpec, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_packet(&from.hello(d), d, payload, &mut out);
    let o = d.header_len() - 32;
    out[o + 2..o + 4].copy_from_slice(&(ptype as u16).to_ne_bytes());
    out.to_vec()
}

/// The PEER HELLO a proxy of dbid `me` sends to the proxy `to`.
pub fn peer_hello(d: Dialect, me: Endpoint, to: Endpoint) -> Vec<u8> {
    let len = d.header_len() as u16;
    header(PacketType::PeerHello, len, me, to)
        .encode(d)
        .to_vec()
}

/// `n` random bytes (xorshift: deterministic per seed, no dependency).
pub fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The proxy's endpoint as a peer names it.
pub fn proxy_endpoint(p: &TestProxy) -> Endpoint {
    Endpoint {
        content: p.addr.content,
        dbid: p.addr.dbid,
        pid: 0,
    }
}

/// Connects to a proxy's peer port.
pub async fn connect_peer_port(p: &TestProxy) -> TcpStream {
    TcpStream::connect((p.addr.host.as_str(), p.addr.port))
        .await
        .expect("connect to the peer port")
}

/// Writes `bytes`; a proxy that already hung up is fine (it may refuse
/// before reading them all).
pub async fn write_ignoring_reset<W: AsyncWriteExt + Unpin>(w: &mut W, bytes: &[u8]) {
    let _ = w.write_all(bytes).await;
}

/// Reads until the other side closes (Ok) or the deadline (Err).
pub async fn read_until_closed<R: AsyncReadExt + Unpin>(r: &mut R) -> Result<usize, String> {
    let mut n = 0;
    let mut buf = [0u8; 4096];
    let r = tokio::time::timeout(DEADLINE, async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(k) => n += k,
            }
        }
    })
    .await;
    r.map(|()| n)
        .map_err(|_| "the proxy kept the connection open".into())
}

/// Writes `hello` one byte every 100 ms, slower than any handshake timeout
/// of the catalogue, and returns once the proxy has closed the connection;
/// fails the test if the whole hello went through or nothing closes it.
pub async fn trickle_until_dropped<R, W>(rd: &mut R, wr: &mut W, hello: &[u8])
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let trickle = async {
        for b in hello {
            if wr.write_all(&[*b]).await.is_err() {
                // Refused: the read side tells.
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        _ = trickle => panic!("the whole hello went through"),
        r = read_until_closed(rd) => { r.expect("dropped at the timeout"); }
    }
}

/// A fake proxy that linked itself to a real one by PEER HELLO and now says
/// what a test wants.
pub struct FakePeer {
    pub stream: TcpStream,
    pub dialect: Dialect,
    pub me: Endpoint,
    decoder: PacketDecoder,
    buf: BytesMut,
}

impl FakePeer {
    /// Dials `p`'s peer port as `me` and waits for the PEER HELLO ACK.
    pub async fn link(p: &TestProxy, me: Endpoint) -> io::Result<FakePeer> {
        let d = p.settings.dialect;
        let mut stream = connect_peer_port(p).await;
        stream
            .write_all(&peer_hello(d, me, proxy_endpoint(p)))
            .await?;
        let mut f = FakePeer {
            stream,
            dialect: d,
            me,
            decoder: PacketDecoder::new(d, p.settings.max_packet_size),
            buf: BytesMut::new(),
        };
        let ack = f
            .recv()
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no PEER HELLO ACK"))?;
        if ack.header.ptype != PacketType::PeerHelloAck {
            return Err(io::Error::other(format!("got {}", ack.header)));
        }
        Ok(f)
    }

    /// Links to `p` as the absent instance [`FAKE_DBID`], and waits until `p`
    /// shows the link as connected.
    pub async fn link_as_fake(p: &TestProxy) -> FakePeer {
        let me = Endpoint {
            content: FAKE_CONTENT,
            dbid: FAKE_DBID,
            pid: 4242,
        };
        let f = FakePeer::link(p, me).await.expect("fake peer links");
        crate::wait_until("the fake peer's link up", || {
            peer_state(p, FAKE_DBID) == Some(PeerState::Connected)
        })
        .await;
        f
    }

    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Sends a packet from the end `from` of a logical connection.
    pub async fn send_packet(
        &mut self,
        ptype: PacketType,
        from: &ConnSpec,
        payload: &[u8],
    ) -> io::Result<()> {
        let b = packet(self.dialect, ptype, from, payload);
        self.send(&b).await
    }

    /// The next packet; None at EOF. Fails at the deadline.
    pub async fn recv(&mut self) -> io::Result<Option<Packet>> {
        tokio::time::timeout(DEADLINE, async {
            loop {
                match self.decoder.decode(&mut self.buf) {
                    Ok(Some(p)) => return Ok(Some(p)),
                    Ok(None) => {}
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                }
                self.buf.reserve(64 * 1024);
                if self.stream.read_buf(&mut self.buf).await? == 0 {
                    return Ok(None);
                }
            }
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no packet in time"))?
    }

    /// The next packet that is not a DATA ACK (those a test may ignore).
    pub async fn recv_skipping_acks(&mut self) -> io::Result<Option<Packet>> {
        loop {
            match self.recv().await? {
                Some(p) if p.header.ptype == PacketType::DataAck => continue,
                other => return Ok(other),
            }
        }
    }
}

/// State of `p`'s link to `dbid`.
pub fn peer_state(p: &TestProxy, dbid: u16) -> Option<PeerState> {
    p.status
        .snapshot()
        .peers
        .iter()
        .find(|s| s.addr.dbid == dbid)
        .map(|s| s.state)
}

/// The logical connection between a backend on `p` and a backend of the
/// absent instance a fake peer plays.
pub fn fake_spec(p: &TestProxy, n: u32) -> ConnSpec {
    let fake = ic_proxy_core::address_map::PeerAddr {
        dbid: FAKE_DBID,
        content: FAKE_CONTENT,
        host: String::new(),
        port: 0,
    };
    spec(&p.addr, &fake, 1000 + n)
}

/// A checksummed logical connection that streams until told to stop, paced
/// so that it runs for as long as a case does.
pub struct Healthy {
    what: String,
    stop: CancellationToken,
    sender: JoinHandle<Result<(StreamDigest, u64), String>>,
    receiver: JoinHandle<Result<(StreamDigest, u64), String>>,
}

impl Healthy {
    pub async fn start(mesh: &Mesh, a: u16, b: u16, n: u32) -> Healthy {
        let (mut tx, mut rx) = open_pair(mesh, a, b, n).await;
        let stop = CancellationToken::new();
        let seed = 0x4EA1 + u64::from(n);
        let sender = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut d = StreamDigest::new();
                let mut i = 0u64;
                loop {
                    for _ in 0..4 {
                        let len = 1 + (i as usize * 2903) % 8000;
                        let p = pattern_payload(seed, i, len);
                        d.update(&p);
                        tx.send_packet(&p).await.map_err(|e| e.to_string())?;
                        i += 1;
                    }
                    if stop.is_cancelled() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                tx.finish().await.map_err(|e| e.to_string())?;
                // The receiver's BYE.
                while let RecvItem::Packet(_) = tx.recv().await.map_err(|e| e.to_string())? {}
                Ok((d, i))
            }
        });
        let receiver = tokio::spawn(async move {
            let mut d = StreamDigest::new();
            let mut n = 0;
            loop {
                match rx.recv().await.map_err(|e| e.to_string())? {
                    RecvItem::Packet(p) => {
                        d.update(&p);
                        n += 1;
                    }
                    RecvItem::Eof => break,
                    RecvItem::Stop => return Err("unexpected STOP".into()),
                }
            }
            rx.finish().await.map_err(|e| e.to_string())?;
            Ok((d, n))
        });
        Healthy {
            what: format!("healthy stream {a} -> {b} #{n}"),
            stop,
            sender,
            receiver,
        }
    }

    /// Stops the stream and asserts every byte arrived, in order.
    pub async fn check(self) {
        self.stop.cancel();
        let r = tokio::time::timeout(DEADLINE, async {
            let sent = self.sender.await.expect("sender task");
            let got = self.receiver.await.expect("receiver task");
            (sent, got)
        })
        .await;
        let (sent, got) = r.unwrap_or_else(|_| panic!("{} did not end in time", self.what));
        let (sent, n_sent) = sent.unwrap_or_else(|e| panic!("{}: sender: {e}", self.what));
        let (got, n_got) = got.unwrap_or_else(|e| panic!("{}: receiver: {e}", self.what));
        assert_eq!(n_sent, n_got, "{}: packets lost", self.what);
        assert_eq!(sent, got, "{}: bytes corrupted or reordered", self.what);
        assert!(n_sent > 0, "{}: nothing was sent", self.what);
    }
}

/// Options of a case: two real proxies (dbid 1, content -1 and dbid 2,
/// content 0; 2 dials 1), the absent instance fakes claim, a short
/// handshake timeout.
pub fn case_options() -> MeshOptions {
    MeshOptions {
        handshake_timeout: Duration::from_millis(1000),
        absent: vec![(FAKE_DBID, FAKE_CONTENT)],
        ..MeshOptions::default()
    }
}

/// One hostile case: a mesh, healthy streams through it both ways, and the
/// counters as they were before the attack.
pub struct Case {
    pub name: String,
    pub mesh: Mesh,
    healthy: Vec<Healthy>,
    base: Vec<(u16, StatusSnapshot)>,
}

impl Case {
    /// Starts the mesh (on the current runtime: use [`crate::run_named`]
    /// with the same name, so the case can find its own log lines) and the
    /// healthy streams.
    pub async fn start(name: &str, opts: MeshOptions) -> Case {
        let mesh = Mesh::start_with(&[-1, 0], opts);
        mesh.wait_connected().await;
        let healthy = vec![
            Healthy::start(&mesh, 1, 2, 1).await,
            Healthy::start(&mesh, 2, 1, 2).await,
        ];
        // Each proxy registered its two healthy sessions: the counters
        // move for the attack only from here on.
        for p in &mesh.proxies {
            crate::wait_until("the healthy sessions registered", || {
                p.status.snapshot().totals.sessions_open == 2
            })
            .await;
        }
        let base = mesh
            .proxies
            .iter()
            .map(|p| (p.addr.dbid, p.status.snapshot()))
            .collect();
        Case {
            name: name.to_string(),
            mesh,
            healthy,
            base,
        }
    }

    pub fn proxy(&self, dbid: u16) -> &TestProxy {
        self.mesh.proxy(dbid)
    }

    /// How much `counter` of proxy `dbid` moved since the case started.
    pub fn delta(&self, dbid: u16, counter: fn(&StatusSnapshot) -> u64) -> u64 {
        let base = &self.base.iter().find(|(d, _)| *d == dbid).expect("proxy").1;
        counter(&self.proxy(dbid).status.snapshot()).saturating_sub(counter(base))
    }

    /// Waits until `counter` of proxy `dbid` moved by at least `n`.
    pub async fn wait_delta(&self, dbid: u16, counter: fn(&StatusSnapshot) -> u64, n: u64) {
        let start = Instant::now();
        while self.delta(dbid, counter) < n {
            assert!(
                start.elapsed() < DEADLINE,
                "{}: the counter of proxy {dbid} moved by {} only, expected {n}: {:#?}",
                self.name,
                self.delta(dbid, counter),
                self.proxy(dbid).status.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// This case's proxies' log lines.
    pub fn logs(&self) -> Vec<String> {
        log_lines(&self.name).into_iter().map(|l| l.text).collect()
    }

    /// Waits for a log line of this case containing every one of `needles`;
    /// returns it.
    pub async fn wait_log(&self, needles: &[&str]) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self
                .logs()
                .into_iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return l;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{}: no log line with {needles:?}; the lines were:\n{}",
                self.name,
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The end of every case: the healthy streams arrived intact and in
    /// order, the real proxies' link never dropped, and both proxies carry
    /// new logical connections both ways.
    pub async fn finish(self) {
        for h in self.healthy {
            h.check().await;
        }
        for (a, b, n) in [(1, 2, 900), (2, 1, 901)] {
            let (tx, rx) = open_pair(&self.mesh, a, b, n).await;
            let (sent, got) = tokio::join!(
                crate::send_stream(tx, u64::from(n), 50, 3000),
                crate::recv_stream(rx)
            );
            assert_eq!(
                sent.expect("new sender"),
                got.expect("new receiver").0,
                "{}: a new connection {a} -> {b} after the attack",
                self.name
            );
        }
        for p in &self.mesh.proxies {
            let other = if p.addr.dbid == 1 { 2 } else { 1 };
            let s = p.status.snapshot();
            let link = s.peers.iter().find(|x| x.addr.dbid == other).unwrap();
            assert_eq!(
                (link.state, link.traffic.reconnects),
                (PeerState::Connected, 0),
                "{}: the link between the real proxies was disturbed: {link:?}",
                self.name
            );
        }
        self.mesh.shutdown().await;
    }
}
