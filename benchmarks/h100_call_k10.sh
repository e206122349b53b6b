# Device call K10 (session 9, fresh machine start): the Mamba2 scan's launch cache
# (`ssd_launch_cache`): the GPU tests (the cached launches against the first ones and the torch
# reference), the ops' host time with and without it, and the colocated bench (Y13's settings)
# and the 1-GPU trainer with it.
source benchmarks/call_prelude.sh || exit 1
M="--module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --no-bare --steps 8 --warmup 3 --no-reshard --memory-budget 0.9 --vision-ac full"
set -x
run 150 python3 -m pytest -q -p no:cacheprovider tests/models/test_ssd_kernels.py 2>&1 | tail -3 | tee $OUT/test_ssd_kernels.log
run 100 python3 benchmarks/scan_op_overhead.py | tee $OUT/scan_op_overhead.log
run 150 $B $M --lm-args ssd_launch_cache=true | tee $OUT/model_b090_vfull_nr_cache.log
run $((585 - SECONDS)) $T --job.dump_folder=/tmp/tr_a --modules.language.model_args.ssd_launch_cache=true | tail -2; summ /tmp/tr_a/metrics.jsonl trainer_cache
set +x
grep -hE "^\[|passed|failed|host per call|rror" $OUT/*.log | head -20
