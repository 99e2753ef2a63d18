//! TurboQuant vector quantizers (arXiv 2504.19874, §3): MSE (Algorithm 1) and PROD (Algorithm 2).
//!
//! MSE: y = Π·x/‖x‖, each coordinate of y → the index of its Lloyd–Max cell (`codebook`), indices
//! bit-packed (`packing`), scale ‖x‖ stored as bf16 (`scale`). Dequantize: x̂ = scale · Πᵀ·c[idx].
//! `MseQuantizer::with_scale_rule` stores a corrected scale instead (`scale::ScaleRule`; the KV codec's
//! rows): ‖x‖ times a factor from ⟨y, c[idx]⟩ and ‖c[idx]‖², which decoding needs no knowledge of.
//!
//! PROD (unbiased inner products): the MSE quantizer at b−1 bits, then the residual r = x − x̂_mse is
//! sketched by QJL: z = sign(S·r) with S a seeded d×d i.i.d. N(0,1) matrix, plus γ = ‖r‖. The
//! estimator ⟨y, x̂⟩ = ⟨y, x̂_mse⟩ + γ·√(π/2)/d·⟨S·y, z⟩ is unbiased. At b = 1 there is no MSE stage
//! (x̂_mse = 0, r = x).
//!
//! Stored form of one vector: `code_bytes` bytes (MSE codes, then for PROD the d sign bits with
//! 1 = non-negative) and `scale_count` bf16 scales (MSE: ‖x‖; PROD: ‖x‖, γ).

use std::sync::Arc;

use super::codebook::{self, Codebook};
use super::isa::Isa;
use super::packing::{pack, packed_len, unpack};
use super::rng::{self, Stream};
use super::rotation::{Rotation, RotationKind, axpy_product};
use super::scale::{self, ScaleRule};
#[cfg(target_arch = "x86_64")]
use super::avx512::{self, supports as avx512_supports};

#[cfg(not(target_arch = "x86_64"))]
fn avx512_supports(_dim: usize, _bits: u32) -> bool {
    false
}

/// Which estimator the quantizer targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantizerKind {
    Mse,
    Prod,
}

/// Everything that defines a quantizer (and so its stored bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QuantizerConfig {
    pub dim: usize,
    pub bits: u32,
    pub rotation: RotationKind,
    pub kind: QuantizerKind,
    pub seed: u64,
}

/// Per-thread working memory for one vector.
#[derive(Clone, Debug)]
pub struct Scratch {
    rotated: Vec<f32>,
    work: Vec<f32>,
    codes: Vec<u8>,
}

impl Scratch {
    pub fn new(dim: usize) -> Self {
        Self { rotated: vec![0.0; dim], work: vec![0.0; dim], codes: vec![0; dim] }
    }
}

/// The MSE quantizer: rotation + Lloyd–Max codebook. Also the building block of the KV codec.
#[derive(Clone, Debug)]
pub struct MseQuantizer {
    bits: u32,
    rotation: Rotation,
    codebook: Arc<Codebook>,
    isa: Isa,
    rule: ScaleRule,
}

impl MseQuantizer {
    pub fn new(dim: usize, bits: u32, rotation: RotationKind, seed: u64, index: u64) -> Result<Self, String> {
        let codebook = codebook::codebook(dim, bits).map_err(|e| e.to_string())?;
        let rotation = Rotation::new(rotation, dim, seed, index)?;
        Ok(Self { bits, rotation, codebook, isa: Isa::detect(), rule: ScaleRule::Norm })
    }

    /// The same quantizer storing scales by `rule` (`ScaleRule::Norm` unless set; the KV codec sets
    /// its row format's rule).
    pub fn with_scale_rule(mut self, rule: ScaleRule) -> Self {
        self.rule = rule;
        self
    }

    pub fn scale_rule(&self) -> ScaleRule {
        self.rule
    }

    /// The same quantizer running its loops with `isa` (bit-identical results). `Isa::Avx512` on a
    /// CPU without AVX-512 gives `Isa::Portable`.
    pub fn with_isa(mut self, isa: Isa) -> Self {
        self.isa = if isa == Isa::Avx512 && !Isa::avx512_available() { Isa::Portable } else { isa };
        self
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Whether this quantizer's encode/decode run the AVX-512 kernels.
    fn uses_avx512(&self) -> bool {
        self.isa == Isa::Avx512
            && self.rotation.kind() == RotationKind::Hadamard
            && cfg!(target_arch = "x86_64")
            && avx512_supports(self.dim(), self.bits)
    }

    pub fn dim(&self) -> usize {
        self.rotation.dim()
    }

    pub fn bits(&self) -> u32 {
        self.bits
    }

    pub fn rotation(&self) -> &Rotation {
        &self.rotation
    }

    pub fn codebook(&self) -> &Codebook {
        &self.codebook
    }

    /// Bytes of packed codes per vector.
    pub fn code_bytes(&self) -> usize {
        packed_len(self.dim(), self.bits)
    }

    /// Quantize one vector: packed codes into `codes_out`, returns the bf16 scale bits (by the
    /// quantizer's `ScaleRule`).
    pub fn encode(&self, x: &[f32], codes_out: &mut [u8], scratch: &mut Scratch) -> u16 {
        #[cfg(target_arch = "x86_64")]
        if self.uses_avx512() {
            let (signs_in, signs_out) = self.rotation.hadamard_signs();
            let (mut norm, mut gains) = ([0.0f64], [(0.0f64, 0.0f64)]);
            let cb = &self.codebook;
            // SAFETY: `uses_avx512` checked the CPU (via `with_isa`/`Isa::detect`) and (dim, bits).
            unsafe {
                avx512::encode_hadamard(
                    x,
                    self.dim(),
                    self.bits,
                    signs_in,
                    signs_out,
                    &cb.boundaries_f32,
                    &cb.centroids_f32,
                    codes_out,
                    &mut norm,
                    &mut gains,
                )
            };
            return scale::encode(scale::apply_rule(self.rule, norm[0], gains[0].0, gains[0].1));
        }
        let norm = scale::norm_f64(x);
        if norm == 0.0 {
            codes_out.iter_mut().for_each(|b| *b = 0);
            return scale::encode(0.0);
        }
        let inv = 1.0 / norm;
        for (u, &v) in scratch.work.iter_mut().zip(x) {
            *u = (v as f64 * inv) as f32;
        }
        self.rotation.rotate(&scratch.work, &mut scratch.rotated);
        bucketize(&scratch.rotated, &self.codebook.boundaries_f32, &mut scratch.codes);
        pack(&scratch.codes, self.bits, codes_out);
        if self.rule == ScaleRule::Norm {
            return scale::encode(norm);
        }
        let table = &self.codebook.centroids_f32;
        for (w, &c) in scratch.work.iter_mut().zip(scratch.codes.iter()) {
            *w = table[c as usize];
        }
        let (dot, sq) = scale::gain_sums(&scratch.rotated, &scratch.work);
        scale::encode(scale::apply_rule(self.rule, norm, dot, sq))
    }

    /// Quantize n = `scales_out.len()` vectors (`x`: n × dim floats) into `codes_out`
    /// (n × code_bytes) and `scales_out`; the same bytes as n calls of `encode`, faster.
    pub fn encode_batch(&self, x: &[f32], codes_out: &mut [u8], scales_out: &mut [u16], scratch: &mut Scratch) {
        let (d, cb, n) = (self.dim(), self.code_bytes(), scales_out.len());
        assert!(x.len() == n * d && codes_out.len() == n * cb, "encode_batch: buffer sizes do not match n = {n}");
        #[cfg(target_arch = "x86_64")]
        if self.uses_avx512() {
            const BLOCK: usize = 64;
            let (signs_in, signs_out) = self.rotation.hadamard_signs();
            let book = &self.codebook;
            let mut norms = [0.0f64; BLOCK];
            let mut gains = [(0.0f64, 0.0f64); BLOCK];
            for start in (0..n).step_by(BLOCK) {
                let m = BLOCK.min(n - start);
                let (xs, codes) = (&x[start * d..(start + m) * d], &mut codes_out[start * cb..(start + m) * cb]);
                // SAFETY: as in `encode`.
                unsafe {
                    avx512::encode_hadamard(
                        xs,
                        d,
                        self.bits,
                        signs_in,
                        signs_out,
                        &book.boundaries_f32,
                        &book.centroids_f32,
                        codes,
                        &mut norms[..m],
                        &mut gains[..m],
                    )
                };
                for ((s, &norm), &(dot, sq)) in scales_out[start..start + m].iter_mut().zip(&norms[..m]).zip(&gains[..m]) {
                    *s = scale::encode(scale::apply_rule(self.rule, norm, dot, sq));
                }
            }
            return;
        }
        for (i, s) in scales_out.iter_mut().enumerate() {
            *s = self.encode(&x[i * d..(i + 1) * d], &mut codes_out[i * cb..(i + 1) * cb], scratch);
        }
    }

    /// Centroid values (unit-norm scale) of packed codes, still in the rotated basis.
    pub fn lookup(&self, codes: &[u8], out: &mut [f32], scratch_codes: &mut [u8]) {
        unpack(codes, self.bits, scratch_codes);
        let table = &self.codebook.centroids_f32;
        for (o, &c) in out.iter_mut().zip(scratch_codes.iter()) {
            *o = table[c as usize];
        }
    }

    /// x̂ = scale · Πᵀ·c[idx], each element saturated to ±f32::MAX (only a scale near the top of
    /// the f32 range can reach it).
    pub fn decode(&self, codes: &[u8], scale_bits: u16, out: &mut [f32], scratch: &mut Scratch) {
        #[cfg(target_arch = "x86_64")]
        if self.uses_avx512() {
            let (signs_in, signs_out) = self.rotation.hadamard_signs();
            let centroids = &self.codebook.centroids_f32;
            // SAFETY: as in `encode`.
            unsafe { avx512::decode_hadamard(codes, self.bits, scale::decode(scale_bits), signs_in, signs_out, centroids, out) };
            return;
        }
        self.lookup(codes, &mut scratch.rotated, &mut scratch.codes);
        self.rotation.unrotate(&scratch.rotated, out);
        let s = scale::decode(scale_bits);
        out.iter_mut().for_each(|v| *v = saturate(*v * s));
    }
}

/// A reconstruction element clamped to the finite f32 range: a stored scale near f32::MAX times a
/// coordinate slightly above 1 (or PROD's correction term) can round past it, and finite input must
/// never reconstruct as infinity. Identity on every value already in range.
#[inline]
fn saturate(v: f32) -> f32 {
    v.clamp(-f32::MAX, f32::MAX)
}

/// code = number of boundaries strictly below y (so a value on a boundary takes the lower cell).
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma"))]
pub fn bucketize(y: &[f32], boundaries: &[f32], codes: &mut [u8]) {
    if boundaries.len() <= 15 {
        codes.iter_mut().for_each(|c| *c = 0);
        for &t in boundaries {
            for (c, &v) in codes.iter_mut().zip(y) {
                *c += (v > t) as u8;
            }
        }
    } else {
        for (c, &v) in codes.iter_mut().zip(y) {
            *c = boundaries.partition_point(|&t| t < v) as u8;
        }
    }
}

/// The QJL stage of PROD: a seeded Gaussian projection and its sign sketch.
#[derive(Clone, Debug)]
struct Qjl {
    dim: usize,
    /// S row-major.
    rows: Vec<f32>,
    /// Sᵀ row-major (row j = column j of S).
    columns: Vec<f32>,
}

impl Qjl {
    fn new(dim: usize, seed: u64, index: u64) -> Self {
        let g = rng::gaussians(&mut rng::stream(seed, Stream::QjlProjection, index), dim * dim);
        let rows: Vec<f32> = g.iter().map(|&v| v as f32).collect();
        let mut columns = vec![0.0f32; dim * dim];
        for i in 0..dim {
            for j in 0..dim {
                columns[j * dim + i] = rows[i * dim + j];
            }
        }
        Self { dim, rows, columns }
    }

    /// out = S·v.
    fn project(&self, v: &[f32], out: &mut [f32]) {
        axpy_product(&self.columns, v, out);
    }

    /// out = Sᵀ·v.
    fn project_transpose(&self, v: &[f32], out: &mut [f32]) {
        axpy_product(&self.rows, v, out);
    }

    /// √(π/2)/d, the estimator's constant.
    fn gain(&self) -> f32 {
        ((std::f64::consts::PI / 2.0).sqrt() / self.dim as f64) as f32
    }
}

/// A TurboQuant vector quantizer (MSE or PROD) for vectors of one dimension.
#[derive(Clone, Debug)]
pub struct Quantizer {
    config: QuantizerConfig,
    /// MSE stage: all bits for MSE, bits − 1 for PROD (absent for PROD at 1 bit).
    mse: Option<MseQuantizer>,
    qjl: Option<Qjl>,
}

impl Quantizer {
    pub fn new(config: QuantizerConfig) -> Result<Self, String> {
        Self::new_indexed(config, 0, 0)
    }

    /// A quantizer whose rotation is stream `rotation_index` and whose QJL projection is stream
    /// `projection_index` of the seed (the KV codec gives every layer and K/V its own).
    pub fn new_indexed(config: QuantizerConfig, rotation_index: u64, projection_index: u64) -> Result<Self, String> {
        let QuantizerConfig { dim, bits, rotation, kind, seed } = config;
        if !(codebook::MIN_DIM..=codebook::MAX_DIM).contains(&dim) {
            return Err(format!(
                "dim {dim} is not supported: need {}..={}",
                codebook::MIN_DIM,
                codebook::MAX_DIM
            ));
        }
        if !(codebook::MIN_BITS..=codebook::MAX_BITS).contains(&bits) {
            return Err(format!(
                "bits {bits} is not supported: need {}..={}",
                codebook::MIN_BITS,
                codebook::MAX_BITS
            ));
        }
        if rotation == RotationKind::Hadamard && !dim.is_power_of_two() {
            return Err(format!(
                "dim {dim} is not supported by HADAMARD rotation: need a power of two; use DENSE"
            ));
        }
        let (mse, qjl) = match kind {
            QuantizerKind::Mse => (Some(MseQuantizer::new(dim, bits, rotation, seed, rotation_index)?), None),
            QuantizerKind::Prod => {
                let mse = if bits > 1 {
                    Some(MseQuantizer::new(dim, bits - 1, rotation, seed, rotation_index)?)
                } else {
                    None
                };
                (mse, Some(Qjl::new(dim, seed, projection_index)))
            }
        };
        Ok(Self { config, mse, qjl })
    }

    /// The same quantizer running its loops with `isa` (see `MseQuantizer::with_isa`).
    pub fn with_isa(mut self, isa: Isa) -> Self {
        self.mse = self.mse.map(|m| m.with_isa(isa));
        self
    }

    /// The same quantizer with its MSE stage storing scales by `rule` (see `MseQuantizer::with_scale_rule`).
    pub fn with_scale_rule(mut self, rule: ScaleRule) -> Self {
        self.mse = self.mse.map(|m| m.with_scale_rule(rule));
        self
    }

    pub fn config(&self) -> &QuantizerConfig {
        &self.config
    }

    pub fn dim(&self) -> usize {
        self.config.dim
    }

    /// Bytes of packed codes per vector (excluding scales).
    pub fn code_bytes(&self) -> usize {
        self.mse.as_ref().map_or(0, |m| m.code_bytes()) + self.qjl.as_ref().map_or(0, |q| packed_len(q.dim, 1))
    }

    /// bf16 scales per vector.
    pub fn scale_count(&self) -> usize {
        if self.qjl.is_some() { 2 } else { 1 }
    }

    /// Stored bytes per vector (codes + scales).
    pub fn bytes_per_vector(&self) -> usize {
        self.code_bytes() + 2 * self.scale_count()
    }

    /// The MSE stage's exact expected normalised MSE (Lloyd–Max value); 1 when there is no MSE stage.
    pub fn mse_stage_nmse(&self) -> f64 {
        self.mse.as_ref().map_or(1.0, |m| m.codebook().nmse)
    }

    pub fn mse_stage(&self) -> Option<&MseQuantizer> {
        self.mse.as_ref()
    }

    /// Bytes of MSE-stage codes per vector (0 for PROD at 1 bit).
    pub fn mse_code_bytes(&self) -> usize {
        self.mse.as_ref().map_or(0, |m| m.code_bytes())
    }

    /// PROD: S·y into `out`; returns false (and leaves `out`) for MSE.
    pub fn project_query(&self, y: &[f32], out: &mut [f32]) -> bool {
        match &self.qjl {
            Some(q) => {
                q.project(y, out);
                true
            }
            None => false,
        }
    }

    /// PROD: the estimator's constant √(π/2)/d; 0 for MSE.
    pub fn qjl_gain(&self) -> f32 {
        self.qjl.as_ref().map_or(0.0, |q| q.gain())
    }

    /// PROD: the projection S, row-major; None for MSE.
    pub fn qjl_projection(&self) -> Option<&[f32]> {
        self.qjl.as_ref().map(|q| q.rows.as_slice())
    }

    pub fn scratch(&self) -> Scratch {
        Scratch::new(self.dim())
    }

    /// Quantize one vector into `codes` (code_bytes) and `scales` (scale_count).
    pub fn quantize_one(&self, x: &[f32], codes: &mut [u8], scales: &mut [u16], scratch: &mut Scratch) {
        let d = self.dim();
        let mse_bytes = self.mse.as_ref().map_or(0, |m| m.code_bytes());
        let (mse_codes, sign_codes) = codes.split_at_mut(mse_bytes);
        let mut residual_scratch = None;
        if let Some(mse) = &self.mse {
            scales[0] = mse.encode(x, mse_codes, scratch);
            if self.qjl.is_some() {
                let mut xhat = vec![0.0f32; d];
                mse.decode(mse_codes, scales[0], &mut xhat, scratch);
                residual_scratch = Some(xhat);
            }
        } else {
            scales[0] = scale::encode(scale::norm_f64(x));
        }
        if let Some(qjl) = &self.qjl {
            let residual: Vec<f32> = match residual_scratch {
                Some(xhat) => x.iter().zip(&xhat).map(|(a, b)| a - b).collect(),
                None => x.to_vec(),
            };
            scales[1] = scale::encode(scale::norm_f64(&residual));
            qjl.project(&residual, &mut scratch.rotated);
            for (c, &v) in scratch.codes.iter_mut().zip(&scratch.rotated) {
                *c = (v >= 0.0) as u8;
            }
            pack(&scratch.codes, 1, sign_codes);
        }
    }

    /// Quantize n vectors (`x`: n × dim) into `codes` (n × code_bytes) and `scales`
    /// (n × scale_count); the same bytes as n calls of `quantize_one`, faster for MSE.
    pub fn quantize_batch(&self, x: &[f32], codes: &mut [u8], scales: &mut [u16], scratch: &mut Scratch) {
        let (d, cb, sc) = (self.dim(), self.code_bytes(), self.scale_count());
        match (&self.mse, &self.qjl) {
            (Some(mse), None) => mse.encode_batch(x, codes, scales, scratch),
            _ => {
                for (i, xi) in x.chunks_exact(d).enumerate() {
                    self.quantize_one(xi, &mut codes[i * cb..(i + 1) * cb], &mut scales[i * sc..(i + 1) * sc], scratch);
                }
            }
        }
    }

    /// Reconstruct one vector.
    pub fn dequantize_one(&self, codes: &[u8], scales: &[u16], out: &mut [f32], scratch: &mut Scratch) {
        let mse_bytes = self.mse.as_ref().map_or(0, |m| m.code_bytes());
        match &self.mse {
            Some(mse) => mse.decode(&codes[..mse_bytes], scales[0], out, scratch),
            None => out.iter_mut().for_each(|v| *v = 0.0),
        }
        if let Some(qjl) = &self.qjl {
            let gamma = scale::decode(scales[1]);
            unpack(&codes[mse_bytes..], 1, &mut scratch.codes);
            for (w, &c) in scratch.work.iter_mut().zip(scratch.codes.iter()) {
                *w = if c == 1 { 1.0 } else { -1.0 };
            }
            qjl.project_transpose(&scratch.work, &mut scratch.rotated);
            let g = gamma * qjl.gain();
            for (o, &v) in out.iter_mut().zip(&scratch.rotated) {
                *o = saturate(*o + g * v);
            }
        }
    }

    /// Prepare a query y for `inner_product`: (Π·y for the MSE stage, S·y for QJL).
    pub fn prepare_query(&self, y: &[f32]) -> PreparedQuery {
        let d = self.dim();
        let rotated = self.mse.as_ref().map(|m| {
            let mut r = vec![0.0; d];
            m.rotation().rotate(y, &mut r);
            r
        });
        let projected = self.qjl.as_ref().map(|q| {
            let mut p = vec![0.0; d];
            q.project(y, &mut p);
            p
        });
        PreparedQuery { rotated, projected }
    }

    /// Estimate ⟨y, x̂⟩ for one stored vector (the unbiased estimator for PROD).
    pub fn inner_product(&self, query: &PreparedQuery, codes: &[u8], scales: &[u16], scratch: &mut Scratch) -> f32 {
        let mse_bytes = self.mse.as_ref().map_or(0, |m| m.code_bytes());
        let mut total = 0.0f32;
        if let (Some(mse), Some(rotated)) = (&self.mse, &query.rotated) {
            mse.lookup(&codes[..mse_bytes], &mut scratch.work, &mut scratch.codes);
            let dot: f32 = rotated.iter().zip(&scratch.work).map(|(a, b)| a * b).sum();
            total += scale::decode(scales[0]) * dot;
        }
        if let (Some(qjl), Some(projected)) = (&self.qjl, &query.projected) {
            unpack(&codes[mse_bytes..], 1, &mut scratch.codes);
            let dot: f32 = projected
                .iter()
                .zip(scratch.codes.iter())
                .map(|(&p, &c)| if c == 1 { p } else { -p })
                .sum();
            total += scale::decode(scales[1]) * qjl.gain() * dot;
        }
        total
    }
}

/// A query transformed once for many inner products.
#[derive(Clone, Debug)]
pub struct PreparedQuery {
    rotated: Option<Vec<f32>>,
    projected: Option<Vec<f32>>,
}
