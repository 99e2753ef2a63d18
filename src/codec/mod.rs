//! The KV codec: the engine that turns K/V head vectors into rows of the cache format (`layout`) and
//! attends over such rows.
//!
//! - [`KvCodec`] owns, per layer, the K and V quantizers (each with its own rotation derived from the
//!   seed) and, with centering, the frozen per-(layer, kv head) means and their saved state.
//! - [`Codec`] is a `KvCodec` with an element type and a backend (`crate::backend`): it validates
//!   every append/attend once (`request`) and hands the validated request to the backend. Its safe
//!   methods ([`Codec::append`], [`Codec::attend`]) take host slices; the C shell (`crate::ffi`) calls
//!   the raw-pointer forms ([`Codec::append_raw`], [`Codec::attend_raw`]).
//!
//! Storage policy (which rows exist, sequences, windows) lives above it, in the engine (slot mode) or
//! in `crate::cache`.

pub mod dtype;
pub mod layout;
pub mod limits;
pub mod outliers;
pub mod request;
mod safe;

pub use safe::{Element, HostMask, HostTensor};

use crate::backend::{AnyBackend, BackendChoice, Op};
use crate::error::{Error, ErrorKind};
type CResult<T> = crate::error::Result<T>;
use request::{AppendArgs, AppendRequest, AttendArgs, AttendRequest, DequantArgs, DequantRequest, Exec, Stores};

use std::sync::OnceLock;

use crate::math::quantizer::{MseQuantizer, Quantizer, QuantizerConfig, QuantizerKind};
use outliers::OutlierKeys;
use crate::math::rotation::RotationKind;
pub use crate::math::scale::ScaleRule;
pub use dtype::{Dtype, Strides};
pub use layout::RowLayout;

/// Everything that determines the row bytes and the attention result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KvConfig {
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub bits_k: u32,
    pub bits_v: u32,
    pub rotation: RotationKind,
    pub key_mode: QuantizerKind,
    pub seed: u64,
    /// Centering of K (subtract frozen per-(layer, kv head) means; exact for attention).
    pub centering: bool,
    /// Centering of V as well (only with `centering`).
    pub center_values: bool,
    /// Outlier channels per key head quantized at bits_k + 1 by a second TurboQuant instance
    /// (`outliers`; 0: none). MSE keys only; 16..=head_dim − 16.
    pub key_outliers: usize,
}

/// Per-(kv head) means subtracted before quantization (centering), each n_kv_heads × head_dim.
#[derive(Clone, Debug, PartialEq)]
pub struct Means {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

/// The quantizers of one layer.
#[derive(Debug)]
pub struct LayerCodec {
    /// K: MSE, or PROD (MSE at bits_k − 1 plus the QJL sketch).
    pub key: Quantizer,
    pub value: MseQuantizer,
    /// Centering means, frozen at the first append to this layer.
    pub means: OnceLock<Means>,
    /// Bits per K and per V coordinate of this layer.
    pub bits_k: u32,
    pub bits_v: u32,
    /// Row formats of this layer's K and V rows.
    pub k_layout: RowLayout,
    pub v_layout: RowLayout,
    /// With `key_outliers`: the two key instances (`key` is then not used for rows).
    pub outliers: Option<OutlierKeys>,
    /// With `key_outliers`: per kv head the channel order of the key rows (outliers first), frozen at
    /// the first append to this layer (`freeze_key_order`).
    pub key_order: OnceLock<Vec<u16>>,
}

#[derive(Debug)]
pub struct KvCodec {
    pub config: KvConfig,
    pub layers: Vec<LayerCodec>,
    /// Layer 0's row formats: those of every layer unless per-layer bits differ (`uniform_bits`).
    pub k_layout: RowLayout,
    pub v_layout: RowLayout,
}

impl KvCodec {
    /// Build all per-layer quantizers at `config.bits_k`/`bits_v`. K of layer L uses rotation stream
    /// 2L (and QJL stream L), V uses rotation stream 2L + 1, all from `config.seed`.
    pub fn new(config: KvConfig) -> Result<Self, String> {
        Self::with_layer_bits(config, None)
    }

    /// As `new`, with (bits_k, bits_v) of every layer from `layer_bits` (n_layers pairs) when given.
    pub fn with_layer_bits(config: KvConfig, layer_bits: Option<&[(u32, u32)]>) -> Result<Self, String> {
        if let Some(b) = layer_bits
            && b.len() != config.n_layers
        {
            return Err(format!("per-layer bits for {} layers, the context has {} layers", b.len(), config.n_layers));
        }
        if config.n_layers == 0 {
            return Err("n_layers is 0: a codec needs at least one layer".into());
        }
        let c = config.key_outliers;
        if c > 0 {
            if config.key_mode != QuantizerKind::Mse {
                return Err("key_outliers is only for MSE keys (key_mode PROD has a QJL stage over the whole head)".into());
            }
            if c < crate::math::codebook::MIN_DIM || c + crate::math::codebook::MIN_DIM > config.head_dim {
                return Err(format!(
                    "key_outliers {c} with head_dim {}: both parts need at least {} channels (16..={})",
                    config.head_dim,
                    crate::math::codebook::MIN_DIM,
                    config.head_dim.saturating_sub(crate::math::codebook::MIN_DIM)
                ));
            }
        }
        let layers = (0..config.n_layers)
            .map(|l| {
                let (bits_k, bits_v) = layer_bits.map_or((config.bits_k, config.bits_v), |b| b[l]);
                let key_cfg = QuantizerConfig {
                    dim: config.head_dim,
                    bits: bits_k,
                    rotation: config.rotation,
                    kind: config.key_mode,
                    seed: config.seed,
                };
                let key = Quantizer::new_indexed(key_cfg, 2 * l as u64, l as u64)
                    .map_err(|e| format!("layer {l} keys: {e}"))?
                    .with_scale_rule(key_rule(config.key_mode));
                let value = MseQuantizer::new(config.head_dim, bits_v, config.rotation, config.seed, 2 * l as u64 + 1)
                    .map_err(|e| format!("layer {l} values: {e}"))?
                    .with_scale_rule(VALUE_SCALE_RULE);
                let k_layout = RowLayout {
                    n_kv_heads: config.n_kv_heads,
                    head_dim: config.head_dim,
                    mse_bits: match config.key_mode {
                        QuantizerKind::Mse => bits_k,
                        QuantizerKind::Prod => bits_k - 1,
                    },
                    qjl: config.key_mode == QuantizerKind::Prod,
                    split: c,
                };
                let v_layout =
                    RowLayout { n_kv_heads: config.n_kv_heads, head_dim: config.head_dim, mse_bits: bits_v, qjl: false, split: 0 };
                let outliers = if c > 0 {
                    if bits_k >= 8 {
                        return Err(format!("layer {l} keys: key_outliers puts the outlier channels at bits_k + 1, so bits_k must be at most 7 (it is {bits_k})"));
                    }
                    Some(
                        OutlierKeys::new(config.head_dim, c, bits_k, config.rotation, config.seed, l)
                            .map_err(|e| format!("layer {l} keys: {e}"))?
                            .with_scale_rule(key_rule(QuantizerKind::Mse)),
                    )
                } else {
                    None
                };
                let key_order = OnceLock::new();
                Ok(LayerCodec { key, value, means: OnceLock::new(), bits_k, bits_v, k_layout, v_layout, outliers, key_order })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let (k_layout, v_layout) = (layers[0].k_layout, layers[0].v_layout);
        Ok(Self { config, layers, k_layout, v_layout })
    }

    /// Whether every layer has the bits of `config` (no per-layer widths that differ).
    pub fn uniform_bits(&self) -> bool {
        self.layers.iter().all(|l| (l.bits_k, l.bits_v) == (self.config.bits_k, self.config.bits_v))
    }

    /// Bytes of one K row and one V row of `layer`.
    pub fn layer_row_bytes(&self, layer: usize) -> (usize, usize) {
        let l = &self.layers[layer];
        (l.k_layout.row_bytes(), l.v_layout.row_bytes())
    }

    /// Query heads per kv head.
    pub fn group_size(&self) -> usize {
        self.config.n_heads / self.config.n_kv_heads
    }

    /// The frozen means of `layer`, if centering is on and the layer has seen rows.
    pub fn means(&self, layer: usize) -> Option<&Means> {
        if self.config.centering { self.layers[layer].means.get() } else { None }
    }

    /// The means of `layer` with centering: frozen by the first call, from `compute` (the rows of that
    /// call); None without centering. Thread-safe: concurrent first appends agree on one value.
    pub fn freeze_means(&self, layer: usize, compute: impl FnOnce() -> Means) -> Option<&Means> {
        if !self.config.centering {
            return None;
        }
        Some(self.layers[layer].means.get_or_init(compute))
    }

    /// The frozen key channel order of `layer` (n_kv_heads × head_dim, outliers first), if the codec
    /// has `key_outliers` and the layer has seen rows.
    pub fn key_order(&self, layer: usize) -> Option<&[u16]> {
        self.layers[layer].key_order.get().map(|v| v.as_slice())
    }

    /// With `key_outliers`: the key channel order of `layer`, frozen by the first call from `compute`
    /// (`estimate_key_order` over that call's rows); None without. Thread-safe as `freeze_means`.
    pub fn freeze_key_order(&self, layer: usize, compute: impl FnOnce() -> Vec<u16>) -> Option<&[u16]> {
        self.layers[layer].outliers.as_ref()?;
        Some(self.layers[layer].key_order.get_or_init(compute).as_slice())
    }

    /// The key channel order of one layer from its first append (`outliers` says the rule): per kv
    /// head, each channel's Σ (k − μ)² over `mean_rows(n_tokens)` in f64 (μ = `mean_k`, the frozen
    /// centering means, or 0), the `key_outliers` largest first. `load(token, head, out)` writes key row
    /// (token, head) as f32.
    pub fn estimate_key_order(&self, n_tokens: usize, mean_k: Option<&[f32]>, mut load: impl FnMut(usize, usize, &mut [f32])) -> Vec<u16> {
        let (h, d) = (self.config.n_kv_heads, self.config.head_dim);
        let mut x = vec![0.0f32; d];
        let mut energy = vec![0.0f64; h * d];
        for tok in self.mean_rows(n_tokens) {
            for head in 0..h {
                load(tok, head, &mut x);
                for (i, (e, &v)) in energy[head * d..(head + 1) * d].iter_mut().zip(&x).enumerate() {
                    let c = v as f64 - mean_k.map_or(0.0, |m| m[head * d + i] as f64);
                    *e += c * c;
                }
            }
        }
        (0..h).flat_map(|head| OutlierKeys::order_from_energy(&energy[head * d..(head + 1) * d], self.config.key_outliers)).collect()
    }

    /// Which rows of a layer's first append the centering means are estimated from: all of them, except
    /// that row 0 is left out when there are at least `MEAN_SKIP_MIN_ROWS` rows (the first row of an
    /// engine's first batch is typically the BOS / attention-sink token, whose K and V are far from
    /// the others and would pull the mean away from the typical row).
    pub fn mean_rows(&self, n_tokens: usize) -> std::ops::Range<usize> {
        mean_rows(n_tokens)
    }

    /// The centering means of one layer from its first append: for every kv head, the mean over
    /// `mean_rows(n_tokens)` of the K rows and of the V rows, accumulated in f64 in row order and
    /// rounded once to f32; a tensor without centering gets zero means (subtracting 0 and adding
    /// 0·Σp leave every bit as it is). `load(which, token, head, out)` writes row (token, head) of K
    /// (which = 0) or V (which = 1) as f32 (V rows only with `center_values`). This is the whole
    /// estimate a backend must reproduce.
    pub fn estimate_means(&self, n_tokens: usize, mut load: impl FnMut(usize, usize, usize, &mut [f32])) -> Means {
        let (h, d) = (self.config.n_kv_heads, self.config.head_dim);
        let rows = self.mean_rows(n_tokens);
        let count = rows.len().max(1) as f64;
        let mut x = vec![0.0f32; d];
        let mut one = |which: usize, on: bool| -> Vec<f32> {
            if !on {
                return vec![0.0; h * d];
            }
            let mut sum = vec![0.0f64; h * d];
            for tok in rows.clone() {
                for head in 0..h {
                    load(which, tok, head, &mut x);
                    for (s, &v) in sum[head * d..(head + 1) * d].iter_mut().zip(&x) {
                        *s += v as f64;
                    }
                }
            }
            sum.iter().map(|&s| (s / count) as f32).collect()
        };
        let k = one(0, true);
        let v = one(1, self.config.center_values);
        Means { k, v }
    }

    /// Replace every layer's means (and key channel orders) by a state written by `save_state`
    /// (validated first; on error nothing changes).
    pub fn load_state(&mut self, bytes: &[u8]) -> CResult<()> {
        let parsed = self.parse_state(bytes)?;
        for (layer, (means, order)) in self.layers.iter_mut().zip(parsed) {
            layer.means = match means {
                Some(m) => OnceLock::from(m),
                None => OnceLock::new(),
            };
            layer.key_order = match order {
                Some(o) => OnceLock::from(o),
                None => OnceLock::new(),
            };
        }
        Ok(())
    }

    /// Bytes of a layer's key channel order in the state (0 without `key_outliers`).
    fn order_state_len(&self) -> usize {
        if self.config.key_outliers > 0 { 1 + 2 * self.config.n_kv_heads * self.config.head_dim } else { 0 }
    }

    /// Serialized size of the codec's mutable state (the centering means; with `key_outliers` the
    /// key channel orders).
    pub fn state_len(&self) -> usize {
        let per_layer = 1 + 2 * self.config.n_kv_heads * self.config.head_dim * 4 + self.order_state_len();
        STATE_MAGIC.len() + 4 + 8 + self.layers.len() * per_layer + 4
    }

    /// A fingerprint of everything that defines the row bytes (saved state is checked against it).
    pub fn fingerprint(&self) -> u64 {
        let c = &self.config;
        let fields: [u64; 10] = [
            c.n_layers as u64,
            c.n_heads as u64,
            c.n_kv_heads as u64,
            c.head_dim as u64,
            c.bits_k as u64,
            c.bits_v as u64,
            match c.rotation {
                RotationKind::Dense => 1,
                RotationKind::Hadamard => 2,
            },
            match c.key_mode {
                QuantizerKind::Mse => 0,
                QuantizerKind::Prod => 1,
            },
            c.seed,
            c.centering as u64 | ((c.centering && c.center_values) as u64) << 1,
        ];
        // Outlier channels follow the fields when present (other contexts keep their fingerprint).
        let outliers: Option<u64> = (c.key_outliers > 0).then_some(0x6f75_746c_0000_0000 | c.key_outliers as u64);
        // FNV-1a over the little-endian fields: stable across platforms and releases. Per-layer bits
        // that differ from bits_k/bits_v follow the fields (uniform contexts keep their fingerprint).
        let per_layer: Vec<u64> = if self.uniform_bits() {
            Vec::new()
        } else {
            self.layers.iter().map(|l| l.bits_k as u64 | (l.bits_v as u64) << 8).collect()
        };
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for f in fields.into_iter().chain(outliers).chain(per_layer) {
            for b in f.to_le_bytes() {
                h ^= b as u64;
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h
    }

    /// Write the state: magic, version, fingerprint, then per layer a frozen flag and the means, then
    /// a CRC-32 of everything before it.
    pub fn save_state(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(STATE_MAGIC);
        out.extend_from_slice(&STATE_VERSION.to_le_bytes());
        out.extend_from_slice(&self.fingerprint().to_le_bytes());
        let n = self.config.n_kv_heads * self.config.head_dim;
        for layer in &self.layers {
            match layer.means.get() {
                Some(m) => {
                    out.push(1);
                    m.k.iter().chain(&m.v).for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
                }
                None => {
                    out.push(0);
                    out.extend(std::iter::repeat_n(0u8, 2 * n * 4));
                }
            }
            if self.config.key_outliers > 0 {
                match layer.key_order.get() {
                    Some(o) => {
                        out.push(1);
                        o.iter().for_each(|c| out.extend_from_slice(&c.to_le_bytes()));
                    }
                    None => {
                        out.push(0);
                        out.extend(std::iter::repeat_n(0u8, 2 * n));
                    }
                }
            }
        }
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    /// Parse a state written by `save_state` into per-layer means and key channel orders (validated,
    /// not yet applied).
    #[allow(clippy::type_complexity)]
    pub fn parse_state(&self, bytes: &[u8]) -> Result<Vec<(Option<Means>, Option<Vec<u16>>)>, StateError> {
        if bytes.len() != self.state_len() {
            return Err(StateError::Corrupt(format!(
                "state is {} bytes, this context's state is {} bytes",
                bytes.len(),
                self.state_len()
            )));
        }
        if &bytes[..STATE_MAGIC.len()] != STATE_MAGIC {
            return Err(StateError::Corrupt("not a libturboquant context state (bad magic)".into()));
        }
        let (bytes, tail) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(bytes) != u32::from_le_bytes(tail.try_into().unwrap()) {
            return Err(StateError::Corrupt("context state checksum mismatch: the data is damaged".into()));
        }
        let mut pos = STATE_MAGIC.len();
        let version = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap());
        pos += 4;
        if version != STATE_VERSION {
            return Err(StateError::Incompatible(format!(
                "context state format version {version}, this library reads version {STATE_VERSION} (the rows saved with it use another row format: re-create them)"
            )));
        }
        let fp = u64::from_le_bytes(bytes[pos..pos + 8].try_into().unwrap());
        pos += 8;
        if fp != self.fingerprint() {
            return Err(StateError::Incompatible(
                "context state was saved by a context with different parameters".into(),
            ));
        }
        let n = self.config.n_kv_heads * self.config.head_dim;
        let mut result = Vec::with_capacity(self.layers.len());
        for l in 0..self.layers.len() {
            let flag = bytes[pos];
            pos += 1;
            let floats: Vec<f32> = bytes[pos..pos + 2 * n * 4]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            pos += 2 * n * 4;
            let means = match flag {
                0 if floats.iter().all(|&v| v.to_bits() == 0) => None,
                0 => return Err(StateError::Corrupt(format!("layer {l}: means stored for a layer marked unset"))),
                1 => {
                    if floats.iter().any(|v| !(v.abs() <= limits::MAX_INPUT_ABS)) {
                        return Err(StateError::Corrupt(format!("layer {l}: centering mean not finite or above 2^64")));
                    }
                    Some(Means { k: floats[..n].to_vec(), v: floats[n..].to_vec() })
                }
                other => return Err(StateError::Corrupt(format!("layer {l}: bad flag byte {other}"))),
            };
            let mut order = None;
            if self.config.key_outliers > 0 {
                let flag = bytes[pos];
                let chans: Vec<u16> =
                    bytes[pos + 1..pos + 1 + 2 * n].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
                pos += 1 + 2 * n;
                order = match flag {
                    0 if chans.iter().all(|&c| c == 0) => None,
                    1 if self.valid_order(&chans) => Some(chans),
                    1 => return Err(StateError::Corrupt(format!("layer {l}: key channel order is not a valid outlier split"))),
                    _ => return Err(StateError::Corrupt(format!("layer {l}: bad key channel order flag {flag}"))),
                };
            }
            result.push((means, order));
        }
        Ok(result)
    }
}

impl KvCodec {
    /// Whether `order` is what `estimate_key_order` can produce: per head a permutation of the
    /// channels whose first `key_outliers` and the rest are each ascending.
    fn valid_order(&self, order: &[u16]) -> bool {
        let (d, c) = (self.config.head_dim, self.config.key_outliers);
        order.len() == self.config.n_kv_heads * d
            && order.chunks(d).all(|head| {
                let mut seen = vec![false; d];
                head.iter().all(|&ch| (ch as usize) < d && !std::mem::replace(&mut seen[ch as usize], true))
                    && head[..c].windows(2).all(|w| w[0] < w[1])
                    && head[c..].windows(2).all(|w| w[0] < w[1])
            })
    }
}

/// The scale rule of MSE key rows (see `ScaleRule`), part of the row format. Measured on SmolLM2-135M
/// (bench/llama/quality.md): ‖x̂‖ = ‖x‖ for keys and the exact projection for values lowered the
/// mean KL divergence the most of the four rules (K4/V4, 8 chunks: 0.0737 with ‖x‖ for both, 0.0698).
pub const KEY_SCALE_RULE: ScaleRule = ScaleRule::NormCorrected;
/// The scale rule of value rows.
pub const VALUE_SCALE_RULE: ScaleRule = ScaleRule::Projection;

/// The scale rule of the key rows' MSE stage: PROD keys keep ‖x‖ (their QJL stage sketches the
/// residual of that reconstruction and its estimator is unbiased as it is).
pub fn key_rule(mode: QuantizerKind) -> ScaleRule {
    match mode {
        QuantizerKind::Mse => KEY_SCALE_RULE,
        QuantizerKind::Prod => ScaleRule::Norm,
    }
}

/// The rows of a layer's first append of `n_tokens` rows that its centering means are estimated from
/// (`KvCodec::mean_rows`; every backend uses this one rule).
pub fn mean_rows(n_tokens: usize) -> std::ops::Range<usize> {
    if MEAN_SKIP_FIRST && n_tokens >= MEAN_SKIP_MIN_ROWS { 1..n_tokens } else { 0..n_tokens }
}

/// Whether the means leave out row 0 of the first append (see `KvCodec::mean_rows`).
pub const MEAN_SKIP_FIRST: bool = true;
/// The fewest rows of a first append from which row 0 is left out.
pub const MEAN_SKIP_MIN_ROWS: usize = 2;

const STATE_MAGIC: &[u8; 8] = b"TQCTXST\0";
/// 2: a CRC-32 follows the means (version 1 had none). 3: the rows this state belongs to store
/// scale-corrected scales (`KEY_SCALE_RULE`, `VALUE_SCALE_RULE`) and the means may leave out the first
/// row (`mean_rows`); rows saved with a version-2 state decode differently, so that state is refused.
const STATE_VERSION: u32 = 3;

#[derive(Debug, Clone, PartialEq)]
pub enum StateError {
    Corrupt(String),
    Incompatible(String),
}

/// A codec with its element type and backend: the engine behind the C API and the safe Rust API.
///
/// Thread safety: `append`/`attend` take `&self` and may run concurrently from several threads, with
/// the backend's rules (concurrent appends must write distinct cells; CUDA attends on one codec share
/// its scratch and must be serialised, e.g. issued on one stream). `load_state` takes `&mut self`.
pub struct Codec {
    kv: KvCodec,
    dtype: Dtype,
    backend: AnyBackend,
}

impl Codec {
    /// Build the quantizers of every layer and the chosen backend.
    pub fn new(config: KvConfig, dtype: Dtype, backend: BackendChoice) -> CResult<Self> {
        Self::with_layer_bits(config, None, dtype, backend)
    }

    /// As `new`, with per-layer (bits_k, bits_v) (`KvCodec::with_layer_bits`). The CUDA backend
    /// compiles one bit width per context and refuses layer widths other than bits_k / bits_v.
    pub fn with_layer_bits(
        config: KvConfig,
        layer_bits: Option<&[(u32, u32)]>,
        dtype: Dtype,
        backend: BackendChoice,
    ) -> CResult<Self> {
        let kv = KvCodec::with_layer_bits(config, layer_bits).map_err(|m| Error::new(ErrorKind::Unsupported, m))?;
        if !kv.uniform_bits() && matches!(backend, BackendChoice::Cuda { .. }) {
            return Err(Error::unsupported(
                "per-layer bits other than bits_k / bits_v: the CUDA backend compiles one K and one V width per context",
            ));
        }
        if config.key_outliers > 0 && matches!(backend, BackendChoice::Cuda { .. }) {
            return Err(Error::unsupported(
                "key_outliers (split key rows) is implemented by the CPU backend only; the CUDA kernels read one code width per head",
            ));
        }
        let backend = AnyBackend::new(backend, &kv, dtype)?;
        Ok(Self { kv, dtype, backend })
    }

    /// The quantizers, layouts and means.
    pub fn kv(&self) -> &KvCodec {
        &self.kv
    }

    /// Element type of q, k, v and out.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    pub fn backend(&self) -> &AnyBackend {
        &self.backend
    }

    /// Bytes of one K row and one V row (one token of one layer, all kv heads) of layer 0 — of every
    /// layer when `kv().uniform_bits()`; `layer_row_bytes` otherwise.
    pub fn row_bytes(&self) -> (usize, usize) {
        (self.kv.k_layout.row_bytes(), self.kv.v_layout.row_bytes())
    }

    /// Bytes of one K row and one V row of `layer` (< n_layers).
    pub fn layer_row_bytes(&self, layer: usize) -> (usize, usize) {
        self.kv.layer_row_bytes(layer)
    }

    /// Size of the saved state (`save_state`).
    pub fn state_len(&self) -> usize {
        self.kv.state_len()
    }

    /// The centering means of every layer, versioned and fingerprinted (a device backend's means are
    /// copied back first: the call waits for the device).
    pub fn save_state(&self) -> CResult<Vec<u8>> {
        self.backend.get().means_to_codec(&self.kv)?;
        let mut v = Vec::with_capacity(self.kv.state_len());
        self.kv.save_state(&mut v);
        Ok(v)
    }

    /// Restore a state from `save_state` of a codec with the same parameters (of either backend); on a
    /// malformed or mismatched state nothing changes. A device backend uploads the means (waiting
    /// for work already queued on the device).
    pub fn load_state(&mut self, bytes: &[u8]) -> CResult<()> {
        self.kv.load_state(bytes)?;
        self.backend.get().means_from_codec(&self.kv)
    }

    /// Validate and run a dequantization given as raw addresses. `n_cells` 0 is a no-op.
    ///
    /// # Safety
    /// The store and the output cover what the sizes say, in the backend's memory; no one else writes
    /// the output during the call.
    pub unsafe fn dequantize_raw(&self, a: &DequantArgs, exec: Exec) -> CResult<()> {
        if let Exec::Part { .. } = exec {
            self.backend.require(Op::DequantPart)?;
        }
        let req = DequantRequest::validate(&self.kv, a)?;
        if req.n_cells == 0 {
            return Ok(());
        }
        // SAFETY: validated; the caller guarantees the pointers.
        unsafe { self.backend.get().dequantize(&self.kv, &req, exec) }
    }

    /// Validate and run an append given as raw addresses. `n_tokens` 0 is a no-op.
    ///
    /// # Safety
    /// The pointers cover what the sizes say, in the backend's memory; no one else reads or writes the
    /// target rows during the call.
    pub unsafe fn append_raw(&self, a: &AppendArgs, exec: Exec) -> CResult<()> {
        if let Exec::Part { .. } = exec {
            self.backend.require(Op::AppendPart)?;
        }
        // The layer is checked even for an empty call (as every other entry point does).
        request::check_layer(&self.kv, a.layer)?;
        if a.n_tokens == 0 {
            return Ok(());
        }
        let b = self.backend.get();
        // SAFETY: the caller guarantees the pointers.
        let req = unsafe { AppendRequest::validate(&self.kv, self.dtype, b.memory(), a) }?;
        // SAFETY: validated; the caller guarantees exclusive use of the target rows.
        unsafe { b.append(&self.kv, &req, exec) }
    }

    /// Validate and run an attend given as raw addresses (one sequence, or a batch of `n_seqs`).
    /// No query (n_q or n_seqs 0) is a no-op.
    ///
    /// # Safety
    /// The pointers cover what the sizes say, in the backend's memory; `out` is not used by others.
    pub unsafe fn attend_raw(&self, a: &AttendArgs, exec: Exec) -> CResult<()> {
        if let Exec::Part { .. } = exec {
            self.backend.require(Op::AttendPart)?;
        }
        if !a.extras.sinks.is_null() {
            self.backend.require(Op::AttendSinks)?;
        }
        if a.extras.softcap != 0.0 {
            self.backend.require(Op::LogitSoftcap)?;
        }
        if a.extras.full.any() {
            self.backend.require(Op::AttendFull)?;
        }
        let batch = matches!(a.stores, Stores::Batch { .. });
        if batch {
            self.backend.require(Op::AttendBatch)?;
        }
        request::check_layer(&self.kv, a.layer)?;
        if a.n_q == 0 || a.n_seqs == 0 {
            return Ok(());
        }
        if batch && a.seq_cells.is_null() {
            return Err(Error::null("n_cells"));
        }
        let b = self.backend.get();
        // SAFETY: the caller guarantees the pointers.
        let req = unsafe { AttendRequest::validate(&self.kv, self.dtype, b.memory(), a) }?;
        // SAFETY: validated; the caller guarantees `out` is not used by others.
        unsafe { b.attend(&self.kv, &req, exec) }?;
        if b.memory() == request::Memory::Host && matches!(exec, Exec::Queue(_)) {
            let c = &self.kv.config;
            for s in 0..req.n_seqs {
                // SAFETY: validated: out covers n_seqs blocks of n_q tokens × n_heads heads in host memory.
                unsafe {
                    let out = req.out.add(s * req.out_seq_stride);
                    limits::check_finite_output(out, req.out_strides, self.dtype, req.n_q, c.n_heads, c.head_dim)
                }?;
            }
        }
        Ok(())
    }
}
