//! Stream framing: ICProxyPkt packets out of a peer (or first-HELLO) byte
//! stream, and the backends' ic-tcp packets (a u32 length that counts itself)
//! out of a Unix stream. Pure functions over buffers: no I/O, and no copy of a
//! payload once it is in the caller's buffer.

use bytes::{Bytes, BytesMut};

use super::header::{Dialect, Header, HeaderError, PacketType};

/// One framed proxy packet. `payload` shares the read buffer's memory.
#[derive(Clone, Debug)]
pub struct Packet {
    pub header: Header,
    pub payload: Bytes,
}

/// Frames proxy packets (ICProxyPkt) out of a byte stream (peer TCP streams,
/// and the backend's first HELLO).
#[derive(Clone, Copy, Debug)]
pub struct PacketDecoder {
    pub dialect: Dialect,
    /// gp_max_packet_size: the largest DATA payload accepted.
    pub max_payload: usize,
}

impl PacketDecoder {
    pub fn new(dialect: Dialect, max_payload: usize) -> Self {
        PacketDecoder {
            dialect,
            max_payload,
        }
    }

    /// The next packet at the start of `buf`, split off it; `Ok(None)` means
    /// more bytes are needed.
    ///
    /// The header is validated as soon as its bytes are present, so a bad
    /// length is reported before any payload is waited for or buffered. When
    /// more bytes are needed, `buf` is given room for the rest of THIS packet
    /// (header first, then payload) and no more: a new allocation is exactly
    /// one packet, so a peer can never make the buffer outgrow
    /// `header_len + max_payload` (unless the caller grew it first). The
    /// decoder never shrinks `buf`, so a caller that wants fewer, larger reads
    /// may reserve more itself. After an `Err` the stream cannot be
    /// resynchronised: drop the connection.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Packet>, HeaderError> {
        let header_len = self.dialect.header_len();
        if buf.len() < header_len {
            reserve_packet(buf, header_len);
            return Ok(None);
        }
        let header = Header::decode(&buf[..header_len], self.dialect, self.max_payload)?;
        let total = usize::from(header.len);
        if buf.len() < total {
            reserve_packet(buf, total);
            return Ok(None);
        }
        let payload = buf.split_to(total).freeze().slice(header_len..);
        Ok(Some(Packet { header, payload }))
    }
}

impl PacketDecoder {
    /// After [`decode`](Self::decode) refused a DATA packet as longer than
    /// `max_payload` allows: skips that whole packet once its bytes are in
    /// `buf` and returns its header (`Ok(None)` while more bytes are needed),
    /// so the stream stays in step and only that packet's logical connection
    /// is lost. The buffer grows to one such packet at most (the u16 `len`
    /// bounds it to 64 KiB). Err for anything else that is wrong.
    pub fn skip_oversized(&self, buf: &mut BytesMut) -> Result<Option<Header>, HeaderError> {
        let header_len = self.dialect.header_len();
        if buf.len() < header_len {
            return Err(HeaderError::Short {
                have: buf.len(),
                need: header_len,
            });
        }
        let header = Header::decode(
            &buf[..header_len],
            self.dialect,
            usize::from(u16::MAX) - header_len,
        )?;
        if header.ptype != PacketType::Data {
            // Only DATA carries a payload; decode's own error stands.
            return Err(HeaderError::LengthAboveMax {
                len: header.len,
                max: header_len + self.max_payload,
            });
        }
        let total = usize::from(header.len);
        if buf.len() < total {
            reserve_packet(buf, total);
            return Ok(None);
        }
        let _ = buf.split_to(total);
        Ok(Some(header))
    }
}

/// Make room in `buf` for a packet of `total` bytes that starts at its front.
/// `BytesMut::reserve` may double the allocation; a fresh buffer of exactly
/// `total` bytes keeps the bound.
fn reserve_packet(buf: &mut BytesMut, total: usize) {
    if buf.capacity() >= total {
        return;
    }
    let missing = total - buf.len();
    if !buf.try_reclaim(missing) {
        let mut fresh = BytesMut::with_capacity(total);
        fresh.extend_from_slice(buf);
        *buf = fresh;
    }
}

/// Append a packet: `h` with its `len` set to `header_len + payload.len()`
/// (whatever `h.len` says, so a header template can be reused), then the
/// payload.
///
/// # Panics
/// If the packet is longer than a u16 `len` can say (65535 bytes).
pub fn encode_packet(h: &Header, d: Dialect, payload: &[u8], out: &mut BytesMut) {
    let total = d.header_len() + payload.len();
    let len = u16::try_from(total).expect("packet longer than the u16 len field allows");
    out.reserve(total);
    Header { len, ..*h }.encode_into(d, out);
    out.extend_from_slice(payload);
}

/// Bytes of an ic-tcp packet's length field.
const ICTCP_LEN_BYTES: usize = 4;

/// The backend side's ic-tcp framing: each packet starts with a u32 length in
/// native byte order that counts its own 4 bytes.
#[derive(Clone, Copy, Debug)]
pub struct IcTcpFramer {
    /// gp_max_packet_size: the largest ic-tcp packet (length field included),
    /// and the largest DATA payload a run of them may fill.
    pub max_packet_size: usize,
}

/// An ic-tcp length field the backend could not have written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("ic-tcp packet length {len} is below 4 (the length counts its own 4 bytes)")]
    LengthBelowMinimum { len: u32 },
    #[error("ic-tcp packet length {len} is above gp_max_packet_size {max}")]
    LengthAboveMax { len: u32, max: usize },
}

impl IcTcpFramer {
    /// Length of the complete ic-tcp packet at the start of buf: Ok(Some(n))
    /// when all n bytes are present, Ok(None) when more are needed (including
    /// fewer than 4 bytes, such as a lone STOP byte), Err when the length field
    /// is < 4 or > max_packet_size.
    pub fn complete_len(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        let Some(field) = buf.first_chunk::<ICTCP_LEN_BYTES>() else {
            return Ok(None);
        };
        let len = u32::from_ne_bytes(*field);
        let n = len as usize;
        if n < ICTCP_LEN_BYTES {
            return Err(FrameError::LengthBelowMinimum { len });
        }
        if n > self.max_packet_size {
            return Err(FrameError::LengthAboveMax {
                len,
                max: self.max_packet_size,
            });
        }
        Ok((buf.len() >= n).then_some(n))
    }

    /// The longest prefix of buf made of complete packets, grouped greedily
    /// into runs of at most max_packet_size bytes each (each run = one DATA
    /// payload; a run holds whole ic-tcp packets only). Clears `out`, then
    /// pushes the run lengths in order; stops at the first incomplete packet.
    /// On Err (a bad length), `out` holds the runs of the packets before it.
    pub fn complete_runs(&self, buf: &[u8], out: &mut Vec<usize>) -> Result<(), FrameError> {
        out.clear();
        let mut at = 0;
        let mut run = 0;
        let result = loop {
            match self.complete_len(&buf[at..]) {
                Ok(Some(n)) => {
                    // n <= max_packet_size, so a run of one packet always fits.
                    if run + n > self.max_packet_size {
                        out.push(run);
                        run = 0;
                    }
                    run += n;
                    at += n;
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if run > 0 {
            out.push(run);
        }
        result
    }
}

/// Append one ic-tcp packet: u32 length (4 + payload.len(), native order),
/// then the payload.
///
/// # Panics
/// If the packet is longer than u32::MAX bytes.
pub fn ictcp_packet(payload: &[u8], out: &mut BytesMut) {
    let len =
        u32::try_from(ICTCP_LEN_BYTES + payload.len()).expect("ic-tcp packet longer than u32::MAX");
    out.reserve(ICTCP_LEN_BYTES + payload.len());
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Endpoint, PacketType, DEFAULT_PACKET_SIZE};

    const BOTH: [Dialect; 2] = [Dialect::B, Dialect::C];
    const MAX: usize = DEFAULT_PACKET_SIZE;

    fn header(ptype: PacketType, n: i32) -> Header {
        Header {
            len: 0,
            ptype,
            src: Endpoint {
                content: -1,
                dbid: 1,
                pid: n,
            },
            dst: Endpoint {
                content: 0,
                dbid: 2,
                pid: 2 * n,
            },
            session_id: 5,
            command_id: 6,
            send_slice: 1,
            recv_slice: 0,
        }
    }

    /// A stream of messages and DATA packets of assorted sizes, and the
    /// (header, payload) pairs it holds.
    fn stream(d: Dialect) -> (Vec<u8>, Vec<(Header, Vec<u8>)>) {
        let mut out = BytesMut::new();
        let mut want = Vec::new();
        let sizes = [0usize, 1, 5, MAX, 100, MAX - 1, 3];
        for (i, size) in sizes.into_iter().enumerate() {
            let payload: Vec<u8> = (0..size).map(|b| (b * 7 + i) as u8).collect();
            let h = header(PacketType::Data, i as i32);
            encode_packet(&h, d, &payload, &mut out);
            let len = (d.header_len() + size) as u16;
            want.push((Header { len, ..h }, payload));
            let m = header(PacketType::Bye, i as i32);
            encode_packet(&m, d, &[], &mut out);
            want.push((
                Header {
                    len: d.header_len() as u16,
                    ..m
                },
                Vec::new(),
            ));
        }
        (out.to_vec(), want)
    }

    fn drain(dec: &PacketDecoder, buf: &mut BytesMut, got: &mut Vec<(Header, Vec<u8>)>) {
        while let Some(p) = dec.decode(buf).unwrap() {
            got.push((p.header, p.payload.to_vec()));
        }
    }

    #[test]
    fn an_oversized_data_packet_is_skipped_whole_and_the_stream_stays_in_step() {
        for d in BOTH {
            let mut out = BytesMut::new();
            let big: Vec<u8> = (0..MAX + 100).map(|b| b as u8).collect();
            encode_packet(&header(PacketType::Data, 1), d, &big, &mut out);
            encode_packet(&header(PacketType::Data, 2), d, b"after", &mut out);
            let bytes = out.to_vec();
            let dec = PacketDecoder::new(d, MAX);
            // Fed a few bytes at a time: refused, then skipped once whole.
            let mut buf = BytesMut::new();
            let mut skipped = None;
            let mut next = None;
            for chunk in bytes.chunks(7) {
                buf.extend_from_slice(chunk);
                if skipped.is_none() {
                    match dec.decode(&mut buf) {
                        // Not even a whole header yet.
                        Ok(None) => assert!(buf.len() < d.header_len()),
                        Err(HeaderError::LengthAboveMax { .. }) => {
                            skipped = dec.skip_oversized(&mut buf).unwrap();
                        }
                        other => panic!("expected LengthAboveMax, got {other:?}"),
                    }
                } else if next.is_none() {
                    next = dec.decode(&mut buf).unwrap();
                }
            }
            let h = skipped.expect("the big packet was skipped");
            assert_eq!(h.src.pid, 1);
            assert_eq!(usize::from(h.len), d.header_len() + MAX + 100);
            let p = next.expect("the packet after it decodes");
            assert_eq!((p.header.src.pid, &p.payload[..]), (2, &b"after"[..]));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn only_data_is_skipped_when_oversized() {
        for d in BOTH {
            let mut buf = BytesMut::new();
            let h = Header {
                len: (d.header_len() + 10) as u16,
                ..header(PacketType::Bye, 1)
            };
            h.encode_into(d, &mut buf);
            buf.extend_from_slice(&[0; 10]);
            assert!(PacketDecoder::new(d, MAX).skip_oversized(&mut buf).is_err());
        }
    }

    #[test]
    fn one_buffer_and_byte_at_a_time_agree() {
        for d in BOTH {
            let (bytes, want) = stream(d);
            let dec = PacketDecoder::new(d, MAX);

            let mut whole = BytesMut::from(&bytes[..]);
            let mut got = Vec::new();
            drain(&dec, &mut whole, &mut got);
            assert_eq!(got, want);
            assert!(whole.is_empty());

            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for b in &bytes {
                buf.extend_from_slice(&[*b]);
                drain(&dec, &mut buf, &mut got);
            }
            assert_eq!(got, want);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn payload_shares_the_read_buffer() {
        let d = Dialect::C;
        let mut buf = BytesMut::new();
        encode_packet(&header(PacketType::Data, 1), d, b"abcdef", &mut buf);
        let start = buf.as_ptr() as usize;
        let p = PacketDecoder::new(d, MAX)
            .decode(&mut buf)
            .unwrap()
            .unwrap();
        assert_eq!(&p.payload[..], b"abcdef");
        assert_eq!(p.payload.as_ptr() as usize, start + d.header_len());
    }

    #[test]
    fn bad_length_is_reported_before_the_payload() {
        for d in BOTH {
            let dec = PacketDecoder::new(d, MAX);
            let mut h = header(PacketType::Data, 1);
            h.len = (d.header_len() + MAX + 1) as u16;
            let enc = h.encode(d);
            let mut buf = BytesMut::new();
            for (i, b) in enc.iter().enumerate() {
                buf.extend_from_slice(&[*b]);
                let r = dec.decode(&mut buf);
                if i + 1 < enc.len() {
                    assert_eq!(r.unwrap().map(|p| p.header), None);
                } else {
                    assert_eq!(
                        r.unwrap_err(),
                        HeaderError::LengthAboveMax {
                            len: h.len,
                            max: d.header_len() + MAX
                        }
                    );
                }
            }
            // Nothing was reserved for the oversized payload.
            assert!(buf.capacity() < d.header_len() + MAX, "{}", buf.capacity());

            let mut zero = BytesMut::from(&h.encode(d)[..]);
            let at = if d == Dialect::C { 4 } else { 0 };
            zero[at..at + 2].copy_from_slice(&0u16.to_ne_bytes());
            assert_eq!(
                dec.decode(&mut zero).unwrap_err(),
                HeaderError::LengthBelowHeader {
                    len: 0,
                    header: d.header_len()
                }
            );
        }
    }

    #[test]
    fn reservation_stays_within_one_max_packet() {
        // A reader that, like tokio's read_buf, only fills the spare capacity
        // the decoder left, in chunks of various sizes.
        for d in BOTH {
            let (bytes, want) = stream(d);
            let dec = PacketDecoder::new(d, MAX);
            let bound = d.header_len() + MAX;
            for chunk in [1, 7, 64, 1000, 5000, 20000] {
                let mut buf = BytesMut::new();
                let mut got = Vec::new();
                let mut fed = 0;
                loop {
                    // Keep the previous packets alive, as a router queue would.
                    while let Some(p) = dec.decode(&mut buf).unwrap() {
                        got.push((p.header, p.payload.to_vec()));
                        assert!(buf.capacity() <= bound);
                    }
                    assert!(buf.capacity() <= bound, "{} > {bound}", buf.capacity());
                    if fed == bytes.len() {
                        break;
                    }
                    let spare = buf.capacity() - buf.len();
                    assert!(spare > 0, "the decoder must leave room to read into");
                    let n = spare.min(chunk).min(bytes.len() - fed);
                    buf.extend_from_slice(&bytes[fed..fed + n]);
                    fed += n;
                }
                assert_eq!(got, want, "chunk {chunk}");
            }
        }
    }

    #[test]
    fn reserve_reuses_a_buffer_it_owns() {
        let d = Dialect::B;
        let dec = PacketDecoder::new(d, MAX);
        let mut buf = BytesMut::with_capacity(d.header_len() + MAX);
        let mut bytes = BytesMut::new();
        encode_packet(&header(PacketType::Data, 1), d, &[1; 100], &mut bytes);
        encode_packet(&header(PacketType::Data, 2), d, &[2; 100], &mut bytes);
        buf.extend_from_slice(&bytes[..200]);
        let first = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(&first.payload[..], &[1; 100]);
        drop(first);
        assert!(dec.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() >= 132);
        buf.extend_from_slice(&bytes[200..]);
        let second = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(&second.payload[..], &[2; 100]);
    }

    #[test]
    fn encode_packet_sets_len_from_the_payload() {
        for d in BOTH {
            let mut out = BytesMut::new();
            let h = header(PacketType::Data, 3);
            encode_packet(&h, d, b"xyz", &mut out);
            assert_eq!(out.len(), d.header_len() + 3);
            let got = Header::decode(&out, d, MAX).unwrap();
            assert_eq!(got.len as usize, d.header_len() + 3);
            assert_eq!(&out[d.header_len()..], b"xyz");
        }
    }

    #[test]
    fn ictcp_packet_layout() {
        let mut out = BytesMut::new();
        ictcp_packet(b"hello", &mut out);
        assert_eq!(&out[..4], &9u32.to_ne_bytes());
        assert_eq!(&out[4..], b"hello");
        let f = IcTcpFramer {
            max_packet_size: MAX,
        };
        assert_eq!(f.complete_len(&out), Ok(Some(9)));
    }

    fn ictcp_len(len: u32) -> [u8; 4] {
        len.to_ne_bytes()
    }

    #[test]
    fn complete_len_bounds() {
        let f = IcTcpFramer {
            max_packet_size: MAX,
        };
        for len in 0..4 {
            assert_eq!(
                f.complete_len(&ictcp_len(len)),
                Err(FrameError::LengthBelowMinimum { len })
            );
        }
        assert_eq!(f.complete_len(&ictcp_len(4)), Ok(Some(4)));
        assert_eq!(f.complete_len(&ictcp_len(MAX as u32)), Ok(None));
        for len in [MAX as u32 + 1, u32::MAX] {
            assert_eq!(
                f.complete_len(&ictcp_len(len)),
                Err(FrameError::LengthAboveMax { len, max: MAX })
            );
        }
        // Fewer than 4 bytes (the lone STOP byte among them) need more input.
        assert_eq!(f.complete_len(b""), Ok(None));
        assert_eq!(f.complete_len(b"S"), Ok(None));
        assert_eq!(f.complete_len(&[1, 0, 0]), Ok(None));
        let mut buf = ictcp_len(10).to_vec();
        buf.extend_from_slice(&[0; 5]);
        assert_eq!(f.complete_len(&buf), Ok(None));
        buf.push(0);
        assert_eq!(f.complete_len(&buf), Ok(Some(10)));
        buf.push(0);
        assert_eq!(f.complete_len(&buf), Ok(Some(10)));
    }

    #[test]
    fn frame_error_texts() {
        assert_eq!(
            FrameError::LengthBelowMinimum { len: 2 }.to_string(),
            "ic-tcp packet length 2 is below 4 (the length counts its own 4 bytes)"
        );
        assert_eq!(
            FrameError::LengthAboveMax {
                len: 9000,
                max: 8192
            }
            .to_string(),
            "ic-tcp packet length 9000 is above gp_max_packet_size 8192"
        );
    }

    fn ictcp_stream(sizes: &[usize]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for &s in sizes {
            ictcp_packet(&vec![0xAB; s - 4], &mut out);
        }
        out.to_vec()
    }

    fn runs(max: usize, buf: &[u8]) -> Result<Vec<usize>, FrameError> {
        let mut out = vec![12345];
        IcTcpFramer {
            max_packet_size: max,
        }
        .complete_runs(buf, &mut out)
        .map(|()| out)
    }

    #[test]
    fn complete_runs_grouping() {
        let s = ictcp_stream(&[3000; 7]);
        assert_eq!(runs(8192, &s), Ok(vec![6000, 6000, 6000, 3000]));
        // A partial packet at the end is excluded.
        assert_eq!(runs(8192, &s[..s.len() - 1]), Ok(vec![6000, 6000, 6000]));
        assert_eq!(runs(8192, &s[..3003]), Ok(vec![3000]));
        assert_eq!(runs(8192, &s[..2]), Ok(vec![]));
        // A full-size packet is a run of its own.
        let s = ictcp_stream(&[8192, 100, 8192, 8192, 4000, 4192, 10]);
        assert_eq!(
            runs(8192, &s[..s.len() - 1]),
            Ok(vec![8192, 100, 8192, 8192, 8192])
        );
        let s = ictcp_stream(&[8192]);
        assert_eq!(runs(8192, &s), Ok(vec![8192]));
        // Small packets fill a run exactly.
        let s = ictcp_stream(&[4096, 4096, 4096]);
        assert_eq!(runs(8192, &s), Ok(vec![8192, 4096]));
        assert_eq!(runs(8192, &[]), Ok(vec![]));
    }

    #[test]
    fn complete_runs_stops_at_a_bad_length() {
        let mut s = ictcp_stream(&[100, 200]);
        s.extend_from_slice(&ictcp_len(2));
        s.extend_from_slice(&ictcp_stream(&[100]));
        let mut out = Vec::new();
        let f = IcTcpFramer {
            max_packet_size: 8192,
        };
        assert_eq!(
            f.complete_runs(&s, &mut out),
            Err(FrameError::LengthBelowMinimum { len: 2 })
        );
        assert_eq!(out, vec![300]);
        let s = ictcp_len(9000);
        assert_eq!(
            f.complete_runs(&s, &mut out),
            Err(FrameError::LengthAboveMax {
                len: 9000,
                max: 8192
            })
        );
        assert!(out.is_empty());
    }
}
