# Device call E3 (session 3): the whole model through the trainer again, now with the gradient
# norm computed on the device (one read-back instead of one per parameter) and the bench's best
# colocated setting; ViT-H/16 without the class token at batch 8; the hybrid with 128-token SSD
# chunks (mamba-ssm autotunes the new shape first: last, bounded by the call's time).
tar xzf dcache.tgz 2>/dev/null
source benchmarks/gpu_setup.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
set -o pipefail
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
set -x
timeout 200 torchrun --nproc-per-node 1 -m titan_mimo.train --config train_configs/vlm_hybrid_1gpu.toml \
  --training.steps=10 --job.dump_folder=/tmp/trainer 2>&1 | grep -v lspci | tee $OUT/trainer.log
cp /tmp/trainer/metrics.jsonl $OUT/trainer_metrics.jsonl
timeout 60 $B --module vision --model vit/h16 --batch 8 --image 1024 --no-bare --vision-args use_cls_token=false 2>&1 | tee $OUT/vision_b8_nocls.log
timeout $((560 - SECONDS)) $B --module language --model hybrid_lm/hybrid_2b --batch 2 --seq 8192 --ssd-backend mamba_ssm \
  --loss fused --compile --steps 5 --warmup 2 --ac mlp-half --no-bare --lm-args mamba_chunk_size=128 2>&1 | tee $OUT/hybrid_chunk128.log
set +x
python3 -c "
import json; r=[json.loads(l) for l in open('$OUT/trainer_metrics.jsonl')]
t=[x['step_time_s'] for x in r[3:]]; print('trainer steps 4-%d: mean step %.1f ms' % (len(r), 1e3*sum(t)/len(t)), [round(x,3) for x in t])"
grep -hE "^\[|host time|Error|error" $OUT/*.log
