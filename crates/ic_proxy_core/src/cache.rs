//! The early-packet cache: packets that arrive for a logical connection whose
//! receiver has not registered yet wait here, in arrival order, under a byte
//! cap and an expiry. Over the cap a whole waiting logical connection is
//! dropped (never a packet from the middle of a stream): the oldest one of the
//! group (the sending peer) that holds the most bytes, so one peer flooding
//! the cache evicts its own connections and never another peer's while that
//! one holds less. The C proxy's equivalent is unbounded. Pure data
//! structure: the caller supplies `now`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

struct Entry<T> {
    seq: u64,
    group: u16,
    created: Instant,
    bytes: usize,
    items: VecDeque<T>,
}

/// A logical connection dropped to honour the cap or the expiry, with its
/// packets: the caller answers for them.
#[derive(Debug, PartialEq, Eq)]
pub struct Dropped<K, T> {
    pub key: K,
    pub bytes: usize,
    pub items: VecDeque<T>,
}

pub struct EarlyCache<K, T> {
    cap_bytes: usize,
    ttl: Duration,
    bytes: usize,
    next_seq: u64,
    entries: HashMap<K, Entry<T>>,
    /// Creation order, for expiring the oldest first.
    order: BTreeMap<u64, K>,
    /// Per group: its bytes and its entries in creation order.
    groups: HashMap<u16, Group<K>>,
}

struct Group<K> {
    bytes: usize,
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
            groups: HashMap::new(),
        }
    }

    /// New limits; a lower cap takes effect at once (returns what it dropped).
    pub fn set_limits(&mut self, cap_bytes: usize, ttl: Duration) -> Vec<Dropped<K, T>> {
        self.cap_bytes = cap_bytes;
        self.ttl = ttl;
        self.shrink_to_cap()
    }

    /// Appends a packet of `size` bytes for `key`, which belongs to `group`
    /// (the instance that sent it); returns the logical connections dropped
    /// to stay under the cap (possibly `key` itself, when its group is the
    /// largest and `key` its oldest entry).
    pub fn push(
        &mut self,
        key: K,
        group: u16,
        item: T,
        size: usize,
        now: Instant,
    ) -> Vec<Dropped<K, T>> {
        let entry = match self.entries.get_mut(&key) {
            Some(e) => e,
            None => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.order.insert(seq, key.clone());
                self.groups
                    .entry(group)
                    .or_insert_with(|| Group {
                        bytes: 0,
                        order: BTreeMap::new(),
                    })
                    .order
                    .insert(seq, key.clone());
                self.entries.entry(key.clone()).or_insert(Entry {
                    seq,
                    group,
                    created: now,
                    bytes: 0,
                    items: VecDeque::new(),
                })
            }
        };
        entry.items.push_back(item);
        entry.bytes += size;
        let group = entry.group;
        self.bytes += size;
        if let Some(g) = self.groups.get_mut(&group) {
            g.bytes += size;
        }
        self.shrink_to_cap()
    }

    /// Drops whole connections until the cap holds: each time the oldest
    /// one of the group holding the most bytes (ties: the lower group).
    fn shrink_to_cap(&mut self) -> Vec<Dropped<K, T>> {
        let mut dropped = Vec::new();
        while self.bytes > self.cap_bytes {
            let victim = self
                .groups
                .iter()
                .max_by(|a, b| a.1.bytes.cmp(&b.1.bytes).then(b.0.cmp(a.0)))
                .and_then(|(_, g)| g.order.values().next().cloned());
            let Some(victim) = victim else {
                break;
            };
            if let Some(d) = self.remove(&victim) {
                dropped.push(d);
            }
        }
        dropped
    }

    /// Everything waiting for `key`, in arrival order.
    pub fn take(&mut self, key: &K) -> Option<VecDeque<T>> {
        let e = self.unlink(key)?;
        Some(e.items)
    }

    /// Drops the logical connections that waited longer than the expiry.
    pub fn expire(&mut self, now: Instant) -> Vec<Dropped<K, T>> {
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
    pub fn drop_where(&mut self, mut pred: impl FnMut(&K) -> bool) -> Vec<Dropped<K, T>> {
        let keys: Vec<K> = self.entries.keys().filter(|k| pred(k)).cloned().collect();
        keys.iter().filter_map(|k| self.remove(k)).collect()
    }

    /// Takes `key`'s entry out of every index.
    fn unlink(&mut self, key: &K) -> Option<Entry<T>> {
        let e = self.entries.remove(key)?;
        self.order.remove(&e.seq);
        self.bytes -= e.bytes;
        if let Some(g) = self.groups.get_mut(&e.group) {
            g.order.remove(&e.seq);
            g.bytes -= e.bytes;
            if g.order.is_empty() {
                self.groups.remove(&e.group);
            }
        }
        Some(e)
    }

    fn remove(&mut self, key: &K) -> Option<Dropped<K, T>> {
        let e = self.unlink(key)?;
        Some(Dropped {
            key: key.clone(),
            bytes: e.bytes,
            items: e.items,
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

    fn keys(d: &[Dropped<u32, &'static str>]) -> Vec<u32> {
        d.iter().map(|d| d.key).collect()
    }

    #[test]
    fn keeps_arrival_order_per_key() {
        let now = Instant::now();
        let mut c = cache(1000);
        c.push(1, 0, "a", 10, now);
        c.push(2, 0, "x", 10, now);
        c.push(1, 0, "b", 10, now);
        assert_eq!(c.bytes(), 30);
        assert_eq!(c.take(&1).unwrap(), ["a", "b"]);
        assert_eq!(c.bytes(), 10);
        assert!(c.take(&1).is_none());
    }

    #[test]
    fn over_the_cap_the_oldest_connection_goes_whole() {
        let now = Instant::now();
        let mut c = cache(100);
        c.push(1, 0, "a", 40, now);
        c.push(2, 0, "b", 40, now);
        c.push(1, 0, "c", 10, now);
        let dropped = c.push(3, 0, "d", 40, now);
        assert_eq!(
            dropped,
            vec![Dropped {
                key: 1,
                bytes: 50,
                items: VecDeque::from(["a", "c"]),
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
        let dropped = c.push(7, 0, "big", 150, now);
        assert_eq!(keys(&dropped), [7]);
        assert_eq!(dropped[0].bytes, 150);
        assert_eq!(c.bytes(), 0);
        assert!(c.is_empty());
    }

    #[test]
    fn a_flooding_group_evicts_its_own_connections_not_others() {
        let now = Instant::now();
        let mut c = cache(100);
        // Group 2 waits first, with little.
        c.push(10, 2, "victim?", 20, now);
        // Group 3 floods: each push over the cap drops group 3's oldest.
        let mut dropped = Vec::new();
        for k in 0..20 {
            dropped.extend(c.push(30 + k, 3, "flood", 20, now));
        }
        assert!(c.contains(&10), "the small group's connection survives");
        assert!(
            keys(&dropped).iter().all(|k| *k >= 30),
            "{:?}",
            keys(&dropped)
        );
        // Group 3 kept the newest of its connections, within the cap.
        assert_eq!(c.bytes(), 100);
        assert!(c.contains(&49) && !c.contains(&30));
        assert!(c.contains(&46) && !c.contains(&45));
        // When group 2 becomes the largest, its own connections go, oldest
        // first, while it stays the largest: 110 > 80, then 90 > 80.
        let d = c.push(11, 2, "more", 90, now);
        assert_eq!(keys(&d), [10, 11]);
        assert_eq!(c.bytes(), 80);
    }

    #[test]
    fn a_lower_cap_takes_effect_at_once() {
        let now = Instant::now();
        let mut c = cache(1000);
        for k in 0..10 {
            c.push(k, 0, "p", 50, now);
        }
        let d = c.set_limits(200, Duration::from_secs(60));
        assert_eq!(keys(&d), [0, 1, 2, 3, 4, 5]);
        assert_eq!(c.bytes(), 200);
    }

    #[test]
    fn expiry_drops_only_old_connections() {
        let t0 = Instant::now();
        let mut c = cache(1000);
        c.push(1, 0, "a", 10, t0);
        c.push(2, 1, "b", 10, t0 + Duration::from_secs(30));
        assert!(c.expire(t0 + Duration::from_secs(59)).is_empty());
        let d = c.expire(t0 + Duration::from_secs(61));
        assert_eq!(keys(&d), [1]);
        assert_eq!(c.len(), 1);
        // The group index followed: the rest can still be evicted.
        let d = c.set_limits(0, Duration::from_secs(60));
        assert_eq!(keys(&d), [2]);
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn drop_where_is_scoped() {
        let now = Instant::now();
        let mut c = cache(1000);
        for k in 0..6 {
            c.push(k, (k % 3) as u16, "p", 5, now);
        }
        let d = c.drop_where(|k| k % 2 == 0);
        assert_eq!(d.len(), 3);
        assert_eq!(c.len(), 3);
        assert_eq!(c.bytes(), 15);
    }
}
