//! Fractional key widths by outlier channels (TurboQuant, arXiv 2504.19874 §4.3): each key head's C
//! channels of largest energy are quantized by one TurboQuant instance at bits_k + 1 and its other
//! d − C channels by a second, independent one at bits_k — each with its own rotation, codebook and
//! scale — so that a head costs (C·(b + 1) + (d − C)·b)/d bits per element plus two scales.
//!
//! Which channels are the outliers is decided per (layer, kv head) from the rows of the layer's first
//! append, as the centering means are (`KvCodec::freeze_key_order`), and frozen: the energy of a
//! channel is Σ (k_i − μ_i)² over `mean_rows` (μ: the centering mean, 0 without centering); the C
//! largest win, a tie going to the lower channel index. The order stored per head lists the outlier
//! channels ascending, then the others ascending.
//!
//! Attention needs no other change: a query is gathered into that order and each part rotated by its
//! instance's rotation; an unpacked row is the two parts' centroids, each times its scale, in the
//! same order, so ⟨rotated query, row⟩ is the score of the reconstructed key.

use crate::math::quantizer::{MseQuantizer, Scratch};
use crate::math::rotation::RotationKind;

/// Rotation stream offset of the second (non-outlier) instance: layer L's instances use streams 2L
/// (outliers: the stream an unsplit key of that layer would use) and OUTLIER_STREAM + 2L.
pub const OUTLIER_STREAM: u64 = 1 << 32;

/// The two key instances of one layer.
#[derive(Clone, Debug)]
pub struct OutlierKeys {
    /// Outlier channels per head, C.
    pub channels: usize,
    /// The C outlier channels at bits_k + 1.
    pub hi: MseQuantizer,
    /// The other d − C channels at bits_k.
    pub lo: MseQuantizer,
}

/// The rotation of a part of `dim` channels: Hadamard where the head's rotation is Hadamard and the
/// part's width is a power of two, else dense.
pub fn part_rotation(head: RotationKind, dim: usize) -> RotationKind {
    if head == RotationKind::Hadamard && dim.is_power_of_two() { RotationKind::Hadamard } else { RotationKind::Dense }
}

impl OutlierKeys {
    /// The instances of `layer` for heads of `head_dim` with `channels` outliers at `bits + 1`.
    pub fn new(head_dim: usize, channels: usize, bits: u32, rotation: RotationKind, seed: u64, layer: usize) -> Result<Self, String> {
        let rest = head_dim - channels;
        let hi = MseQuantizer::new(channels, bits + 1, part_rotation(rotation, channels), seed, 2 * layer as u64)?;
        let lo = MseQuantizer::new(rest, bits, part_rotation(rotation, rest), seed, OUTLIER_STREAM + 2 * layer as u64)?;
        Ok(Self { channels, hi, lo })
    }

    /// Both instances storing scales by `rule` (the key rows' `KEY_SCALE_RULE`).
    pub fn with_scale_rule(mut self, rule: crate::math::scale::ScaleRule) -> Self {
        self.hi = self.hi.with_scale_rule(rule);
        self.lo = self.lo.with_scale_rule(rule);
        self
    }

    /// The stored order of one head from its channels' energies: the `channels` largest ascending,
    /// then the rest ascending.
    pub fn order_from_energy(energy: &[f64], channels: usize) -> Vec<u16> {
        let mut by_energy: Vec<usize> = (0..energy.len()).collect();
        // Largest first; ties to the lower index (the sort is stable).
        by_energy.sort_by(|&a, &b| energy[b].total_cmp(&energy[a]));
        let mut hi: Vec<usize> = by_energy[..channels].to_vec();
        hi.sort_unstable();
        let mut is_hi = vec![false; energy.len()];
        hi.iter().for_each(|&c| is_hi[c] = true);
        hi.into_iter().chain((0..energy.len()).filter(|&c| !is_hi[c])).map(|c| c as u16).collect()
    }

    /// out[i] = x[order[i]].
    #[inline(always)]
    pub fn gather(order: &[u16], x: &[f32], out: &mut [f32]) {
        for (o, &c) in out.iter_mut().zip(order) {
            *o = x[c as usize];
        }
    }

    /// The query in the rows' basis: gathered into `order` (into `tmp`), each part rotated.
    pub fn rotate_query(&self, order: &[u16], q: &[f32], tmp: &mut [f32], out: &mut [f32]) {
        let c = self.channels;
        Self::gather(order, q, tmp);
        self.hi.rotation().rotate(&tmp[..c], &mut out[..c]);
        self.lo.rotation().rotate(&tmp[c..], &mut out[c..]);
    }

    /// Encode one head vector (centred where the layer centres): the outliers' codes then the rest's
    /// into `codes` (`RowLayout::code_bytes` bytes), their bf16 scales into `scales`.
    pub fn encode(&self, order: &[u16], x: &[f32], tmp: &mut [f32], codes: &mut [u8], scales: &mut [u16; 2], s: &mut PartScratch) {
        let c = self.channels;
        Self::gather(order, x, tmp);
        let (hi_codes, lo_codes) = codes.split_at_mut(self.hi.code_bytes());
        scales[0] = self.hi.encode(&tmp[..c], hi_codes, &mut s.hi);
        scales[1] = self.lo.encode(&tmp[c..], &mut lo_codes[..self.lo.code_bytes()], &mut s.lo);
    }

    /// Decode one head vector in the original channel order (for tools and tests).
    pub fn decode(&self, order: &[u16], codes: &[u8], scales: [u16; 2], out: &mut [f32], s: &mut PartScratch) {
        let c = self.channels;
        let d = order.len();
        let mut parts = vec![0.0f32; d];
        let (hi_codes, lo_codes) = codes.split_at(self.hi.code_bytes());
        self.hi.decode(hi_codes, scales[0], &mut parts[..c], &mut s.hi);
        self.lo.decode(&lo_codes[..self.lo.code_bytes()], scales[1], &mut parts[c..], &mut s.lo);
        for (&ch, &v) in order.iter().zip(&parts) {
            out[ch as usize] = v;
        }
    }
}

/// Working memory of the two instances.
#[derive(Clone, Debug)]
pub struct PartScratch {
    pub hi: Scratch,
    pub lo: Scratch,
}

impl PartScratch {
    pub fn new(head_dim: usize, channels: usize) -> Self {
        Self { hi: Scratch::new(channels.max(1)), lo: Scratch::new((head_dim - channels).max(1)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_takes_the_largest_energies_ties_to_the_lower_index() {
        let e = [1.0, 5.0, 3.0, 5.0, 0.0, 3.0];
        assert_eq!(OutlierKeys::order_from_energy(&e, 3), vec![1, 2, 3, 0, 4, 5]);
        assert_eq!(OutlierKeys::order_from_energy(&e, 1), vec![1, 0, 2, 3, 4, 5]);
    }

    #[test]
    fn encode_decode_roundtrip_is_close_and_the_score_identity_holds() {
        let (d, c, bits) = (64, 16, 3);
        let ok = OutlierKeys::new(d, c, bits, RotationKind::Hadamard, 7, 1).unwrap();
        let mut rng = crate::math::rng::stream(3, crate::math::rng::Stream::HadamardSigns, 99);
        let x: Vec<f32> = crate::math::rng::gaussians(&mut rng, d).iter().map(|&v| v as f32).collect();
        let q: Vec<f32> = crate::math::rng::gaussians(&mut rng, d).iter().map(|&v| v as f32).collect();
        let energy: Vec<f64> = x.iter().map(|&v| (v as f64).powi(2)).collect();
        let order = OutlierKeys::order_from_energy(&energy, c);
        let mut s = PartScratch::new(d, c);
        let (mut tmp, mut codes, mut scales) = (vec![0.0f32; d], vec![0u8; 64], [0u16; 2]);
        ok.encode(&order, &x, &mut tmp, &mut codes, &mut scales, &mut s);
        let mut xh = vec![0.0f32; d];
        ok.decode(&order, &codes, scales, &mut xh, &mut s);
        let err: f64 = x.iter().zip(&xh).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>()
            / x.iter().map(|&a| (a as f64).powi(2)).sum::<f64>();
        // 3-bit Lloyd–Max NMSE is ~0.03, 4-bit ~0.009: one vector's error stays well under 0.1.
        assert!(err < 0.1, "relative squared error {err}");
        // ⟨q, x̂⟩ from the rotated query and the scaled centroids in stored order equals the decoded dot.
        let mut qr = vec![0.0f32; d];
        ok.rotate_query(&order, &q, &mut tmp, &mut qr);
        let mut idx = vec![0u8; d];
        let (hc, lc) = codes.split_at(ok.hi.code_bytes());
        crate::math::packing::unpack(hc, bits + 1, &mut idx[..c]);
        crate::math::packing::unpack(&lc[..ok.lo.code_bytes()], bits, &mut idx[c..]);
        let (sh, sl) = (crate::math::scale::decode(scales[0]) as f64, crate::math::scale::decode(scales[1]) as f64);
        let rows: f64 = (0..d)
            .map(|i| {
                let (table, sc) = if i < c { (&ok.hi.codebook().centroids_f32, sh) } else { (&ok.lo.codebook().centroids_f32, sl) };
                qr[i] as f64 * table[idx[i] as usize] as f64 * sc
            })
            .sum();
        let direct: f64 = q.iter().zip(&xh).map(|(a, b)| *a as f64 * *b as f64).sum();
        assert!((rows - direct).abs() <= 1e-4 * (1.0 + direct.abs()), "{rows} vs {direct}");
    }
}
