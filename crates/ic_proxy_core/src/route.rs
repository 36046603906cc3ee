//! Routing to local receivers: the registry of backend sessions by logical
//! connection key, the early-packet cache for receivers that have not said
//! HELLO yet, and the per-reader route cache that keeps the registry's lock off
//! the hot path (a reader takes the lock once per logical connection, not
//! once per packet).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::cache::{Dropped, EarlyCache};
use crate::flow::{FlowParams, FlowViolation, SendCredit};
use crate::protocol::LogicalConnKey;
use crate::status::{LogLimit, StatusBoard};

/// What a session's writer sends to its backend.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// A DATA payload: whole ic-tcp packets (or the 1-byte STOP).
    Data(Bytes),
    /// The other end is done sending: half-close toward the backend.
    Bye,
}

/// A session's queue of deliveries for its writer. A plain deque under a
/// mutex: it allocates nothing until something arrives and nothing once it
/// is drained, so an idle session costs no queue memory (a channel keeps a
/// block of slots for its whole life).
#[derive(Default)]
pub(crate) struct Inbox {
    q: Mutex<VecDeque<Delivery>>,
    ready: Notify,
}

impl Inbox {
    fn push(&self, d: Delivery) {
        self.lock().push_back(d);
        // Stores a permit when the writer is not waiting: no wake-up is lost.
        self.ready.notify_one();
    }

    pub fn try_recv(&self) -> Option<Delivery> {
        self.lock().pop_front()
    }

    /// The next delivery, waiting for one.
    pub async fn recv(&self) -> Delivery {
        loop {
            if let Some(d) = self.try_recv() {
                return d;
            }
            self.ready.notified().await;
        }
    }

    /// True if nothing waits; then the queue's memory (grown by a burst)
    /// is given back too.
    pub fn release_if_empty(&self) -> bool {
        let mut q = self.lock();
        if !q.is_empty() {
            return false;
        }
        if q.capacity() > 0 {
            *q = VecDeque::new();
        }
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Delivery>> {
        self.q.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A packet for a local backend, as the router sees it.
#[derive(Debug)]
pub(crate) enum Arrival {
    Data(Bytes),
    Bye,
    Ack,
}

/// What one waiting packet costs besides its payload (its queue slot, with
/// the queue's growth slack, and its allocation), for the early cache's cap
/// and a session's queue bound.
pub(crate) const PACKET_COST: usize = 96;
/// What one waiting logical connection costs besides its packets (its map
/// and order entries, the first allocation of its queue). Without it, a
/// flood of 1-byte packets for distinct keys costs ~500 bytes of memory
/// per byte the cap counts.
const KEY_COST: usize = 512;

/// The part of a backend session other tasks can reach.
pub(crate) struct SessionShared {
    pub key: LogicalConnKey,
    /// What the session's writer is to write to its backend.
    pub inbox: Inbox,
    /// A BYE was routed to this session: later packets with its key belong to
    /// the next statement reusing the key, and wait in the cache.
    p2c_done: AtomicBool,
    /// Cancelled when the session has left the registry.
    pub closed: CancellationToken,
    /// Cancelled to end the session at once (violation, backend gone,
    /// shutdown).
    pub abort: CancellationToken,
    /// Cancelled (with `abort`, or alone when the peer is lost) to stop
    /// reading the backend.
    pub stop_reading: CancellationToken,
    credit: Mutex<SendCredit>,
    pub resume: Notify,
    /// Payload bytes (plus [`PACKET_COST`] per packet) routed to this session
    /// and not yet written to its backend.
    pub queued: AtomicUsize,
    queued_cap: usize,
    flow: FlowParams,
}

impl SessionShared {
    pub fn new(
        key: LogicalConnKey,
        flow: FlowParams,
        queued_cap: usize,
        abort: CancellationToken,
    ) -> Self {
        SessionShared {
            key,
            inbox: Inbox::default(),
            p2c_done: AtomicBool::new(false),
            closed: CancellationToken::new(),
            stop_reading: abort.child_token(),
            abort,
            credit: Mutex::new(SendCredit::default()),
            resume: Notify::new(),
            queued: AtomicUsize::new(0),
            queued_cap,
            flow,
        }
    }

    fn accepts(&self, a: &Arrival) -> bool {
        if self.closed.is_cancelled() || self.abort.is_cancelled() {
            return false;
        }
        match a {
            Arrival::Ack => true,
            Arrival::Data(_) | Arrival::Bye => !self.p2c_done.load(Relaxed),
        }
    }

    /// Hands a packet to the session. Err when the sender broke the rules
    /// (the session is then aborted by the caller).
    fn push(&self, a: Arrival) -> Result<(), Violation> {
        match a {
            Arrival::Data(b) => {
                let cost = b.len() + PACKET_COST;
                let q = self.queued.fetch_add(cost, Relaxed) + cost;
                if q > self.queued_cap {
                    return Err(Violation::Overrun {
                        queued: q,
                        cap: self.queued_cap,
                    });
                }
                self.inbox.push(Delivery::Data(b));
            }
            Arrival::Bye => {
                self.p2c_done.store(true, Relaxed);
                self.lock_credit().release();
                self.resume.notify_one();
                self.inbox.push(Delivery::Bye);
            }
            Arrival::Ack => {
                if self
                    .lock_credit()
                    .on_ack(&self.flow)
                    .map_err(Violation::Flow)?
                {
                    self.resume.notify_one();
                }
            }
        }
        Ok(())
    }

    /// The other end's instance is gone: stop reading the backend, and
    /// end its stream after what already arrived (written first, as the C
    /// proxy queues its half-close after pending writes).
    fn end_remote(&self) {
        self.p2c_done.store(true, Relaxed);
        self.lock_credit().release();
        self.resume.notify_one();
        self.inbox.push(Delivery::Bye);
        self.stop_reading.cancel();
    }

    /// Counts DATA packets sent; true when the sender must pause.
    pub fn on_sent(&self, n: u32) -> bool {
        self.lock_credit().on_sent(n, &self.flow)
    }

    pub fn is_paused(&self) -> bool {
        self.lock_credit().is_paused()
    }

    fn lock_credit(&self) -> std::sync::MutexGuard<'_, SendCredit> {
        self.credit.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum Violation {
    #[error("{0}")]
    Flow(FlowViolation),
    #[error("{queued} bytes queued for the backend, over the flow-control bound of {cap}")]
    Overrun { queued: usize, cap: usize },
}

/// What became of a routed packet.
pub(crate) enum Routed {
    /// Delivered to this session (worth caching for the next packet).
    To(Arc<SessionShared>),
    /// Waiting in the early-packet cache.
    Cached,
    /// Nobody can take it (a late DATA_ACK, a dead session).
    Dropped,
}

struct Inner {
    live: HashMap<LogicalConnKey, Arc<SessionShared>>,
    early: EarlyCache<LogicalConnKey, (Delivery, usize)>,
}

pub(crate) struct Registry {
    inner: Mutex<Inner>,
    status: Arc<StatusBoard>,
    /// A flood of packets for distinct keys drops one connection per packet.
    drop_log: LogLimit,
}

impl Registry {
    pub fn new(status: Arc<StatusBoard>, cap_bytes: usize, ttl: Duration) -> Self {
        Registry {
            inner: Mutex::new(Inner {
                live: HashMap::new(),
                early: EarlyCache::new(cap_bytes, ttl),
            }),
            status,
            drop_log: LogLimit::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_cache_limits(&self, cap_bytes: usize, ttl: Duration) {
        let dropped = {
            let mut g = self.lock();
            g.early.set_limits(cap_bytes, ttl);
            // Shrinking the cap takes effect now, oldest first.
            let mut d = Vec::new();
            while g.early.bytes() > cap_bytes {
                let Some(k) = g.early.drop_where(|_| true).into_iter().next() else {
                    break;
                };
                d.push(k);
            }
            d
        };
        self.count_dropped(&dropped, "the cache limit was lowered");
    }

    /// Routes a packet to the local backend with key `key` (as seen from here:
    /// local = the receiving backend).
    pub fn route(&self, key: &LogicalConnKey, a: Arrival) -> Routed {
        let mut g = self.lock();
        if let Some(s) = g.live.get(key) {
            if s.accepts(&a) {
                let s = s.clone();
                drop(g);
                return match s.push(a) {
                    Ok(()) => Routed::To(s),
                    Err(v) => {
                        self.violation(&s, v);
                        Routed::Dropped
                    }
                };
            }
        }
        // A new waiting connection pays for its bookkeeping too.
        let key_cost = if g.early.contains(key) { 0 } else { KEY_COST };
        let (item, size) = match a {
            // A DATA_ACK nobody waits for is late: the sender is gone.
            Arrival::Ack => {
                drop(g);
                self.status.counters.dropped_packets.fetch_add(1, Relaxed);
                // Debug only: after a cancel every late ACK lands here (#12605).
                log::debug!("ic-proxy: dropped a DATA ACK for {key}: no sender waits for it");
                return Routed::Dropped;
            }
            // A copy: a slice would keep the whole read buffer it came from
            // alive (64 KiB for a 1-byte packet) for as long as it waits.
            Arrival::Data(b) => (
                Delivery::Data(Bytes::copy_from_slice(&b)),
                b.len() + PACKET_COST,
            ),
            Arrival::Bye => (Delivery::Bye, PACKET_COST),
        };
        let size = size + key_cost;
        let dropped = g.early.push(*key, (item, size), size, Instant::now());
        let cached = g.early.contains(key);
        self.status
            .counters
            .early_cache_bytes
            .store(g.early.bytes() as i64, Relaxed);
        drop(g);
        self.count_dropped(&dropped, "the early-packet cache is full");
        if cached {
            Routed::Cached
        } else {
            Routed::Dropped
        }
    }

    /// Registers a session and hands it the packets that waited for it, in
    /// order. Err(previous) while a session with the same key is still open:
    /// wait for `previous.closed`, then try again.
    pub fn register(&self, s: &Arc<SessionShared>) -> Result<usize, Arc<SessionShared>> {
        let mut g = self.lock();
        if let Some(prev) = g.live.get(&s.key) {
            if !prev.closed.is_cancelled() {
                return Err(prev.clone());
            }
        }
        let mut replayed = 0;
        if let Some(items) = g.early.take(&s.key) {
            for (d, _) in items {
                let a = match d {
                    Delivery::Data(b) => Arrival::Data(b),
                    Delivery::Bye => Arrival::Bye,
                };
                // A fresh session accepts everything; an overrun cannot happen
                // because the cache holds less than one flow-control window
                // per connection from a well-behaved sender.
                if let Err(v) = s.push(a) {
                    self.status.counters.flow_violations.fetch_add(1, Relaxed);
                    log::warn!(
                        "ic-proxy: session {}: {v} while replaying early packets",
                        s.key
                    );
                    s.abort.cancel();
                    break;
                }
                replayed += 1;
            }
            self.status
                .counters
                .early_cache_bytes
                .store(g.early.bytes() as i64, Relaxed);
        }
        g.live.insert(s.key, s.clone());
        Ok(replayed)
    }

    pub fn unregister(&self, s: &Arc<SessionShared>) {
        let mut g = self.lock();
        if g.live.get(&s.key).is_some_and(|cur| Arc::ptr_eq(cur, s)) {
            g.live.remove(&s.key);
            // A table grown by a burst of connections gives its memory back
            // once most of them are gone (amortised: it halves at most).
            let cap = g.live.capacity();
            if cap > 1024 && g.live.len() < cap / 4 {
                let keep = g.live.len() * 2;
                g.live.shrink_to(keep);
            }
        }
        drop(g);
        s.closed.cancel();
    }

    /// Ends every session whose other end is on instance `dbid`, and drops the
    /// packets that instance left waiting: its link is gone, they can never
    /// be completed. Sessions and cached packets of other instances are not
    /// touched.
    pub fn abort_remote(&self, dbid: u16) -> usize {
        let (victims, dropped) = {
            let mut g = self.lock();
            let v: Vec<_> = g
                .live
                .values()
                .filter(|s| s.key.remote.dbid == dbid)
                .cloned()
                .collect();
            let d = g.early.drop_where(|k| k.remote.dbid == dbid);
            self.status
                .counters
                .early_cache_bytes
                .store(g.early.bytes() as i64, Relaxed);
            (v, d)
        };
        for s in &victims {
            s.end_remote();
        }
        self.count_dropped(&dropped, "their peer is gone");
        victims.len()
    }

    /// Ends every session (proxy shutdown).
    pub fn abort_all(&self) {
        let all: Vec<_> = self.lock().live.values().cloned().collect();
        for s in all {
            s.abort.cancel();
        }
    }

    pub fn expire(&self) {
        let dropped = {
            let mut g = self.lock();
            let d = g.early.expire(Instant::now());
            self.status
                .counters
                .early_cache_bytes
                .store(g.early.bytes() as i64, Relaxed);
            d
        };
        self.count_dropped(&dropped, "nobody claimed them in time");
    }

    fn violation(&self, s: &SessionShared, v: Violation) {
        self.status.counters.flow_violations.fetch_add(1, Relaxed);
        log::warn!(
            "ic-proxy: session {}: {v}; closing this logical connection",
            s.key
        );
        s.abort.cancel();
    }

    fn count_dropped(&self, dropped: &[Dropped<LogicalConnKey>], why: &str) {
        for d in dropped {
            let c = &self.status.counters;
            c.early_dropped_conns.fetch_add(1, Relaxed);
            c.early_dropped_bytes.fetch_add(d.bytes as u64, Relaxed);
            if let Some(p) = self.status.peer(d.key.remote.dbid) {
                p.drops.fetch_add(1, Relaxed);
            }
            self.drop_log.warn("early-packet drops", || {
                format!(
                    "ic-proxy: dropped {} early packets ({} bytes) of {}: {why}",
                    d.packets, d.bytes, d.key
                )
            });
        }
    }
}

/// A reader's memory of where each logical connection's packets go.
#[derive(Default)]
pub(crate) struct RouteCache {
    map: HashMap<LogicalConnKey, Arc<SessionShared>>,
}

/// Above this many remembered sessions, forget the closed ones.
const ROUTE_CACHE_PRUNE: usize = 4096;

impl RouteCache {
    /// Delivers `a` to the local backend with key `key`, through the registry
    /// only when this reader has not seen the session yet.
    pub fn deliver(&mut self, reg: &Registry, key: &LogicalConnKey, a: Arrival) -> Routed {
        // After its BYE no more packets of this stream come: forget the
        // session, so closed sessions do not pile up here.
        let last = matches!(a, Arrival::Bye);
        if let Some(s) = self.map.get(key) {
            if s.accepts(&a) {
                let s = s.clone();
                if last {
                    self.map.remove(key);
                }
                return match s.push(a) {
                    Ok(()) => Routed::To(s),
                    Err(v) => {
                        reg.violation(&s, v);
                        Routed::Dropped
                    }
                };
            }
            self.map.remove(key);
        }
        let r = reg.route(key, a);
        if last {
            return r;
        }
        if let Routed::To(s) = &r {
            if self.map.len() >= ROUTE_CACHE_PRUNE {
                self.map.retain(|_, s| !s.closed.is_cancelled());
            }
            self.map.insert(*key, s.clone());
        }
        r
    }
}
