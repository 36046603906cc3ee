//! What a backend knows before it connects: the logical connection's key,
//! where its proxy listens, and the setup knobs (dialect, packet size,
//! deadline).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ic_proxy_core::protocol::{
    Dialect, Endpoint, Header, LogicalConnKey, PacketType, DEFAULT_PACKET_SIZE,
};

/// The full key of one logical connection as the backend knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnSpec {
    /// gp_session_id.
    pub session_id: i32,
    /// gp_command_count of the statement.
    pub command_id: u32,
    /// Sending slice index (the same on both ends).
    pub send_slice: i16,
    /// Receiving slice index (the same on both ends).
    pub recv_slice: i16,
    /// This backend: own content, own dbid, own pid.
    pub local: Endpoint,
    /// The other backend.
    pub remote: Endpoint,
}

impl ConnSpec {
    /// The key as the other end writes it: local and remote swapped, session,
    /// command and slices kept.
    pub fn reversed(&self) -> ConnSpec {
        ConnSpec {
            local: self.remote,
            remote: self.local,
            ..*self
        }
    }

    /// The HELLO this backend sends: header only, src = local, dst = remote.
    pub fn hello(&self, dialect: Dialect) -> Header {
        LogicalConnKey::from(*self).header(PacketType::Hello, dialect, 0)
    }

    /// The HELLO ACK a proxy must answer with: the HELLO with src and dst
    /// swapped and type HELLO ACK.
    pub fn hello_ack(&self, dialect: Dialect) -> Header {
        LogicalConnKey::from(*self)
            .reversed()
            .header(PacketType::HelloAck, dialect, 0)
    }
}

impl From<ConnSpec> for LogicalConnKey {
    fn from(s: ConnSpec) -> Self {
        LogicalConnKey {
            local: s.local,
            remote: s.remote,
            session_id: s.session_id,
            command_id: s.command_id,
            send_slice: s.send_slice,
            recv_slice: s.recv_slice,
        }
    }
}

impl fmt::Display for ConnSpec {
    /// The proxy's key notation: `con<s>,cmd<c>,slice[<a>-><b>] <local>-><remote>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        LogicalConnKey::from(*self).fmt(f)
    }
}

/// Socket path a backend uses: `<dir>/.s.PGSQL.ic_proxy.<postmaster port>.<postmaster pid>`.
/// The C proxy always uses `/tmp` as `dir`.
pub fn socket_path(dir: &Path, postmaster_port: u16, postmaster_pid: u32) -> PathBuf {
    dir.join(format!(
        ".s.PGSQL.ic_proxy.{postmaster_port}.{postmaster_pid}"
    ))
}

/// How a backend sets up and frames its connections.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Header layout of HELLO / HELLO ACK; must match the proxy's.
    pub dialect: Dialect,
    /// gp_max_packet_size: the largest ic-tcp packet, length field included,
    /// in either direction. Default 8192.
    pub max_packet_size: usize,
    /// The whole setup (connect retries and the HELLO ACK wait) must finish
    /// within this; gp_interconnect_setup_timeout in a backend. Default 10 s.
    pub connect_deadline: Duration,
    /// Pause between connect attempts; the backend's CONNECT_TIMER_TIMEOUT.
    /// Default 100 ms.
    pub retry_interval: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            dialect: Dialect::C,
            max_packet_size: DEFAULT_PACKET_SIZE,
            connect_deadline: Duration::from_secs(10),
            retry_interval: Duration::from_millis(100),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ConnSpec {
        ConnSpec {
            session_id: 11,
            command_id: 3,
            send_slice: 2,
            recv_slice: 1,
            local: Endpoint {
                content: 0,
                dbid: 2,
                pid: 100,
            },
            remote: Endpoint {
                content: -1,
                dbid: 1,
                pid: 200,
            },
        }
    }

    #[test]
    fn reversed_swaps_the_ends_only() {
        let s = spec();
        let r = s.reversed();
        assert_eq!(r.local, s.remote);
        assert_eq!(r.remote, s.local);
        assert_eq!(
            (r.session_id, r.command_id, r.send_slice, r.recv_slice),
            (11, 3, 2, 1)
        );
        assert_eq!(r.reversed(), s);
    }

    #[test]
    fn hello_ack_is_the_other_ends_hello_retyped() {
        for d in [Dialect::B, Dialect::C] {
            let s = spec();
            let ack = s.hello_ack(d);
            let other = s.reversed().hello(d);
            assert_eq!(ack.ptype, PacketType::HelloAck);
            assert_eq!(
                ack,
                Header {
                    ptype: PacketType::HelloAck,
                    ..other
                }
            );
            assert_eq!(usize::from(ack.len), d.header_len());
        }
    }

    #[test]
    fn display_uses_the_key_notation() {
        assert_eq!(
            spec().to_string(),
            "con11,cmd3,slice[2->1] seg0:dbid2:p100->seg-1:dbid1:p200"
        );
    }

    #[test]
    fn socket_path_layout() {
        assert_eq!(
            socket_path(Path::new("/tmp"), 7000, 4242),
            PathBuf::from("/tmp/.s.PGSQL.ic_proxy.7000.4242")
        );
    }

    #[test]
    fn default_options() {
        let o = ClientOptions::default();
        assert_eq!(o.dialect, Dialect::C);
        assert_eq!(o.max_packet_size, 8192);
        assert_eq!(o.connect_deadline, Duration::from_secs(10));
        assert_eq!(o.retry_interval, Duration::from_millis(100));
    }
}
