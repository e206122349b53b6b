# Device call G8 (session 5, after G0 on a fresh machine): the ViT-H/16 with FA4, compiled blocks
# and gathered parameters kept at larger batches (the per-step costs that do not grow with the
# batch, AdamW and FSDP's copies, spread over more images), and batch 8 again in the same start.
cat .fa4b/dcache_triton.tgz.part-* | tar xz
source benchmarks/gpu_setup.sh
source benchmarks/fa4_setup.sh || exit 1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
set -o pipefail
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
V="--module vision --model vit/h16 --image 1024 --no-bare --steps 8 --warmup 3 --compile --attention fa4 --no-reshard"
run() { timeout "$1" "${@:2}" 2>&1 | grep -v "lspci\|UserWarning\|exe_args\|DeprecationWarning\|_warn_once"; sleep 2; }
set -x
run 100 $B $V --batch 8 | tee $OUT/vision_fa4_nr_b8.log
run 100 $B $V --batch 10 | tee $OUT/vision_fa4_nr_b10.log
run $((420 - SECONDS)) $B $V --batch 12 | tee $OUT/vision_fa4_nr_b12.log
set +x
grep -hE "^\[" $OUT/*.log | head -20
