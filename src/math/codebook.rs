//! Lloyd–Max codebooks for one coordinate of a uniformly random point on S^{d-1}.
//!
//! The coordinate density is f_d(t) = Γ(d/2) / (√π Γ((d−1)/2)) · (1−t²)^((d−3)/2) on [−1, 1]
//! (equivalently (t+1)/2 ~ Beta((d−1)/2, (d−1)/2)); TurboQuant (arXiv 2504.19874, §3.1) quantizes each
//! rotated coordinate with the optimal scalar quantizer for this density. The quantizer is found by
//! Lloyd's iteration: boundaries are midpoints of neighbouring centroids, and each centroid is the
//! conditional mean of its cell, which has a closed form because
//! ∫ t (1−t²)^α dt = −(1−t²)^(α+1) / (2(α+1)).
//! Cell probabilities come from the regularised incomplete beta function.
//!
//! Everything is computed in f64 at run time and cached per (d, bits).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use statrs::function::beta::beta_reg;
use statrs::function::gamma::ln_gamma;

/// Smallest and largest supported vector dimension.
pub const MIN_DIM: usize = 16;
pub const MAX_DIM: usize = 1024;
/// Supported bit widths per coordinate.
pub const MIN_BITS: u32 = 1;
pub const MAX_BITS: u32 = 8;

/// An optimal scalar quantizer on the unit-norm scale (multiply by ‖x‖ for a vector of norm ‖x‖).
#[derive(Debug, Clone)]
pub struct Codebook {
    pub dim: usize,
    pub bits: u32,
    /// 2^bits centroids, ascending, symmetric about 0.
    pub centroids: Vec<f64>,
    /// 2^bits − 1 cell boundaries, ascending (midpoints of neighbouring centroids).
    pub boundaries: Vec<f64>,
    /// Probability mass of each cell.
    pub probabilities: Vec<f64>,
    /// Expected normalised MSE E‖x−x̂‖²/‖x‖² = d·E[(t − Q(t))²] of the full vector quantizer.
    pub nmse: f64,
    /// Lloyd iterations used.
    pub iterations: usize,
    /// `centroids` and `boundaries` rounded to f32, as every backend uses them.
    pub centroids_f32: Vec<f32>,
    pub boundaries_f32: Vec<f32>,
}

/// The coordinate density of a uniform point on S^{d-1}.
#[derive(Debug, Clone, Copy)]
pub struct SphereCoordinate {
    dim: usize,
    /// Beta shape a = (d−1)/2; the density is ∝ (1−t²)^(a−1).
    a: f64,
    /// ln of the normalising constant Γ(d/2) / (√π Γ((d−1)/2)).
    ln_c: f64,
}

impl SphereCoordinate {
    pub fn new(dim: usize) -> Self {
        let d = dim as f64;
        let a = (d - 1.0) / 2.0;
        let ln_c = ln_gamma(d / 2.0) - 0.5 * std::f64::consts::PI.ln() - ln_gamma(a);
        Self { dim, a, ln_c }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Density f_d(t).
    pub fn pdf(&self, t: f64) -> f64 {
        if t.abs() >= 1.0 {
            return 0.0;
        }
        (self.ln_c + (self.a - 1.0) * (1.0 - t * t).ln()).exp()
    }

    /// P(T > t) for t ≥ 0, accurate in the tail: P(T > t) = I_{(1−t)/2}(a, a).
    fn upper_tail(&self, t: f64) -> f64 {
        if t >= 1.0 {
            return 0.0;
        }
        beta_reg(self.a, self.a, (1.0 - t) / 2.0)
    }

    /// P(l < T ≤ u) for 0 ≤ l ≤ u ≤ 1.
    pub fn mass_positive(&self, l: f64, u: f64) -> f64 {
        self.upper_tail(l) - self.upper_tail(u)
    }

    /// ∫_l^u t f_d(t) dt = C/(2a) · ((1−l²)^a − (1−u²)^a), for −1 ≤ l ≤ u ≤ 1.
    pub fn first_moment(&self, l: f64, u: f64) -> f64 {
        let g = |t: f64| {
            let s = 1.0 - t * t;
            if s <= 0.0 { 0.0 } else { (self.ln_c + self.a * s.ln()).exp() / (2.0 * self.a) }
        };
        g(l) - g(u)
    }
}

/// Error for an unsupported (dim, bits) pair.
#[derive(Debug, Clone, PartialEq)]
pub enum CodebookError {
    Dim(usize),
    Bits(u32),
}

impl std::fmt::Display for CodebookError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodebookError::Dim(d) => {
                write!(f, "dimension {d} is outside the supported range {MIN_DIM}..={MAX_DIM}")
            }
            CodebookError::Bits(b) => {
                write!(f, "bit width {b} is outside the supported range {MIN_BITS}..={MAX_BITS}")
            }
        }
    }
}

/// The iteration stops when a Lloyd step would move no centroid by more than this, on the N(0,1)
/// scale (×√d). Newton reaches it in a few steps; f64 evaluation noise of the cell means sits near
/// 1e-14, so a tighter bound would only wander.
const TOLERANCE: f64 = 1e-12;
/// Upper bound on iterations (Lloyd and Newton steps together); all codebooks converge well before it.
const MAX_ITERATIONS: usize = 10_000;
/// Steps without halving the residual after which the noise floor is taken as reached.
const STALL_LIMIT: usize = 8;
/// Plain Lloyd steps before Newton steps are tried.
const LLOYD_WARMUP: usize = 30;

/// Cell bounds of the positive half: 0, midpoints, 1.
fn cell_bounds(positive: &[f64]) -> Vec<f64> {
    let half = positive.len();
    let mut bounds = vec![0.0f64; half + 1];
    bounds[half] = 1.0;
    for k in 1..half {
        bounds[k] = 0.5 * (positive[k - 1] + positive[k]);
    }
    bounds
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Conditional mean of T on (l, u] (0 ≤ l < u ≤ 1) and its mass.
fn cell_mean(density: &SphereCoordinate, l: f64, u: f64) -> (f64, f64) {
    let mass = density.mass_positive(l, u);
    let mean = if mass > 0.0 { density.first_moment(l, u) / mass } else { 0.5 * (l + u) };
    (mean, mass)
}

/// One Lloyd step on the positive half: every centroid becomes its cell's conditional mean.
fn lloyd_step(density: &SphereCoordinate, positive: &[f64]) -> Vec<f64> {
    let bounds = cell_bounds(positive);
    (0..positive.len()).map(|k| cell_mean(density, bounds[k], bounds[k + 1]).0).collect()
}

/// One Newton step on F(c) = M(c) − c = 0, where M is the Lloyd map. M_k depends on c_{k−1}, c_k,
/// c_{k+1} only (through the two midpoints of cell k), so the Jacobian is tridiagonal:
/// ∂m/∂u = f(u)(u − m)/P and ∂m/∂l = f(l)(m − l)/P for a cell (l, u] of mass P and mean m, and each
/// midpoint moves by 1/2 of either neighbouring centroid.
fn newton_step(density: &SphereCoordinate, positive: &[f64], lloyd: &[f64]) -> Vec<f64> {
    let half = positive.len();
    let bounds = cell_bounds(positive);
    // (I − ∂M/∂c)·Δ = M(c) − c, as a tridiagonal system: sub[k]·Δ_{k−1} + diag[k]·Δ_k + sup[k]·Δ_{k+1}.
    let (mut sub, mut diag, mut sup) = (vec![0.0; half], vec![1.0; half], vec![0.0; half]);
    for k in 0..half {
        let (l, u) = (bounds[k], bounds[k + 1]);
        let (m, p) = cell_mean(density, l, u);
        if p <= 0.0 {
            continue;
        }
        if k > 0 {
            let dl = density.pdf(l) * (m - l) / p * 0.5;
            sub[k] -= dl;
            diag[k] -= dl;
        }
        if k + 1 < half {
            let du = density.pdf(u) * (u - m) / p * 0.5;
            diag[k] -= du;
            sup[k] -= du;
        }
    }
    let rhs: Vec<f64> = lloyd.iter().zip(positive).map(|(m, c)| m - c).collect();
    // Thomas algorithm.
    let mut c_prime = vec![0.0; half];
    let mut d_prime = vec![0.0; half];
    for k in 0..half {
        let denom = diag[k] - if k > 0 { sub[k] * c_prime[k - 1] } else { 0.0 };
        c_prime[k] = sup[k] / denom;
        d_prime[k] = (rhs[k] - if k > 0 { sub[k] * d_prime[k - 1] } else { 0.0 }) / denom;
    }
    let mut delta = vec![0.0; half];
    for k in (0..half).rev() {
        delta[k] = d_prime[k] - if k + 1 < half { c_prime[k] * delta[k + 1] } else { 0.0 };
    }
    positive.iter().zip(&delta).map(|(c, d)| c + d).collect()
}

/// Solve Lloyd–Max for (dim, bits) from scratch (no cache).
pub fn solve(dim: usize, bits: u32) -> Result<Codebook, CodebookError> {
    if !(MIN_DIM..=MAX_DIM).contains(&dim) {
        return Err(CodebookError::Dim(dim));
    }
    if !(MIN_BITS..=MAX_BITS).contains(&bits) {
        return Err(CodebookError::Bits(bits));
    }
    let density = SphereCoordinate::new(dim);
    let half = 1usize << (bits - 1);
    let sigma = 1.0 / (dim as f64).sqrt();

    // Start from the cell means of equal-probability cells of the positive half (a Gaussian-quantile
    // start, refined by Lloyd below).
    let mut positive: Vec<f64> = (0..half)
        .map(|k| {
            let p = 0.5 + 0.5 * (k as f64 + 0.5) / half as f64;
            sigma * normal_quantile(p)
        })
        .collect();

    let scale_tol = TOLERANCE * sigma;
    let mut iterations = 0;
    // A few plain Lloyd steps bring the start into Newton's basin; Newton then converges
    // quadratically where Lloyd alone needs up to ~10^5 steps at 8 bits.
    for _ in 0..LLOYD_WARMUP {
        iterations += 1;
        let next = lloyd_step(&density, &positive);
        let moved = max_abs_diff(&next, &positive);
        positive = next;
        if moved <= scale_tol {
            break;
        }
    }
    // Best iterate so far and how many steps since the residual last halved: once Newton has reached
    // the evaluation-noise floor (about 1e-13 at d = 1024) the residual stops falling, and we stop.
    let mut best = (f64::INFINITY, positive.clone());
    let mut stalled = 0;
    loop {
        iterations += 1;
        let lloyd = lloyd_step(&density, &positive);
        let residual = max_abs_diff(&lloyd, &positive);
        if residual < 0.5 * best.0 {
            stalled = 0;
        } else {
            stalled += 1;
        }
        if residual < best.0 {
            best = (residual, lloyd.clone());
        }
        if residual <= scale_tol || stalled >= STALL_LIMIT || iterations >= MAX_ITERATIONS {
            positive = best.1;
            break;
        }
        let newton = newton_step(&density, &positive, &lloyd);
        // Damped Newton: halve the step until the centroids stay ordered inside (0, 1) and the
        // fixed-point residual shrinks; otherwise take the (always safe) Lloyd step.
        let mut step = 1.0;
        let mut accepted = None;
        while step > 1e-3 {
            let trial: Vec<f64> = positive.iter().zip(&newton).map(|(c, n)| c + step * (n - c)).collect();
            let ordered = trial.windows(2).all(|w| w[0] < w[1])
                && trial.first().is_some_and(|&c| c > 0.0)
                && trial.last().is_some_and(|&c| c < 1.0);
            if ordered && max_abs_diff(&lloyd_step(&density, &trial), &trial) < residual {
                accepted = Some(trial);
                break;
            }
            step *= 0.5;
        }
        positive = accepted.unwrap_or(lloyd);
    }
    let bounds = cell_bounds(&positive);

    let mut centroids: Vec<f64> = positive.iter().rev().map(|c| -c).collect();
    centroids.extend_from_slice(&positive);
    let mut boundaries: Vec<f64> = bounds[1..half].iter().rev().map(|b| -b).collect();
    boundaries.push(0.0);
    boundaries.extend_from_slice(&bounds[1..half]);
    let positive_mass: Vec<f64> =
        (0..half).map(|k| density.mass_positive(bounds[k], bounds[k + 1])).collect();
    let mut probabilities: Vec<f64> = positive_mass.iter().rev().copied().collect();
    probabilities.extend_from_slice(&positive_mass);

    let nmse = expected_nmse(&density, &centroids, &boundaries);
    Ok(Codebook {
        dim,
        bits,
        centroids_f32: centroids.iter().map(|&c| c as f32).collect(),
        boundaries_f32: boundaries.iter().map(|&b| b as f32).collect(),
        centroids,
        boundaries,
        probabilities,
        nmse,
        iterations,
    })
}

/// d·E[(T − Q(T))²] for any scalar quantizer (centroids need not be conditional means).
pub fn expected_nmse(density: &SphereCoordinate, centroids: &[f64], boundaries: &[f64]) -> f64 {
    // E[(T−c)²] over a cell = E[T²; cell] − 2c·E[T; cell] + c²·P(cell); E[T²] over all cells = 1/d.
    let d = density.dim() as f64;
    let mut cross = 0.0;
    for (k, &c) in centroids.iter().enumerate() {
        let l = if k == 0 { -1.0 } else { boundaries[k - 1] };
        let u = if k == centroids.len() - 1 { 1.0 } else { boundaries[k] };
        let mass = signed_mass(density, l, u);
        cross += c * c * mass - 2.0 * c * density.first_moment(l, u);
    }
    d * (1.0 / d + cross)
}

/// P(l < T ≤ u) for any −1 ≤ l ≤ u ≤ 1, computed from upper tails on the side away from 0 so that
/// tail cells keep their relative accuracy.
pub fn signed_mass(density: &SphereCoordinate, l: f64, u: f64) -> f64 {
    if l >= 0.0 {
        density.mass_positive(l, u)
    } else if u <= 0.0 {
        density.mass_positive(-u, -l)
    } else {
        1.0 - density.upper_tail(-l) - density.upper_tail(u)
    }
}

/// Φ⁻¹(p), the starting point of the iteration.
fn normal_quantile(p: f64) -> f64 {
    statrs::function::erf::erf_inv(2.0 * p - 1.0) * std::f64::consts::SQRT_2
}

/// The codebook for (dim, bits), solved once per process and shared.
pub fn codebook(dim: usize, bits: u32) -> Result<Arc<Codebook>, CodebookError> {
    static CACHE: OnceLock<Mutex<HashMap<(usize, u32), Arc<Codebook>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(cb) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&(dim, bits)) {
        return Ok(cb.clone());
    }
    // Solve outside the lock: a slow 8-bit solve must not block other codebooks.
    let solved = Arc::new(solve(dim, bits)?);
    let mut guard = cache.lock().unwrap_or_else(|e| e.into_inner());
    Ok(guard.entry((dim, bits)).or_insert(solved).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn density_integrates_to_one_and_has_variance_one_over_d() {
        for dim in [16usize, 64, 128, 1024] {
            let density = SphereCoordinate::new(dim);
            // Midpoint rule on a fine grid: independent of the incomplete-beta path.
            let n = 400_000;
            let h = 2.0 / n as f64;
            let (mut mass, mut second) = (0.0, 0.0);
            for i in 0..n {
                let t = -1.0 + (i as f64 + 0.5) * h;
                let f = density.pdf(t);
                mass += f * h;
                second += t * t * f * h;
            }
            assert!((mass - 1.0).abs() < 1e-8, "d={dim}: mass {mass}");
            assert!((second * dim as f64 - 1.0).abs() < 1e-6, "d={dim}: d·E[t²] = {}", second * dim as f64);
            assert!((signed_mass(&density, -1.0, 1.0) - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn closed_form_first_moment_matches_quadrature() {
        let density = SphereCoordinate::new(128);
        let (l, u) = (0.03, 0.11);
        let n = 100_000;
        let h = (u - l) / n as f64;
        let quad: f64 = (0..n).map(|i| {
            let t = l + (i as f64 + 0.5) * h;
            t * density.pdf(t) * h
        }).sum();
        let exact = density.first_moment(l, u);
        assert!(((quad - exact) / exact).abs() < 1e-9, "{quad} vs {exact}");
    }

    #[test]
    fn rejects_out_of_range() {
        assert_eq!(solve(8, 2).unwrap_err(), CodebookError::Dim(8));
        assert_eq!(solve(2048, 2).unwrap_err(), CodebookError::Dim(2048));
        assert_eq!(solve(64, 0).unwrap_err(), CodebookError::Bits(0));
        assert_eq!(solve(64, 9).unwrap_err(), CodebookError::Bits(9));
    }
}
