# Device call J1 (session 8): the mamba_ssm backend's own backward (chunk states kept, no sum over
# a head split of one): GPU test against the torch reference, the scan per kernel against
# mamba-ssm's own function at batch 3, then the hybrid at batch 3 (W1's settings, no profile).
source benchmarks/call_prelude.sh
set -x
run 120 python3 -m pytest -q -p no:cacheprovider tests/models/test_ssd_kernels.py | tee $OUT/test_ssd_kernels.log
run 200 python3 benchmarks/scan_variants.py 3 | tee $OUT/scan_variants.log
run $((585 - SECONDS)) $B --module language --model hybrid_lm/hybrid_2b --seq 8192 --ssd-backend mamba_ssm --loss fused --compile --steps 8 --warmup 3 --no-bare --no-reshard --batch 3 --memory-budget 0.85 | tee $OUT/hybrid_b3_b085.log
set +x
