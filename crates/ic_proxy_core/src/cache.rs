//! The early-packet cache: packets that arrive for a logical connection whose
//! receiver has not registered yet wait here, in arrival order, under a byte
//! cap and an expiry. Over the cap the oldest waiting logical connection is
//! dropped whole (never a packet from the middle of a stream); the C proxy's
//! equivalent is unbounded. Pure data structure: the caller supplies `now`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

struct Entry<T> {
    seq: u64,
    created: Instant,
    bytes: usize,
    items: VecDeque<T>,
}

/// What was dropped to honour the cap or the expiry.
#[derive(Debug, PartialEq, Eq)]
pub struct Dropped<K> {
    pub key: K,
    pub packets: usize,
    pub bytes: usize,
}

pub struct EarlyCache<K, T> {
    cap_bytes: usize,
    ttl: Duration,
    bytes: usize,
    next_seq: u64,
    entries: HashMap<K, Entry<T>>,
    /// Creation order, for dropping the oldest first.
    order: BTreeMap<u64, K>,
}

impl<K: Hash + Eq + Clone, T> EarlyCache<K, T> {
    pub fn new(cap_bytes: usize, ttl: Duration) -> Self {
        EarlyCache {
            cap_bytes,
            ttl,
            bytes: 0,
            next_seq: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    pub fn set_limits(&mut self, cap_bytes: usize, ttl: Duration) {
        self.cap_bytes = cap_bytes;
        self.ttl = ttl;
    }

    /// Appends a packet of `size` bytes for `key`; returns the logical
    /// connections dropped to stay under the cap (possibly `key` itself, when
    /// it alone exceeds the cap).
    pub fn push(&mut self, key: K, item: T, size: usize, now: Instant) -> Vec<Dropped<K>> {
        let entry = match self.entries.get_mut(&key) {
            Some(e) => e,
            None => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.order.insert(seq, key.clone());
                self.entries.entry(key.clone()).or_insert(Entry {
                    seq,
                    created: now,
                    bytes: 0,
                    items: VecDeque::new(),
                })
            }
        };
        entry.items.push_back(item);
        entry.bytes += size;
        self.bytes += size;
        let mut dropped = Vec::new();
        while self.bytes > self.cap_bytes {
            let Some((_, oldest)) = self.order.iter().next() else {
                break;
            };
            let oldest = oldest.clone();
            if let Some(d) = self.remove(&oldest) {
                dropped.push(d);
            }
        }
        dropped
    }

    /// Everything waiting for `key`, in arrival order.
    pub fn take(&mut self, key: &K) -> Option<VecDeque<T>> {
        let e = self.entries.remove(key)?;
        self.order.remove(&e.seq);
        self.bytes -= e.bytes;
        Some(e.items)
    }

    /// Drops the logical connections that waited longer than the expiry.
    pub fn expire(&mut self, now: Instant) -> Vec<Dropped<K>> {
        let mut dropped = Vec::new();
        while let Some((_, k)) = self.order.iter().next() {
            let k = k.clone();
            let created = self.entries[&k].created;
            if now.saturating_duration_since(created) < self.ttl {
                break;
            }
            if let Some(d) = self.remove(&k) {
                dropped.push(d);
            }
        }
        dropped
    }

    /// Drops every waiting logical connection `pred` selects.
    pub fn drop_where(&mut self, mut pred: impl FnMut(&K) -> bool) -> Vec<Dropped<K>> {
        let keys: Vec<K> = self.entries.keys().filter(|k| pred(k)).cloned().collect();
        keys.iter().filter_map(|k| self.remove(k)).collect()
    }

    fn remove(&mut self, key: &K) -> Option<Dropped<K>> {
        let e = self.entries.remove(key)?;
        self.order.remove(&e.seq);
        self.bytes -= e.bytes;
        Some(Dropped {
            key: key.clone(),
            packets: e.items.len(),
            bytes: e.bytes,
        })
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(cap: usize) -> EarlyCache<u32, &'static str> {
        EarlyCache::new(cap, Duration::from_secs(60))
    }

    #[test]
    fn keeps_arrival_order_per_key() {
        let now = Instant::now();
        let mut c = cache(1000);
        c.push(1, "a", 10, now);
        c.push(2, "x", 10, now);
        c.push(1, "b", 10, now);
        assert_eq!(c.bytes(), 30);
        assert_eq!(c.take(&1).unwrap(), ["a", "b"]);
        assert_eq!(c.bytes(), 10);
        assert!(c.take(&1).is_none());
    }

    #[test]
    fn over_the_cap_the_oldest_connection_goes_whole() {
        let now = Instant::now();
        let mut c = cache(100);
        c.push(1, "a", 40, now);
        c.push(2, "b", 40, now);
        c.push(1, "c", 10, now);
        let dropped = c.push(3, "d", 40, now);
        assert_eq!(
            dropped,
            vec![Dropped {
                key: 1,
                packets: 2,
                bytes: 50
            }]
        );
        assert_eq!(c.bytes(), 80);
        assert!(!c.contains(&1));
        assert!(c.contains(&2) && c.contains(&3));
    }

    #[test]
    fn a_connection_larger_than_the_cap_is_dropped_itself() {
        let now = Instant::now();
        let mut c = cache(100);
        let dropped = c.push(7, "big", 150, now);
        assert_eq!(
            dropped,
            vec![Dropped {
                key: 7,
                packets: 1,
                bytes: 150
            }]
        );
        assert_eq!(c.bytes(), 0);
        assert!(c.is_empty());
    }

    #[test]
    fn expiry_drops_only_old_connections() {
        let t0 = Instant::now();
        let mut c = cache(1000);
        c.push(1, "a", 10, t0);
        c.push(2, "b", 10, t0 + Duration::from_secs(30));
        assert!(c.expire(t0 + Duration::from_secs(59)).is_empty());
        let d = c.expire(t0 + Duration::from_secs(61));
        assert_eq!(
            d,
            vec![Dropped {
                key: 1,
                packets: 1,
                bytes: 10
            }]
        );
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn drop_where_is_scoped() {
        let now = Instant::now();
        let mut c = cache(1000);
        for k in 0..6 {
            c.push(k, "p", 5, now);
        }
        let d = c.drop_where(|k| k % 2 == 0);
        assert_eq!(d.len(), 3);
        assert_eq!(c.len(), 3);
        assert_eq!(c.bytes(), 15);
    }
}
