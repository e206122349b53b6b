# Device call D2 (session 2): the 2B hybrid at batch 2 with the fused chunked loss, per-block
# compiled (fallback: MLP blocks checkpointed, if it runs out of memory); then the colocated whole
# model at batch 2 (LM MLP blocks and ViT blocks checkpointed). Needs tomli_w in .whl (config.py).
source benchmarks/gpu_setup.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
set -o pipefail
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
H="--module language --model hybrid_lm/hybrid_2b --batch 2 --seq 8192 --ssd-backend mamba_ssm --loss fused"
set -x
timeout 300 $B $H --compile --no-bare --steps 5 --warmup 2 --profile 2>&1 | tee $OUT/hybrid_2b_compile.log \
  || timeout 200 $B $H --ac mlp --compile --no-bare --steps 5 --warmup 2 --profile 2>&1 | tee $OUT/hybrid_2b_compile_acmlp.log
timeout $((585 - SECONDS)) $B --module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 \
  --ssd-backend mamba_ssm --loss fused --ac mlp --vision-ac full --compile --no-bare --steps 5 --warmup 2 2>&1 | tee $OUT/model_compile.log
set +x
grep -hE "^\[|overhead|^bench|Error|error" $OUT/*.log
