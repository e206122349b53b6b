# Device call D7 (session 2): GPU parity of the Mamba2 mixer (fused in_proj) with the mamba-ssm
# backend vs the torch reference; the fused-loss and model tests on CUDA where they apply; the ViT
# and timm's peer at batch 8 (same call).
source benchmarks/gpu_setup.sh
set -o pipefail
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
set -x
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/models/test_ssd_kernels.py tests/models/test_loss.py 2>&1 | tee $OUT/test_gpu.log
timeout 100 $B --module vision --model vit/h16 --batch 8 --image 1024 --no-bare 2>&1 | tee $OUT/vision_b8.log
(cd benchmarks && timeout $((560 - SECONDS)) python3 vit_anchor.py 1024:8 1024:4) 2>&1 | tee $OUT/peers.log
set +x
grep -hE "^\[|passed|failed|^timm|Error|error" $OUT/*.log
