# The standalone quantizer: side-by-side throughput against the seed Python package
# (writes bench/quantizer/RESULTS.md; sets up the seed's venv under build/ on first use).
.PHONY: bench-seed
bench-seed:
	bench/quantizer/seed_vs_ours.sh bench/quantizer/RESULTS.md
