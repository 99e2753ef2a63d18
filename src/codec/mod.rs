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
pub mod request;
mod safe;

pub use safe::{Element, HostMask, HostTensor};

use crate::backend::{AnyBackend, BackendChoice, Op};
use crate::error::{Error, ErrorKind};
type CResult<T> = crate::error::Result<T>;
use request::{AppendArgs, AppendRequest, AttendArgs, AttendRequest, Exec, Stores};

use std::sync::OnceLock;

use crate::math::quantizer::{MseQuantizer, Quantizer, QuantizerConfig, QuantizerKind};
use crate::math::rotation::RotationKind;
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
    pub centering: bool,
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
}

#[derive(Debug)]
pub struct KvCodec {
    pub config: KvConfig,
    pub layers: Vec<LayerCodec>,
    pub k_layout: RowLayout,
    pub v_layout: RowLayout,
}

impl KvCodec {
    /// Build all per-layer quantizers. K of layer L uses rotation stream 2L (and QJL stream L), V uses
    /// rotation stream 2L + 1, all from `config.seed`.
    pub fn new(config: KvConfig) -> Result<Self, String> {
        let layers = (0..config.n_layers)
            .map(|l| {
                let key_cfg = QuantizerConfig {
                    dim: config.head_dim,
                    bits: config.bits_k,
                    rotation: config.rotation,
                    kind: config.key_mode,
                    seed: config.seed,
                };
                let key = Quantizer::new_indexed(key_cfg, 2 * l as u64, l as u64)?;
                let value =
                    MseQuantizer::new(config.head_dim, config.bits_v, config.rotation, config.seed, 2 * l as u64 + 1)?;
                Ok(LayerCodec { key, value, means: OnceLock::new() })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let k_layout = RowLayout {
            n_kv_heads: config.n_kv_heads,
            head_dim: config.head_dim,
            mse_bits: match config.key_mode {
                QuantizerKind::Mse => config.bits_k,
                QuantizerKind::Prod => config.bits_k - 1,
            },
            qjl: config.key_mode == QuantizerKind::Prod,
        };
        let v_layout =
            RowLayout { n_kv_heads: config.n_kv_heads, head_dim: config.head_dim, mse_bits: config.bits_v, qjl: false };
        Ok(Self { config, layers, k_layout, v_layout })
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

    /// Replace every layer's means by a state written by `save_state` (validated first; on error
    /// nothing changes).
    pub fn load_state(&mut self, bytes: &[u8]) -> CResult<()> {
        let parsed = self.parse_state(bytes)?;
        for (layer, means) in self.layers.iter_mut().zip(parsed) {
            layer.means = match means {
                Some(m) => OnceLock::from(m),
                None => OnceLock::new(),
            };
        }
        Ok(())
    }

    /// Serialized size of the codec's mutable state (the centering means).
    pub fn state_len(&self) -> usize {
        let per_layer = 1 + 2 * self.config.n_kv_heads * self.config.head_dim * 4;
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
            c.centering as u64,
        ];
        // FNV-1a over the little-endian fields: stable across platforms and releases.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for f in fields {
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
        }
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    /// Parse a state written by `save_state` into per-layer means (validated, not yet applied).
    pub fn parse_state(&self, bytes: &[u8]) -> Result<Vec<Option<Means>>, StateError> {
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
                "context state format version {version}, this library reads version {STATE_VERSION}"
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
            match flag {
                0 if floats.iter().all(|&v| v.to_bits() == 0) => result.push(None),
                0 => return Err(StateError::Corrupt(format!("layer {l}: means stored for a layer marked unset"))),
                1 => {
                    if floats.iter().any(|v| !(v.abs() <= limits::MAX_INPUT_ABS)) {
                        return Err(StateError::Corrupt(format!("layer {l}: centering mean not finite or above 2^64")));
                    }
                    result.push(Some(Means { k: floats[..n].to_vec(), v: floats[n..].to_vec() }));
                }
                other => return Err(StateError::Corrupt(format!("layer {l}: bad flag byte {other}"))),
            }
        }
        Ok(result)
    }
}

const STATE_MAGIC: &[u8; 8] = b"TQCTXST\0";
/// 2: a CRC-32 follows the means (version 1 had none).
const STATE_VERSION: u32 = 2;

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
        let kv = KvCodec::new(config).map_err(|m| Error::new(ErrorKind::Unsupported, m))?;
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

    /// Bytes of one K row and one V row (one token of one layer, all kv heads).
    pub fn row_bytes(&self) -> (usize, usize) {
        (self.kv.k_layout.row_bytes(), self.kv.v_layout.row_bytes())
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

    /// Validate and run an append given as raw addresses. `n_tokens` 0 is a no-op.
    ///
    /// # Safety
    /// The pointers cover what the sizes say, in the backend's memory; no one else reads or writes the
    /// target rows during the call.
    pub unsafe fn append_raw(&self, a: &AppendArgs, exec: Exec) -> CResult<()> {
        if let Exec::Part { .. } = exec {
            self.backend.require(Op::AppendPart)?;
        }
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
        let batch = matches!(a.stores, Stores::Batch { .. });
        if batch {
            self.backend.require(Op::AttendBatch)?;
        }
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
