# Device call F9 (session 4): LocalShardAdamW on steps where the host is the limit but which are
# shorter and steadier than the colocated one: the compiled ViT-H/16 under FSDP (host-bound, T4)
# and the 2B hybrid at batch 1 (host-bound since session 2), alternating this commit with the
# session's starting commit dc4fe6f (../.snap_old) in one machine start.
cat dcache_triton.tgz.part-* 2>/dev/null | tar xz
source benchmarks/gpu_setup.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
NEW=$PWD
set -o pipefail
V="--module vision --model vit/h16 --batch 4 --image 1024 --compile --no-bare --steps 10 --warmup 3"
H="--module language --model hybrid_lm/hybrid_2b --batch 1 --seq 8192 --ssd-backend mamba_ssm --loss fused --compile --no-bare --steps 8 --warmup 3"
old() {
  (cd ../.snap_old && source benchmarks/gpu_setup.sh >/dev/null &&
   export TRITON_CACHE_DIR=$NEW/.dcache/triton TORCHINDUCTOR_CACHE_DIR=$NEW/.dcache/inductor &&
   timeout "$1" python3 -m titan_mimo.bench --json $OUT/results_old.jsonl "${@:2}")
}
new() { timeout "$1" python3 -m titan_mimo.bench --json $OUT/results.jsonl "${@:2}"; }
set -x
for round in 1 2; do
  new 90 $V 2>&1 | grep -v lspci | tee $OUT/vision_new_$round.log
  old 70 $V 2>&1 | grep -v lspci | tee $OUT/vision_old_$round.log
done
new 150 $H 2>&1 | grep -v lspci | tee $OUT/hybrid_b1_new.log
old 100 $H 2>&1 | grep -v lspci | tee $OUT/hybrid_b1_old.log
new $((585 - SECONDS)) $H 2>&1 | grep -v lspci | tee $OUT/hybrid_b1_new2.log
set +x
grep -hE "^\[|host time|Error|error" $OUT/*.log | head -40
