# Device call K12 (session 9, fresh machine start): the launch cache replaying under Triton
# 3.6's always-passed (empty) launch hook chains (K11: every launch refused for them): the GPU
# tests, the ops' host time with and without it, the colocated bench with it.
source benchmarks/call_prelude.sh || exit 1
M="--module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --no-bare --steps 8 --warmup 3 --no-reshard --memory-budget 0.9 --vision-ac full"
set -x
run 200 python3 -m pytest -q -p no:cacheprovider tests/models/test_ssd_kernels.py 2>&1 | tail -3 | tee $OUT/test_ssd_kernels.log
run 100 python3 benchmarks/scan_op_overhead.py | tee $OUT/scan_op_overhead.log
run $((560 - SECONDS)) $B $M --lm-args ssd_launch_cache=true | tee $OUT/model_b090_vfull_nr_cache.log
set +x
grep -hE "^\[|passed|failed|host per call|rror" $OUT/*.log | head -20
