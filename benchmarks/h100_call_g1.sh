# Device call G1 (session 5): FlashAttention-4 behind attention_backend = "fa4". GPU tests of the
# custom ops against SDPA, the attention microbenchmark at the ViT-H/16 shape (head dim 80) and the
# hybrid LM's (causal, head dim 128), and the ViT-H/16 step with SDPA, FA4 and FA4 + compile.
cat .fa4b/dcache_triton.tgz.part-* | tar xz
source benchmarks/gpu_setup.sh
source benchmarks/fa4_setup.sh || exit 1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
set -o pipefail
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
V="--module vision --model vit/h16 --batch 4 --image 1024 --no-bare --steps 10 --warmup 3"
set -x
timeout 180 python3 -m pytest -q -p no:cacheprovider tests/models/test_attention_kernels.py 2>&1 | tail -15 | tee $OUT/test_gpu.log
timeout 120 python3 benchmarks/attention_bench.py --head-dims 80 128 2>&1 | tee $OUT/attn_vit.log
timeout 90 python3 benchmarks/attention_bench.py --batch 2 --width 2048 --lengths 8192 --head-dims 128 --causal 2>&1 | tee $OUT/attn_lm.log
timeout 60 $B $V 2>&1 | grep -v lspci | tee $OUT/vision_sdpa.log
timeout 90 $B $V --attention fa4 2>&1 | grep -v lspci | tee $OUT/vision_fa4.log
timeout $((590 - SECONDS)) $B $V --attention fa4 --compile 2>&1 | grep -v lspci | tee $OUT/vision_fa4_compile.log
set +x
grep -hE "^\[|passed|failed|Error|error" $OUT/*.log | head -40
