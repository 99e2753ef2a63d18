//! Kernel compilation: the sources of `kernels/` are compiled by NVRTC, specialised per
//! (head_dim, bits_k, bits_v) — the only compile-time parameters; group size, head counts, dtypes,
//! rotation kind and strides are run-time arguments. At context creation the kernels are compiled
//! for the device's architecture (sm_XY, giving machine code: no PTX JIT at load); CI compiles every
//! variant for sm_80 and sm_90 without a GPU (tests/cuda_compile.rs).
//!
//! NVRTC is loaded at run time (cudarc `dynamic-loading`); `nvrtc_available` probes for it first,
//! because a first call without the library panics.

use std::ffi::{CStr, CString, c_char};

use cudarc::nvrtc::sys;

use super::params;

/// The kernel sources, concatenated in dependency order.
pub fn kernel_source() -> String {
    let parts = [
        include_str!("../../../kernels/common.cuh"),
        include_str!("../../../kernels/append.cu"),
        include_str!("../../../kernels/decode.cu"),
        include_str!("../../../kernels/decode_fast.cu"),
        include_str!("../../../kernels/prefill.cu"),
        include_str!("../../../kernels/combine.cu"),
        include_str!("../../../kernels/dequant.cu"),
    ];
    let mut s = String::new();
    for p in parts {
        s.push_str(p);
        s.push('\n');
    }
    s.push_str(&params::layout().0);
    s
}

/// One specialisation of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    pub head_dim: usize,
    pub bits_k: u32,
    pub bits_v: u32,
}

impl Variant {
    /// Whether the CUDA kernels support this shape (a head_dim multiple of 32, at most 256).
    pub fn check(&self) -> Result<(), String> {
        if self.head_dim % 32 != 0 || self.head_dim > 256 {
            return Err(format!(
                "head_dim {} is not supported by the CUDA backend: need a multiple of 32, at most 256",
                self.head_dim
            ));
        }
        for (name, b) in [("bits_k", self.bits_k), ("bits_v", self.bits_v)] {
            if !(1..=8).contains(&b) {
                return Err(format!("{name} {b} is not supported by the CUDA backend: need 1..=8"));
            }
        }
        Ok(())
    }
}

/// The variants CI compiles: every bit width 1..=8 (K = V) and the mixed pairs with 2..4 bits, for the
/// head dimensions of common models (64, 128, 256) and one non-power-of-two (96, DENSE rotation).
pub fn ci_variants() -> Vec<Variant> {
    let mut v = Vec::new();
    for &head_dim in &[64usize, 96, 128, 256] {
        for b in 1..=8u32 {
            v.push(Variant { head_dim, bits_k: b, bits_v: b });
        }
        for (bk, bv) in [(4u32, 2u32), (2, 4), (4, 3), (3, 4), (3, 2), (2, 3)] {
            v.push(Variant { head_dim, bits_k: bk, bits_v: bv });
        }
    }
    v
}

/// Whether libnvrtc can be loaded (cudarc panics on first use otherwise).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { sys::is_culib_present() }
}

/// The result of one compilation: the machine code (cubin) and the compiler log.
#[derive(Clone)]
pub struct Compiled {
    pub cubin: Vec<u8>,
    pub log: String,
}

fn check(r: sys::nvrtcResult, what: &str) -> Result<(), String> {
    if r == sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        // SAFETY: nvrtcGetErrorString returns a static string.
        let msg = unsafe { CStr::from_ptr(sys::nvrtcGetErrorString(r)) }.to_string_lossy().into_owned();
        Err(format!("NVRTC {what} failed: {msg}"))
    }
}

/// Stages of tq_decode_fast's shared-memory ring on `arch` ("sm_XY"), given to the kernels as FD_STAGES so
/// that the host's shared-memory sizing and the kernels cannot disagree: two from sm_90 on (bulk copies;
/// fewer, larger stages — each stage's wait and release costs a warp a good part of a step), four before
/// (cp.async with a CTA barrier per tile, where two stages would leave one tile in flight).
pub fn fast_stages(arch: &str) -> usize {
    let digits: String = arch.trim_start_matches("sm_").chars().take_while(char::is_ascii_digit).collect();
    if digits.parse::<u32>().is_ok_and(|n| n >= 90) { 2 } else { 4 }
}

/// Bytes of one warp pair's merge buffer in tq_decode_fast at `head_dim`, given to the kernels as
/// FD_MERGE_PAIR_BYTES (which check it against what they store) so that the host's shared-memory sizing
/// and the kernels cannot disagree: 32 lanes × 16 bytes for (m, l) and for each column tile of the
/// first of the two rounds, (head_dim / 16 + 1) / 2 of them.
pub fn fast_merge_pair_bytes(head_dim: usize) -> usize {
    512 * (1 + (head_dim / 16 + 1) / 2)
}

/// Every value the host and the kernels share, as (name in the kernels, value): the specialisation, the
/// dtype codes of the C API, and the launch geometry and shared-memory layout the host sizes its launches
/// with. `compile` passes each as a -D option; kernels/common.cuh refuses to compile without any of them,
/// and nothing in kernels/ spells one of these values itself.
pub fn shared_defines(variant: Variant, arch: &str) -> Vec<(&'static str, i64)> {
    use super::*;
    let d = variant.head_dim;
    let n = |v: usize| v as i64;
    vec![
        ("HEAD_DIM", n(d)),
        ("BITS_K", i64::from(variant.bits_k)),
        ("BITS_V", i64::from(variant.bits_v)),
        ("DTYPE_F32", i64::from(Dtype::F32.code())),
        ("DTYPE_F16", i64::from(Dtype::F16.code())),
        ("DTYPE_BF16", i64::from(Dtype::Bf16.code())),
        ("APPEND_WARPS", n(APPEND_WARPS)),
        ("PF_ROWS", n(PREFILL_ROWS)),
        ("PF_THREADS", i64::from(prefill_threads(d))),
        ("PF_MIN_CTAS", n(prefill_min_ctas(d))),
        ("PF_TILE", n(PREFILL_TILE)),
        ("PF_PAD", n(PREFILL_PAD)),
        ("DEC_STAGES", n(DECODE_STAGES)),
        ("DEC_MIN_CTAS", n(decode_min_ctas(d))),
        ("FD_COMPILED", i64::from(fast_variant(d, variant.bits_k, variant.bits_v))),
        ("FD_THREADS", n(FAST_THREADS)),
        ("FD_STAGES", n(fast_stages(arch))),
        ("FD_MERGE_PAIR_BYTES", n(fast_merge_pair_bytes(d))),
        ("ROT_WARPS", n(ROTATE_WARPS)),
        ("CMB_MAX_THREADS", n(32 * COMBINE_MAX_WARPS)),
        ("CMB_BATCH", n(COMBINE_BATCH)),
        ("PART_HEADER", n(PART_HEADER)),
    ]
}

/// The NVRTC options of one specialisation for `arch`: the architecture, every shared define, the language.
pub fn options(variant: Variant, arch: &str) -> Vec<String> {
    let defines = shared_defines(variant, arch).into_iter().map(|(k, v)| format!("-D{k}={v}"));
    // The encoder's roundings are fixed by the row format; it spells every one with __fmul_rn /
    // __fadd_rn / __dmul_rn (never contracted), so the rest may use fused multiply-adds.
    [format!("--gpu-architecture={arch}")].into_iter().chain(defines).chain(["--std=c++17".to_string()]).collect()
}

/// Compile the kernels for `arch` (e.g. "sm_90") to machine code. Errors carry the compiler log.
pub fn compile(variant: Variant, arch: &str) -> Result<Compiled, String> {
    variant.check()?;
    let src = CString::new(kernel_source()).expect("kernel source has no NUL");
    let name = CString::new("turboquant_kernels.cu").unwrap();
    let opts: Vec<CString> = options(variant, arch).into_iter().map(|s| CString::new(s).unwrap()).collect();
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|s| s.as_ptr()).collect();
    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: plain NVRTC calls on a program this function owns and destroys.
    unsafe {
        check(
            sys::nvrtcCreateProgram(&mut prog, src.as_ptr(), name.as_ptr(), 0, std::ptr::null(), std::ptr::null()),
            "program creation",
        )?;
        let rc = sys::nvrtcCompileProgram(prog, opt_ptrs.len() as i32, opt_ptrs.as_ptr());
        let mut log_len = 0usize;
        sys::nvrtcGetProgramLogSize(prog, &mut log_len);
        let mut log = vec![0u8; log_len.max(1)];
        sys::nvrtcGetProgramLog(prog, log.as_mut_ptr() as *mut c_char);
        let log = String::from_utf8_lossy(&log).trim_end_matches('\0').to_string();
        let result = check(rc, "compilation").map_err(|e| {
            format!(
                "{e} (head_dim {}, bits_k {}, bits_v {}, {arch}):\n{log}",
                variant.head_dim, variant.bits_k, variant.bits_v
            )
        });
        let out = result.and_then(|_| {
            let mut size = 0usize;
            check(sys::nvrtcGetCUBINSize(prog, &mut size), "cubin size")?;
            let mut cubin = vec![0u8; size];
            check(sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut c_char), "cubin")?;
            Ok(Compiled { cubin, log: log.clone() })
        });
        sys::nvrtcDestroyProgram(&mut prog);
        out
    }
}

/// `compile`, memoised per (variant, arch) for the life of the process: contexts of one model (and
/// tests) compile each specialisation once.
pub fn compile_cached(variant: Variant, arch: &str) -> Result<Compiled, String> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<(Variant, String), Compiled>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let key = (variant, arch.to_string());
    if let Some(c) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(c.clone());
    }
    let c = compile(variant, arch)?;
    cache.lock().unwrap_or_else(|e| e.into_inner()).insert(key, c.clone());
    Ok(c)
}
