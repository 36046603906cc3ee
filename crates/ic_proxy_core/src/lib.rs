//! The interconnect proxy itself: wire protocol, address map, peer mesh,
//! backend sessions, routing, flow control and status. It never links
//! PostgreSQL: the extension (and the standalone `ic-proxy` binary) host it.

pub mod address_map;
pub mod auth;
pub mod cache;
pub mod config;
mod context;
pub mod fd_limit;
pub mod flow;
pub(crate) mod log_limit;
pub mod pending;
pub mod protocol;
pub mod status;
pub mod sync;
pub mod tls;
pub mod trim;

mod handle;
mod listener;
mod peer;
mod proxy;
mod route;
mod session;
mod vectored;

pub use config::{socket_path, BackendSocket, ProxySettings, RuntimeConfig};
pub use handle::{ProxyHandle, StopError};
pub use listener::bind_backend_socket;
pub use peer::PROBE_SESSION_ID;
pub use proxy::{run, Listeners, ProxyError};
pub use status::{PeerSnapshot, PeerState, PeerTraffic, ProxyTotals, StatusBoard, StatusSnapshot};
pub use trim::TrimPolicy;
