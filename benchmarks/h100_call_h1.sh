# Device call H1 (session 6): the hybrid's activation memory. The depthwise conv now pads its bf16
# input (a float32 padded copy was what the compiled Mamba2 block kept); the compiler's activation
# memory budget (--memory-budget) in place of recomputing every second MLP block (--ac mlp-half).
source benchmarks/call_prelude.sh
H="--module language --model hybrid_lm/hybrid_2b --seq 8192 --ssd-backend mamba_ssm --loss fused --compile --steps 5 --warmup 2 --no-bare --no-reshard"
set -x
run 130 $B $H --batch 2 --ac mlp-half | tee $OUT/hybrid_mlphalf.log
run 130 $B $H --batch 2 --ac none | tee $OUT/hybrid_none.log
run 130 $B $H --batch 2 --memory-budget 0.7 | tee $OUT/hybrid_b07.log
run 130 $B $H --batch 3 --memory-budget 0.5 | tee $OUT/hybrid_b3_b05.log
run $((585 - SECONDS)) $B $H --batch 2 --memory-budget 0.5 | tee $OUT/hybrid_b05.log
set +x
grep -hE "^\[" $OUT/*.log
