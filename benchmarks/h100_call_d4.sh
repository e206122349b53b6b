# Device call D4 (session 2): the ViT with fused q/k/v, eager (with the bare loop) and compiled,
# each with kernel and host profiles; the flash SDPA backend instead of PyTorch's pick (cuDNN);
# timm's peer in the same call; the attention-only LM eager next to torchtitan's eager peer.
source benchmarks/gpu_setup.sh
set -o pipefail
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
V="--module vision --model vit/h16 --batch 4 --image 1024"
set -x
timeout 100 $B $V --profile 2>&1 | tee $OUT/vision.log
timeout 120 $B $V --compile --no-bare --profile 2>&1 | tee $OUT/vision_compile.log
timeout 60 $B $V --sdpa flash --no-bare 2>&1 | tee $OUT/vision_flash.log
(cd benchmarks && timeout 50 python3 vit_anchor.py 1024:4) 2>&1 | tee $OUT/peers.log
timeout 80 $B --module language --model hybrid_lm/attn_1b --batch 2 --seq 8192 --no-bare 2>&1 | tee $OUT/attn_1b.log
(cd benchmarks && timeout $((570 - SECONDS)) torchrun --nproc-per-node 1 tt_anchor.py 1B:2:8192) 2>&1 | tee -a $OUT/peers.log
set +x
tar czf $OUT/dcache.tgz .dcache; ls -la $OUT/dcache.tgz
grep -hE "^\[|overhead|host time|profile:|^timm|^torchtitan|Error|error" $OUT/*.log
