# Device call F6 (session 4): the host-bound colocated step measured in alternation (machine
# starts and even runs of one call differed by up to 15% in F2-F5): this commit, the session's
# starting commit (dc4fe6f, ../.snap_old), and this commit with FSDP keeping gathered
# parameters to the backward (--no-reshard), twice each, 8 timed steps after 3 warm-up steps.
cat dcache_triton.tgz.part-* 2>/dev/null | tar xz
source benchmarks/gpu_setup.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
NEW=$PWD
set -o pipefail
M="--module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --vision-eager --ac full --no-bare --steps 8 --warmup 3"
old() {  # the same bench command in the other commit's tree, sharing the compile caches
  (cd ../.snap_old && source benchmarks/gpu_setup.sh >/dev/null &&
   export TRITON_CACHE_DIR=$NEW/.dcache/triton TORCHINDUCTOR_CACHE_DIR=$NEW/.dcache/inductor &&
   timeout "$1" python3 -m titan_mimo.bench --json $OUT/results_old.jsonl "${@:2}")
}
new() { timeout "$1" python3 -m titan_mimo.bench --json $OUT/results.jsonl "${@:2}"; }
set -x
for round in 1 2; do
  new $([ $round = 1 ] && echo 150 || echo 90) $M 2>&1 | grep -v lspci | tee $OUT/model_new_$round.log
  old 90 $M 2>&1 | grep -v lspci | tee $OUT/model_old_$round.log
  new $((590 - SECONDS < 90 ? 590 - SECONDS : 90)) $M --no-reshard 2>&1 | grep -v lspci | tee $OUT/model_noreshard_$round.log
done
set +x
grep -hE "^\[|host time|Error|error" $OUT/*.log | head -40
