"""The Lloyd-Max oracle of tests/codebook.rs (tests/data/lloyd_max_reference.json), computed with SciPy
independently of the library: one coordinate t of a uniformly random unit vector in R^d has density
proportional to (1 - t^2)^((d - 3)/2) on [-1, 1], t^2 ~ Beta(1/2, (d - 1)/2). Per cell [l, u]:
  mass          P = F(u) - F(l),  F(t) = 1/2 + sign(t) I_{t^2}(1/2, (d - 1)/2) / 2
  first moment  M = C_d / (d - 1) * ((1 - l^2)^((d - 1)/2) - (1 - u^2)^((d - 1)/2))
  second moment S = E[t^2; cell], from I_s(3/2, (d - 1)/2)
(C_d = Gamma(d/2) / (sqrt(pi) Gamma((d - 1)/2))); the fixed point c = M/P (boundaries the midpoints) is
found from the companding start by 200 Lloyd steps, then Newton's method on c = T(c) (a tridiagonal
Jacobian by central differences) until no centroid moves by more than 1e-10/sqrt(d) (Newton converges
quadratically down to the ~1e-12 rounding level of the moments); nmse = d * sum(S - M^2/P).

Usage (SciPy is not a dependency of the project; any environment with scipy and numpy):
  python3 tests/data/lloyd_max_oracle.py --check tests/data/lloyd_max_reference.json   # recompute, compare
  python3 tests/data/lloyd_max_oracle.py --write tests/data/lloyd_max_reference.json   # recompute, write
"""
import argparse
import json
import math

import numpy as np
from scipy.linalg import solve_banded
from scipy.special import betainc, betaincinv, gammaln

# (d, bits) of the oracle: every d at 1-5 bits, and 6-8 bits (the widths of the 5- to 8-bit cache
# presets) at the head dimensions of common models, plus d = 1024.
CASES = [(d, b) for d in (16, 32, 64, 80, 96, 128, 256, 512) for b in range(1, 6)] + \
        [(d, b) for d in (64, 128, 256) for b in (6, 7, 8)] + [(1024, b) for b in range(1, 9)]


def cdf(t, d):
    a = (d - 1) / 2
    return 0.5 + np.sign(t) * 0.5 * betainc(0.5, a, np.minimum(t * t, 1.0))


def second_partial(t, d):
    """E[T^2; 0 <= T <= t] signed like t (odd in t): (1/2) E[T^2 1{T^2 <= t^2}]."""
    a = (d - 1) / 2
    return np.sign(t) * 0.5 * (0.5 / (0.5 + a)) * betainc(1.5, a, np.minimum(t * t, 1.0))


def cells(c, d):
    """Mass, first and second moments of the cells of centroids c (boundaries their midpoints)."""
    a = (d - 1) / 2
    c_d = math.exp(gammaln(d / 2) - gammaln((d - 1) / 2)) / math.sqrt(math.pi)
    b = 0.5 * (c[1:] + c[:-1])
    edges = np.concatenate(([-1.0], b, [1.0]))
    p = np.diff(cdf(edges, d))
    w = (1.0 - edges * edges) ** a
    m = c_d / (d - 1) * (w[:-1] - w[1:])
    s = np.diff(second_partial(edges, d))
    return b, p, m, s


def lloyd_step(c, d):
    """T(c): the cells' conditional means (T_k depends on c_{k-1}, c_k, c_{k+1} only)."""
    _, p, m, _ = cells(c, d)
    return m / p


def symmetric(c):
    return 0.5 * (c - c[::-1])  # the density is even: keep the codebook exactly symmetric


def solve(d, bits):
    n = 1 << bits
    # Start from the high-resolution (companding) solution: centroid density proportional to f^(1/3),
    # which for this family is the coordinate density of dimension (d + 6)/3, placed at its quantiles.
    d3 = (d + 6) / 3
    u = (np.arange(n) + 0.5) / n
    t = np.sqrt(betaincinv(0.5, (d3 - 1) / 2, np.abs(2 * u - 1)))
    c = np.sign(u - 0.5) * t
    c = 0.5 * (c - c[::-1])
    tol = 1e-10 / math.sqrt(d)  # above the rounding level of T's evaluation (~1e-12 at 8 bits)
    it = 0
    for _ in range(200):  # a few Lloyd steps, then Newton on c = T(c)
        c = symmetric(lloyd_step(c, d))
        it += 1
    # Newton: T_k depends on c_{k-1}, c_k, c_{k+1} only, so its Jacobian is tridiagonal; three
    # perturbed evaluations (every third coordinate at once) give it by central differences.
    for _ in range(50):
        f0 = lloyd_step(c, d) - c
        h = 1e-6 / math.sqrt(d)
        band = np.zeros((3, n))  # solve_banded layout: upper, diagonal, lower
        for color in range(3):
            e = np.zeros(n)
            e[color::3] = h
            dt = (lloyd_step(c + e, d) - lloyd_step(c - e, d)) / (2 * h) - e / h
            for j in range(color, n, 3):
                band[1, j] = dt[j]
                if j > 0:
                    band[0, j] = dt[j - 1]
                if j + 1 < n:
                    band[2, j] = dt[j + 1]
        step = solve_banded((1, 1), band, -f0) if n > 1 else -f0 / band[1]
        c = symmetric(c + step)
        it += 1
        if np.abs(step).max() < tol:
            break
    b, p, m, s = cells(c, d)
    nmse = d * float(np.sum(s - m * m / p))
    return {"d": d, "bits": bits, "centroids": c.tolist(), "boundaries": b.tolist(), "nmse": nmse,
            "iterations": it}


def main():
    ap = argparse.ArgumentParser()
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--check", metavar="JSON")
    g.add_argument("--write", metavar="JSON")
    args = ap.parse_args()
    books = [solve(d, b) for d, b in CASES]
    if args.check:
        have = {(e["d"], e["bits"]): e for e in json.load(open(args.check))["codebooks"]}
        worst = 0.0
        for e in books:
            h = have.get((e["d"], e["bits"]))
            if h is None:
                print(f"d={e['d']} bits={e['bits']}: not in {args.check}")
                continue
            dc = max(abs(x - y) for x, y in zip(e["centroids"], h["centroids"])) * math.sqrt(e["d"])
            dn = abs(e["nmse"] / h["nmse"] - 1)
            worst = max(worst, dc, dn)
            print(f"d={e['d']} bits={e['bits']}: centroids x sqrt(d) differ by {dc:.2e}, nmse by {dn:.2e} relative")
        print(f"worst difference {worst:.2e}")
    else:
        doc = json.load(open(args.write))
        doc["description"] = (
            "Lloyd-Max codebooks for one coordinate of a uniformly random unit vector in R^d (density proportional to "
            "(1-t^2)^((d-3)/2) on [-1,1]). centroids/boundaries are on the unit-norm scale (multiply by the vector norm); "
            "nmse = d * E[(t - Q(t))^2] = expected ||x - x_hat||^2 / ||x||^2. Computed independently with SciPy "
            "(closed-form cell moments from the regularized incomplete beta; companding start, 200 Lloyd steps, then "
            "Newton's method to 1e-10/sqrt(d)) by tests/data/lloyd_max_oracle.py.")
        doc["codebooks"] = books
        with open(args.write, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
