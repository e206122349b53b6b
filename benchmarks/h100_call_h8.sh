# Device call H8 (session 6): does waiting for the device after every step explain the trainer's
# +5.5% over the bench on the colocated step (H4: 0.723 s vs 684.9 ms)? The bench's colocated
# run with the trainer-config settings, alternating plain and --sync-every-step.
cat .fa4b/dcache_triton.tgz.part-* | tar xz
source benchmarks/gpu_setup.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
set -o pipefail
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
M="--module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --no-bare --steps 8 --warmup 3 --no-reshard --memory-budget 0.85 --vision-ac full"
run() { timeout "$1" "${@:2}" 2>&1 | grep -v "lspci\|UserWarning\|exe_args\|DeprecationWarning\|_warn_once"; sleep 2; }
set -x
run 170 $B $M | tee $OUT/model_1.log
run 120 $B $M --sync-every-step | tee $OUT/model_sync_1.log
run 120 $B $M | tee $OUT/model_2.log
run $((585 - SECONDS)) $B $M --sync-every-step | tee $OUT/model_sync_2.log
set +x
grep -hE "^\[|host time" $OUT/model_1.log $OUT/model_sync_1.log $OUT/model_2.log $OUT/model_sync_2.log
