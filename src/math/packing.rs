//! Bit packing of b-bit codes (1 ≤ b ≤ 8) — the code part of every stored row.
//!
//! Layout: code i occupies bits [i·b, (i+1)·b) of a little-endian bit stream, least significant bit
//! first; byte k holds stream bits [8k, 8k+8). At b = 4 this is byte k = code[2k] | code[2k+1] << 4;
//! at b = 2, byte k = code[4k] | code[4k+1] << 2 | …; at b = 1, bit i of byte k is code[8k + i].
//! The final byte is zero-padded. `packed_len(n, b)` = ⌈n·b/8⌉.

/// Bytes needed for `n` codes of `bits` bits.
pub const fn packed_len(n: usize, bits: u32) -> usize {
    (n * bits as usize).div_ceil(8)
}

/// Pack `codes` (each < 2^bits) into `out` (exactly `packed_len(codes.len(), bits)` bytes).
pub fn pack(codes: &[u8], bits: u32, out: &mut [u8]) {
    debug_assert!((1..=8).contains(&bits));
    debug_assert_eq!(out.len(), packed_len(codes.len(), bits));
    match bits {
        8 => out.copy_from_slice(codes),
        4 => {
            let mut pairs = codes.chunks_exact(2);
            for (o, p) in out.iter_mut().zip(&mut pairs) {
                *o = p[0] | (p[1] << 4);
            }
            if let [last] = pairs.remainder() {
                out[codes.len() / 2] = *last;
            }
        }
        2 => {
            let mut quads = codes.chunks_exact(4);
            for (o, q) in out.iter_mut().zip(&mut quads) {
                *o = q[0] | (q[1] << 2) | (q[2] << 4) | (q[3] << 6);
            }
            pack_generic_tail(quads.remainder(), bits, &mut out[codes.len() / 4..]);
        }
        _ => pack_generic(codes, bits, out),
    }
}

fn pack_generic_tail(codes: &[u8], bits: u32, out: &mut [u8]) {
    if !codes.is_empty() {
        pack_generic(codes, bits, out);
    }
}

fn pack_generic(codes: &[u8], bits: u32, out: &mut [u8]) {
    out.iter_mut().for_each(|b| *b = 0);
    let mut acc: u32 = 0;
    let mut filled = 0u32;
    let mut k = 0;
    for &c in codes {
        acc |= (c as u32) << filled;
        filled += bits;
        while filled >= 8 {
            out[k] = acc as u8;
            k += 1;
            acc >>= 8;
            filled -= 8;
        }
    }
    if filled > 0 {
        out[k] = acc as u8;
    }
}

/// Unpack `out.len()` codes of `bits` bits from `packed`.
pub fn unpack(packed: &[u8], bits: u32, out: &mut [u8]) {
    debug_assert!((1..=8).contains(&bits));
    debug_assert!(packed.len() >= packed_len(out.len(), bits));
    match bits {
        8 => out.copy_from_slice(&packed[..out.len()]),
        4 => {
            let n = out.len();
            let mut pairs = out.chunks_exact_mut(2);
            for (p, &b) in (&mut pairs).zip(packed) {
                p[0] = b & 0x0f;
                p[1] = b >> 4;
            }
            if let [last] = pairs.into_remainder() {
                *last = packed[n / 2] & 0x0f;
            }
        }
        2 if out.len() % 4 == 0 => {
            for (o, &b) in out.chunks_exact_mut(4).zip(packed) {
                o[0] = b & 3;
                o[1] = (b >> 2) & 3;
                o[2] = (b >> 4) & 3;
                o[3] = b >> 6;
            }
        }
        3 if out.len() % 8 == 0 => unpack_words::<3>(packed, out),
        5 if out.len() % 8 == 0 => unpack_words::<5>(packed, out),
        6 if out.len() % 8 == 0 => unpack_words::<6>(packed, out),
        7 if out.len() % 8 == 0 => unpack_words::<7>(packed, out),
        _ => {
            let mask = ((1u32 << bits) - 1) as u32;
            let mut acc: u32 = 0;
            let mut have = 0u32;
            let mut k = 0;
            for o in out.iter_mut() {
                while have < bits {
                    acc |= (packed[k] as u32) << have;
                    k += 1;
                    have += 8;
                }
                *o = (acc & mask) as u8;
                acc >>= bits;
                have -= bits;
            }
        }
    }
}

/// `unpack` of a multiple of 8 codes of B bits: 8 codes per B bytes, read as one little-endian word
/// (8 bytes at once where the input has them) and split by constant shifts.
#[inline]
fn unpack_words<const B: usize>(packed: &[u8], out: &mut [u8]) {
    let mask = (1u64 << B) - 1;
    let groups = out.len() / 8;
    for (g, o) in out.chunks_exact_mut(8).enumerate() {
        let at = g * B;
        let w = if at + 8 <= packed.len() {
            u64::from_le_bytes(packed[at..at + 8].try_into().unwrap())
        } else {
            let mut word = [0u8; 8];
            word[..B].copy_from_slice(&packed[at..at + B]);
            u64::from_le_bytes(word)
        };
        for (i, c) in o.iter_mut().enumerate() {
            *c = ((w >> (B * i)) & mask) as u8;
        }
    }
    debug_assert!(groups * B <= packed.len());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reference: read bit (i·b + j) of the stream one bit at a time.
    fn reference_code(packed: &[u8], bits: u32, i: usize) -> u8 {
        let mut v = 0u8;
        for j in 0..bits as usize {
            let bit = i * bits as usize + j;
            v |= ((packed[bit / 8] >> (bit % 8)) & 1) << j;
        }
        v
    }

    proptest! {
        #[test]
        fn round_trip_every_width(bits in 1u32..=8, raw in proptest::collection::vec(any::<u8>(), 0..301)) {
            let codes: Vec<u8> = raw.iter().map(|&c| if bits == 8 { c } else { c & ((1u8 << bits) - 1) }).collect();
            let mut packed = vec![0xAAu8; packed_len(codes.len(), bits)];
            pack(&codes, bits, &mut packed);
            for (i, &c) in codes.iter().enumerate() {
                prop_assert_eq!(reference_code(&packed, bits, i), c, "bits {} index {}", bits, i);
            }
            // Padding bits of the last byte are zero.
            let used = codes.len() * bits as usize;
            if used % 8 != 0 {
                prop_assert_eq!(packed[used / 8] >> (used % 8), 0);
            }
            let mut back = vec![0u8; codes.len()];
            unpack(&packed, bits, &mut back);
            prop_assert_eq!(back, codes);
        }
    }

    #[test]
    fn documented_nibble_order() {
        let mut out = [0u8; 2];
        pack(&[0x1, 0x2, 0x3], 4, &mut out);
        assert_eq!(out, [0x21, 0x03]);
        let mut out2 = [0u8; 1];
        pack(&[1, 0, 3], 2, &mut out2);
        assert_eq!(out2, [0b0011_0001]);
    }
}
