# Device call F2 (session 4): A/B in one machine start of the
# hybrid and colocated steps at this commit against the session's starting commit (dc4fe6f,
# unpacked beside it in ../.snap_old): LocalShardAdamW + the scan as custom ops; then the GPU tests
# of the scan's custom ops with the time left.
tar xzf dcache.tgz 2>/dev/null
source benchmarks/gpu_setup.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
NEW=$PWD
set -o pipefail
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
H="--module language --model hybrid_lm/hybrid_2b --batch 2 --seq 8192 --ssd-backend mamba_ssm --loss fused --compile --steps 5 --warmup 2 --ac mlp-half --no-bare"
M="--module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --vision-eager --ac full --no-bare --steps 5 --warmup 2"
old() {  # the same bench command in the starting commit's tree, sharing the compile caches
  (cd ../.snap_old && source benchmarks/gpu_setup.sh >/dev/null &&
   export TRITON_CACHE_DIR=$NEW/.dcache/triton TORCHINDUCTOR_CACHE_DIR=$NEW/.dcache/inductor &&
   timeout "$1" python3 -m titan_mimo.bench --json $OUT/results_old.jsonl "${@:2}")
}
set -x
timeout 240 $B $H 2>&1 | tee $OUT/hybrid_new.log
old 100 $H 2>&1 | tee $OUT/hybrid_old.log
timeout 120 $B $M 2>&1 | tee $OUT/model_new.log
old 120 $M 2>&1 | tee $OUT/model_old.log
timeout $((580 - SECONDS)) python3 -m pytest -q -p no:cacheprovider tests/models/test_ssd_kernels.py 2>&1 | tail -5 | tee $OUT/test_gpu.log
set +x
tar czf $OUT/dcache_triton.tgz .dcache/triton; ls -la $OUT
grep -hE "^\[|host time|passed|failed|Error|error" $OUT/*.log | head -40
