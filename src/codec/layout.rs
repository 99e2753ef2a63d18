//! The row format of the KV cache: one token of one layer, all kv heads, for K or for V.
//!
//! MSE row:  [codes head 0] … [codes head H−1] [pad] [bf16 scale head 0] … [bf16 scale head H−1]
//! PROD row: [MSE codes × H] [sign bits × H] [pad] [bf16 ‖x‖ × H] [bf16 γ × H]
//! Split row (`split` = C > 0, MSE keys, TurboQuant §4.3's fractional widths): per head the codes of
//! the head's C outlier channels at mse_bits + 1, then those of its other d − C channels at mse_bits,
//! [codes head 0] … [codes head H−1] [pad] [bf16 scale of the outliers × H] [bf16 scale of the rest × H]
//! Codes per head are ⌈d·b/8⌉ bytes in the bit-stream layout of `math::packing`; sign bits ⌈d/8⌉
//! bytes (1 = the projection of the residual is ≥ 0). One pad byte, where the codes end on an odd
//! offset, keeps the bf16 scales 2-byte aligned (rows have even length). The bf16 scale is the one
//! `codec::KEY_SCALE_RULE` / `VALUE_SCALE_RULE` give (PROD keys: ‖x‖), so that x̂ = scale · Πᵀ·c[idx].

use crate::math::packing::packed_len;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RowLayout {
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Bits of the MSE codes (bits − 1 for PROD keys; 0 when PROD has no MSE stage).
    pub mse_bits: u32,
    /// Whether the row carries QJL sign bits and a residual scale (PROD keys).
    pub qjl: bool,
    /// Channels per head quantized as a second instance at mse_bits + 1 (0: none; MSE rows only).
    pub split: usize,
}

impl RowLayout {
    pub fn code_bytes(&self) -> usize {
        if self.mse_bits == 0 {
            0
        } else if self.split > 0 {
            self.split_code_bytes() + packed_len(self.head_dim - self.split, self.mse_bits)
        } else {
            packed_len(self.head_dim, self.mse_bits)
        }
    }

    /// Bytes of a split head's outlier codes (the rest's codes follow them).
    pub fn split_code_bytes(&self) -> usize {
        packed_len(self.split, self.mse_bits + 1)
    }

    /// Offset of head h's second scale: of a split row's other channels (PROD rows: γ, `gamma_offset`).
    pub fn second_scale_offset(&self, head: usize) -> usize {
        self.scale_offset(self.n_kv_heads) + 2 * head
    }

    pub fn sign_bytes(&self) -> usize {
        if self.qjl { packed_len(self.head_dim, 1) } else { 0 }
    }

    /// Offset of head h's MSE codes.
    pub fn codes_offset(&self, head: usize) -> usize {
        head * self.code_bytes()
    }

    /// Offset of head h's sign bits (PROD).
    pub fn signs_offset(&self, head: usize) -> usize {
        self.n_kv_heads * self.code_bytes() + head * self.sign_bytes()
    }

    /// Offset of head h's bf16 norm scale.
    pub fn scale_offset(&self, head: usize) -> usize {
        (self.n_kv_heads * (self.code_bytes() + self.sign_bytes())).next_multiple_of(2) + 2 * head
    }

    /// Offset of head h's bf16 residual scale γ (PROD): the second scale slot.
    pub fn gamma_offset(&self, head: usize) -> usize {
        self.second_scale_offset(head)
    }

    pub fn row_bytes(&self) -> usize {
        let scales = if self.qjl || self.split > 0 { 2 } else { 1 };
        self.scale_offset(0) + self.n_kv_heads * 2 * scales
    }

    /// Stored bits per cached element (codes and scales, padding included).
    pub fn bits_per_element(&self) -> f64 {
        self.row_bytes() as f64 * 8.0 / (self.n_kv_heads * self.head_dim) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_design() {
        // d = 128, 4-bit, 8 kv heads: 64 code bytes + 2 scale bytes per head (DESIGN.md §6: ~132 B/token/head K+V).
        let l = RowLayout { n_kv_heads: 8, head_dim: 128, mse_bits: 4, qjl: false, split: 0 };
        assert_eq!(l.row_bytes(), 8 * 66);
        assert_eq!(l.scale_offset(3), 8 * 64 + 6);
        // SmolLM2: d = 64, 3 kv heads, 4-bit: 102 bytes = 4.25 bits per element.
        let s = RowLayout { n_kv_heads: 3, head_dim: 64, mse_bits: 4, qjl: false, split: 0 };
        assert_eq!(s.row_bytes(), 102);
        assert!((s.bits_per_element() - 4.25).abs() < 1e-12);
        // PROD keys at 4 bits: 3-bit codes (48 B) + 16 sign bytes + 2 scales.
        let p = RowLayout { n_kv_heads: 2, head_dim: 128, mse_bits: 3, qjl: true, split: 0 };
        assert_eq!(p.row_bytes(), 2 * (48 + 16 + 4));
        assert_eq!(p.gamma_offset(1), 2 * 64 + 4 + 2);
        // Odd totals are padded to keep scales aligned.
        let odd = RowLayout { n_kv_heads: 1, head_dim: 24, mse_bits: 3, qjl: false, split: 0 };
        assert_eq!(odd.code_bytes(), 9);
        assert_eq!(odd.scale_offset(0), 10);
        assert_eq!(odd.row_bytes(), 12);
        // A split row: 32 channels at 4 bits (16 B) + 32 at 3 bits (12 B) per head, two scales per head.
        let sp = RowLayout { n_kv_heads: 3, head_dim: 64, mse_bits: 3, qjl: false, split: 32 };
        assert_eq!(sp.code_bytes(), 28);
        assert_eq!(sp.scale_offset(0), 84);
        assert_eq!(sp.second_scale_offset(1), 84 + 6 + 2);
        assert_eq!(sp.row_bytes(), 84 + 12);
        assert!((sp.bits_per_element() - 4.0).abs() < 1e-12);
    }
}
