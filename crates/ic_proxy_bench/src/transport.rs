//! The two ways a pair of backends can be joined, behind one interface so
//! every scenario runs the same code over both: through the proxies (one
//! `LogicalConn` on each proxy's Unix socket) or DIRECT (one plain TCP
//! loopback socket per logical connection, a header-sized hello/ack, then the
//! same ic-tcp framing: a u32 length that counts itself, then the payload).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use ic_proxy_client::{
    ClientOptions, ConnSpec, Dialect, Endpoint, LogicalConn, RecvHalf, RecvItem, SendHalf,
};
use ic_proxy_core::protocol::{ictcp_packet, IcTcpFramer, DEFAULT_PACKET_SIZE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

/// Bytes of an ic-tcp length field.
pub const LEN_FIELD: usize = 4;
/// Room made before each read, as the backend client does.
const READ_CHUNK: usize = 64 * 1024;

/// Every logical connection the bench opens gets its own command id, so no
/// key is ever reused while its previous session may still be open.
static NEXT_COMMAND: AtomicU32 = AtomicU32::new(1);

/// A command id no other connection of this process uses.
pub fn next_command() -> u32 {
    NEXT_COMMAND.fetch_add(1, Relaxed)
}

/// A proxy's backend socket and the instance it serves.
#[derive(Clone, Debug)]
pub struct ProxyEnd {
    pub socket: PathBuf,
    pub dbid: u16,
    pub content: i16,
}

impl ProxyEnd {
    /// `dbid,content,path`, as a holder process takes it.
    pub fn to_arg(&self) -> String {
        format!("{},{},{}", self.dbid, self.content, self.socket.display())
    }

    /// `dbid,content`, for a key handed to another process.
    pub fn to_arg_short(&self) -> String {
        format!("{},{}", self.dbid, self.content)
    }

    pub fn from_arg(s: &str) -> Result<ProxyEnd, String> {
        let mut it = s.splitn(3, ',');
        let (Some(d), Some(c), Some(p)) = (it.next(), it.next(), it.next()) else {
            return Err(format!("expected dbid,content,path: {s}"));
        };
        Ok(ProxyEnd {
            dbid: d.parse().map_err(|e| format!("dbid {d}: {e}"))?,
            content: c.parse().map_err(|e| format!("content {c}: {e}"))?,
            socket: PathBuf::from(p),
        })
    }
}

/// The two endpoints of a family of logical connections.
pub enum Endpoints {
    /// Backend on `a`'s proxy to backend on `b`'s proxy.
    Proxy { a: ProxyEnd, b: ProxyEnd },
    /// A TCP listener of the bench; `open` connects and accepts in turn under
    /// the lock, so each accepted socket is the one just connected.
    Direct {
        listener: TcpListener,
        addr: SocketAddr,
        lock: Mutex<()>,
    },
}

impl Endpoints {
    pub async fn direct() -> Result<Endpoints, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot bind 127.0.0.1:0: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        Ok(Endpoints::Direct {
            listener,
            addr,
            lock: Mutex::new(()),
        })
    }

    /// Opens one logical connection: `(sender side a, receiver side b)`,
    /// both past their handshake.
    pub async fn open(&self) -> Result<(Conn, Conn), String> {
        let command = next_command();
        match self {
            Endpoints::Proxy { a, b } => {
                let s = spec(a, b, command);
                let opts = ClientOptions::default();
                let (x, y) = tokio::join!(
                    LogicalConn::connect(&a.socket, s, &opts),
                    LogicalConn::connect(&b.socket, s.reversed(), &opts)
                );
                let x = x.map_err(|e| format!("sender side: {e}"))?;
                let y = y.map_err(|e| format!("receiver side: {e}"))?;
                Ok((Conn::proxy(x), Conn::proxy(y)))
            }
            Endpoints::Direct {
                listener,
                addr,
                lock,
            } => {
                let (x, y) = {
                    let _g = lock.lock().await;
                    let (x, y) = tokio::join!(TcpStream::connect(addr), listener.accept());
                    (
                        x.map_err(|e| format!("connect: {e}"))?,
                        y.map_err(|e| format!("accept: {e}"))?.0,
                    )
                };
                let hello = ProxyEnd {
                    socket: PathBuf::new(),
                    dbid: 1,
                    content: -1,
                };
                let s = spec(&hello, &hello, command);
                let (rx, ry) = tokio::join!(hello_as_dialer(x, &s), hello_as_acceptor(y, &s));
                Ok((rx?, ry?))
            }
        }
    }
}

pub fn spec(a: &ProxyEnd, b: &ProxyEnd, command: u32) -> ConnSpec {
    // The backends are this process: its pid keeps the keys of several
    // bench processes (the memory scenario's holders) apart.
    let pid = std::process::id() as i32;
    ConnSpec {
        session_id: 1,
        command_id: command,
        send_slice: 1,
        recv_slice: 0,
        local: Endpoint {
            content: a.content,
            dbid: a.dbid,
            pid,
        },
        remote: Endpoint {
            content: b.content,
            dbid: b.dbid,
            pid: pid.wrapping_add(1),
        },
    }
}

/// The direct baseline's setup: a header-sized HELLO one way, its ACK back.
pub async fn hello_as_dialer(mut s: TcpStream, spec: &ConnSpec) -> Result<Conn, String> {
    tune(&s);
    let d = Dialect::C;
    s.write_all(&spec.hello(d).encode(d))
        .await
        .map_err(|e| e.to_string())?;
    let mut ack = vec![0u8; d.header_len()];
    s.read_exact(&mut ack).await.map_err(|e| e.to_string())?;
    Ok(Conn::direct(s))
}

pub async fn hello_as_acceptor(mut s: TcpStream, spec: &ConnSpec) -> Result<Conn, String> {
    tune(&s);
    let d = Dialect::C;
    let mut hello = vec![0u8; d.header_len()];
    s.read_exact(&mut hello).await.map_err(|e| e.to_string())?;
    s.write_all(&spec.hello_ack(d).encode(d))
        .await
        .map_err(|e| e.to_string())?;
    Ok(Conn::direct(s))
}

fn tune(s: &TcpStream) {
    // As the interconnect's own TCP sockets: no Nagle delay.
    let _ = s.set_nodelay(true);
    // Closed only after both ends read EOF: a reset instead of TIME_WAIT keeps
    // connection churn from running out of ephemeral ports.
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

/// One end of a logical connection.
pub struct Conn {
    pub tx: Tx,
    pub rx: Rx,
}

impl Conn {
    pub fn proxy(c: LogicalConn) -> Conn {
        let (tx, rx) = c.into_split();
        Conn {
            tx: Tx::Proxy(tx),
            rx: Rx::Proxy(rx),
        }
    }

    fn direct(s: TcpStream) -> Conn {
        let (rd, wr) = s.into_split();
        Conn {
            tx: Tx::Direct {
                wr,
                buf: BytesMut::new(),
            },
            rx: Rx::Direct {
                rd,
                buf: BytesMut::new(),
                eof: false,
            },
        }
    }
}

pub enum Tx {
    Proxy(SendHalf),
    Direct { wr: OwnedWriteHalf, buf: BytesMut },
}

impl Tx {
    /// Several ic-tcp packets in one write, as the backend client sends them.
    pub async fn send(&mut self, payloads: &[&[u8]]) -> Result<(), String> {
        match self {
            Tx::Proxy(s) => s.send_packets(payloads).await.map_err(|e| e.to_string()),
            Tx::Direct { wr, buf } => {
                buf.clear();
                buf.reserve(payloads.iter().map(|p| p.len() + LEN_FIELD).sum());
                for p in payloads {
                    ictcp_packet(p, buf);
                }
                wr.write_all(buf).await.map_err(|e| e.to_string())
            }
        }
    }

    /// Half-close: through the proxy this is the BYE.
    pub async fn finish(&mut self) -> Result<(), String> {
        match self {
            Tx::Proxy(s) => s.finish().await.map_err(|e| e.to_string()),
            Tx::Direct { wr, .. } => wr.shutdown().await.map_err(|e| e.to_string()),
        }
    }
}

/// What came next on a receiving end.
pub enum Item {
    Packet(Bytes),
    Eof,
}

pub enum Rx {
    Proxy(RecvHalf),
    Direct {
        rd: OwnedReadHalf,
        buf: BytesMut,
        eof: bool,
    },
}

impl Rx {
    pub async fn recv(&mut self) -> Result<Item, String> {
        match self {
            Rx::Proxy(r) => match r.recv().await.map_err(|e| e.to_string())? {
                RecvItem::Packet(p) => Ok(Item::Packet(p)),
                RecvItem::Eof => Ok(Item::Eof),
                RecvItem::Stop => Err("unexpected STOP byte".into()),
            },
            Rx::Direct { rd, buf, eof } => {
                // The backend client's loop, over TCP.
                let framer = IcTcpFramer {
                    max_packet_size: DEFAULT_PACKET_SIZE,
                };
                loop {
                    if let Some(n) = framer.complete_len(buf).map_err(|e| e.to_string())? {
                        let mut p = buf.split_to(n);
                        p.advance(LEN_FIELD);
                        return Ok(Item::Packet(p.freeze()));
                    }
                    if *eof {
                        return if buf.is_empty() {
                            Ok(Item::Eof)
                        } else {
                            Err("EOF inside an ic-tcp packet".into())
                        };
                    }
                    buf.reserve(READ_CHUNK);
                    if rd.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
                        *eof = true;
                    }
                }
            }
        }
    }

    /// The next item must be EOF.
    pub async fn expect_eof(&mut self) -> Result<(), String> {
        match self.recv().await? {
            Item::Eof => Ok(()),
            Item::Packet(p) => Err(format!("a {}-byte packet where EOF was due", p.len())),
        }
    }
}
