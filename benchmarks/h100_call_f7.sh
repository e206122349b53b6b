# Device call F7 (session 4): is Python's automatic garbage collection the cause of the slow
# outliers of the host-bound colocated step (F5 916.8 ms, F6 895.4 ms against ~765-800)? The
# bench now runs as the trainer does (training.gc_freq: no automatic collection inside steps);
# --python-gc leaves it on. Alternating, 8 timed steps each; then the trainer's colocated run.
cat dcache_triton.tgz.part-* 2>/dev/null | tar xz
source benchmarks/gpu_setup.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
set -o pipefail
M="--module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --vision-eager --ac full --no-bare --steps 8 --warmup 3"
b() { timeout "$1" python3 -m titan_mimo.bench --json $OUT/results.jsonl "${@:2}"; }
set -x
b 150 $M 2>&1 | grep -v lspci | tee $OUT/model_gcoff_1.log
b 90 $M --python-gc 2>&1 | grep -v lspci | tee $OUT/model_gcon_1.log
b 90 $M 2>&1 | grep -v lspci | tee $OUT/model_gcoff_2.log
b 90 $M --python-gc 2>&1 | grep -v lspci | tee $OUT/model_gcon_2.log
timeout $((590 - SECONDS)) torchrun --nproc-per-node 1 -m titan_mimo.train --config train_configs/vlm_hybrid_1gpu.toml \
  --training.steps=12 --job.dump_folder=/tmp/trainer 2>&1 | grep -v lspci | tee $OUT/trainer.log
cp /tmp/trainer/metrics.jsonl $OUT/trainer_metrics.jsonl
set +x
grep -hE "^\[|host time|Error|error" $OUT/*.log | head -40
