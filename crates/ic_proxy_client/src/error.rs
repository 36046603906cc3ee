//! Everything that can go wrong on a backend's side of a logical connection.

use std::path::PathBuf;
use std::time::Duration;

use ic_proxy_core::protocol::{FrameError, Header, HeaderError};

/// A failed setup or a broken stream; the texts say which side is at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The socket never accepted a connection before the deadline; `source`
    /// is the last attempt's error.
    #[error(
        "could not connect to the interconnect proxy at {} within {} ms: {source} \
         (is the proxy running, and is this its socket?)",
        path.display(),
        waited.as_millis()
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
        waited: Duration,
    },
    #[error("I/O error on the proxy connection: {0}")]
    Io(#[from] std::io::Error),
    /// A well-formed header that is not our HELLO with src and dst swapped
    /// and type HELLO ACK.
    #[error("the proxy's HELLO ACK does not answer our HELLO: expected {expected}, got {got}")]
    HelloAckMismatch { expected: Header, got: Header },
    #[error("malformed HELLO ACK from the proxy: {0}")]
    BadHelloAck(HeaderError),
    #[error("the proxy closed the connection before a complete HELLO ACK")]
    ClosedBeforeAck,
    /// An ic-tcp packet to send (length field included) exceeds gp_max_packet_size.
    #[error("ic-tcp packet of {len} bytes exceeds gp_max_packet_size {max}")]
    PacketTooLarge { len: usize, max: usize },
    #[error("bad ic-tcp framing from the proxy: {0}")]
    BadFrame(FrameError),
    /// EOF in the middle of an ic-tcp packet (a backend raises the same text).
    #[error("interconnect error: connection closed prematurely (EOF inside an ic-tcp packet)")]
    ClosedPrematurely,
    /// Connected, but no HELLO ACK arrived before the setup deadline.
    #[error("interconnect timeout: no HELLO ACK from the proxy before the setup deadline")]
    Timeout,
}
