# Device call D10 (session 2): per-block compile of each block's forward only (FSDP and AC hooks
# left eager) against the trainer's Module.compile, for the ViT (D9: FSDP + compile 285.9 ms vs
# bare compiled 255.0 ms) and the hybrid (row 15a's setting).
source benchmarks/gpu_setup.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
set -o pipefail
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
set -x
timeout 150 $B --module vision --model vit/h16 --batch 4 --image 1024 --compile --compile-forward --no-bare 2>&1 | tee $OUT/vision_compile_fwd.log
timeout $((560 - SECONDS)) $B --module language --model hybrid_lm/hybrid_2b --batch 2 --seq 8192 --ssd-backend mamba_ssm --loss fused \
  --compile --compile-forward --ac mlp-half --no-bare --steps 5 --warmup 2 2>&1 | tee $OUT/hybrid_b2_compile_fwd.log
set +x
grep -hE "^\[|overhead|host time|Error|error" $OUT/*.log
