//! Admission of new connections before their handshake: how many may wait
//! for their PEER_HELLO or HELLO (in total and per source address), the
//! descriptors the peer listener leaves to backends, and the spare
//! descriptor that lets a listener shed a connection when the process has
//! none left. It only keeps counts and decides; it never reads or writes a
//! connection, and the listeners close what it refuses.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::ProxySettings;
pub use crate::config::DEFAULT_PENDING_PEERS_PER_SOURCE;
use crate::sync::Mutex;

/// Caps when the descriptor limit is unlimited.
const FALLBACK_PENDING: usize = 1024;
/// The smallest derived caps, for tiny descriptor limits.
const MIN_PENDING: usize = 16;

/// Linux errno values (asm-generic) that `io::ErrorKind` does not name on
/// stable Rust; the core links no libc.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;
const ENOBUFS: i32 = 105;
const EPROTO: i32 = 71;

/// The caps in force for one runtime, from [`ProxySettings`] and the
/// descriptor limit when the listener starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AdmissionCaps {
    pub pending_peers: usize,
    pub pending_peers_per_source: usize,
    pub pending_backends: usize,
    /// The soft descriptor limit, when known.
    pub nofile: Option<usize>,
    pub reserve: usize,
}

impl AdmissionCaps {
    /// Defaults derive from the soft descriptor limit: a quarter of it for
    /// peer and for backend handshakes each, so both floods together hold
    /// at most half of the descriptors; an eighth of it kept from peers for
    /// backends. A real cluster stays far below: N instances make at most
    /// N-1 peer handshakes at once (and N-1 links need N-1 descriptors
    /// anyway), and a backend sends its HELLO as soon as it connects.
    pub fn new(settings: &ProxySettings, nofile: Option<usize>) -> AdmissionCaps {
        let quarter = nofile.map_or(FALLBACK_PENDING, |n| (n / 4).max(MIN_PENDING));
        AdmissionCaps {
            pending_peers: settings.max_pending_peers.unwrap_or(quarter),
            pending_peers_per_source: settings.max_pending_peers_per_source,
            pending_backends: settings.max_pending_backends.unwrap_or(quarter),
            nofile,
            reserve: settings
                .descriptor_reserve
                .unwrap_or_else(|| nofile.map_or(0, |n| n / 8)),
        }
    }

    /// Some(why) when a peer connection that got descriptor `fd` must be
    /// closed at once to leave descriptors to backends. Linux hands out the
    /// lowest free descriptor, so `fd` open ones precede it: a cheap lower
    /// bound of how many are in use.
    pub fn short_of_descriptors(&self, fd: usize) -> Option<String> {
        let limit = self.nofile?;
        (fd.saturating_add(self.reserve) >= limit).then(|| {
            format!(
                "descriptors are running out (descriptor {fd} of limit {limit}; the last {} are kept for backends)",
                self.reserve
            )
        })
    }
}

/// The soft limit on open descriptors (RLIMIT_NOFILE) of this process, as
/// the shell left it; None when unlimited.
pub(crate) fn soft_nofile_limit() -> Option<usize> {
    let soft = crate::fd_limit::nofile().soft;
    if soft == u64::MAX {
        return None;
    }
    usize::try_from(soft).ok()
}

/// Why a new connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Total(usize),
    PerSource(usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Total(n) => write!(f, "{n} connections are already in their handshake"),
            Refusal::PerSource(n) => write!(
                f,
                "{n} connections from this address are already in their handshake"
            ),
        }
    }
}

/// Counts connections in their handshake, in total and per source.
#[derive(Debug)]
pub(crate) struct PendingLimits {
    max_total: usize,
    max_per_source: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

impl PendingLimits {
    pub fn new(max_total: usize, max_per_source: usize) -> Arc<PendingLimits> {
        Arc::new(PendingLimits {
            max_total,
            max_per_source,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Admits one more connection from `from` (None: a Unix peer, counted
    /// in the total only) while it fits under both caps; the connection is
    /// pending until the returned guard drops.
    pub fn admit(self: &Arc<Self>, from: Option<IpAddr>) -> Result<Pending, Refusal> {
        let source = from.map(source_key);
        let mut c = self.counts.lock();
        if c.total >= self.max_total {
            return Err(Refusal::Total(c.total));
        }
        if let Some(ip) = source {
            let n = c.per_source.entry(ip).or_insert(0);
            if *n >= self.max_per_source {
                return Err(Refusal::PerSource(*n));
            }
            *n += 1;
        }
        c.total += 1;
        Ok(Pending {
            limits: self.clone(),
            source,
        })
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let c = self.counts.lock();
        (c.total, c.per_source.len())
    }
}

/// One admitted connection in its handshake; dropping it ends that.
#[derive(Debug)]
pub(crate) struct Pending {
    limits: Arc<PendingLimits>,
    source: Option<IpAddr>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut c = self.limits.counts.lock();
        c.total -= 1;
        if let Some(ip) = self.source {
            if let Some(n) = c.per_source.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    c.per_source.remove(&ip);
                }
            }
        }
    }
}

/// The key a source address is counted under: IPv4 (also IPv4-mapped) per
/// address, IPv6 per /64, the block one host or subscriber usually holds.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

/// How an accept failed, by what the listener should do about it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AcceptFailure {
    /// The process (EMFILE) or the system (ENFILE) has no descriptor left:
    /// the connection waits in the queue until one is shed or freed.
    OutOfDescriptors,
    /// The kernel is short of memory or buffers: back off a little.
    OutOfMemory,
    /// The connection died before it was accepted, or a signal came: go on.
    ConnectionGone,
    /// The listener itself is broken.
    Fatal,
}

impl AcceptFailure {
    pub fn of(e: &io::Error) -> AcceptFailure {
        match e.raw_os_error() {
            Some(EMFILE | ENFILE) => return AcceptFailure::OutOfDescriptors,
            Some(ENOBUFS) => return AcceptFailure::OutOfMemory,
            Some(EPROTO) => return AcceptFailure::ConnectionGone,
            _ => {}
        }
        match e.kind() {
            io::ErrorKind::OutOfMemory => AcceptFailure::OutOfMemory,
            io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock => AcceptFailure::ConnectionGone,
            _ => AcceptFailure::Fatal,
        }
    }
}

/// One descriptor held open (on /dev/null) so that, when accept finds none
/// left, the listener can give it up, accept the waiting connection, close
/// it and take the descriptor back: the queue drains instead of the
/// listener waking up for the same connection again and again (the
/// libev/nginx trick).
#[derive(Debug)]
pub(crate) struct SpareDescriptor(Option<File>);

impl SpareDescriptor {
    pub fn open() -> SpareDescriptor {
        SpareDescriptor(File::open("/dev/null").ok())
    }

    /// Closes the spare; false when there was none to close.
    pub fn release(&mut self) -> bool {
        self.0.take().is_some()
    }

    /// Opens the spare again if it is closed; it may fail while the process
    /// is still out of descriptors, and is tried again at the next release.
    pub fn restore(&mut self) {
        if self.0.is_none() {
            self.0 = File::open("/dev/null").ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(last: u8) -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
    }

    #[test]
    fn caps_hold_per_source_and_in_total_and_guards_give_back() {
        let limits = PendingLimits::new(5, 2);
        let a1 = limits.admit(v4(1)).unwrap();
        let a2 = limits.admit(v4(1)).unwrap();
        assert_eq!(limits.admit(v4(1)).unwrap_err(), Refusal::PerSource(2));
        let b1 = limits.admit(v4(2)).unwrap();
        let u1 = limits.admit(None).unwrap();
        let _u2 = limits.admit(None).unwrap();
        assert_eq!(limits.admit(v4(3)).unwrap_err(), Refusal::Total(5));
        assert_eq!(limits.admit(None).unwrap_err(), Refusal::Total(5));
        assert_eq!(limits.counts(), (5, 2));
        // A refused admission took nothing.
        drop(a1);
        assert_eq!(limits.counts(), (4, 2));
        let _a3 = limits.admit(v4(1)).unwrap();
        assert_eq!(limits.admit(v4(1)).unwrap_err(), Refusal::Total(5));
        drop((a2, b1, u1));
        // Sources with nothing pending are forgotten.
        assert_eq!(limits.counts(), (2, 1));
    }

    #[test]
    fn ipv6_counts_per_slash_64_and_mapped_ipv4_as_ipv4() {
        let limits = PendingLimits::new(100, 1);
        let in_64 = |last: u16| {
            Some(IpAddr::V6(Ipv6Addr::new(
                0x2001, 0xdb8, 0, 1, 0, 0, 0, last,
            )))
        };
        let _g = limits.admit(in_64(1)).unwrap();
        assert_eq!(limits.admit(in_64(2)).unwrap_err(), Refusal::PerSource(1));
        let other_64 = Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1)));
        let _h = limits.admit(other_64).unwrap();
        let _i = limits.admit(v4(7)).unwrap();
        let mapped = Some(IpAddr::V6(Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped()));
        assert_eq!(limits.admit(mapped).unwrap_err(), Refusal::PerSource(1));
    }

    #[test]
    fn defaults_derive_from_the_descriptor_limit() {
        let s = ProxySettings::new(1, "/tmp/x".into());
        let c = AdmissionCaps::new(&s, Some(1024));
        assert_eq!(
            (c.pending_peers, c.pending_backends, c.reserve),
            (256, 256, 128)
        );
        assert_eq!(c.pending_peers_per_source, DEFAULT_PENDING_PEERS_PER_SOURCE);
        assert_eq!(c.short_of_descriptors(895), None);
        assert!(c
            .short_of_descriptors(896)
            .unwrap()
            .contains("descriptor 896 of limit 1024"));
        let unknown = AdmissionCaps::new(&s, None);
        assert_eq!(unknown.pending_peers, FALLBACK_PENDING);
        assert_eq!(unknown.short_of_descriptors(1 << 20), None);
        let mut set = s.clone();
        set.max_pending_peers = Some(3);
        set.descriptor_reserve = Some(0);
        let c = AdmissionCaps::new(&set, Some(1024));
        assert_eq!((c.pending_peers, c.reserve), (3, 0));
    }

    #[test]
    fn the_soft_limit_is_known_here() {
        assert!(soft_nofile_limit().is_some_and(|n| n > 0));
    }

    #[test]
    fn accept_errors_are_classified_by_name() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(
            AcceptFailure::of(&os(EMFILE)),
            AcceptFailure::OutOfDescriptors
        );
        assert_eq!(
            AcceptFailure::of(&os(ENFILE)),
            AcceptFailure::OutOfDescriptors
        );
        assert_eq!(AcceptFailure::of(&os(12)), AcceptFailure::OutOfMemory);
        assert_eq!(AcceptFailure::of(&os(ENOBUFS)), AcceptFailure::OutOfMemory);
        assert_eq!(AcceptFailure::of(&os(103)), AcceptFailure::ConnectionGone);
        assert_eq!(AcceptFailure::of(&os(104)), AcceptFailure::ConnectionGone);
        assert_eq!(AcceptFailure::of(&os(9)), AcceptFailure::Fatal);
    }
}
