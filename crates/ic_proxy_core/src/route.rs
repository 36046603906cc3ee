//! Routing to local receivers: the registry of backend sessions by logical
//! connection key, the early-packet cache for receivers that have not said
//! HELLO yet, the record of logical connections the proxy ended, and the
//! per-reader route cache that keeps the registry's lock off the hot path (a
//! reader takes the lock once per logical connection, not once per packet).
//!
//! Every logical connection the proxy gives up on ends visibly at both ends:
//! its receiver reads end of stream (at once, or right after its HELLO_ACK
//! when it comes later), and its sender's proxy gets a BYE, so the sending
//! backend's socket is closed too. Nothing waits forever.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::cache::EarlyCache;
use crate::log_limit::LogLimit;
use crate::protocol::LogicalConnKey;
use crate::session::limits::{KEY_COST, PACKET_COST};
use crate::session::shared::{Arrival, BackendSession, Violation};
use crate::status::StatusBoard;
use crate::sync::Mutex;

/// What became of a routed packet.
pub(crate) enum Routed {
    /// Delivered to this session (worth caching for the next packet).
    To(Arc<BackendSession>),
    /// Waiting in the early-packet cache.
    Cached,
    /// Nobody can take it (a late DATA_ACK, a dead session).
    Dropped,
}

/// A packet waiting in the early cache, with the session it was sent in.
struct Waiting {
    delivery: Arrival,
    session_id: i32,
}

/// How long the proxy remembers a logical connection it ended, and how many
/// it remembers at most (oldest forgotten first): a receiver that comes
/// later is told at once that its stream ended, and late packets of the
/// connection are dropped instead of waiting in the cache.
/// About 150 bytes each: a flood of distinct keys costs at most ~1.2 MB
/// here.
const ENDED_TTL: Duration = Duration::from_secs(600);
const ENDED_MAX: usize = 8192;
/// BYEs owed and not yet handed to their peer's queue, at most: past it
/// (a flood of distinct keys, each dropped at once) answers are skipped.
const OWED_MAX: usize = 4096;

/// The bounded, expiring record of logical connections the proxy ended.
#[derive(Default)]
struct Ended {
    /// Key (session ignored, as in the registry) -> the session ended.
    keys: HashMap<LogicalConnKey, i32>,
    order: VecDeque<(Instant, LogicalConnKey, i32)>,
}

impl Ended {
    fn insert(&mut self, key: LogicalConnKey, session_id: i32, now: Instant) {
        self.expire(now);
        while self.order.len() >= ENDED_MAX {
            let Some((_, k, sid)) = self.order.pop_front() else {
                break;
            };
            self.forget(&k, sid);
        }
        self.keys.insert(key, session_id);
        self.order.push_back((now, key, session_id));
    }

    /// True if the connection of `key` in `key.session_id` was ended.
    fn contains(&self, key: &LogicalConnKey) -> bool {
        self.keys.get(key) == Some(&key.session_id)
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, k, sid)) = self.order.front().copied() {
            if now.saturating_duration_since(at) < ENDED_TTL {
                break;
            }
            self.order.pop_front();
            self.forget(&k, sid);
        }
    }

    fn forget(&mut self, key: &LogicalConnKey, session_id: i32) {
        if self.keys.get(key) == Some(&session_id) {
            self.keys.remove(key);
        }
    }
}

struct Inner {
    live: HashMap<LogicalConnKey, Arc<BackendSession>>,
    early: EarlyCache<LogicalConnKey, Waiting>,
    ended: Ended,
}

/// A BYE the proxy owes the sender of a logical connection it ended: `key`
/// as seen from here (local = the receiver), with the sender's session.
pub(crate) type ByeOwed = LogicalConnKey;

pub(crate) struct Registry {
    inner: Mutex<Inner>,
    status: Arc<StatusBoard>,
    /// A flood of packets for distinct keys drops one connection per packet.
    drop_log: LogLimit,
    /// BYEs to send for connections ended here (sent by the runtime's
    /// answering task, which knows the peers).
    owed: mpsc::Sender<ByeOwed>,
}

impl Registry {
    pub fn new(
        status: Arc<StatusBoard>,
        cap_bytes: usize,
        ttl: Duration,
    ) -> (Self, mpsc::Receiver<ByeOwed>) {
        let (owed, owed_rx) = mpsc::channel(OWED_MAX);
        let reg = Registry {
            inner: Mutex::new(Inner {
                live: HashMap::new(),
                early: EarlyCache::new(cap_bytes, ttl),
                ended: Ended::default(),
            }),
            status,
            drop_log: LogLimit::default(),
            owed,
        };
        (reg, owed_rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    pub fn set_cache_limits(&self, cap_bytes: usize, ttl: Duration) {
        let mut g = self.lock();
        // Shrinking the cap takes effect now.
        let dropped = g.early.set_limits(cap_bytes, ttl);
        self.ended_early(&mut g, dropped, "the cache limit was lowered", true);
    }

    /// Routes a packet to the local backend with key `key` (as seen from here:
    /// local = the receiving backend; its session id is the packet's).
    pub fn route(&self, key: &LogicalConnKey, a: Arrival) -> Routed {
        let mut g = self.lock();
        if g.ended.contains(key) {
            // A late packet of a connection this proxy ended: its ends were
            // told already.
            drop(g);
            self.status.counters.dropped_packets.fetch_add(1, Relaxed);
            log::debug!("ic-proxy: dropped a packet of {key}: the proxy ended that connection");
            return Routed::Dropped;
        }
        if let Some(s) = g.live.get(key) {
            if s.accepts(key, &a) {
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
            if key.session_id < s.key.session_id && !s.closed.is_cancelled() {
                // Out of date: an older session's packet, never for this
                // receiver (the C proxy's rule, protocol reference 5.8).
                // That older connection is over; its sender is told once.
                let delivery = match a {
                    Arrival::Data(_) => Some(Arrival::Data(Bytes::new())),
                    Arrival::Bye => Some(Arrival::Bye),
                    Arrival::Ack => None,
                };
                if let Some(delivery) = delivery {
                    let w = Waiting {
                        delivery,
                        session_id: key.session_id,
                    };
                    self.give_up(&mut g, *key, &[w], true);
                }
                drop(g);
                self.status.counters.dropped_packets.fetch_add(1, Relaxed);
                log::debug!(
                    "ic-proxy: dropped a packet of {key}: older than the session waiting for it"
                );
                return Routed::Dropped;
            }
        }
        // A new waiting connection pays for its bookkeeping too.
        let key_cost = if g.early.contains(key) { 0 } else { KEY_COST };
        let (delivery, size) = match a {
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
                Arrival::Data(Bytes::copy_from_slice(&b)),
                b.len() + PACKET_COST,
            ),
            Arrival::Bye => (Arrival::Bye, PACKET_COST),
        };
        let size = size + key_cost;
        let item = Waiting {
            delivery,
            session_id: key.session_id,
        };
        let dropped = g
            .early
            .push(*key, key.remote.dbid, item, size, Instant::now());
        let cached = g.early.contains(key);
        self.ended_early(&mut g, dropped, "the early-packet cache is full", true);
        if cached {
            Routed::Cached
        } else {
            Routed::Dropped
        }
    }

    /// Registers a session and hands it the packets that waited for it, in
    /// order: those of its own session; older sessions' are dropped, newer
    /// ones wait on. Err(previous) while a session with the same key is
    /// still open: wait for `previous.closed`, then try again.
    pub fn register(&self, s: &Arc<BackendSession>) -> Result<usize, Arc<BackendSession>> {
        let mut g = self.lock();
        if let Some(prev) = g.live.get(&s.key) {
            if !prev.closed.is_cancelled() {
                return Err(prev.clone());
            }
        }
        let mut replayed = 0;
        let mut stale: Vec<Waiting> = Vec::new();
        if let Some(items) = g.early.take(&s.key) {
            let now = Instant::now();
            for w in items {
                if w.session_id < s.key.session_id {
                    stale.push(w);
                    continue;
                }
                let a = w.delivery.clone();
                let mine = LogicalConnKey {
                    session_id: w.session_id,
                    ..s.key
                };
                if !s.accepts(&mine, &a) {
                    // A newer session's, or after this session's BYE: it
                    // waits for the next receiver with this key.
                    let size = match &w.delivery {
                        Arrival::Data(b) => b.len() + PACKET_COST,
                        Arrival::Bye | Arrival::Ack => PACKET_COST,
                    };
                    let dropped = g.early.push(mine, s.key.remote.dbid, w, size, now);
                    self.ended_early(&mut g, dropped, "the early-packet cache is full", false);
                    continue;
                }
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
            self.publish_cache(&g);
        }
        if !stale.is_empty() {
            // Out of date: an older session's packets are never for this
            // receiver (protocol reference 5.8). That older connection is
            // over: its sender is told, and its late packets are dropped.
            self.status
                .counters
                .dropped_packets
                .fetch_add(stale.len() as u64, Relaxed);
            log::info!(
                "ic-proxy: session {}: dropped {} early packets of an older session",
                s.key,
                stale.len()
            );
            self.give_up(&mut g, s.key, &stale, true);
        }
        if g.ended.contains(&s.key) {
            // The proxy ended this connection before its receiver came: it
            // reads end of stream now, not nothing forever. Its sender was
            // sent a BYE then, so this session sends none.
            s.bye_answered.store(true, Relaxed);
            if s.push(Arrival::Bye).is_ok() {
                log::info!(
                    "ic-proxy: session {}: this logical connection was ended before its receiver came; ending its stream",
                    s.key
                );
            }
        }
        g.live.insert(s.key, s.clone());
        Ok(replayed)
    }

    pub fn unregister(&self, s: &Arc<BackendSession>) {
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
    /// be completed (a receiver that comes later reads end of stream).
    /// Sessions and cached packets of other instances are not touched.
    pub fn abort_remote(&self, dbid: u16) -> usize {
        let victims = {
            let mut g = self.lock();
            let v: Vec<_> = g
                .live
                .values()
                .filter(|s| s.key.remote.dbid == dbid)
                .cloned()
                .collect();
            let d = g.early.drop_where(|k| k.remote.dbid == dbid);
            // No BYE can reach that instance: its link is gone.
            self.ended_early(&mut g, d, "their peer is gone", false);
            v
        };
        for s in &victims {
            s.end_remote();
        }
        victims.len()
    }

    /// Ends the logical connection of `key` (as seen from here; local = the
    /// receiver) because of a packet from its sender that cannot be taken:
    /// its receiver reads end of stream, and its sender is sent a BYE.
    pub fn end_connection(&self, key: &LogicalConnKey, why: &str) {
        let mut g = self.lock();
        if g.ended.contains(key) {
            // Ended already, and both ends were told.
            drop(g);
            self.status.counters.dropped_packets.fetch_add(1, Relaxed);
            return;
        }
        if let Some(s) = g.live.get(key) {
            if s.key.session_id == key.session_id && !s.closed.is_cancelled() {
                // The session says BYE itself as it ends.
                let s = s.clone();
                g.ended.insert(*key, key.session_id, Instant::now());
                drop(g);
                self.drop_log.warn("ended logical connections", || {
                    format!("ic-proxy: session {key}: {why}; closing this logical connection")
                });
                s.abort.cancel();
                return;
            }
        }
        let mut dropped = Vec::new();
        if g.early.contains(key) {
            dropped = g.early.drop_where(|k| k == key);
        }
        self.publish_cache(&g);
        g.ended.insert(*key, key.session_id, Instant::now());
        drop(g);
        if !dropped.is_empty() {
            self.count_early_drops(&dropped, why, true);
        }
        self.drop_log.warn("ended logical connections", || {
            format!(
                "ic-proxy: {key}: {why}; closing this logical connection (its sender is sent BYE)"
            )
        });
        self.owe(*key);
    }

    /// Ends every session (proxy shutdown).
    pub fn abort_all(&self) {
        let all: Vec<_> = self.lock().live.values().cloned().collect();
        for s in all {
            s.abort.cancel();
        }
    }

    pub fn expire(&self) {
        let mut g = self.lock();
        let now = Instant::now();
        g.ended.expire(now);
        let dropped = g.early.expire(now);
        self.ended_early(&mut g, dropped, "nobody claimed them in time", true);
    }

    fn violation(&self, s: &BackendSession, v: Violation) {
        self.status.counters.flow_violations.fetch_add(1, Relaxed);
        log::warn!(
            "ic-proxy: session {}: {v}; closing this logical connection",
            s.key
        );
        // Late packets of this connection are dropped, not cached for a
        // next statement that would never claim them.
        self.lock()
            .ended
            .insert(s.key, s.key.session_id, Instant::now());
        s.abort.cancel();
    }

    /// Asks for a BYE to the sender of `key`; skipped (and counted) when
    /// too many wait already.
    fn owe(&self, key: LogicalConnKey) {
        if self.owed.try_send(key).is_err() {
            self.status.counters.dropped_packets.fetch_add(1, Relaxed);
        }
    }

    fn publish_cache(&self, g: &Inner) {
        self.status
            .counters
            .early_cache_bytes
            .store(g.early.bytes() as i64, Relaxed);
    }

    /// Cached connections were dropped: each is recorded as ended (its
    /// receiver, if it comes, reads end of stream), and when `answer`, its
    /// sender is owed a BYE for every session whose DATA was dropped (a
    /// connection that only said BYE needs no answer: answering a stray
    /// BYE with a BYE could bounce between two proxies).
    fn ended_early(
        &self,
        g: &mut Inner,
        mut dropped: Vec<crate::cache::Dropped<LogicalConnKey, Waiting>>,
        why: &str,
        answer: bool,
    ) {
        self.publish_cache(g);
        if dropped.is_empty() {
            return;
        }
        for d in &mut dropped {
            self.give_up(g, d.key, d.items.make_contiguous(), answer);
        }
        self.count_early_drops(&dropped, why, answer);
    }

    /// The packets `items` of the connection `key` were dropped: each
    /// session they belong to is recorded as ended and, when `answer`, its
    /// sender is owed a BYE if any of its DATA was dropped.
    fn give_up(&self, g: &mut Inner, key: LogicalConnKey, items: &[Waiting], answer: bool) {
        let now = Instant::now();
        let mut sessions: Vec<(i32, bool)> = Vec::new();
        for w in items {
            let data = matches!(w.delivery, Arrival::Data(_));
            match sessions.iter_mut().find(|(sid, _)| *sid == w.session_id) {
                Some(e) => e.1 |= data,
                None => sessions.push((w.session_id, data)),
            }
        }
        for (sid, data) in sessions {
            let key = LogicalConnKey {
                session_id: sid,
                ..key
            };
            g.ended.insert(key, sid, now);
            if answer && data {
                self.owe(key);
            }
        }
    }

    fn count_early_drops(
        &self,
        dropped: &[crate::cache::Dropped<LogicalConnKey, Waiting>],
        why: &str,
        answered: bool,
    ) {
        let after = if answered {
            "its receiver will read end of stream, its sender is sent BYE"
        } else {
            "its receiver will read end of stream"
        };
        for d in dropped {
            let c = &self.status.counters;
            c.early_dropped_conns.fetch_add(1, Relaxed);
            c.early_dropped_bytes.fetch_add(d.bytes as u64, Relaxed);
            if let Some(p) = self.status.peer(d.key.remote.dbid) {
                p.drops.fetch_add(1, Relaxed);
            }
            self.drop_log.warn("early-packet drops", || {
                format!(
                    "ic-proxy: dropped {} early packets ({} bytes) of {}: {why}; {after}",
                    d.items.len(),
                    d.bytes,
                    d.key
                )
            });
        }
    }
}

/// A reader's memory of where each logical connection's packets go.
#[derive(Default)]
pub(crate) struct RouteCache {
    map: HashMap<LogicalConnKey, Arc<BackendSession>>,
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
            if s.accepts(key, &a) {
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
