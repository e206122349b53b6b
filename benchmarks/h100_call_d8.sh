# Device call D8 (session 2): the 2B hybrid at batch 2 with every second MLP block checkpointed
# (half of row 13's recompute, if it stays clear of allocator retries), with the bare loop.
source benchmarks/gpu_setup.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
set -o pipefail
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
H="--module language --model hybrid_lm/hybrid_2b --batch 2 --seq 8192 --ssd-backend mamba_ssm --loss fused --compile --steps 5 --warmup 2"
set -x
timeout 400 $B $H --ac mlp-half 2>&1 | tee $OUT/hybrid_b2_acmlphalf.log
set +x
grep -hE "^\[|overhead|host time|Error|error" $OUT/*.log
