//! Deterministic test data: a payload generator both ends of a stream can run
//! independently, and a streaming digest that proves the bytes arrived
//! intact and in order. Pure functions; no I/O, no dependencies.

/// FNV-1a's 64-bit offset basis, the digest's starting state.
const DIGEST_SEED: u64 = 0xcbf2_9ce4_8422_2325;
/// An odd 64-bit constant (2^64 / golden ratio): multiplying by it is a
/// bijection that spreads every input bit upward.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// One digest step. A bijection of `h` for every word, so a difference in
/// the state never cancels out later, and a change confined to one word is
/// always detected.
fn mix(h: u64, word: u64) -> u64 {
    let x = (h ^ word).wrapping_mul(GOLDEN);
    x ^ (x >> 29)
}

/// A streaming 64-bit digest in the style of FNV-1a, over little-endian
/// 8-byte words (several GB/s, so it does not bound a benchmark). The value
/// depends only on the byte sequence, never on how it was split into
/// [`update`](Self::update) calls, and is the same on every platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamDigest {
    state: u64,
    /// Bytes of an incomplete word, packed little-endian.
    tail: u64,
    tail_len: u8,
    total: u64,
}

impl Default for StreamDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamDigest {
    /// The digest of zero bytes.
    pub fn new() -> Self {
        StreamDigest {
            state: DIGEST_SEED,
            tail: 0,
            tail_len: 0,
            total: 0,
        }
    }

    /// Append `bytes` to the digested stream.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        if self.tail_len > 0 {
            while self.tail_len < 8 {
                let Some((&b, rest)) = bytes.split_first() else {
                    return;
                };
                self.tail |= u64::from(b) << (8 * self.tail_len);
                self.tail_len += 1;
                bytes = rest;
            }
            self.state = mix(self.state, self.tail);
            self.tail = 0;
            self.tail_len = 0;
        }
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let w: [u8; 8] = w.try_into().expect("chunks_exact(8) yields 8 bytes");
            self.state = mix(self.state, u64::from_le_bytes(w));
        }
        for (i, &b) in words.remainder().iter().enumerate() {
            self.tail |= u64::from(b) << (8 * i);
        }
        // The remainder of chunks_exact(8) is shorter than 8.
        self.tail_len = words.remainder().len() as u8;
    }

    /// The digest of everything so far; the length is folded in, so trailing
    /// zero bytes change it.
    pub fn value(&self) -> u64 {
        mix(mix(self.state, self.tail), self.total)
    }

    /// How many bytes were digested.
    pub fn bytes(&self) -> u64 {
        self.total
    }
}

/// splitmix64's finaliser: turns a counter into a well-spread 64-bit value.
fn splitmix(z: u64) -> u64 {
    let z = z.wrapping_add(GOLDEN);
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fill `out` with packet `index` of the stream seeded by `seed` (xorshift64*
/// seeded from `seed` and `index`). A shorter packet is a prefix of a longer
/// one with the same seed and index.
pub fn fill_pattern(seed: u64, index: u64, out: &mut [u8]) {
    // xorshift must not start at 0; splitmix maps exactly one input there.
    let mut x = splitmix(seed ^ splitmix(index)).max(1);
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let word = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// Deterministic payload: packet `index` of a stream seeded by `seed`, `len`
/// bytes, so sender and receiver agree without sharing data.
pub fn pattern_payload(seed: u64, index: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    fill_pattern(seed, index, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(parts: &[&[u8]]) -> StreamDigest {
        let mut d = StreamDigest::new();
        for p in parts {
            d.update(p);
        }
        d
    }

    #[test]
    fn digest_ignores_how_the_stream_is_split() {
        let data = pattern_payload(1, 2, 1000);
        let whole = digest(&[&data]);
        assert_eq!(whole.bytes(), 1000);
        for a in 0..=20 {
            for b in a..=40 {
                let split = digest(&[&data[..a], &data[a..b], &data[b..]]);
                assert_eq!(split, whole, "split at {a}, {b}");
            }
        }
        let mut one_by_one = StreamDigest::default();
        for b in &data {
            one_by_one.update(std::slice::from_ref(b));
        }
        assert_eq!(one_by_one.value(), whole.value());
    }

    #[test]
    fn digest_values_are_pinned() {
        // Sender and receiver may be different builds: the function must not drift.
        assert_eq!(StreamDigest::new(), StreamDigest::default());
        assert_eq!(StreamDigest::new().value(), 0x99b6_af62_e388_5e8f);
        assert_eq!(digest(&[b"interconnect"]).value(), 0x0264_c309_790c_0cf9);
    }

    #[test]
    fn digest_sees_changes_order_and_length() {
        let data = pattern_payload(9, 0, 64);
        let base = digest(&[&data]).value();
        for i in 0..data.len() {
            for bit in 0..8 {
                let mut bad = data.clone();
                bad[i] ^= 1 << bit;
                assert_ne!(digest(&[&bad]).value(), base, "byte {i} bit {bit}");
            }
        }
        let (a, b) = data.split_at(24);
        assert_ne!(digest(&[b, a]).value(), base);
        assert_ne!(digest(&[&data, &[0]]).value(), base);
        assert_ne!(digest(&[&data[..63]]).value(), base);
    }

    #[test]
    fn pattern_is_deterministic_and_distinct() {
        assert_eq!(pattern_payload(7, 3, 100), pattern_payload(7, 3, 100));
        assert_ne!(pattern_payload(7, 3, 100), pattern_payload(7, 4, 100));
        assert_ne!(pattern_payload(7, 3, 100), pattern_payload(8, 3, 100));
        assert_eq!(
            &pattern_payload(7, 3, 100)[..37],
            &pattern_payload(7, 3, 37)[..]
        );
        assert!(pattern_payload(0, 0, 0).is_empty());
        assert_ne!(pattern_payload(0, 0, 64), vec![0; 64]);
        assert_eq!(
            pattern_payload(1, 0, 8),
            vec![212, 20, 233, 206, 123, 202, 8, 170]
        );
    }
}
