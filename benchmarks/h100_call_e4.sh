# Device call E4 (session 3): where the trainer's colocated step spends the ~260 ms it takes
# beyond the bench's (E3: 1028 ms vs 765 ms): the same run with step 6 under the profiler.
tar xzf dcache.tgz 2>/dev/null
source benchmarks/gpu_setup.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
set -o pipefail
set -x
timeout 250 torchrun --nproc-per-node 1 -m titan_mimo.train --config train_configs/vlm_hybrid_1gpu.toml \
  --training.steps=7 --metrics.profile_step=6 --job.dump_folder=/tmp/trainer 2>&1 | grep -v lspci | tee $OUT/trainer_profile.log
cp /tmp/trainer/metrics.jsonl $OUT/trainer_metrics.jsonl
gzip -c /tmp/trainer/profile/rank0_step6.json > $OUT/rank0_step6.json.gz
