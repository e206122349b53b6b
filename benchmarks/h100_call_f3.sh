# Device call F3 (session 4): why the hybrid step got 2% slower with the scan as custom ops (F2:
# 516.8 vs 506.5 ms) while the host-bound colocated step got 8.5% faster: profiles of both
# hybrid builds in one machine start; then the trainer's colocated run next to the bench's.
tar xzf dcache.tgz 2>/dev/null
source benchmarks/gpu_setup.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
NEW=$PWD
set -o pipefail
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
H="--module language --model hybrid_lm/hybrid_2b --batch 2 --seq 8192 --ssd-backend mamba_ssm --loss fused --compile --steps 5 --warmup 2 --ac mlp-half --no-bare --profile"
M="--module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --vision-eager --ac full --no-bare --steps 5 --warmup 2"
old() {  # the same bench command in the starting commit's tree, sharing the compile caches
  (cd ../.snap_old && source benchmarks/gpu_setup.sh >/dev/null &&
   export TRITON_CACHE_DIR=$NEW/.dcache/triton TORCHINDUCTOR_CACHE_DIR=$NEW/.dcache/inductor &&
   timeout "$1" python3 -m titan_mimo.bench --json $OUT/results_old.jsonl "${@:2}")
}
set -x
timeout 240 $B $H 2>&1 | grep -v lspci | tee $OUT/hybrid_new.log
old 110 $H 2>&1 | grep -v lspci | tee $OUT/hybrid_old.log
timeout 110 $B $M 2>&1 | grep -v lspci | tee $OUT/model_new.log
timeout $((580 - SECONDS)) torchrun --nproc-per-node 1 -m titan_mimo.train --config train_configs/vlm_hybrid_1gpu.toml \
  --training.steps=10 --job.dump_folder=/tmp/trainer 2>&1 | grep -v lspci | tee $OUT/trainer.log
cp /tmp/trainer/metrics.jsonl $OUT/trainer_metrics.jsonl
set +x
tar czf - .dcache/triton | split -b 15M - $OUT/dcache_triton.tgz.part-; ls -la $OUT
grep -hE "^\[|host time|busy|Error|error" $OUT/*.log | head -40
