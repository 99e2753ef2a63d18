//! Random orthogonal rotations Π applied before scalar quantization.
//!
//! * `Dense`: a Haar-random orthogonal matrix — the QR factor of a seeded i.i.d. N(0,1) matrix with the
//!   signs fixed so that diag(R) > 0 (Gram–Schmidt yields exactly that factor). Any dimension.
//! * `Hadamard`: Π = D₂·H·D₁/√d with random ±1 diagonals D₁, D₂ and the Walsh–Hadamard matrix H,
//!   applied in O(d log d). Power-of-two dimensions only.
//!
//! The f32 arithmetic order is part of the row format, because every backend must produce the same
//! codes from the same input: the dense product y = Π·x accumulates y += Π[:, j]·x_j for j = 0, 1, …
//! (one rounded multiply, then one rounded add; never fused), and the Hadamard transform is the
//! in-place butterfly (a, b) → (a + b, a − b) over strides 1, 2, 4, … followed by the multiply by
//! D₂/√d (pre-rounded to f32).

use super::rng::{self, Stream};

/// Which rotation to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RotationKind {
    Dense,
    Hadamard,
}

impl RotationKind {
    /// Hadamard where the dimension allows it, Dense otherwise.
    pub fn auto(dim: usize) -> Self {
        if dim.is_power_of_two() { RotationKind::Hadamard } else { RotationKind::Dense }
    }

    pub fn name(self) -> &'static str {
        match self {
            RotationKind::Dense => "DENSE",
            RotationKind::Hadamard => "HADAMARD",
        }
    }
}

/// A seeded orthogonal rotation of R^dim.
#[derive(Clone, Debug)]
pub struct Rotation {
    kind: RotationKind,
    dim: usize,
    /// Dense: Π row-major (row i = Π[i, :]).
    matrix: Vec<f32>,
    /// Dense: Πᵀ row-major (row j = Π[:, j]).
    matrix_t: Vec<f32>,
    /// Hadamard: D₁.
    signs_in: Vec<f32>,
    /// Hadamard: D₂/√d.
    signs_out_scaled: Vec<f32>,
}

impl Rotation {
    /// Build the rotation for `dim` from `seed`. `index` selects an independent rotation for the same
    /// seed (e.g. one per layer and per K/V).
    pub fn new(kind: RotationKind, dim: usize, seed: u64, index: u64) -> Result<Self, String> {
        match kind {
            RotationKind::Hadamard if !dim.is_power_of_two() => Err(format!(
                "head_dim {dim} is not supported by HADAMARD rotation: need a power of two; use DENSE"
            )),
            RotationKind::Hadamard => {
                let mut stream = rng::stream(seed, Stream::HadamardSigns, index);
                let signs_in = rng::signs(&mut stream, dim);
                let inv_sqrt = (1.0 / (dim as f64).sqrt()) as f32;
                let signs_out_scaled = rng::signs(&mut stream, dim).iter().map(|s| s * inv_sqrt).collect();
                Ok(Self { kind, dim, matrix: Vec::new(), matrix_t: Vec::new(), signs_in, signs_out_scaled })
            }
            RotationKind::Dense => {
                let q = haar_orthogonal(dim, seed, index);
                let matrix: Vec<f32> = q.iter().map(|&v| v as f32).collect();
                let mut matrix_t = vec![0.0f32; dim * dim];
                for i in 0..dim {
                    for j in 0..dim {
                        matrix_t[j * dim + i] = matrix[i * dim + j];
                    }
                }
                Ok(Self { kind, dim, matrix, matrix_t, signs_in: Vec::new(), signs_out_scaled: Vec::new() })
            }
        }
    }

    pub fn kind(&self) -> RotationKind {
        self.kind
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// out = Π·x.
    pub fn rotate(&self, x: &[f32], out: &mut [f32]) {
        debug_assert!(x.len() == self.dim && out.len() == self.dim);
        match self.kind {
            RotationKind::Dense => axpy_product(&self.matrix_t, x, out),
            RotationKind::Hadamard => {
                for ((o, &v), &s) in out.iter_mut().zip(x).zip(&self.signs_in) {
                    *o = v * s;
                }
                fwht(out);
                for (o, &s) in out.iter_mut().zip(&self.signs_out_scaled) {
                    *o *= s;
                }
            }
        }
    }

    /// out = Πᵀ·y.
    pub fn unrotate(&self, y: &[f32], out: &mut [f32]) {
        debug_assert!(y.len() == self.dim && out.len() == self.dim);
        match self.kind {
            RotationKind::Dense => axpy_product(&self.matrix, y, out),
            RotationKind::Hadamard => {
                for ((o, &v), &s) in out.iter_mut().zip(y).zip(&self.signs_out_scaled) {
                    *o = v * s;
                }
                fwht(out);
                for (o, &s) in out.iter_mut().zip(&self.signs_in) {
                    *o *= s;
                }
            }
        }
    }

    /// Π as a dense row-major f64 matrix (tests, GPU upload of the dense form).
    pub fn to_dense(&self) -> Vec<f64> {
        let d = self.dim;
        let mut m = vec![0.0f64; d * d];
        let mut e = vec![0.0f32; d];
        let mut col = vec![0.0f32; d];
        for j in 0..d {
            e.iter_mut().for_each(|v| *v = 0.0);
            e[j] = 1.0;
            self.rotate(&e, &mut col);
            for i in 0..d {
                m[i * d + j] = col[i] as f64;
            }
        }
        m
    }

    /// Dense: Π row-major. Empty for Hadamard.
    pub fn matrix(&self) -> &[f32] {
        &self.matrix
    }

    /// Hadamard: (D₁, D₂/√d). Empty for Dense.
    pub fn hadamard_signs(&self) -> (&[f32], &[f32]) {
        (&self.signs_in, &self.signs_out_scaled)
    }
}

/// out = Σ_j columns_j · x_j where `columns` is row-major with row j = column j of the matrix.
/// Each out[i] is accumulated from 0 in order j = 0, 1, … (multiply, then add; never fused) — the
/// row-format contract. Rows are processed in blocks of 64 held in registers across all j.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma"))]
pub(crate) fn axpy_product(columns: &[f32], x: &[f32], out: &mut [f32]) {
    const BLOCK: usize = 64;
    let d = x.len();
    assert!(columns.len() == d * d && out.len() == d);
    let mut start = 0;
    while start + BLOCK <= d {
        let mut acc = [0.0f32; BLOCK];
        for (j, &xj) in x.iter().enumerate() {
            let col: &[f32; BLOCK] = columns[j * d + start..j * d + start + BLOCK].try_into().unwrap();
            for (a, &c) in acc.iter_mut().zip(col) {
                *a += c * xj;
            }
        }
        out[start..start + BLOCK].copy_from_slice(&acc);
        start += BLOCK;
    }
    if start < d {
        let tail = &mut out[start..];
        tail.iter_mut().for_each(|o| *o = 0.0);
        for (j, &xj) in x.iter().enumerate() {
            for (o, &c) in tail.iter_mut().zip(&columns[j * d + start..(j + 1) * d]) {
                *o += c * xj;
            }
        }
    }
}

/// In-place unnormalised fast Walsh–Hadamard transform; `v.len()` is a power of two.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma"))]
pub fn fwht(v: &mut [f32]) {
    let n = v.len();
    let mut h = 1;
    while h < n {
        for block in v.chunks_exact_mut(2 * h) {
            let (lo, hi) = block.split_at_mut(h);
            for (a, b) in lo.iter_mut().zip(hi.iter_mut()) {
                let (x, y) = (*a, *b);
                *a = x + y;
                *b = x - y;
            }
        }
        h *= 2;
    }
}

/// Haar-random orthogonal matrix (row-major, f64): Gram–Schmidt (applied twice for stability) on the
/// columns of a seeded Gaussian matrix, which is its QR factor with diag(R) > 0.
fn haar_orthogonal(dim: usize, seed: u64, index: u64) -> Vec<f64> {
    let mut stream = rng::stream(seed, Stream::DenseRotation, index);
    // Column-major working copy: cols[j] is column j of G.
    let g = rng::gaussians(&mut stream, dim * dim);
    let mut cols: Vec<Vec<f64>> = (0..dim).map(|j| g[j * dim..(j + 1) * dim].to_vec()).collect();
    for j in 0..dim {
        for _pass in 0..2 {
            for k in 0..j {
                let (done, rest) = cols.split_at_mut(j);
                let qk = &done[k];
                let cj = &mut rest[0];
                let dot: f64 = qk.iter().zip(cj.iter()).map(|(a, b)| a * b).sum();
                for (c, q) in cj.iter_mut().zip(qk) {
                    *c -= dot * q;
                }
            }
        }
        let norm = cols[j].iter().map(|v| v * v).sum::<f64>().sqrt();
        cols[j].iter_mut().for_each(|v| *v /= norm);
    }
    let mut m = vec![0.0f64; dim * dim];
    for (j, col) in cols.iter().enumerate() {
        for (i, &v) in col.iter().enumerate() {
            m[i * dim + j] = v;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orthogonality_error(m: &[f64], d: usize) -> f64 {
        let mut worst = 0.0f64;
        for i in 0..d {
            for j in 0..d {
                let dot: f64 = (0..d).map(|k| m[i * d + k] * m[j * d + k]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                worst = worst.max((dot - want).abs());
            }
        }
        worst
    }

    #[test]
    fn rotations_are_orthogonal() {
        for (kind, d) in [(RotationKind::Dense, 96), (RotationKind::Dense, 128), (RotationKind::Hadamard, 128), (RotationKind::Hadamard, 16)] {
            let r = Rotation::new(kind, d, 42, 3).unwrap();
            let err = orthogonality_error(&r.to_dense(), d);
            // f32 storage of the matrix: entries carry ~6e-8 relative rounding.
            assert!(err < 2e-6, "{kind:?} d={d}: |ΠΠᵀ − I|max = {err}");
        }
    }

    #[test]
    fn unrotate_inverts_rotate() {
        for kind in [RotationKind::Dense, RotationKind::Hadamard] {
            let d = 64;
            let r = Rotation::new(kind, d, 1, 0).unwrap();
            let x: Vec<f32> = (0..d).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3).collect();
            let (mut y, mut back) = (vec![0.0; d], vec![0.0; d]);
            r.rotate(&x, &mut y);
            r.unrotate(&y, &mut back);
            for (a, b) in x.iter().zip(&back) {
                assert!((a - b).abs() < 1e-5, "{kind:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn hadamard_matches_its_definition() {
        // Π = D₂ H D₁ / √d with H[i][j] = (−1)^popcount(i & j).
        let d = 32;
        let r = Rotation::new(RotationKind::Hadamard, d, 9, 0).unwrap();
        let (s1, s2) = r.hadamard_signs();
        let m = r.to_dense();
        for i in 0..d {
            for j in 0..d {
                let h = if (i & j).count_ones() % 2 == 0 { 1.0 } else { -1.0 };
                let want = s2[i] as f64 * h * s1[j] as f64;
                assert!((m[i * d + j] - want).abs() < 1e-7);
            }
        }
    }

    #[test]
    fn dense_columns_look_haar() {
        // Each entry of a Haar matrix has mean 0 and variance 1/d; first row's sum of squares is 1.
        let d = 128;
        let r = Rotation::new(RotationKind::Dense, d, 5, 0).unwrap();
        let m = r.matrix();
        let mean: f64 = m.iter().map(|&v| v as f64).sum::<f64>() / (d * d) as f64;
        let var: f64 = m.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / (d * d) as f64;
        // The entry mean is ⟨1, Π·1⟩/d², and Π·1 is uniform on the sphere of radius √d, so the mean
        // has standard deviation d^(-3/2) ≈ 6.9e-4; 5 sigma.
        assert!(mean.abs() < 5.0 * (d as f64).powf(-1.5), "mean {mean}");
        assert!((var * d as f64 - 1.0).abs() < 1e-6);
        // The variance follows from orthogonality alone; randomness shows in the fourth moment: a
        // coordinate of a uniform unit vector has E[u⁴] = 3/(d(d+2)) (a signed permutation gives 1/d,
        // a scaled Hadamard matrix 1/d², 43× and 0.34× that). Per entry sd(u⁴) ≈ 5.7e-4 at d = 128, so
        // the mean over d² entries is within ~2.5 % (one sigma) of it; 5 sigma: 12.5 %.
        let m4: f64 = m.iter().map(|&v| (v as f64).powi(4)).sum::<f64>() / (d * d) as f64;
        let want = 3.0 / (d as f64 * (d as f64 + 2.0));
        assert!((m4 / want - 1.0).abs() < 0.125, "fourth moment {m4} vs {want} for Haar");
    }

    #[test]
    fn hadamard_rejects_non_power_of_two() {
        let err = Rotation::new(RotationKind::Hadamard, 100, 0, 0).unwrap_err();
        assert!(err.contains("head_dim 100") && err.contains("power of two"), "{err}");
    }
}
