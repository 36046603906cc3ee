//! The mutation engine: byte-level edits of a valid input (bit flips,
//! interesting values, truncations, deletions, insertions, duplications,
//! splices with another input, dictionary tokens), in the style of AFL and
//! libFuzzer, without their coverage feedback. Structure-aware mutations
//! (a chosen packet's length set to a boundary) live with the generators.

use crate::rng::Rng;

/// Values that sit on the boundaries the decoders check, as u16.
pub const INTERESTING_16: &[u16] = &[
    0, 1, 2, 3, 4, 5, 7, 8, 31, 32, 33, 35, 36, 37, 0x7F, 0x80, 0xFF, 0x100, 511, 512, 513, 4095,
    4096, 8191, 8192, 8193, 8223, 8224, 8225, 8227, 8228, 8229, 0x7FFF, 0x8000, 65470, 65471,
    65472, 65499, 65503, 65507, 65534, 65535, 0xBADD, 0xCAFE,
];

/// The same for u32 fields (ic-tcp lengths, the magic).
pub const INTERESTING_32: &[u32] = &[
    0,
    1,
    2,
    3,
    4,
    5,
    511,
    512,
    513,
    8191,
    8192,
    8193,
    65471,
    65472,
    65535,
    65536,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFE,
    0xFFFF_FFFF,
    0xBADD_CAFE,
    0xCAFE_BADD,
];

/// Mutates `data` once. `extra16` / `extra32` are boundaries specific to the
/// input (header + max payload, ...); `dict` holds tokens worth inserting;
/// `other` is a second input to splice with.
pub fn mutate_once(
    rng: &mut Rng,
    data: &mut Vec<u8>,
    extra16: &[u16],
    extra32: &[u32],
    dict: &[&[u8]],
    other: &[u8],
) {
    let len = data.len();
    match rng.below(15) {
        // Flip one bit.
        0 | 1 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        // A random byte.
        2 if len > 0 => {
            let i = rng.below(len);
            data[i] = rng.byte();
        }
        // An interesting byte.
        3 if len > 0 => {
            let i = rng.below(len);
            data[i] = *rng.pick(&[0u8, 1, 0x7F, 0x80, 0xFF, b'S', 32, 36, 7, 8]);
        }
        // An interesting u16, native order (every field is host order).
        4 | 5 if len >= 2 => {
            let i = rng.below(len - 1);
            let v = if !extra16.is_empty() && rng.chance(50) {
                *rng.pick(extra16)
            } else {
                *rng.pick(INTERESTING_16)
            };
            data[i..i + 2].copy_from_slice(&v.to_ne_bytes());
        }
        // An interesting u32.
        6 if len >= 4 => {
            let i = rng.below(len - 3);
            let v = if !extra32.is_empty() && rng.chance(50) {
                *rng.pick(extra32)
            } else {
                *rng.pick(INTERESTING_32)
            };
            data[i..i + 4].copy_from_slice(&v.to_ne_bytes());
        }
        // Add or subtract a little from a u16 (a length off by a few).
        7 if len >= 2 => {
            let i = rng.below(len - 1);
            let v = u16::from_ne_bytes([data[i], data[i + 1]]);
            let delta = rng.range(1, 40) as u16;
            let v = if rng.chance(50) {
                v.wrapping_add(delta)
            } else {
                v.wrapping_sub(delta)
            };
            data[i..i + 2].copy_from_slice(&v.to_ne_bytes());
        }
        // Truncate.
        8 if len > 0 => {
            data.truncate(rng.below(len));
        }
        // Delete a range.
        9 if len > 0 => {
            let a = rng.below(len);
            let b = a + rng.size(len - a);
            data.drain(a..b.min(len));
        }
        // Insert random bytes.
        10 => {
            let at = rng.below(len + 1);
            let mut ins = vec![0u8; rng.size(512).max(1)];
            rng.fill(&mut ins);
            data.splice(at..at, ins);
        }
        // Duplicate a range somewhere else.
        11 if len > 0 => {
            let a = rng.below(len);
            let b = (a + rng.size(len - a).max(1)).min(len);
            let piece = data[a..b].to_vec();
            let at = rng.below(len + 1);
            data.splice(at..at, piece);
        }
        // Splice: our prefix, the other input's suffix.
        12 if !other.is_empty() => {
            let cut = rng.below(len + 1);
            let from = rng.below(other.len());
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        // A dictionary token, inserted or written over.
        13 if !dict.is_empty() => {
            let tok = *rng.pick(dict);
            let at = rng.below(len + 1);
            if rng.chance(50) || at + tok.len() > len {
                data.splice(at..at, tok.iter().copied());
            } else {
                data[at..at + tok.len()].copy_from_slice(tok);
            }
        }
        // Swap two bytes.
        14 if len >= 2 => {
            let (a, b) = (rng.below(len), rng.below(len));
            data.swap(a, b);
        }
        // The chosen edit does not fit this input: append a random byte.
        _ => data.push(rng.byte()),
    }
}

/// Applies 1..=`max_rounds` mutations.
pub fn mutate(
    rng: &mut Rng,
    data: &mut Vec<u8>,
    max_rounds: usize,
    extra16: &[u16],
    extra32: &[u32],
    dict: &[&[u8]],
    other: &[u8],
) {
    for _ in 0..rng.range(1, max_rounds) {
        mutate_once(rng, data, extra16, extra32, dict, other);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_edit_is_safe_on_empty_and_short_inputs() {
        let mut rng = Rng::new(5);
        for start in 0..6 {
            for _ in 0..2000 {
                let mut d = vec![0xAA; start];
                mutate(&mut rng, &mut d, 8, &[36], &[5], &[b"ab"], b"xyz");
            }
        }
    }
}
