# Device call F1 (session 4): the hybrid and colocated steps with AdamW stepping local shards
# (LocalShardAdamW; session 3's colocated profile had 176 ms of DTensor dispatch per step), the
# host cost of mamba-ssm's scan (cProfile, and whether torch.compile can trace it), and the
# compiled ViT under FSDP (host-bound in session 2).
tar xzf dcache.tgz 2>/dev/null
source benchmarks/gpu_setup.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
set -o pipefail
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
V="--module vision --model vit/h16 --batch 4 --image 1024"
H="--module language --model hybrid_lm/hybrid_2b --batch 2 --seq 8192 --ssd-backend mamba_ssm --loss fused --compile --steps 5 --warmup 2"
set -x
timeout 200 $B $H --ac mlp-half --no-bare --profile 2>&1 | tee $OUT/hybrid.log
timeout 230 $B --module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 \
  --ssd-backend mamba_ssm --loss fused --compile --vision-eager --ac full --no-bare --steps 5 --warmup 2 --profile 2>&1 | tee $OUT/model.log
timeout 100 python3 benchmarks/scan_host_bench.py 2>&1 | tee $OUT/scan.log
timeout $((570 - SECONDS)) $B $V --compile --no-bare 2>&1 | tee $OUT/vision_compile.log
set +x
tar czf $OUT/dcache.tgz .dcache; ls -la $OUT
grep -hE "^\[|host time|busy|PythonSubclass|Mamba|eager|compile|Error|error" $OUT/*.log | head -60
