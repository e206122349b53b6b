# Device call F5 (session 4): GPU test of the fused local-shard AdamW; FSDP keeping gathered
# parameters to the backward (reshard_after_forward = "never", bench --no-reshard) on the
# device-bound hybrid and the host-bound colocated step; the colocated step at the session's
# starting commit (dc4fe6f, in ../.snap_old) against this one; the hybrid without any AC.
cat dcache_triton.tgz.part-* 2>/dev/null | tar xz
source benchmarks/gpu_setup.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
NEW=$PWD
set -o pipefail
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
H="--module language --model hybrid_lm/hybrid_2b --batch 2 --seq 8192 --ssd-backend mamba_ssm --loss fused --compile --steps 5 --warmup 2 --no-bare"
M="--module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --vision-eager --ac full --no-bare --steps 5 --warmup 2"
old() {  # the same bench command in the other commit's tree, sharing the compile caches
  (cd ../.snap_old && source benchmarks/gpu_setup.sh >/dev/null &&
   export TRITON_CACHE_DIR=$NEW/.dcache/triton TORCHINDUCTOR_CACHE_DIR=$NEW/.dcache/inductor &&
   timeout "$1" python3 -m titan_mimo.bench --json $OUT/results_old.jsonl "${@:2}")
}
set -x
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_optim.py -k cuda 2>&1 | tail -3 | tee $OUT/test_gpu.log
timeout 130 $B $H --ac mlp-half 2>&1 | grep -v lspci | tee $OUT/hybrid.log
timeout 90 $B $H --ac mlp-half --no-reshard 2>&1 | grep -v lspci | tee $OUT/hybrid_noreshard.log
timeout 110 $B $M 2>&1 | grep -v lspci | tee $OUT/model.log
old 110 $M 2>&1 | grep -v lspci | tee $OUT/model_old.log
timeout 100 $B $M --no-reshard 2>&1 | grep -v lspci | tee $OUT/model_noreshard.log
timeout $((585 - SECONDS)) $B $H --ac none 2>&1 | grep -v lspci | tee $OUT/hybrid_noac.log
set +x
grep -hE "^\[|host time|passed|failed|Error|error" $OUT/*.log | head -40
