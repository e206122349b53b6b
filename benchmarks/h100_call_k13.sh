# Device call K13 (session 9, fresh machine start, the last of the session's device time): Y13's
# colocated bench without and then with the launch cache, in one process (launch_cache_ab.py).
source benchmarks/call_prelude.sh || exit 1
M="--module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --no-bare --steps 6 --warmup 3 --no-reshard --memory-budget 0.9 --vision-ac full"
run 400 python3 benchmarks/launch_cache_ab.py --json $OUT/results.jsonl $M | tee $OUT/launch_cache_ab.log
