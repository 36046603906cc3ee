//! The interconnect proxy's wire protocol, byte-compatible with the C proxy:
//! the ICProxyPkt header in dialects B (32 bytes) and C (36 bytes, leading
//! magic), the logical-connection key, and the two stream framings (proxy
//! packets on peer streams, ic-tcp length-prefixed packets from backends).
//!
//! Everything here is a pure function over bytes, except [`PacketReader`],
//! which awaits one whole packet from a stream for the handshakes: nothing
//! here writes or blocks, and nothing looks inside a DATA payload beyond
//! ic-tcp's 4-byte lengths. Multi-byte fields are in host byte order, as the C code writes
//! them; a cluster must be endian-homogeneous.

mod codec;
mod header;
mod key;
mod reader;

pub use codec::{encode_packet, ictcp_packet, FrameError, IcTcpFramer, Packet, PacketDecoder};
pub use header::{
    sniff_dialect, Dialect, EncodedHeader, Endpoint, Header, HeaderError, PacketType,
    ParseDialectError, DEFAULT_PACKET_SIZE, MAGIC, MAX_HEADER_LEN, MAX_PACKET_SIZE_LIMIT,
    MIN_PACKET_SIZE,
};
pub use key::LogicalConnKey;
pub use reader::PacketReader;
