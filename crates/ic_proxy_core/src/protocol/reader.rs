//! Reading one whole proxy packet from a stream, for the handshakes (a
//! backend's HELLO, PEER_HELLO and its ACK, the authentication messages),
//! where a packet is awaited before anything else can happen. The only
//! piece of `protocol` that reads: it awaits bytes, never writes, and knows
//! nothing of the runtime.

use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{sniff_dialect, Dialect, HeaderError, Packet, PacketDecoder};

/// Reads packets of one dialect, refusing the other one by its first bytes.
#[derive(Clone, Copy, Debug)]
pub struct PacketReader {
    decoder: PacketDecoder,
}

impl PacketReader {
    pub fn new(decoder: PacketDecoder) -> Self {
        PacketReader { decoder }
    }

    /// The dialect this reader speaks.
    pub fn dialect(&self) -> Dialect {
        self.decoder.dialect
    }

    /// Reads exactly one proxy packet; bytes after it stay in `buf`.
    pub async fn read_packet<S: AsyncRead + Unpin>(
        &self,
        s: &mut S,
        buf: &mut BytesMut,
    ) -> io::Result<Packet> {
        loop {
            // A stream of the other dialect is refused on its first 4 bytes,
            // before waiting for a header that may never complete.
            if buf.len() >= 4 {
                if let Some(theirs) = sniff_dialect(&buf[..4]) {
                    if theirs != self.dialect() {
                        return Err(invalid(format!(
                            "dialect mismatch: the other side speaks dialect {theirs} but this proxy speaks dialect {} (ic_proxy.dialect)",
                            self.dialect()
                        )));
                    }
                }
            }
            match self.decoder.decode(buf) {
                Ok(Some(p)) => return Ok(p),
                Ok(None) => {}
                Err(e) => return Err(invalid(self.explain(&e, buf))),
            }
            if buf.capacity() - buf.len() < 512 {
                buf.reserve(4096);
            }
            if s.read_buf(buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before a whole packet",
                ));
            }
        }
    }

    /// A header error, with the dialect named when the bytes are the other one.
    pub fn explain(&self, e: &HeaderError, buf: &[u8]) -> String {
        let mine = self.dialect();
        match sniff_dialect(&buf[..buf.len().min(4)]) {
            Some(theirs) if theirs != mine => format!(
                "dialect mismatch: the other side speaks dialect {theirs} but this proxy speaks dialect {mine} \
                 (ic_proxy.dialect); {e}"
            ),
            _ => e.to_string(),
        }
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{encode_packet, Endpoint, Header, PacketType};

    fn packet(d: Dialect, payload: &[u8]) -> BytesMut {
        let e = Endpoint {
            content: 0,
            dbid: 1,
            pid: 7,
        };
        let h = Header {
            len: (d.header_len() + payload.len()) as u16,
            ptype: PacketType::Data,
            src: e,
            dst: e,
            session_id: 1,
            command_id: 2,
            send_slice: 0,
            recv_slice: 0,
        };
        let mut out = BytesMut::new();
        encode_packet(&h, d, payload, &mut out);
        out
    }

    #[tokio::test]
    async fn reads_one_packet_and_keeps_what_follows() {
        let r = PacketReader::new(PacketDecoder::new(Dialect::C, 8192));
        let mut bytes = packet(Dialect::C, b"first");
        bytes.extend_from_slice(&packet(Dialect::C, b"second"));
        let mut stream: &[u8] = &bytes;
        let mut buf = BytesMut::new();
        let p = r.read_packet(&mut stream, &mut buf).await.unwrap();
        assert_eq!(&p.payload[..], b"first");
        let p = r.read_packet(&mut stream, &mut buf).await.unwrap();
        assert_eq!(&p.payload[..], b"second");
        let e = r.read_packet(&mut stream, &mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn the_other_dialect_is_named() {
        let r = PacketReader::new(PacketDecoder::new(Dialect::B, 8192));
        let bytes = packet(Dialect::C, b"x");
        let mut stream: &[u8] = &bytes;
        let e = r
            .read_packet(&mut stream, &mut BytesMut::new())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(
            e.to_string().starts_with(
                "dialect mismatch: the other side speaks dialect c but this proxy speaks dialect b"
            ),
            "{e}"
        );
    }
}
