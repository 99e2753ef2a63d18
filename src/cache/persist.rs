//! Saving and loading an owned cache: a versioned, checksummed byte format.
//!
//! Layout (little-endian): magic "TQKVCACH", format version u32, codec fingerprint u64,
//! max_seqs, max_tokens, residual_window, n_sink, n_layers, n_kv_heads, head_dim, k_row_bytes,
//! v_row_bytes (u32 each); per layer a centering flag u8 and, if set, the K and V means (f32);
//! then for every (seq, layer): n_compressed u32, their positions (i64), K rows, V rows,
//! n_full u32, positions (i64), K and V values (f32); finally a CRC-32 of everything before it.
//! Loading checks the checksum first, then the version and parameters, then every count and value,
//! and only then replaces the cache's contents.

use super::{CacheParams, OwnedCache, SeqLayer};
use crate::codec::layout::RowLayout;
use crate::codec::limits::{MAX_INPUT_ABS, MAX_POSITION, MAX_ROW_SCALE};
use crate::codec::{KvCodec, Means};

const MAGIC: &[u8; 8] = b"TQKVCACH";
/// 2: rows store scale-corrected K and V scales (`codec::KEY_SCALE_RULE`, `VALUE_SCALE_RULE`); version 1
/// rows stored ‖x‖ and would decode with the wrong magnitude, so they are refused.
pub const FORMAT_VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq)]
pub enum LoadError {
    /// Not a cache file, truncated, or damaged.
    Corrupt(String),
    /// A valid file written with other parameters or another format version.
    Incompatible(String),
}

fn header_fields(codec: &KvCodec, p: &CacheParams) -> [u32; 9] {
    [
        p.max_seqs as u32,
        p.max_tokens as u32,
        p.residual_window as u32,
        p.n_sink as u32,
        codec.config.n_layers as u32,
        codec.config.n_kv_heads as u32,
        codec.config.head_dim as u32,
        codec.k_layout.row_bytes() as u32,
        codec.v_layout.row_bytes() as u32,
    ]
}

/// The length of `save`'s output, computed without serialising (a size query of a large cache costs
/// no copy of it).
pub fn saved_len(cache: &OwnedCache, codec: &KvCodec) -> usize {
    let mut n = MAGIC.len() + 4 + 8 + 4 * header_fields(codec, &cache.params).len();
    for m in &cache.means {
        n += 1 + m.as_ref().map_or(0, |m| 4 * (m.k.len() + m.v.len()));
    }
    for s in 0..cache.seqs.len() {
        for l in (0..codec.config.n_layers).map(|l| cache.layer(s, l)) {
            n += 4 + 8 * l.comp_pos.len() + l.comp_k.len() + l.comp_v.len();
            n += 4 + 8 * l.full_pos.len() + 4 * (l.full_k.len() + l.full_v.len());
        }
    }
    n + 4
}

/// `save` into a buffer reserved up front: a cache too large for the memory left is refused with
/// OUT_OF_MEMORY instead of aborting the process.
pub fn save_checked(cache: &OwnedCache, codec: &KvCodec) -> crate::error::Result<Vec<u8>> {
    let len = saved_len(cache, codec);
    let mut out = Vec::new();
    crate::codec::limits::reserved(out.try_reserve_exact(len), || format!("cannot allocate the {len} bytes of the saved cache"))?;
    save_into(cache, codec, &mut out);
    debug_assert_eq!(out.len(), len);
    Ok(out)
}

pub fn save(cache: &OwnedCache, codec: &KvCodec) -> Vec<u8> {
    let mut out = Vec::with_capacity(saved_len(cache, codec));
    save_into(cache, codec, &mut out);
    out
}

fn save_into(cache: &OwnedCache, codec: &KvCodec, out: &mut Vec<u8>) {
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&codec.fingerprint().to_le_bytes());
    for f in header_fields(codec, &cache.params) {
        out.extend_from_slice(&f.to_le_bytes());
    }
    for m in &cache.means {
        match m {
            Some(m) => {
                out.push(1);
                m.k.iter().chain(&m.v).for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
            }
            None => out.push(0),
        }
    }
    for s in 0..cache.seqs.len() {
        for l in (0..codec.config.n_layers).map(|l| cache.layer(s, l)) {
            out.extend_from_slice(&(l.comp_pos.len() as u32).to_le_bytes());
            l.comp_pos.iter().for_each(|p| out.extend_from_slice(&p.to_le_bytes()));
            out.extend_from_slice(&l.comp_k);
            out.extend_from_slice(&l.comp_v);
            out.extend_from_slice(&(l.full_pos.len() as u32).to_le_bytes());
            l.full_pos.iter().for_each(|p| out.extend_from_slice(&p.to_le_bytes()));
            l.full_k.iter().chain(&l.full_v).for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
        }
    }
    let crc = crc32fast::hash(out);
    out.extend_from_slice(&crc.to_le_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], LoadError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            LoadError::Corrupt(format!("truncated: {what} needs {n} bytes at offset {}", self.pos))
        })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32, LoadError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn f32s(&mut self, n: usize, what: &str) -> Result<Vec<f32>, LoadError> {
        let raw = self.take(n.checked_mul(4).ok_or_else(|| LoadError::Corrupt(format!("{what}: size overflow")))?, what)?;
        let v: Vec<f32> = raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        if let Some(x) = v.iter().find(|x| !(x.abs() <= MAX_INPUT_ABS)) {
            return Err(LoadError::Corrupt(format!("{what}: value {x} is not finite or exceeds 2^64 in magnitude")));
        }
        Ok(v)
    }
    fn positions(&mut self, n: usize, what: &str) -> Result<Vec<i64>, LoadError> {
        let raw = self.take(n * 8, what)?;
        let v: Vec<i64> = raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
        if v.iter().any(|&p| !(0..MAX_POSITION).contains(&p)) || v.windows(2).any(|w| w[0] >= w[1]) {
            return Err(LoadError::Corrupt(format!("{what}: positions are not increasing and in 0..2^62")));
        }
        Ok(v)
    }
}

/// Parse `bytes` into a cache for `codec` with `params` (the file must have been written with the
/// same codec parameters and cache parameters).
pub fn load(bytes: &[u8], codec: &KvCodec, params: &CacheParams) -> Result<OwnedCache, LoadError> {
    if bytes.len() < MAGIC.len() + 4 + 4 {
        return Err(LoadError::Corrupt(format!("{} bytes is too short for a libturboquant cache", bytes.len())));
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(LoadError::Corrupt("not a libturboquant cache (bad magic)".into()));
    }
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes(tail.try_into().unwrap());
    if crc32fast::hash(body) != stored {
        return Err(LoadError::Corrupt("checksum mismatch: the data is truncated or damaged".into()));
    }
    let mut r = Reader { bytes: body, pos: MAGIC.len() };
    let version = r.u32("version")?;
    if version != FORMAT_VERSION {
        return Err(LoadError::Incompatible(format!(
            "cache format version {version}; this library reads version {FORMAT_VERSION} (rows of other versions store other scales: re-create the cache)"
        )));
    }
    let fp = u64::from_le_bytes(r.take(8, "fingerprint")?.try_into().unwrap());
    // The header's fields name a parameter that differs; the fingerprint covers the rest.
    let want = header_fields(codec, params);
    for (i, &w) in want.iter().enumerate() {
        let got = r.u32("header")?;
        if got != w {
            const NAMES: [&str; 9] = ["max_seqs", "max_tokens", "residual_window", "n_sink", "n_layers", "n_kv_heads", "head_dim", "k_row_bytes", "v_row_bytes"];
            return Err(LoadError::Incompatible(format!("saved {} is {got}, this cache has {w}", NAMES[i])));
        }
    }
    if fp != codec.fingerprint() {
        return Err(LoadError::Incompatible(
            "the cache was saved by a context with different parameters (n_heads, bits, rotation, key mode, seed, centering, \
             key outliers or per-layer bits: its layers, kv heads, head_dim and row sizes agree)"
                .into(),
        ));
    }
    let hd = codec.config.n_kv_heads * codec.config.head_dim;
    let (kr, vr) = (codec.k_layout.row_bytes(), codec.v_layout.row_bytes());
    let mut cache = OwnedCache::new(codec, *params);
    for l in 0..codec.config.n_layers {
        match r.take(1, "centering flag")?[0] {
            0 => {}
            1 => {
                let k = r.f32s(hd, "centering means")?;
                let v = r.f32s(hd, "centering means")?;
                cache.means[l] = Some(Means { k, v });
            }
            other => return Err(LoadError::Corrupt(format!("layer {l}: bad centering flag {other}"))),
        }
    }
    for s in 0..params.max_seqs {
        for l in 0..codec.config.n_layers {
            let what = format!("seq {s} layer {l}");
            let nc = r.u32(&what)? as usize;
            if nc > params.max_tokens {
                return Err(LoadError::Corrupt(format!("{what}: {nc} compressed tokens exceed max_tokens")));
            }
            let comp_pos = r.positions(nc, &what)?;
            let comp_k = r.take(nc * kr, &what)?.to_vec();
            let comp_v = r.take(nc * vr, &what)?.to_vec();
            let nf = r.u32(&what)? as usize;
            if nc + nf > params.max_tokens {
                return Err(LoadError::Corrupt(format!("{what}: {} tokens exceed max_tokens", nc + nf)));
            }
            let full_pos = r.positions(nf, &what)?;
            let full_k = r.f32s(nf * hd, &what)?;
            let full_v = r.f32s(nf * hd, &what)?;
            if full_pos.iter().any(|p| comp_pos.binary_search(p).is_ok()) {
                return Err(LoadError::Corrupt(format!("{what}: a position is stored twice")));
            }
            for (rows, row_bytes, layout, what) in [(&comp_k, kr, &codec.k_layout, "K"), (&comp_v, vr, &codec.v_layout, "V")] {
                check_row_scales(rows, row_bytes, layout).map_err(|m| LoadError::Corrupt(format!("seq {s} layer {l}: {what} {m}")))?;
            }
            if nc + nf > 0 {
                *cache.layer_mut(s, l) = SeqLayer { comp_k, comp_v, comp_pos, full_k, full_v, full_pos };
            }
        }
    }
    if r.pos != body.len() {
        return Err(LoadError::Corrupt(format!("{} unexpected trailing bytes", body.len() - r.pos)));
    }
    Ok(cache)
}

/// Every bf16 scale of compressed rows (norm scales and, for PROD keys, residual scales) must be
/// finite, non-negative and at most [`MAX_ROW_SCALE`]: what an append of in-range values can write.
fn check_row_scales(rows: &[u8], row_bytes: usize, layout: &RowLayout) -> Result<(), String> {
    let mut offsets: Vec<usize> = (0..layout.n_kv_heads).map(|h| layout.scale_offset(h)).collect();
    if layout.qjl {
        offsets.extend((0..layout.n_kv_heads).map(|h| layout.gamma_offset(h)));
    }
    for (i, row) in rows.chunks_exact(row_bytes).enumerate() {
        for &o in &offsets {
            let x = half::bf16::from_le_bytes([row[o], row[o + 1]]).to_f32();
            if !(0.0..=MAX_ROW_SCALE).contains(&x) {
                return Err(format!("row {i}: scale {x} is not finite, negative or above 2^71"));
            }
        }
    }
    Ok(())
}

/// Write `bytes` to `path` atomically: a temporary with a unique name beside the target, created
/// exclusively (never through an existing file or symlink), fsynced, then renamed over `path`. On any
/// failure the temporary is removed and `path` is untouched.
pub fn write_file(path: &std::path::Path, bytes: &[u8]) -> crate::error::Result<()> {
    use crate::error::{Error, ErrorKind};
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().filter(|n| !n.is_empty()).ok_or_else(|| {
        Error::invalid(format!("path \"{}\" does not name a file", path.display()))
    })?;
    let io = |e: std::io::Error, what: &str| Error::new(ErrorKind::Io, format!("{what} {}: {e}", path.display()));
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let (tmp, mut file) = loop {
        let mut t = std::ffi::OsString::from(".");
        t.push(name);
        t.push(format!(".{}.{}.tmp", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
        let tmp = dir.join(t);
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(e, "cannot create a temporary file beside")),
        }
    };
    let result = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io(e, "cannot write"))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| io(e, "cannot rename into")));
    drop(file);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The contents of `path`, which must be a regular file (FIFOs, devices and directories are refused
/// without being read, so a load never blocks on them).
pub fn read_file(path: &std::path::Path) -> crate::error::Result<Vec<u8>> {
    use crate::error::{Error, ErrorKind};
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| Error::new(ErrorKind::Io, format!("cannot read {}: {e}", path.display()));
    // O_NONBLOCK: opening a FIFO must not wait for a writer; the type is checked on the open file.
    let mut file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::Io, format!("cannot read {}: not a regular file", path.display())));
    }
    let mut bytes = Vec::new();
    crate::codec::limits::reserved(bytes.try_reserve_exact(meta.len() as usize), || {
        format!("{}: cannot allocate {} bytes", path.display(), meta.len())
    })?;
    file.read_to_end(&mut bytes).map_err(io)?;
    Ok(bytes)
}
