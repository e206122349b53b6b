# Device call F4 (session 4): where the custom-op scan's ~11 ms/step of extra kernel time in the
# hybrid comes from (mixer-level A/B with every kernel listed), and the colocated step with and
# without the custom ops, both with LocalShardAdamW (../.snap_old is commit 711c9fe here).
cat dcache_triton.tgz.part-* 2>/dev/null | tar xz
source benchmarks/gpu_setup.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
NEW=$PWD
set -o pipefail
M="--module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --vision-eager --ac full --no-bare --steps 5 --warmup 2"
old() {  # the same bench command in the other commit's tree, sharing the compile caches
  (cd ../.snap_old && source benchmarks/gpu_setup.sh >/dev/null &&
   export TRITON_CACHE_DIR=$NEW/.dcache/triton TORCHINDUCTOR_CACHE_DIR=$NEW/.dcache/inductor &&
   timeout "$1" python3 -m titan_mimo.bench --json $OUT/results_old.jsonl "${@:2}")
}
set -x
timeout 240 python3 benchmarks/mixer_scan_ab.py 2>&1 | tee $OUT/mixer_ab.log
timeout 130 python3 -m titan_mimo.bench --json $OUT/results.jsonl $M 2>&1 | grep -v lspci | tee $OUT/model_new.log
old 130 $M 2>&1 | grep -v lspci | tee $OUT/model_old.log
timeout $((585 - SECONDS)) python3 -m titan_mimo.bench --json $OUT/results.jsonl $M 2>&1 | grep -v lspci | tee $OUT/model_new2.log
set +x
grep -hE "^\[|host time|^op:|^break:|Error|error" $OUT/*.log | head -40
