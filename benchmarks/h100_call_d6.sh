# Device call D6 (session 2): the colocated whole model at batch 2 without allocator retries
# (D5's run with MLP-block AC retried cudaMalloc 7 times at 66.9 GiB): every LM block
# checkpointed, ViT eager without AC; then the hybrid alone with every block checkpointed.
source benchmarks/gpu_setup.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
set -o pipefail
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
set -x
timeout 330 $B --module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 \
  --ssd-backend mamba_ssm --loss fused --compile --vision-eager --ac full --no-bare --steps 5 --warmup 2 2>&1 | tee $OUT/model_b2_acfull.log
timeout $((570 - SECONDS)) $B --module language --model hybrid_lm/hybrid_2b --batch 2 --seq 8192 --ssd-backend mamba_ssm \
  --loss fused --compile --ac full --no-bare --steps 5 --warmup 2 2>&1 | tee $OUT/hybrid_b2_acfull.log
set +x
grep -hE "^\[|overhead|host time|Error|error" $OUT/*.log
