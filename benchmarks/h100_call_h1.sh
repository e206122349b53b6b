# Device call H1 (session 6): the hybrid's activation memory. The depthwise conv now pads its bf16
# input (a float32 padded copy was what the compiled Mamba2 block kept); the compiler's activation
# memory budget (--memory-budget) in place of recomputing every second MLP block (--ac mlp-half).
cat .fa4b/dcache_triton.tgz.part-* | tar xz
source benchmarks/gpu_setup.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
set -o pipefail
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
H="--module language --model hybrid_lm/hybrid_2b --seq 8192 --ssd-backend mamba_ssm --loss fused --compile --steps 5 --warmup 2 --no-bare --no-reshard"
run() { timeout "$1" "${@:2}" 2>&1 | grep -v "lspci\|UserWarning\|exe_args\|DeprecationWarning\|_warn_once"; sleep 2; }
set -x
run 130 $B $H --batch 2 --ac mlp-half | tee $OUT/hybrid_mlphalf.log
run 130 $B $H --batch 2 --ac none | tee $OUT/hybrid_none.log
run 130 $B $H --batch 2 --memory-budget 0.7 | tee $OUT/hybrid_b07.log
run 130 $B $H --batch 3 --memory-budget 0.5 | tee $OUT/hybrid_b3_b05.log
run $((585 - SECONDS)) $B $H --batch 2 --memory-budget 0.5 | tee $OUT/hybrid_b05.log
set +x
grep -hE "^\[" $OUT/*.log
