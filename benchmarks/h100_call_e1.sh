# Device call E1 (session 3): attention kernels by head dim; vision baseline, without the class
# token, and the timm peer; where the hybrid and the colocated step wait (GPU busy share, syncs).
source benchmarks/gpu_setup.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
set -o pipefail
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
V="--module vision --model vit/h16 --batch 4 --image 1024"
H="--module language --model hybrid_lm/hybrid_2b --batch 2 --seq 8192 --ssd-backend mamba_ssm --loss fused --compile --steps 5 --warmup 2"
set -x
timeout 90 python3 benchmarks/attention_bench.py 2>&1 | tee $OUT/attention.log
timeout 60 $B $V --profile --sync-debug 2>&1 | tee $OUT/vision.log
timeout 40 $B $V --no-bare --vision-args use_cls_token=false 2>&1 | tee $OUT/vision_nocls.log
(cd benchmarks && timeout 40 python3 vit_anchor.py 1024:4) 2>&1 | tee $OUT/timm.log
timeout 240 $B $H --ac mlp-half --no-bare --profile --sync-debug 2>&1 | tee $OUT/hybrid.log
timeout $((560 - SECONDS)) $B --module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 \
  --ssd-backend mamba_ssm --loss fused --compile --vision-eager --ac full --no-bare --steps 5 --warmup 2 --profile --sync-debug 2>&1 | tee $OUT/model.log
set +x
tar czf $OUT/dcache.tgz .dcache; ls -la $OUT
grep -hE "^\[|overhead|host time|busy|synchronising|^    x|^timm|Error|error" $OUT/*.log
