# Device call D3 (session 2): where the hybrid's step time goes at batch 2 (call D2: 820 ms step
# for 568 ms of kernels): the compiled fused-loss run again (loss chunk now compiled, allocator
# retries and host issue time reported), with the MLP blocks checkpointed, and at batch 1.
source benchmarks/gpu_setup.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
set -o pipefail
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
H="--module language --model hybrid_lm/hybrid_2b --seq 8192 --ssd-backend mamba_ssm --loss fused --compile --no-bare --steps 5 --warmup 2"
set -x
timeout 260 $B $H --batch 2 --profile 2>&1 | tee $OUT/hybrid_b2.log
timeout 170 $B $H --batch 2 --ac mlp --profile 2>&1 | tee $OUT/hybrid_b2_acmlp.log
timeout $((585 - SECONDS)) $B $H --batch 1 2>&1 | tee $OUT/hybrid_b1.log
set +x
grep -hE "^\[|overhead|host time|profile:|Error|error" $OUT/*.log
