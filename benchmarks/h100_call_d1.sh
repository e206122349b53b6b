# Device call D1 (session 2): Mamba2 mixer vs mamba-ssm's layer in one process, then the 2B
# hybrid at batch 2 with the fused chunked loss, per-block compiled (fallback: MLP blocks
# checkpointed, if it runs out of memory).
source benchmarks/gpu_setup.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
set -o pipefail
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
H="--module language --model hybrid_lm/hybrid_2b --batch 2 --seq 8192 --ssd-backend mamba_ssm --loss fused"
set -x
timeout 240 python3 benchmarks/mixer_pair.py --profile 2>&1 | tee $OUT/mixer.log
timeout 280 $B $H --compile --no-bare --steps 5 --warmup 2 --profile 2>&1 | tee $OUT/hybrid_2b_compile.log \
  || timeout 200 $B $H --ac mlp --compile --no-bare --steps 5 --warmup 2 2>&1 | tee $OUT/hybrid_2b_compile_acmlp.log
set +x
grep -hE "^\[|overhead|^mamba-ssm|^titan_mimo|^ratio|^compiled|^\(first|Error|error" $OUT/*.log
