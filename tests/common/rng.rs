//! Seeded data for the tests, benches and examples — the one generator they share (each includes this
//! file by path). SplitMix64 for uniforms, Box–Muller for normals; independent of the library's RNG, so a
//! test's data never moves with the code under test.
#![allow(dead_code)]

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64 with Box–Muller normals.
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ GOLDEN)
    }
    /// A generator whose SplitMix64 state is `state` as given.
    pub fn from_state(state: u64) -> Self {
        Rng(state)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1), never 0 or 1.
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// A standard normal: the cosine output of Box–Muller over two uniforms.
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    /// `n` standard normals, one per pair of uniforms.
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal() as f32).collect()
    }
    /// `n` standard normals using both Box–Muller outputs (cosine, then sine) of each pair of uniforms.
    pub fn normal_pairs(&mut self, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let (u1, u2) = (self.uniform(), self.uniform());
            let (r, t) = ((-2.0 * u1.ln()).sqrt(), 2.0 * std::f64::consts::PI * u2);
            out.push((r * t.cos()) as f32);
            out.push((r * t.sin()) as f32);
        }
        out.truncate(n);
        out
    }
}

/// The quantizer tests' and tables' standard normals for `seed` (both Box–Muller outputs).
pub fn gaussians(seed: u64, n: usize) -> Vec<f32> {
    Rng::from_state(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x5851_f42d_4c95_7f2d).normal_pairs(n)
}
