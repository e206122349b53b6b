# Device call D9 (session 2): why per-block compile slows the ViT down. Eager and compiled, each
# as the trainer builds it (FSDP2, bf16 params) and as a bare loop (no FSDP, autocast), in one call:
# if the bare loop gains from compile and the FSDP build does not, the loss is in FSDP + compile.
source benchmarks/gpu_setup.sh
set -o pipefail
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
V="--module vision --model vit/h16 --batch 4 --image 1024"
set -x
timeout 100 $B $V 2>&1 | tee $OUT/vision.log
timeout 200 $B $V --compile 2>&1 | tee $OUT/vision_compile.log
set +x
grep -hE "^\[|overhead|host time|Error|error" $OUT/*.log
