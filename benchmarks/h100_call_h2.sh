# Device call H2 (session 6): the colocated step with the memory H1 freed: the compiler's activation
# memory budget on the LM instead of checkpointing every block; the hybrid at batch 3 with less
# recompute (budget 0.85).
source benchmarks/call_prelude.sh
M="--module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --no-bare --steps 5 --warmup 2"
H="--module language --model hybrid_lm/hybrid_2b --seq 8192 --ssd-backend mamba_ssm --loss fused --compile --steps 5 --warmup 2 --no-bare --no-reshard"
set -x
run 170 $B $M --memory-budget 0.5 --vision-ac full --no-reshard | tee $OUT/model_b05_vfull_nr.log
run 150 $B $M --memory-budget 0.5 --vision-ac full | tee $OUT/model_b05_vfull.log
run 130 $B $M --vision-eager --ac full | tee $OUT/model_full.log
run $((585 - SECONDS)) $B $H --batch 3 --memory-budget 0.85 | tee $OUT/hybrid_b3_b085.log
set +x
grep -hE "^\[" $OUT/*.log
