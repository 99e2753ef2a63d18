# The standalone quantizer: side-by-side throughput against the seed Python package
# (writes bench/quantizer.md; sets up the seed's venv under build/ on first use).
.PHONY: bench-seed
bench-seed:
	bench/seed_vs_ours.sh bench/quantizer.md
