//! Lloyd–Max codebooks: fixed-point conditions, the independent SciPy oracle, the paper's figures.

use turboquant::math::codebook::{self, SphereCoordinate, signed_mass};

fn oracle() -> serde_json::Value {
    let path = std::env::var("TQ_LLOYD_MAX_REFERENCE").unwrap_or_else(|_| {
        format!("{}/tests/data/lloyd_max_reference.json", env!("CARGO_MANIFEST_DIR"))
    });
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the Lloyd–Max oracle {path}: {e}; set TQ_LLOYD_MAX_REFERENCE"));
    serde_json::from_str(&text).expect("oracle is JSON")
}

#[test]
fn codebooks_are_lloyd_max_fixed_points() {
    for dim in [16usize, 64, 128, 256, 1024] {
        for bits in 1..=8u32 {
            let cb = codebook::solve(dim, bits).unwrap();
            let density = SphereCoordinate::new(dim);
            let scale = (dim as f64).sqrt(); // compare on the N(0,1) scale
            let n = cb.centroids.len();
            assert_eq!(n, 1 << bits);
            for k in 0..n - 1 {
                let mid = 0.5 * (cb.centroids[k] + cb.centroids[k + 1]);
                assert!(((cb.boundaries[k] - mid) * scale).abs() < 1e-9, "d={dim} b={bits} boundary {k}");
            }
            for k in 0..n {
                let l = if k == 0 { -1.0 } else { cb.boundaries[k - 1] };
                let u = if k == n - 1 { 1.0 } else { cb.boundaries[k] };
                let mean = density.first_moment(l, u) / signed_mass(&density, l, u);
                assert!(
                    ((cb.centroids[k] - mean) * scale).abs() < 1e-9,
                    "d={dim} b={bits} centroid {k}: {} vs conditional mean {mean}",
                    cb.centroids[k]
                );
            }
            let total: f64 = cb.probabilities.iter().sum();
            assert!((total - 1.0).abs() < 1e-12);
        }
    }
}

#[test]
fn codebooks_match_independent_oracle() {
    let oracle = oracle();
    let books = oracle["codebooks"].as_array().unwrap();
    // 1-5 bits at d = 16..512, 6-8 bits at d = 64, 128, 256, and d = 1024 at 1-8 bits
    // (tests/data/lloyd_max_oracle.py).
    assert!(books.len() >= 57, "oracle has {} codebooks", books.len());
    for (d, b) in [(64u64, 8u64), (128, 6), (128, 8), (256, 7), (1024, 1), (1024, 8)] {
        assert!(books.iter().any(|e| e["d"] == d && e["bits"] == b), "the oracle lacks d={d} bits={b}");
    }
    for entry in books {
        let dim = entry["d"].as_u64().unwrap() as usize;
        let bits = entry["bits"].as_u64().unwrap() as u32;
        let cb = codebook::solve(dim, bits).unwrap();
        let scale = (dim as f64).sqrt();
        let want_c: Vec<f64> = entry["centroids"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let want_b: Vec<f64> = entry["boundaries"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(want_c.len(), cb.centroids.len());
        for (got, want) in cb.centroids.iter().zip(&want_c) {
            assert!(((got - want) * scale).abs() < 1e-6, "d={dim} b={bits}: centroid {got} vs {want}");
        }
        for (got, want) in cb.boundaries.iter().zip(&want_b) {
            assert!(((got - want) * scale).abs() < 1e-6, "d={dim} b={bits}: boundary {got} vs {want}");
        }
        let nmse = entry["nmse"].as_f64().unwrap();
        assert!(((cb.nmse - nmse) / nmse).abs() < 1e-6, "d={dim} b={bits}: nmse {} vs {nmse}", cb.nmse);
    }
}

#[test]
fn d128_matches_the_paper_and_its_bounds() {
    // DESIGN.md §2: exact values at d = 128; the paper rounds them to 0.36 / 0.117 / 0.03 / 0.009.
    let expected = [0.3609, 0.1160, 0.0340, 0.0093];
    for (b, want) in (1..=4u32).zip(expected) {
        let cb = codebook::solve(128, b).unwrap();
        assert!((cb.nmse - want).abs() < 0.00051, "b={b}: {} vs {want}", cb.nmse);
        let lower = 4f64.powi(-(b as i32));
        let upper = 3f64.sqrt() * std::f64::consts::PI / 2.0 * lower;
        assert!(cb.nmse > lower && cb.nmse < upper, "b={b}: {} outside [{lower}, {upper}]", cb.nmse);
    }
    // Gaussian-limit 2-bit centroids ×√d are ±0.4528, ±1.510 (d → ∞); at d = 128 they sit just below.
    let cb = codebook::solve(128, 2).unwrap();
    let scaled: Vec<f64> = cb.centroids.iter().map(|c| c * 128f64.sqrt()).collect();
    assert!((scaled[2] - 0.4524).abs() < 0.002 && (scaled[3] - 1.5052).abs() < 0.003, "{scaled:?}");
}
