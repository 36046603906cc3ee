//! Why a link did not come up or ended, as one type: who was at fault
//! decides what is counted, and [`LinkFailure::count`] is the only place a
//! link's failure is counted.

use std::io;
use std::sync::atomic::Ordering::Relaxed;

use crate::auth::ExchangeError;
use crate::status::ProxyCounters;

/// Why a peer link failed, in its handshake or once established.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkFailure {
    /// The network, or a peer that is not there: retried, not counted.
    #[error("{0}")]
    Network(io::Error),
    /// The peer said nothing in time.
    #[error("no {0} in time")]
    TimedOut(&'static str),
    /// The peer broke the protocol in its handshake (a wrong or unexpected
    /// packet): counted in `rejected_connections` by the side that refuses.
    #[error("{0}")]
    Protocol(String),
    /// The peer may not link now (not in the map, the wrong role, already
    /// connected): counted in `rejected_connections` by the side that
    /// refuses.
    #[error("{0}")]
    Refused(String),
    /// The authentication exchange with `dbid` failed: counted in
    /// `auth_failures` (unless only our own write failed).
    #[error("dbid {dbid}: {error}")]
    Auth { dbid: u16, error: ExchangeError },
    /// The TLS handshake failed (a certificate refused by either end, a
    /// handshake that did not finish in time): counted in `auth_failures`.
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// The two ends' `ic_proxy.tls` settings do not allow a link.
    #[error("TLS: {0}")]
    TlsRefused(&'static str),
    /// An established link carried bytes that are not a packet: counted in
    /// `rejected_connections`.
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// An established link carried an authentication message, which a peer
    /// sends only to a proxy with a secret.
    #[error(
        "the peer asks for authentication, but ic_proxy.peer_auth_secret_file is not set here"
    )]
    AuthAsked,
    #[error("the peer said PEER QUIT")]
    PeerQuit,
    #[error("{PEER_CLOSED}")]
    PeerClosed,
    #[error("read failed: {0}")]
    Read(io::Error),
    #[error("write failed: {0}")]
    Write(io::Error),
    #[error("reader task failed: {0}")]
    ReaderTask(String),
    /// Ended from this side (a reload asks for another secret).
    #[error("closed")]
    Closed,
    #[error("removed from the map or stopping")]
    Removed,
}

/// Why a link ended when its peer closed it.
pub(super) const PEER_CLOSED: &str = "the peer closed the connection";

impl LinkFailure {
    /// True for a failure the peer's row shows on the accepting side too
    /// (a refused certificate or secret, a TLS mismatch), unless a working
    /// link is there.
    pub fn shows_on_the_peer(&self) -> bool {
        matches!(
            self,
            LinkFailure::Auth { .. } | LinkFailure::Tls(_) | LinkFailure::TlsRefused(_)
        )
    }

    /// Counts the failure where it belongs. (The side that refuses a
    /// connection it accepted also counts the refusal itself, in
    /// `rejected_connections`, through `Ctx::refuse`.)
    pub fn count(&self, counters: &ProxyCounters) {
        match self {
            LinkFailure::Auth { error, .. } if error.counts() => {
                counters.auth_failures.fetch_add(1, Relaxed);
            }
            LinkFailure::Tls(_) => {
                counters.auth_failures.fetch_add(1, Relaxed);
            }
            LinkFailure::Malformed(_) => {
                counters.rejected_connections.fetch_add(1, Relaxed);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthError;

    fn counted(f: LinkFailure) -> (u64, u64) {
        let c = ProxyCounters::default();
        f.count(&c);
        (
            c.auth_failures.load(Relaxed),
            c.rejected_connections.load(Relaxed),
        )
    }

    #[test]
    fn each_failure_is_counted_once_where_it_belongs() {
        let auth = |error| LinkFailure::Auth { dbid: 2, error };
        assert_eq!(
            counted(auth(ExchangeError::Rejected(AuthError::BadMac))),
            (1, 0)
        );
        assert_eq!(counted(auth(ExchangeError::TimedOut { dbid: 2 })), (1, 0));
        assert_eq!(counted(auth(ExchangeError::NoAnswer { dbid: 2 })), (1, 0));
        // Our own write failing is not the peer's failed authentication.
        let write = ExchangeError::Write(io::ErrorKind::BrokenPipe.into());
        assert_eq!(counted(auth(write)), (0, 0));
        assert_eq!(counted(LinkFailure::Malformed("x".into())), (0, 1));
        assert_eq!(counted(LinkFailure::Tls("unknown CA".into())), (1, 0));
        assert_eq!(counted(LinkFailure::TlsRefused("require")), (0, 0));
        for quiet in [
            LinkFailure::Network(io::ErrorKind::ConnectionRefused.into()),
            LinkFailure::TimedOut("PEER HELLO ACK"),
            LinkFailure::PeerClosed,
            LinkFailure::PeerQuit,
            LinkFailure::Closed,
            LinkFailure::Removed,
        ] {
            assert_eq!(counted(quiet), (0, 0));
        }
    }

    #[test]
    fn the_reasons_read_as_the_status_has_always_shown_them() {
        assert_eq!(
            LinkFailure::PeerClosed.to_string(),
            "the peer closed the connection"
        );
        assert_eq!(
            LinkFailure::TimedOut("PEER_HELLO_ACK").to_string(),
            "no PEER_HELLO_ACK in time"
        );
        assert_eq!(
            LinkFailure::Malformed("bad magic".into()).to_string(),
            "malformed packet: bad magic"
        );
    }
}
