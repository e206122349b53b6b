# Device call L1 (session 10): the launch cache A/B on one machine start (without, with, without,
# with, in one process), Y13's colocated bench settings.
source benchmarks/call_prelude.sh || exit 1
M="--module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --no-bare --steps 6 --warmup 3 --no-reshard --memory-budget 0.9 --vision-ac full"
set -x
run $((575 - SECONDS)) python3 benchmarks/launch_cache_ab.py --rounds 2 $M | tee $OUT/launch_cache_ab.log
set +x
grep -hE "^\[|A/B|rror" $OUT/*.log | cut -c1-300 | head -20
