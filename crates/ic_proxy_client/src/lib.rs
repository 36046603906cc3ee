//! The BACKEND side of interconnect-proxy logical connections, spoken exactly
//! as a Cloudberry QD/QE does with `gp_interconnect_type=proxy`: connect to
//! the local proxy's Unix socket (retrying every 100 ms until a deadline),
//! send one HELLO, read exactly one HELLO ACK, then exchange raw ic-tcp
//! packets (u32 native-order length counting itself, then the payload), stop
//! with a lone 'S' byte and finish with a half-close.
//!
//! Tests, the demo and the benchmarks drive the proxy with it. It owns only
//! the client end of Unix sockets: it never listens, never routes, and never
//! links PostgreSQL.

mod conn;
mod error;
mod pattern;
mod spec;

pub use conn::{wait_for_socket, LogicalConn, RecvHalf, RecvItem, SendHalf, STOP_BYTE};
pub use error::ClientError;
pub use ic_proxy_core::protocol::{Dialect, Endpoint};
pub use pattern::{fill_pattern, pattern_payload, StreamDigest};
pub use spec::{socket_path, ClientOptions, ConnSpec};
