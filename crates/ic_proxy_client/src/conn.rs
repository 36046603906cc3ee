//! One logical connection over the proxy's Unix socket: the setup handshake
//! (connect with retries, HELLO, exactly one HELLO ACK), then ic-tcp packets
//! out, payloads in, STOP and half-close. Never reads a byte past the HELLO
//! ACK during setup, so data the proxy sends right after it is not lost.

use std::fmt;
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use ic_proxy_core::protocol::{ictcp_packet, Header, IcTcpFramer, MAX_HEADER_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::time::Instant;

use crate::{ClientError, ClientOptions, ConnSpec};

/// The one-byte message a receiver sends to ask its sender to stop.
pub const STOP_BYTE: u8 = b'S';

/// Bytes of an ic-tcp packet's length field.
const LEN_FIELD: usize = 4;

/// Spare room made before each read: large reads for throughput.
const READ_CHUNK: usize = 64 * 1024;

/// How often [`wait_for_socket`] looks at the path.
const SOCKET_POLL: Duration = Duration::from_millis(10);

/// What [`LogicalConn::recv`] found next on the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecvItem {
    /// One ic-tcp packet's payload (the length field stripped).
    Packet(Bytes),
    /// A lone STOP byte followed by EOF: the receiver at the other end wants
    /// no more data. The next call returns [`RecvItem::Eof`].
    Stop,
    /// Clean EOF at a packet boundary: the proxy half-closed after the
    /// remote's BYE.
    Eof,
}

/// A connected, acknowledged logical connection.
pub struct LogicalConn {
    send: SendHalf,
    recv: RecvHalf,
}

/// The writing half of a [`LogicalConn`].
pub struct SendHalf {
    spec: ConnSpec,
    write: OwnedWriteHalf,
    max_packet_size: usize,
    /// Reused for framing, so steady-state sends do not allocate.
    buf: BytesMut,
}

/// The reading half of a [`LogicalConn`].
pub struct RecvHalf {
    spec: ConnSpec,
    read: OwnedReadHalf,
    framer: IcTcpFramer,
    buf: BytesMut,
    eof: bool,
}

impl LogicalConn {
    /// Connect (retrying every `retry_interval` until `connect_deadline`, like
    /// a backend does), send HELLO (header only, src = `spec.local`, dst =
    /// `spec.remote`, the other fields from `spec`), then read exactly one
    /// header's worth of bytes and check they are that HELLO with src and dst
    /// swapped and type HELLO ACK. The HELLO ACK wait counts against the same
    /// deadline ([`ClientError::Timeout`] when it runs out).
    pub async fn connect(
        path: &Path,
        spec: ConnSpec,
        opts: &ClientOptions,
    ) -> Result<LogicalConn, ClientError> {
        let started = Instant::now();
        let deadline = started + opts.connect_deadline;
        let mut stream = connect_with_retries(path, started, deadline, opts.retry_interval).await?;

        let d = opts.dialect;
        stream.write_all(&spec.hello(d).encode(d)).await?;

        let mut ack = [0u8; MAX_HEADER_LEN];
        let ack = &mut ack[..d.header_len()];
        // read_exact asks for no more than the bytes still missing.
        match tokio::time::timeout_at(deadline, stream.read_exact(ack)).await {
            Err(_) => return Err(ClientError::Timeout),
            Ok(Err(e)) if e.kind() == ErrorKind::UnexpectedEof => {
                return Err(ClientError::ClosedBeforeAck)
            }
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(_)) => {}
        }
        let got = Header::decode(ack, d, opts.max_packet_size).map_err(ClientError::BadHelloAck)?;
        let expected = spec.hello_ack(d);
        if got != expected {
            return Err(ClientError::HelloAckMismatch { expected, got });
        }
        log::debug!(
            "logical connection {spec} set up in {:?}",
            started.elapsed()
        );

        let (read, write) = stream.into_split();
        Ok(LogicalConn {
            send: SendHalf {
                spec,
                write,
                max_packet_size: opts.max_packet_size,
                buf: BytesMut::new(),
            },
            recv: RecvHalf {
                spec,
                read,
                framer: IcTcpFramer {
                    max_packet_size: opts.max_packet_size,
                },
                buf: BytesMut::new(),
                eof: false,
            },
        })
    }

    /// Send one ic-tcp packet: u32 length (4 + `payload.len()`, native
    /// order), then the payload. [`ClientError::PacketTooLarge`] (nothing
    /// written) if that exceeds `max_packet_size`.
    pub async fn send_packet(&mut self, payload: &[u8]) -> Result<(), ClientError> {
        self.send.send_packet(payload).await
    }

    /// Send several ic-tcp packets in one write. Checks every size first; on
    /// [`ClientError::PacketTooLarge`] nothing is written.
    pub async fn send_packets(&mut self, payloads: &[&[u8]]) -> Result<(), ClientError> {
        self.send.send_packets(payloads).await
    }

    /// The next ic-tcp packet's payload, [`RecvItem::Stop`] for a lone STOP
    /// byte before EOF, or [`RecvItem::Eof`] at a clean EOF.
    pub async fn recv(&mut self) -> Result<RecvItem, ClientError> {
        self.recv.recv().await
    }

    /// Half-close our write side: the proxy sends BYE to the other end.
    pub async fn finish(&mut self) -> Result<(), ClientError> {
        self.send.finish().await
    }

    /// Ask the sender at the other end to stop: write the single byte 'S' and
    /// half-close, as ic-tcp does.
    pub async fn stop(&mut self) -> Result<(), ClientError> {
        self.send.stop().await
    }

    /// The key this connection was set up with.
    pub fn spec(&self) -> &ConnSpec {
        &self.send.spec
    }

    /// Separate halves for full-duplex use.
    pub fn into_split(self) -> (SendHalf, RecvHalf) {
        (self.send, self.recv)
    }
}

impl fmt::Debug for LogicalConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogicalConn")
            .field("send", &self.send)
            .field("recv", &self.recv)
            .finish()
    }
}

impl fmt::Debug for SendHalf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendHalf")
            .field("spec", &self.spec)
            .field("max_packet_size", &self.max_packet_size)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RecvHalf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Buffered bytes by count only: they may be a whole packet.
        f.debug_struct("RecvHalf")
            .field("spec", &self.spec)
            .field("max_packet_size", &self.framer.max_packet_size)
            .field("buffered", &self.buf.len())
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

impl SendHalf {
    /// See [`LogicalConn::send_packet`].
    pub async fn send_packet(&mut self, payload: &[u8]) -> Result<(), ClientError> {
        self.send_packets(&[payload]).await
    }

    /// See [`LogicalConn::send_packets`].
    pub async fn send_packets(&mut self, payloads: &[&[u8]]) -> Result<(), ClientError> {
        let mut total = 0;
        for p in payloads {
            let len = LEN_FIELD + p.len();
            if len > self.max_packet_size {
                return Err(ClientError::PacketTooLarge {
                    len,
                    max: self.max_packet_size,
                });
            }
            total += len;
        }
        self.buf.clear();
        self.buf.reserve(total);
        for p in payloads {
            ictcp_packet(p, &mut self.buf);
        }
        self.write.write_all(&self.buf).await?;
        Ok(())
    }

    /// See [`LogicalConn::finish`].
    pub async fn finish(&mut self) -> Result<(), ClientError> {
        self.write.shutdown().await?;
        Ok(())
    }

    /// See [`LogicalConn::stop`].
    pub async fn stop(&mut self) -> Result<(), ClientError> {
        self.write.write_all(&[STOP_BYTE]).await?;
        self.finish().await
    }

    /// The key this connection was set up with.
    pub fn spec(&self) -> &ConnSpec {
        &self.spec
    }
}

impl RecvHalf {
    /// See [`LogicalConn::recv`].
    pub async fn recv(&mut self) -> Result<RecvItem, ClientError> {
        loop {
            let complete = self
                .framer
                .complete_len(&self.buf)
                .map_err(ClientError::BadFrame)?;
            if let Some(n) = complete {
                let mut packet = self.buf.split_to(n);
                packet.advance(LEN_FIELD);
                return Ok(RecvItem::Packet(packet.freeze()));
            }
            if self.eof {
                // A STOP byte is only told apart from the first byte of a
                // length field by the EOF that follows it.
                return match self.buf[..] {
                    [] => Ok(RecvItem::Eof),
                    [STOP_BYTE] => {
                        self.buf.clear();
                        Ok(RecvItem::Stop)
                    }
                    _ => Err(ClientError::ClosedPrematurely),
                };
            }
            self.buf
                .reserve(READ_CHUNK.max(self.framer.max_packet_size));
            if self.read.read_buf(&mut self.buf).await? == 0 {
                self.eof = true;
            }
        }
    }

    /// The key this connection was set up with.
    pub fn spec(&self) -> &ConnSpec {
        &self.spec
    }
}

/// Connect, retrying every `retry` until `deadline`; the last attempt is made
/// at the deadline. Every error is retried, as a backend does (the socket may
/// not exist yet, or exist before the proxy listens on it).
async fn connect_with_retries(
    path: &Path,
    started: Instant,
    deadline: Instant,
    retry: Duration,
) -> Result<UnixStream, ClientError> {
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match UnixStream::connect(path).await {
            Ok(s) => {
                log::debug!(
                    "connected to {} after {attempts} attempt(s)",
                    path.display()
                );
                return Ok(s);
            }
            Err(source) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(ClientError::Connect {
                        path: path.to_owned(),
                        source,
                        waited: now - started,
                    });
                }
                log::trace!("connect to {} failed: {source}; retrying", path.display());
                tokio::time::sleep_until((now + retry).min(deadline)).await;
            }
        }
    }
}

/// Wait until `path` exists and is a Unix socket, looking every 10 ms, for at
/// most `deadline`. On timeout, [`ClientError::Connect`] carries the last
/// reason. A socket file may appear just before its listener listens;
/// [`LogicalConn::connect`] retries over that gap.
pub async fn wait_for_socket(path: &Path, deadline: Duration) -> Result<(), ClientError> {
    let started = Instant::now();
    let until = started + deadline;
    loop {
        // One stat of a local path: too short to be worth a blocking thread.
        let reason = match std::fs::metadata(path) {
            Ok(m) if m.file_type().is_socket() => return Ok(()),
            Ok(_) => io::Error::new(ErrorKind::InvalidInput, "path exists but is not a socket"),
            Err(e) => e,
        };
        let now = Instant::now();
        if now >= until {
            return Err(ClientError::Connect {
                path: path.to_owned(),
                source: reason,
                waited: now - started,
            });
        }
        tokio::time::sleep_until((now + SOCKET_POLL).min(until)).await;
    }
}
