# Device call J2 (session 8): J1's hybrid at batch 3 went into allocator retries (69.6 GiB, 16
# retries, 1060 ms) with the chunk states kept. Now: the default (states recomputed, no sum over
# a head split of one) at W1's budget; states kept with a smaller LM memory budget; the scan's
# three variants; the GPU tests of both settings.
source benchmarks/call_prelude.sh
H="$B --module language --model hybrid_lm/hybrid_2b --seq 8192 --ssd-backend mamba_ssm --loss fused --compile --steps 8 --warmup 3 --no-bare --no-reshard --batch 3"
set -x
run 170 $H --memory-budget 0.85 | tee $OUT/hybrid_b3_b085.log
run 170 $H --memory-budget 0.8 --lm-args ssd_keep_states=true | tee $OUT/hybrid_b3_b080_keep.log
run 100 python3 benchmarks/scan_variants.py 3 | tee $OUT/scan_variants.log
run $((585 - SECONDS)) python3 -m pytest -q -p no:cacheprovider tests/models/test_ssd_kernels.py | tee $OUT/test_ssd_kernels.log
set +x
