//! The owned cache: storage policy on top of the codec for engines that do not manage cells
//! themselves. Per (sequence, layer) it keeps two sets of tokens, each in position order:
//! compressed rows (the codec's row format) and full-precision rows (f32, original basis) — the most
//! recent `residual_window` tokens and the sinks (positions < `n_sink`). A token is compressed when it
//! leaves the window. Attention merges both sets in one softmax with causal masking by position.

pub mod handle;
pub mod persist;

use crate::backend::cpu::attend::{AttendJob, FullRows, MaskSource};
use crate::backend::cpu::encode::{self, EncodeScratch, HeadTensor};
use crate::codec::{Dtype, KvCodec, Means, Strides};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheParams {
    pub max_seqs: usize,
    pub max_tokens: usize,
    pub residual_window: usize,
    pub n_sink: usize,
}

/// The tokens of one sequence in one layer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SeqLayer {
    pub comp_k: Vec<u8>,
    pub comp_v: Vec<u8>,
    pub comp_pos: Vec<i64>,
    /// [n][n_kv_heads][head_dim] f32.
    pub full_k: Vec<f32>,
    pub full_v: Vec<f32>,
    pub full_pos: Vec<i64>,
}

impl SeqLayer {
    pub fn len(&self) -> usize {
        self.comp_pos.len() + self.full_pos.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Position the next appended token gets.
    pub fn next_pos(&self) -> i64 {
        let a = self.comp_pos.last().copied().unwrap_or(-1);
        let b = self.full_pos.iter().copied().max().unwrap_or(-1);
        a.max(b) + 1
    }

    /// Keep only tokens whose position satisfies `keep`.
    fn retain(&mut self, kr: usize, vr: usize, hd: usize, keep: impl Fn(i64) -> bool) {
        let mut n = 0;
        for i in 0..self.comp_pos.len() {
            if keep(self.comp_pos[i]) {
                self.comp_k.copy_within(i * kr..(i + 1) * kr, n * kr);
                self.comp_v.copy_within(i * vr..(i + 1) * vr, n * vr);
                self.comp_pos[n] = self.comp_pos[i];
                n += 1;
            }
        }
        self.comp_pos.truncate(n);
        self.comp_k.truncate(n * kr);
        self.comp_v.truncate(n * vr);
        let mut n = 0;
        for i in 0..self.full_pos.len() {
            if keep(self.full_pos[i]) {
                self.full_k.copy_within(i * hd..(i + 1) * hd, n * hd);
                self.full_v.copy_within(i * hd..(i + 1) * hd, n * hd);
                self.full_pos[n] = self.full_pos[i];
                n += 1;
            }
        }
        self.full_pos.truncate(n);
        self.full_k.truncate(n * hd);
        self.full_v.truncate(n * hd);
    }

    /// Insert a compressed row keeping position order.
    fn insert_compressed(&mut self, pos: i64, k_row: &[u8], v_row: &[u8]) {
        let at = self.comp_pos.partition_point(|&p| p < pos);
        let (kr, vr) = (k_row.len(), v_row.len());
        self.comp_pos.insert(at, pos);
        self.comp_k.splice(at * kr..at * kr, k_row.iter().copied());
        self.comp_v.splice(at * vr..at * vr, v_row.iter().copied());
    }

    /// Insert a full-precision row keeping position order.
    fn insert_full(&mut self, pos: i64, k: &[f32], v: &[f32]) {
        let at = self.full_pos.partition_point(|&p| p < pos);
        let hd = k.len();
        self.full_pos.insert(at, pos);
        self.full_k.splice(at * hd..at * hd, k.iter().copied());
        self.full_v.splice(at * hd..at * hd, v.iter().copied());
    }
}

/// Why a cache operation was refused (nothing was changed).
#[derive(Debug, Clone, PartialEq)]
pub enum CacheError {
    Invalid(String),
    Capacity(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct OwnedCache {
    pub params: CacheParams,
    /// seqs[seq][layer].
    pub seqs: Vec<Vec<SeqLayer>>,
    /// Centering means per layer (fixed by the first append to the layer in any sequence).
    pub means: Vec<Option<Means>>,
}

/// Memory held and what an f16 cache would hold for the same tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUsage {
    pub bytes_used: usize,
    pub bytes_fp16: usize,
    pub n_tokens: usize,
    pub n_compressed: usize,
}

impl OwnedCache {
    pub fn new(codec: &KvCodec, params: CacheParams) -> Self {
        let n_layers = codec.config.n_layers;
        Self {
            params,
            // Per-sequence layers are allocated by the first write to the sequence (lazy: max_seqs ×
            // n_layers records up front would be gigabytes for documented-valid parameters).
            seqs: (0..params.max_seqs).map(|_| Vec::new()).collect(),
            means: vec![None; n_layers],
        }
    }

    /// The tokens of (`seq`, `layer`); an untouched sequence has none.
    pub fn layer(&self, seq: usize, layer: usize) -> &SeqLayer {
        static EMPTY: SeqLayer = SeqLayer {
            comp_k: Vec::new(),
            comp_v: Vec::new(),
            comp_pos: Vec::new(),
            full_k: Vec::new(),
            full_v: Vec::new(),
            full_pos: Vec::new(),
        };
        self.seqs[seq].get(layer).unwrap_or(&EMPTY)
    }

    /// The tokens of (`seq`, `layer`) for writing: the sequence's layers are allocated on first use.
    pub fn layer_mut(&mut self, seq: usize, layer: usize) -> &mut SeqLayer {
        let n_layers = self.means.len();
        let layers = &mut self.seqs[seq];
        if layers.is_empty() {
            layers.resize_with(n_layers, SeqLayer::default);
        }
        &mut layers[layer]
    }

    fn head_elems(codec: &KvCodec) -> usize {
        codec.config.n_kv_heads * codec.config.head_dim
    }

    pub fn check_seq(&self, seq: usize) -> Result<(), CacheError> {
        if seq < self.params.max_seqs {
            Ok(())
        } else {
            Err(CacheError::Invalid(format!("seq is {seq}: the cache has max_seqs = {}", self.params.max_seqs)))
        }
    }

    /// Append `n` tokens of `k`/`v` (packed [n][n_kv][d] of `dtype`, finite — checked by the caller).
    ///
    /// # Safety
    /// `k` and `v` point to n·n_kv·d elements of `dtype`.
    pub unsafe fn append(
        &mut self,
        codec: &KvCodec,
        layer: usize,
        seq: usize,
        n: usize,
        k: *const u8,
        v: *const u8,
        dtype: Dtype,
    ) -> Result<(), CacheError> {
        self.check_seq(seq)?;
        let have = self.layer(seq, layer).len();
        if have + n > self.params.max_tokens {
            return Err(CacheError::Capacity(format!(
                "seq {seq} layer {layer} holds {have} tokens; {n} more exceed max_tokens = {}",
                self.params.max_tokens
            )));
        }
        if n == 0 {
            return Ok(());
        }
        let next = self.layer(seq, layer).next_pos();
        if next.checked_add(n as i64).is_none_or(|end| end > crate::codec::limits::MAX_POSITION) {
            return Err(CacheError::Capacity(format!(
                "seq {seq} layer {layer}: positions {next}.. plus {n} tokens pass the largest position 2^62"
            )));
        }
        let (h, d) = (codec.config.n_kv_heads, codec.config.head_dim);
        let strides = Strides::packed(h, d, dtype);
        let kt = HeadTensor { ptr: k, strides, dtype };
        let vt = HeadTensor { ptr: v, strides, dtype };
        if codec.config.centering && self.means[layer].is_none() {
            self.means[layer] =
                // SAFETY: kt and vt cover n packed tokens (the caller's guarantee for k and v).
                Some(unsafe { encode::first_append_means(codec, &kt, &vt, n) });
        }
        let hd = h * d;
        let sl = self.layer_mut(seq, layer);
        let first = sl.next_pos();
        let mut kbuf = vec![0.0f32; hd];
        let mut vbuf = vec![0.0f32; hd];
        for i in 0..n {
            for head in 0..h {
                // SAFETY: token i < n and head < n_kv_heads: inside the caller's k and v.
                unsafe {
                    kt.load(i, head, &mut kbuf[head * d..(head + 1) * d]);
                    vt.load(i, head, &mut vbuf[head * d..(head + 1) * d]);
                }
            }
            sl.insert_full(first + i as i64, &kbuf, &vbuf);
        }
        self.enforce_window(codec, layer, seq);
        Ok(())
    }

    /// Compress full-precision tokens that are neither sinks nor among the `residual_window` most
    /// recent ones.
    fn enforce_window(&mut self, codec: &KvCodec, layer: usize, seq: usize) {
        let (window, n_sink) = (self.params.residual_window, self.params.n_sink as i64);
        let hd = Self::head_elems(codec);
        let (kr, vr) = (codec.k_layout.row_bytes(), codec.v_layout.row_bytes());
        let means = self.means[layer].clone();
        let sl = self.layer_mut(seq, layer);
        let recent: Vec<usize> = (0..sl.full_pos.len()).filter(|&i| sl.full_pos[i] >= n_sink).collect();
        if recent.len() <= window {
            return;
        }
        let leaving: Vec<usize> = recent[..recent.len() - window].to_vec();
        let mut scratch = EncodeScratch::new(codec);
        let mut k_row = vec![0u8; kr];
        let mut v_row = vec![0u8; vr];
        let strides = Strides::packed(codec.config.n_kv_heads, codec.config.head_dim, Dtype::F32);
        for &i in &leaving {
            let kt = HeadTensor { ptr: sl.full_k[i * hd..].as_ptr().cast(), strides, dtype: Dtype::F32 };
            let vt = HeadTensor { ptr: sl.full_v[i * hd..].as_ptr().cast(), strides, dtype: Dtype::F32 };
            // SAFETY: kt and vt point into this token's f32 rows of the window (one packed token).
            unsafe { encode::encode_token(codec, layer, means.as_ref(), None, &kt, &vt, 0, &mut k_row, &mut v_row, &mut scratch) };
            let pos = sl.full_pos[i];
            sl.insert_compressed(pos, &k_row, &v_row);
        }
        let leaving_pos: Vec<i64> = leaving.iter().map(|&i| sl.full_pos[i]).collect();
        // Drop the compressed tokens from the full set (positions are unique within a sequence).
        let mut n = 0;
        for i in 0..sl.full_pos.len() {
            if leaving_pos.binary_search(&sl.full_pos[i]).is_err() {
                sl.full_k.copy_within(i * hd..(i + 1) * hd, n * hd);
                sl.full_v.copy_within(i * hd..(i + 1) * hd, n * hd);
                sl.full_pos[n] = sl.full_pos[i];
                n += 1;
            }
        }
        sl.full_pos.truncate(n);
        sl.full_k.truncate(n * hd);
        sl.full_v.truncate(n * hd);
    }

    /// The attention job for the last `n_q` positions of `seq` (query positions written to `query_pos`).
    pub fn attend_job<'a>(
        &'a self,
        codec: &'a KvCodec,
        layer: usize,
        seq: usize,
        q: HeadTensor,
        n_q: usize,
        scale: f32,
        out: *mut u8,
        query_pos: &'a [i64],
    ) -> AttendJob<'a> {
        let sl = self.layer(seq, layer);
        let d = codec.config.head_dim;
        AttendJob {
            codec,
            layer,
            means: self.means[layer].as_ref(),
            key_order: None,
            q,
            n_q,
            k_store: sl.comp_k.as_ptr(),
            v_store: sl.comp_v.as_ptr(),
            n_cells: sl.comp_pos.len(),
            mask: MaskSource::Causal { cell_pos: &sl.comp_pos, query_pos },
            full: Some(FullRows::causal(&sl.full_k, &sl.full_v, codec.config.n_kv_heads, d, &sl.full_pos, query_pos)),
            scale,
            sinks: None,
            softcap: 0.0,
            out,
            out_strides: Strides::packed(codec.config.n_heads, d, q.dtype),
            out_dtype: q.dtype,
        }
    }

    /// Positions of the last `n_q` tokens of `seq` in `layer` (the queries of an attend call).
    pub fn last_positions(&self, layer: usize, seq: usize, n_q: usize) -> Result<Vec<i64>, CacheError> {
        let sl = self.layer(seq, layer);
        let mut all: Vec<i64> = sl.comp_pos.iter().chain(&sl.full_pos).copied().collect();
        if n_q > all.len() {
            return Err(CacheError::Invalid(format!(
                "n_q is {n_q}, but seq {seq} holds {} tokens in layer {layer}: append the queries' K/V first",
                all.len()
            )));
        }
        all.sort_unstable();
        Ok(all[all.len() - n_q..].to_vec())
    }

    fn seq_range(&self, seq: i32) -> Result<std::ops::Range<usize>, CacheError> {
        if seq < 0 {
            Ok(0..self.params.max_seqs)
        } else {
            self.check_seq(seq as usize)?;
            Ok(seq as usize..seq as usize + 1)
        }
    }

    /// Remove positions [p0, p1) (p0 < 0: from 0; p1 < 0: to the end) from `seq` (< 0: all).
    pub fn seq_rm(&mut self, codec: &KvCodec, seq: i32, p0: i64, p1: i64) -> Result<(), CacheError> {
        let range = self.seq_range(seq)?;
        let (lo, hi) = bounds(p0, p1);
        let (kr, vr, hd) = (codec.k_layout.row_bytes(), codec.v_layout.row_bytes(), Self::head_elems(codec));
        for s in range {
            for sl in &mut self.seqs[s] {
                sl.retain(kr, vr, hd, |p| p < lo || p >= hi);
            }
        }
        Ok(())
    }

    /// Replace `dst`'s tokens in [p0, p1) by copies of `src`'s (same representation: bit-identical
    /// attention). Refused, with nothing changed, if `dst` would exceed max_tokens.
    pub fn seq_cp(&mut self, codec: &KvCodec, src: usize, dst: usize, p0: i64, p1: i64) -> Result<(), CacheError> {
        self.check_seq(src)?;
        self.check_seq(dst)?;
        if src == dst {
            return Ok(());
        }
        let (lo, hi) = bounds(p0, p1);
        let inside = |p: i64| p >= lo && p < hi;
        let n_layers = self.means.len();
        for layer in 0..n_layers {
            let (s, d) = (self.layer(src, layer), self.layer(dst, layer));
            let kept = d.comp_pos.iter().chain(&d.full_pos).filter(|&&p| !inside(p)).count();
            let copied = s.comp_pos.iter().chain(&s.full_pos).filter(|&&p| inside(p)).count();
            if kept + copied > self.params.max_tokens {
                return Err(CacheError::Capacity(format!(
                    "seq_cp: seq {dst} layer {layer} would hold {} tokens, max_tokens = {}",
                    kept + copied,
                    self.params.max_tokens
                )));
            }
        }
        let (kr, vr, hd) = (codec.k_layout.row_bytes(), codec.v_layout.row_bytes(), Self::head_elems(codec));
        for layer in 0..n_layers {
            let s = self.layer(src, layer).clone();
            if s.is_empty() && self.layer(dst, layer).is_empty() {
                continue;
            }
            let d = self.layer_mut(dst, layer);
            d.retain(kr, vr, hd, |p| !inside(p));
            for i in 0..s.comp_pos.len() {
                if inside(s.comp_pos[i]) {
                    d.insert_compressed(s.comp_pos[i], &s.comp_k[i * kr..(i + 1) * kr], &s.comp_v[i * vr..(i + 1) * vr]);
                }
            }
            for i in 0..s.full_pos.len() {
                if inside(s.full_pos[i]) {
                    d.insert_full(s.full_pos[i], &s.full_k[i * hd..(i + 1) * hd], &s.full_v[i * hd..(i + 1) * hd]);
                }
            }
        }
        Ok(())
    }

    /// Remove every sequence but `seq`.
    pub fn seq_keep(&mut self, seq: usize) -> Result<(), CacheError> {
        self.check_seq(seq)?;
        for (s, layers) in self.seqs.iter_mut().enumerate() {
            if s != seq {
                *layers = Vec::new();
            }
        }
        Ok(())
    }

    /// Remove every token (centering means stay: rows encoded later must use the same means).
    pub fn clear(&mut self) {
        for layers in &mut self.seqs {
            *layers = Vec::new();
        }
    }

    pub fn seq_len(&self, seq: usize) -> Result<usize, CacheError> {
        self.check_seq(seq)?;
        Ok(self.seqs[seq].first().map_or(0, |l| l.len()))
    }

    pub fn memory(&self, codec: &KvCodec) -> MemoryUsage {
        let (kr, vr, hd) = (codec.k_layout.row_bytes(), codec.v_layout.row_bytes(), Self::head_elems(codec));
        let mut m = MemoryUsage { bytes_used: 0, bytes_fp16: 0, n_tokens: 0, n_compressed: 0 };
        for layers in &self.seqs {
            for l in layers {
                m.n_tokens += l.len();
                m.n_compressed += l.comp_pos.len();
                m.bytes_used += l.comp_pos.len() * (kr + vr + 8) + l.full_pos.len() * (2 * hd * 4 + 8);
                m.bytes_fp16 += l.len() * 2 * hd * 2;
            }
        }
        m
    }
}

fn bounds(p0: i64, p1: i64) -> (i64, i64) {
    (if p0 < 0 { 0 } else { p0 }, if p1 < 0 { i64::MAX } else { p1 })
}
