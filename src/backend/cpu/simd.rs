//! Small vector kernels of the CPU attention loop and the choice of explicit kernels (`Level`). The
//! portable forms are lane-parallel loops over fixed-width chunks for the compiler to vectorise; the
//! explicit forms are written once over `vector::Vector` and run as AVX-512 (16 lanes) or AVX2 + FMA
//! (8 lanes), including the centroid lookup of ≤ 4-bit codes (`vpermps` turns codes into floats).

use crate::math::packing::unpack;

const LANES: usize = 16;

/// Σ a_i·b_i.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let level = level();
    #[cfg(target_arch = "x86_64")]
    if level != Level::Portable && a.len().is_multiple_of(level.lanes()) && a.len() == b.len() {
        // SAFETY: the level's features were detected; equal lengths, a multiple of its lanes.
        return unsafe { x86::dot(level, a, b) };
    }
    let _ = level;
    dot_portable(a, b)
}

/// Σ a_i·b_i with 16 interleaved partial sums.
#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    // Pairwise tree over the lanes (vectorises to shuffles + adds, unlike a serial sum).
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            acc[l] += acc[l + width];
        }
        width /= 2;
    }
    acc[0] + tail
}

/// y += w·x.
#[inline(always)]
pub fn axpy(w: f32, x: &[f32], y: &mut [f32]) {
    let level = level();
    #[cfg(target_arch = "x86_64")]
    if level != Level::Portable && x.len().is_multiple_of(level.lanes()) && x.len() == y.len() {
        // SAFETY: the level's features were detected; equal lengths, a multiple of its lanes.
        return unsafe { x86::axpy(level, w, x, y) };
    }
    let _ = level;
    for (o, &v) in y.iter_mut().zip(x) {
        *o += w * v;
    }
}

/// y *= w.
#[inline(always)]
pub fn scale_in_place(w: f32, y: &mut [f32]) {
    for o in y.iter_mut() {
        *o *= w;
    }
}

/// v_i ← e^(v_i − m) for every element (−inf → 0); returns Σ v_i.
#[inline(always)]
pub fn exp_shifted_sum(v: &mut [f32], m: f32) -> f32 {
    let level = level();
    #[cfg(target_arch = "x86_64")]
    if level != Level::Portable && v.len().is_multiple_of(level.lanes()) {
        // SAFETY: the level's features were detected; the length is a multiple of its lanes.
        return unsafe { x86::exp_shifted_sum(level, v, m) };
    }
    let _ = level;
    let mut sum = 0.0;
    for x in v.iter_mut() {
        *x = exp_neg(*x - m);
        sum += *x;
    }
    sum
}

/// e^x for x ≤ 0 (softmax after subtracting the running max); 0 below −87.3 and for −inf.
/// x = n·ln 2 + r with n = round(x/ln 2) and r computed in two steps (ln 2 split into a short
/// exactly-multiplied high part and a low part) so that |r| ≤ ln2/2 keeps full precision; e^r by a
/// degree-7 Taylor polynomial (truncation < 1e-8 relative); 2^n by building the exponent bits.
#[inline(always)]
pub fn exp_neg(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4; // 0x3f318000: 9 significant bits, so n·LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    if x < -87.3 {
        return 0.0;
    }
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// out[i] = table[code_i] for packed `bits`-bit codes; `codes` is scratch of out.len() bytes.
#[inline(always)]
pub fn lookup(packed: &[u8], bits: u32, table: &[f32], out: &mut [f32], codes: &mut [u8]) {
    let level = level();
    #[cfg(target_arch = "x86_64")]
    if level != Level::Portable && bits <= 4 && out.len().is_multiple_of(level.lanes()) && table.len() == 1 << bits {
        let mut t16 = [0.0f32; 16];
        t16[..table.len()].copy_from_slice(table);
        if bits == 4 {
            assert!(packed.len() >= out.len() / 2);
            // SAFETY: the level's features were detected; out.len() / 2 packed bytes are read.
            unsafe { x86::lookup_nibbles(level, packed, &t16, out) };
        } else {
            unpack(packed, bits, codes);
            // SAFETY: as above; unpack wrote out.len() codes < 2^bits ≤ 16.
            unsafe { x86::lookup_bytes(level, &codes[..out.len()], &t16, out) };
        }
        return;
    }
    let _ = level;
    unpack(packed, bits, codes);
    for (o, &c) in out.iter_mut().zip(codes.iter()) {
        *o = table[c as usize];
    }
}

/// Which explicit kernels the CPU attention loop runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Plain Rust, for any CPU (and forced by `TQ_DISABLE_SIMD`).
    Portable,
    /// AVX2 + FMA, 8 lanes.
    Avx2,
    /// AVX-512F/BW, 16 lanes.
    Avx512,
}

impl Level {
    /// f32 lanes of one register at this level (1 for the portable code).
    pub fn lanes(self) -> usize {
        match self {
            Level::Portable => 1,
            Level::Avx2 => 8,
            Level::Avx512 => 16,
        }
    }

    /// The levels this CPU runs, portable first: what a test compares.
    #[cfg(test)]
    pub fn available() -> Vec<Level> {
        let mut v = vec![Level::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                v.push(Level::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") {
                v.push(Level::Avx512);
            }
        }
        v
    }
}

/// The explicit kernels this CPU runs: AVX-512F/BW if present, else AVX2 + FMA, else the portable
/// code; `TQ_DISABLE_SIMD` (set to anything) forces the portable code everywhere in CPU attention,
/// for testing it. Detected once.
#[inline(always)]
pub fn level() -> Level {
    use std::sync::atomic::{AtomicU8, Ordering};
    static STATE: AtomicU8 = AtomicU8::new(0);
    match STATE.load(Ordering::Relaxed) {
        1 => Level::Portable,
        2 => Level::Avx2,
        3 => Level::Avx512,
        _ => {
            let level = detect();
            STATE.store(
                match level {
                    Level::Portable => 1,
                    Level::Avx2 => 2,
                    Level::Avx512 => 3,
                },
                Ordering::Relaxed,
            );
            level
        }
    }
}

fn detect() -> Level {
    if std::env::var_os("TQ_DISABLE_SIMD").is_some() {
        return Level::Portable;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") {
            return Level::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return Level::Avx2;
        }
    }
    Level::Portable
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::vector::{Vector, per_level};

    per_level! {
        /// # Safety
        /// Equal lengths, a multiple of the level's lanes.
        pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 => dot_v;
        /// # Safety
        /// Equal lengths, a multiple of the level's lanes.
        pub unsafe fn axpy(w: f32, x: &[f32], y: &mut [f32]) => axpy_v;
        /// # Safety
        /// A length that is a multiple of the level's lanes.
        pub unsafe fn exp_shifted_sum(v: &mut [f32], m: f32) -> f32 => exp_shifted_sum_v;
        /// # Safety
        /// `out.len()` a multiple of the level's lanes, `packed` at least `out.len() / 2` bytes.
        pub unsafe fn lookup_nibbles(packed: &[u8], table: &[f32; 16], out: &mut [f32]) => lookup_nibbles_v;
        /// # Safety
        /// `codes` as long as `out`, a multiple of the level's lanes; every code < 16.
        pub unsafe fn lookup_bytes(codes: &[u8], table: &[f32; 16], out: &mut [f32]) => lookup_bytes_v;
    }

    #[inline(always)]
    unsafe fn dot_v<V: Vector>(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: the vector contract; loads stay inside the slices (whole registers of lanes).
        unsafe {
            let (mut acc0, mut acc1) = (V::zero(), V::zero());
            let n = a.len() / V::LANES;
            let (pa, pb) = (a.as_ptr(), b.as_ptr());
            let mut i = 0;
            while i + 1 < n {
                acc0 = V::load(pa.add(V::LANES * i)).fmadd(V::load(pb.add(V::LANES * i)), acc0);
                acc1 = V::load(pa.add(V::LANES * (i + 1))).fmadd(V::load(pb.add(V::LANES * (i + 1))), acc1);
                i += 2;
            }
            if i < n {
                acc0 = V::load(pa.add(V::LANES * i)).fmadd(V::load(pb.add(V::LANES * i)), acc0);
            }
            acc0.add(acc1).reduce_add()
        }
    }

    #[inline(always)]
    unsafe fn axpy_v<V: Vector>(w: f32, x: &[f32], y: &mut [f32]) {
        // SAFETY: the vector contract; loads and stores stay inside x and y.
        unsafe {
            let wv = V::splat(w);
            for i in 0..x.len() / V::LANES {
                let py = y.as_mut_ptr().add(V::LANES * i);
                wv.fmadd(V::load(x.as_ptr().add(V::LANES * i)), V::load(py)).store(py);
            }
        }
    }

    #[inline(always)]
    unsafe fn exp_shifted_sum_v<V: Vector>(v: &mut [f32], m: f32) -> f32 {
        // SAFETY: the vector contract; loads and stores stay inside v.
        unsafe {
            let mv = V::splat(m);
            let mut sum = V::zero();
            for i in 0..v.len() / V::LANES {
                let p = v.as_mut_ptr().add(V::LANES * i);
                let e = V::load(p).sub(mv).exp_neg();
                e.store(p);
                sum = sum.add(e);
            }
            sum.reduce_add()
        }
    }

    #[inline(always)]
    unsafe fn lookup_nibbles_v<V: Vector>(packed: &[u8], table: &[f32; 16], out: &mut [f32]) {
        // SAFETY: the vector contract; chunk c reads packed bytes [c·LANES/2, (c+1)·LANES/2), inside
        // the out.len()/2 bytes the caller guarantees, and writes one register of out.
        unsafe {
            let t = V::table(table.as_ptr());
            for (c, o) in out.chunks_exact_mut(V::LANES).enumerate() {
                V::lookup_nibbles(t, packed.as_ptr().add(c * V::LANES / 2)).store(o.as_mut_ptr());
            }
        }
    }

    #[inline(always)]
    unsafe fn lookup_bytes_v<V: Vector>(codes: &[u8], table: &[f32; 16], out: &mut [f32]) {
        // SAFETY: the vector contract; chunk c reads codes [c·LANES, (c+1)·LANES) and writes one
        // register of out, both inside the slices.
        unsafe {
            let t = V::table(table.as_ptr());
            for (c, o) in out.chunks_exact_mut(V::LANES).enumerate() {
                V::lookup_bytes(t, codes.as_ptr().add(c * V::LANES)).store(o.as_mut_ptr());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::packing::{pack, packed_len};

    #[test]
    fn exp_neg_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = 0.0f32;
        while x > -87.0 {
            let got = exp_neg(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x -= 0.0137;
        }
        assert!(worst < 1e-6, "worst relative error {worst}");
        assert_eq!(exp_neg(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_neg(0.0), 1.0);
    }

    #[test]
    fn lookup_matches_scalar_for_every_width() {
        for bits in 1..=8u32 {
            for n in [16usize, 64, 128, 24] {
                let codes: Vec<u8> = (0..n).map(|i| ((i * 7 + 3) % (1 << bits)) as u8).collect();
                let mut packed = vec![0u8; packed_len(n, bits)];
                pack(&codes, bits, &mut packed);
                let table: Vec<f32> = (0..1usize << bits).map(|i| i as f32 * 0.5 - 3.0).collect();
                let mut out = vec![0.0f32; n];
                let mut scratch = vec![0u8; n];
                lookup(&packed, bits, &table, &mut out, &mut scratch);
                for (i, &c) in codes.iter().enumerate() {
                    assert_eq!(out[i], table[c as usize], "bits {bits} n {n} i {i}");
                }
            }
        }
    }

    #[test]
    fn vector_kernels_match_portable_ones() {
        let a: Vec<f32> = (0..128).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..128).map(|i| (i as f32 * 0.11).cos()).collect();
        assert!((dot(&a, &b) - dot_portable(&a, &b)).abs() < 1e-5);
        let mut y1 = b.clone();
        axpy(0.7, &a, &mut y1);
        for i in 0..128 {
            assert!((y1[i] - (b[i] + 0.7 * a[i])).abs() < 1e-6);
        }
        let mut v: Vec<f32> = (0..64).map(|i| -(i as f32) * 1.7).collect();
        v[5] = f32::NEG_INFINITY;
        let orig = v.clone();
        let sum = exp_shifted_sum(&mut v, 0.5);
        let mut want = 0.0f64;
        for (i, &x) in orig.iter().enumerate() {
            let e = ((x - 0.5) as f64).exp();
            want += e;
            assert!((v[i] as f64 - e).abs() <= 1e-6 * e + 1e-38, "{i}: {} vs {e}", v[i]);
        }
        assert!(((sum as f64) - want).abs() < 1e-6 * want);
    }

    /// Each explicit level this CPU runs (AVX2, AVX-512), called directly rather than through the
    /// detected one: dot and axpy against float64, e^x over [−90, 0] plus −inf and NaN against
    /// float64's exp (1e-6 relative, 0 below −87.3), and both centroid lookups exactly.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn explicit_kernels_match_float64_at_every_level() {
        let levels: Vec<Level> = Level::available().into_iter().filter(|&l| l != Level::Portable).collect();
        if levels.is_empty() {
            // Shown although the harness captures eprintln! and reports the test "ok".
            use std::io::Write;
            let _ = std::io::stderr()
                .write_all(b"\n*** SKIPPED: explicit_kernels_match_float64_at_every_level: no AVX2+FMA or AVX-512 on this CPU ***\n");
        }
        for level in levels {
            let a: Vec<f32> = (0..144).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..144).map(|i| (i as f32 * 0.11).cos()).collect();
            for n in [16usize, 48, 144] {
                let want: f64 = a[..n].iter().zip(&b[..n]).map(|(x, y)| *x as f64 * *y as f64).sum();
                // SAFETY: the level was detected; equal lengths, multiples of 16.
                let got = unsafe { x86::dot(level, &a[..n], &b[..n]) } as f64;
                assert!((got - want).abs() < 1e-5, "{level:?} dot n={n}: {got} vs {want}");
                let mut y = b[..n].to_vec();
                // SAFETY: as above.
                unsafe { x86::axpy(level, 0.7, &a[..n], &mut y) };
                for i in 0..n {
                    assert!((y[i] as f64 - (b[i] as f64 + 0.7 * a[i] as f64)).abs() < 1e-6, "{level:?} axpy {i}");
                }
            }
            let mut x: Vec<f32> = (0..6576).map(|i| -(i as f32) * 0.0137).collect();
            x.extend([f32::NEG_INFINITY, f32::NAN, -87.29, -87.31, 0.0, -1e-30, -100.0, -1e30]);
            while !x.len().is_multiple_of(16) {
                x.push(-1.5);
            }
            let orig = x.clone();
            // SAFETY: as above; the length is a multiple of 16.
            let sum = unsafe { x86::exp_shifted_sum(level, &mut x, 0.0) } as f64;
            let mut want_sum = 0.0f64;
            for (i, (&got, &x0)) in x.iter().zip(&orig).enumerate() {
                let want = if x0.is_nan() || x0 < -87.3 { 0.0 } else { (x0 as f64).exp() };
                want_sum += want;
                assert!((got as f64 - want).abs() <= 1e-6 * want, "{level:?} exp({x0}) at {i}: {got} vs {want}");
            }
            assert!((sum - want_sum).abs() <= 1e-6 * want_sum, "{level:?} sum {sum} vs {want_sum}");
            let table: [f32; 16] = std::array::from_fn(|i| i as f32 * 0.25 - 1.9);
            let codes: Vec<u8> = (0..128).map(|i| ((i * 7 + 3) % 16) as u8).collect();
            let mut packed = vec![0u8; 64];
            pack(&codes, 4, &mut packed);
            let (mut from_nibbles, mut from_bytes) = (vec![f32::NAN; 128], vec![f32::NAN; 128]);
            // SAFETY: as above; 64 packed bytes for 128 outputs, codes < 16.
            unsafe {
                x86::lookup_nibbles(level, &packed, &table, &mut from_nibbles);
                x86::lookup_bytes(level, &codes, &table, &mut from_bytes);
            }
            for (i, &c) in codes.iter().enumerate() {
                assert_eq!((from_nibbles[i], from_bytes[i]), (table[c as usize], table[c as usize]), "{level:?} lookup {i}");
            }
        }
    }

    #[test]
    fn dot_matches_f64() {
        let a: Vec<f32> = (0..131).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..131).map(|i| (i as f32 * 0.11).cos()).collect();
        let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((dot(&a, &b) as f64 - want).abs() < 1e-5);
    }
}
