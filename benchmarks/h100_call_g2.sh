# Device call G2 (session 5, G1's machine): FlashAttention-4 in the hybrid LM (4 causal GQA
# attention layers) and in the colocated whole model, each beside the same run with SDPA.
source benchmarks/gpu_setup.sh
source benchmarks/fa4_setup.sh || exit 1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
set -o pipefail
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
H="--module language --model hybrid_lm/hybrid_2b --batch 2 --seq 8192 --ssd-backend mamba_ssm --loss fused --compile --steps 5 --warmup 2 --no-bare --ac mlp-half --no-reshard"
M="--module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --vision-eager --ac full --no-bare --steps 5 --warmup 2"
set -x
timeout 150 $B $H --attention fa4 2>&1 | grep -v lspci | tee $OUT/hybrid_fa4.log
timeout 110 $B $H 2>&1 | grep -v lspci | tee $OUT/hybrid_sdpa.log
timeout 130 $B $M --attention fa4 2>&1 | grep -v lspci | tee $OUT/model_fa4.log
timeout $((590 - SECONDS)) $B $M 2>&1 | grep -v lspci | tee $OUT/model_sdpa.log
set +x
grep -hE "^\[|Error|error" $OUT/*.log | head -40
