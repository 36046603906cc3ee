//! The ICProxyPkt header: dialects, packet types, endpoints, and the two pure
//! functions that turn a header into bytes and back. Nothing here does I/O or
//! allocates; every multi-byte field is in host byte order, as the C proxy
//! memcpy's its struct onto the wire.

use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use bytes::BytesMut;

/// Dialect C's leading magic number (host byte order at offset 0).
pub const MAGIC: u32 = 0xBADD_CAFE;
/// The larger of the two header lengths; [`EncodedHeader`] is this big.
pub const MAX_HEADER_LEN: usize = 36;
/// Largest payload (gp_max_packet_size) such that header + payload fits the
/// u16 len for BOTH dialects and stays within gp_max_packet_size's 65507:
/// 65507 - 36 = 65471.
pub const MAX_PACKET_SIZE_LIMIT: usize = 65471;
/// gp_max_packet_size's lower bound.
pub const MIN_PACKET_SIZE: usize = 512;
/// gp_max_packet_size's default.
pub const DEFAULT_PACKET_SIZE: usize = 8192;

/// Which of the two live header layouts a cluster speaks. There is no version
/// field on the wire: every proxy and the backends' core must agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Dialect {
    /// 32-byte header, GPDB 6X/7 2021 to early 2023 and the Cloudberry
    /// `contrib/interconnect` snapshot.
    B,
    /// 36-byte header with the leading magic 0xBADDCAFE: GPDB 7 final and
    /// current Cloudberry.
    #[default]
    C,
}

impl Dialect {
    /// Header length in bytes: 32 (B) or 36 (C).
    pub const fn header_len(self) -> usize {
        match self {
            Dialect::B => 32,
            Dialect::C => 36,
        }
    }

    /// Offset of `len`, the first field after the optional magic.
    const fn fields_at(self) -> usize {
        match self {
            Dialect::B => 0,
            Dialect::C => 4,
        }
    }

    /// The name used in configuration: "b" or "c".
    pub fn name(self) -> &'static str {
        match self {
            Dialect::B => "b",
            Dialect::C => "c",
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A dialect name that is neither "c" nor "b".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown wire dialect \"{value}\": expected \"c\" (36-byte header with magic, current \
     Cloudberry) or \"b\" (32-byte header, 2021 to early 2023 builds)"
)]
pub struct ParseDialectError {
    /// The rejected text, as given.
    pub value: String,
}

impl FromStr for Dialect {
    type Err = ParseDialectError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "c" | "C" => Ok(Dialect::C),
            "b" | "B" => Ok(Dialect::B),
            _ => Err(ParseDialectError {
                value: s.to_owned(),
            }),
        }
    }
}

/// Sniff the dialect from the first 4 bytes of a stream: C if they are
/// [`MAGIC`] in native byte order; B if they read as (u16 len == 32,
/// u16 type <= 7), which every first packet (HELLO, PEER HELLO) of a B stream
/// does; else (or with fewer than 4 bytes) None.
pub fn sniff_dialect(first4: &[u8]) -> Option<Dialect> {
    if first4.len() < 4 {
        return None;
    }
    if read_u32(first4, 0) == MAGIC {
        return Some(Dialect::C);
    }
    let len = read_u16(first4, 0);
    let ptype = read_u16(first4, 2);
    (usize::from(len) == Dialect::B.header_len() && ptype <= PacketType::DataAck as u16)
        .then_some(Dialect::B)
}

/// ICProxyMessageType (u16 on the wire), dialects B and C.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum PacketType {
    /// Carries whole ic-tcp packets (or the 1-byte STOP) as payload.
    Data = 0,
    /// Connector proxy -> acceptor proxy, first packet on a peer stream.
    PeerHello = 1,
    /// Acceptor's reply to PEER HELLO.
    PeerHelloAck = 2,
    /// Defined by the C proxy, never sent or handled.
    PeerQuit = 3,
    /// Backend -> its proxy, first packet on a Unix connection.
    Hello = 4,
    /// Proxy -> backend: the HELLO with src and dst swapped.
    HelloAck = 5,
    /// One direction of a logical connection is finished.
    Bye = 6,
    /// Receiver -> sender: 10 more DATA packets were delivered.
    DataAck = 7,
}

impl PacketType {
    /// Every type, in wire order.
    pub const ALL: [PacketType; 8] = [
        PacketType::Data,
        PacketType::PeerHello,
        PacketType::PeerHelloAck,
        PacketType::PeerQuit,
        PacketType::Hello,
        PacketType::HelloAck,
        PacketType::Bye,
        PacketType::DataAck,
    ];

    /// The C proxy's log name.
    pub fn name(self) -> &'static str {
        match self {
            PacketType::Data => "DATA",
            PacketType::PeerHello => "PEER HELLO",
            PacketType::PeerHelloAck => "PEER HELLO ACK",
            PacketType::PeerQuit => "PEER QUIT",
            PacketType::Hello => "HELLO",
            PacketType::HelloAck => "HELLO ACK",
            PacketType::Bye => "BYE",
            PacketType::DataAck => "DATA ACK",
        }
    }

    /// Every type but DATA is a header-only "message".
    pub const fn is_message(self) -> bool {
        !matches!(self, PacketType::Data)
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<u16> for PacketType {
    type Error = HeaderError;

    fn try_from(value: u16) -> Result<Self, Self::Error> {
        PacketType::ALL
            .get(usize::from(value))
            .copied()
            .ok_or(HeaderError::UnknownType { value })
    }
}

/// One backend process: (content id, dbid, pid). Content -1 is the coordinator;
/// routing uses the dbid only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Endpoint {
    pub content: i16,
    pub dbid: u16,
    pub pid: i32,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seg{}:dbid{}:p{}", self.content, self.dbid, self.pid)
    }
}

/// A decoded ICProxyPkt header. `len` counts the header itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub len: u16,
    pub ptype: PacketType,
    pub src: Endpoint,
    pub dst: Endpoint,
    pub session_id: i32,
    pub command_id: u32,
    pub send_slice: i16,
    pub recv_slice: i16,
}

impl fmt::Display for Header {
    /// The C proxy's packet name: `TYPE [con..,cmd..,slice[a->b] N bytes src->dst]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [con{},cmd{},slice[{}->{}] {} bytes {}->{}]",
            self.ptype,
            self.session_id,
            self.command_id,
            self.send_slice,
            self.recv_slice,
            self.len,
            self.src,
            self.dst
        )
    }
}

/// A header as bytes: a fixed array, no allocation. Derefs to exactly
/// `header_len` bytes.
#[derive(Clone, Copy)]
pub struct EncodedHeader {
    bytes: [u8; MAX_HEADER_LEN],
    used: u8,
}

impl Deref for EncodedHeader {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.used)]
    }
}

impl AsRef<[u8]> for EncodedHeader {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for EncodedHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("EncodedHeader").field(&&**self).finish()
    }
}

impl PartialEq for EncodedHeader {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for EncodedHeader {}

impl Header {
    /// The header's bytes in dialect `d`, `len` written as is.
    pub fn encode(&self, d: Dialect) -> EncodedHeader {
        let mut b = [0u8; MAX_HEADER_LEN];
        if d == Dialect::C {
            b[0..4].copy_from_slice(&MAGIC.to_ne_bytes());
        }
        let o = d.fields_at();
        b[o..o + 2].copy_from_slice(&self.len.to_ne_bytes());
        b[o + 2..o + 4].copy_from_slice(&(self.ptype as u16).to_ne_bytes());
        b[o + 4..o + 6].copy_from_slice(&self.src.content.to_ne_bytes());
        b[o + 6..o + 8].copy_from_slice(&self.src.dbid.to_ne_bytes());
        b[o + 8..o + 12].copy_from_slice(&self.src.pid.to_ne_bytes());
        b[o + 12..o + 14].copy_from_slice(&self.dst.content.to_ne_bytes());
        b[o + 14..o + 16].copy_from_slice(&self.dst.dbid.to_ne_bytes());
        b[o + 16..o + 20].copy_from_slice(&self.dst.pid.to_ne_bytes());
        b[o + 20..o + 24].copy_from_slice(&self.session_id.to_ne_bytes());
        b[o + 24..o + 28].copy_from_slice(&self.command_id.to_ne_bytes());
        b[o + 28..o + 30].copy_from_slice(&self.send_slice.to_ne_bytes());
        b[o + 30..o + 32].copy_from_slice(&self.recv_slice.to_ne_bytes());
        EncodedHeader {
            bytes: b,
            // header_len is 32 or 36.
            used: d.header_len() as u8,
        }
    }

    /// Append the header's bytes to `out`.
    pub fn encode_into(&self, d: Dialect, out: &mut BytesMut) {
        out.extend_from_slice(&self.encode(d));
    }

    /// Parse the first `d.header_len()` bytes of `buf` (which must hold at
    /// least that many, else [`HeaderError::Short`]). Checks, in this order:
    /// the magic (dialect C), the type, `header_len <= len <= header_len +
    /// max_payload`, and that every non-DATA type has `len == header_len`.
    pub fn decode(buf: &[u8], d: Dialect, max_payload: usize) -> Result<Header, HeaderError> {
        let header = d.header_len();
        if buf.len() < header {
            return Err(HeaderError::Short {
                have: buf.len(),
                need: header,
            });
        }
        if d == Dialect::C {
            let found = read_u32(buf, 0);
            if found != MAGIC {
                return Err(HeaderError::BadMagic { found });
            }
        }
        let o = d.fields_at();
        let len = read_u16(buf, o);
        // Type before length: a C stream read as B then names the magic.
        let ptype = PacketType::try_from(read_u16(buf, o + 2))?;
        if usize::from(len) < header {
            return Err(HeaderError::LengthBelowHeader { len, header });
        }
        let max = header.saturating_add(max_payload);
        if usize::from(len) > max {
            return Err(HeaderError::LengthAboveMax { len, max });
        }
        if ptype.is_message() && usize::from(len) != header {
            return Err(HeaderError::PayloadOnMessage { ptype, len });
        }
        Ok(Header {
            len,
            ptype,
            src: Endpoint {
                content: read_i16(buf, o + 4),
                dbid: read_u16(buf, o + 6),
                pid: read_i32(buf, o + 8),
            },
            dst: Endpoint {
                content: read_i16(buf, o + 12),
                dbid: read_u16(buf, o + 14),
                pid: read_i32(buf, o + 16),
            },
            session_id: read_i32(buf, o + 20),
            command_id: read_u32(buf, o + 24),
            send_slice: read_i16(buf, o + 28),
            recv_slice: read_i16(buf, o + 30),
        })
    }

    /// Bytes after the header (`len - header_len`, 0 if `len` is smaller).
    pub fn payload_len(&self, d: Dialect) -> usize {
        usize::from(self.len).saturating_sub(d.header_len())
    }
}

/// Why a header was rejected; each variant names the bad field and its value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    #[error("short header: have {have} bytes, need {need}")]
    Short { have: usize, need: usize },
    #[error("bad magic {found:#010x} (expected 0xbaddcafe: is the peer speaking dialect B?)")]
    BadMagic { found: u32 },
    #[error("packet length {len} is below the header length {header}")]
    LengthBelowHeader { len: u16, header: usize },
    #[error("packet length {len} is above the maximum {max} (header + gp_max_packet_size)")]
    LengthAboveMax { len: u16, max: usize },
    #[error("unknown packet type {value}{}", magic_hint(*.value))]
    UnknownType { value: u16 },
    #[error("{ptype} is a header-only message but its length is {len}")]
    PayloadOnMessage { ptype: PacketType, len: u16 },
}

/// Read as dialect B, a dialect C stream puts half of the magic in the type
/// field (which half depends on the host's byte order).
fn magic_hint(value: u16) -> &'static str {
    if value == (MAGIC >> 16) as u16 || value == MAGIC as u16 {
        " (half of dialect C's magic 0xbaddcafe: is the peer speaking dialect C?)"
    } else {
        ""
    }
}

fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn read_i16(b: &[u8], at: usize) -> i16 {
    i16::from_ne_bytes([b[at], b[at + 1]])
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn read_i32(b: &[u8], at: usize) -> i32 {
    i32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ptype: PacketType, len: u16) -> Header {
        Header {
            len,
            ptype,
            src: Endpoint {
                content: -1,
                dbid: 1,
                pid: 0x0102_0304,
            },
            dst: Endpoint {
                content: 2,
                dbid: 0xFFFE,
                pid: -5,
            },
            session_id: 0x1122_3344,
            command_id: 0xA1B2_C3D4,
            send_slice: 3,
            recv_slice: -1,
        }
    }

    const BOTH: [Dialect; 2] = [Dialect::B, Dialect::C];
    const MAX: usize = DEFAULT_PACKET_SIZE;

    /// Encoded bytes of a valid header with one u16 field overwritten.
    fn patched_u16(d: Dialect, field_at: usize, value: u16) -> Vec<u8> {
        let mut b = sample(PacketType::Hello, d.header_len() as u16)
            .encode(d)
            .to_vec();
        let at = d.fields_at() + field_at;
        b[at..at + 2].copy_from_slice(&value.to_ne_bytes());
        b
    }

    #[test]
    fn header_lengths_and_names() {
        assert_eq!(Dialect::B.header_len(), 32);
        assert_eq!(Dialect::C.header_len(), 36);
        assert_eq!(Dialect::default(), Dialect::C);
        assert_eq!(Dialect::B.name(), "b");
        assert_eq!(Dialect::C.name(), "c");
        assert_eq!(MAX_PACKET_SIZE_LIMIT + MAX_HEADER_LEN, 65507);
        assert!(MAX_PACKET_SIZE_LIMIT + MAX_HEADER_LEN <= usize::from(u16::MAX));
    }

    #[test]
    fn dialect_from_str() {
        for (s, d) in [
            ("c", Dialect::C),
            ("C", Dialect::C),
            ("b", Dialect::B),
            ("B", Dialect::B),
        ] {
            assert_eq!(s.parse::<Dialect>(), Ok(d));
        }
        for bad in ["a", "", "cc", " c", "dialect c"] {
            assert_eq!(
                bad.parse::<Dialect>(),
                Err(ParseDialectError {
                    value: bad.to_owned()
                })
            );
        }
        assert_eq!(
            "x".parse::<Dialect>().unwrap_err().to_string(),
            "unknown wire dialect \"x\": expected \"c\" (36-byte header with magic, current \
             Cloudberry) or \"b\" (32-byte header, 2021 to early 2023 builds)"
        );
    }

    #[test]
    fn packet_type_values_and_names() {
        let names = [
            "DATA",
            "PEER HELLO",
            "PEER HELLO ACK",
            "PEER QUIT",
            "HELLO",
            "HELLO ACK",
            "BYE",
            "DATA ACK",
        ];
        for (i, t) in PacketType::ALL.iter().enumerate() {
            assert_eq!(*t as u16, i as u16);
            assert_eq!(PacketType::try_from(i as u16), Ok(*t));
            assert_eq!(t.name(), names[i]);
            assert_eq!(t.is_message(), i != 0);
        }
        assert_eq!(
            PacketType::try_from(8),
            Err(HeaderError::UnknownType { value: 8 })
        );
    }

    #[test]
    fn round_trip_every_type_both_dialects() {
        for d in BOTH {
            for t in PacketType::ALL {
                let len = if t.is_message() {
                    d.header_len()
                } else {
                    d.header_len() + 100
                };
                let h = sample(t, len as u16);
                let enc = h.encode(d);
                assert_eq!(enc.len(), d.header_len());
                assert_eq!(Header::decode(&enc, d, MAX), Ok(h));
                let mut out = BytesMut::new();
                h.encode_into(d, &mut out);
                assert_eq!(&out[..], &enc[..]);
            }
        }
    }

    #[test]
    fn decode_ignores_bytes_after_the_header() {
        for d in BOTH {
            let h = sample(PacketType::Data, (d.header_len() + 3) as u16);
            let mut b = h.encode(d).to_vec();
            b.extend_from_slice(&[9, 9, 9, 9, 9]);
            assert_eq!(Header::decode(&b, d, MAX), Ok(h));
        }
    }

    #[test]
    fn decode_rejects_short_buffer() {
        for d in BOTH {
            let enc = sample(PacketType::Hello, d.header_len() as u16).encode(d);
            for have in 0..d.header_len() {
                assert_eq!(
                    Header::decode(&enc[..have], d, MAX),
                    Err(HeaderError::Short {
                        have,
                        need: d.header_len()
                    })
                );
            }
        }
    }

    #[test]
    fn decode_rejects_len_below_header() {
        for d in BOTH {
            for len in [0, 1, d.header_len() as u16 - 1] {
                assert_eq!(
                    Header::decode(&patched_u16(d, 0, len), d, MAX),
                    Err(HeaderError::LengthBelowHeader {
                        len,
                        header: d.header_len()
                    }),
                    "{d:?} len {len}"
                );
            }
        }
    }

    #[test]
    fn decode_rejects_len_above_max() {
        for d in BOTH {
            let max = d.header_len() + MAX;
            let mut b = patched_u16(d, 0, max as u16 + 1);
            b[d.fields_at() + 2..d.fields_at() + 4]
                .copy_from_slice(&(PacketType::Data as u16).to_ne_bytes());
            assert_eq!(
                Header::decode(&b, d, MAX),
                Err(HeaderError::LengthAboveMax {
                    len: max as u16 + 1,
                    max
                })
            );
            b[d.fields_at()..d.fields_at() + 2].copy_from_slice(&(max as u16).to_ne_bytes());
            assert!(Header::decode(&b, d, MAX).is_ok());
            // A huge max_payload does not overflow.
            assert!(Header::decode(&b, d, usize::MAX).is_ok());
        }
    }

    #[test]
    fn decode_rejects_unknown_types() {
        for d in BOTH {
            for value in [8, 0xFFFF] {
                assert_eq!(
                    Header::decode(&patched_u16(d, 2, value), d, MAX),
                    Err(HeaderError::UnknownType { value })
                );
            }
        }
    }

    #[test]
    fn decode_rejects_payload_on_messages() {
        for d in BOTH {
            for t in PacketType::ALL.into_iter().filter(|t| t.is_message()) {
                let len = d.header_len() as u16 + 1;
                let b = sample(t, len).encode(d);
                assert_eq!(
                    Header::decode(&b, d, MAX),
                    Err(HeaderError::PayloadOnMessage { ptype: t, len })
                );
            }
            // DATA may be header-only or carry a payload.
            let empty = sample(PacketType::Data, d.header_len() as u16);
            assert_eq!(Header::decode(&empty.encode(d), d, MAX), Ok(empty));
        }
    }

    #[test]
    fn decode_rejects_bad_magic() {
        let mut b = sample(PacketType::Hello, 36).encode(Dialect::C).to_vec();
        b[0..4].copy_from_slice(&0x1234_5678u32.to_ne_bytes());
        assert_eq!(
            Header::decode(&b, Dialect::C, MAX),
            Err(HeaderError::BadMagic { found: 0x1234_5678 })
        );
        // A dialect B header read as C.
        let b = sample(PacketType::Hello, 32).encode(Dialect::B);
        let mut bytes = b.to_vec();
        bytes.extend_from_slice(&[0; 4]);
        assert!(matches!(
            Header::decode(&bytes, Dialect::C, MAX),
            Err(HeaderError::BadMagic { .. })
        ));
    }

    #[test]
    fn dialect_c_read_as_b_names_the_magic() {
        let b = sample(PacketType::Hello, 36).encode(Dialect::C);
        let err = Header::decode(&b, Dialect::B, MAX).unwrap_err();
        assert!(matches!(err, HeaderError::UnknownType { .. }), "{err:?}");
        assert!(
            err.to_string().contains("is the peer speaking dialect C?"),
            "{err}"
        );
    }

    #[test]
    fn error_display_texts() {
        let cases = [
            (
                HeaderError::Short { have: 5, need: 36 },
                "short header: have 5 bytes, need 36",
            ),
            (
                HeaderError::BadMagic { found: 0x1234_5678 },
                "bad magic 0x12345678 (expected 0xbaddcafe: is the peer speaking dialect B?)",
            ),
            (
                HeaderError::BadMagic { found: 0 },
                "bad magic 0x00000000 (expected 0xbaddcafe: is the peer speaking dialect B?)",
            ),
            (
                HeaderError::LengthBelowHeader { len: 0, header: 32 },
                "packet length 0 is below the header length 32",
            ),
            (
                HeaderError::LengthAboveMax {
                    len: 9000,
                    max: 8228,
                },
                "packet length 9000 is above the maximum 8228 (header + gp_max_packet_size)",
            ),
            (
                HeaderError::UnknownType { value: 8 },
                "unknown packet type 8",
            ),
            (
                HeaderError::UnknownType { value: 0xBADD },
                "unknown packet type 47837 (half of dialect C's magic 0xbaddcafe: is the peer \
                 speaking dialect C?)",
            ),
            (
                HeaderError::UnknownType { value: 0xCAFE },
                "unknown packet type 51966 (half of dialect C's magic 0xbaddcafe: is the peer \
                 speaking dialect C?)",
            ),
            (
                HeaderError::PayloadOnMessage {
                    ptype: PacketType::HelloAck,
                    len: 40,
                },
                "HELLO ACK is a header-only message but its length is 40",
            ),
        ];
        for (err, text) in cases {
            assert_eq!(err.to_string(), text);
        }
    }

    #[test]
    fn header_display() {
        let h = sample(PacketType::Data, 100);
        assert_eq!(
            h.to_string(),
            "DATA [con287454020,cmd2712847316,slice[3->-1] 100 bytes \
             seg-1:dbid1:p16909060->seg2:dbid65534:p-5]"
        );
    }

    #[test]
    fn payload_len() {
        let h = sample(PacketType::Data, 100);
        assert_eq!(h.payload_len(Dialect::B), 68);
        assert_eq!(h.payload_len(Dialect::C), 64);
        assert_eq!(sample(PacketType::Data, 3).payload_len(Dialect::C), 0);
    }

    #[test]
    fn sniff() {
        let hello_b = sample(PacketType::Hello, 32).encode(Dialect::B);
        let peer_hello_b = sample(PacketType::PeerHello, 32).encode(Dialect::B);
        let hello_c = sample(PacketType::Hello, 36).encode(Dialect::C);
        assert_eq!(sniff_dialect(&hello_b[..4]), Some(Dialect::B));
        assert_eq!(sniff_dialect(&peer_hello_b), Some(Dialect::B));
        assert_eq!(sniff_dialect(&hello_c[..4]), Some(Dialect::C));
        assert_eq!(sniff_dialect(&MAGIC.to_ne_bytes()), Some(Dialect::C));
        assert_eq!(sniff_dialect(&hello_c[..3]), None);
        assert_eq!(sniff_dialect(&[]), None);
        let mut bad = [0u8; 4];
        bad[0..2].copy_from_slice(&32u16.to_ne_bytes());
        bad[2..4].copy_from_slice(&7u16.to_ne_bytes());
        assert_eq!(sniff_dialect(&bad), Some(Dialect::B));
        bad[2..4].copy_from_slice(&8u16.to_ne_bytes());
        assert_eq!(sniff_dialect(&bad), None);
        bad[0..2].copy_from_slice(&36u16.to_ne_bytes());
        bad[2..4].copy_from_slice(&4u16.to_ne_bytes());
        assert_eq!(sniff_dialect(&bad), None);
        assert_eq!(sniff_dialect(b"GET "), None);
    }
}
