# Device call H3 (session 6): how far the memory budget goes: the hybrid at batch 3 with budget 0.9;
# the colocated step with budgets 0.7 / 0.85 (ViT fully checkpointed) and 0.5 with no ViT checkpointing.
source benchmarks/call_prelude.sh
M="--module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --no-bare --steps 5 --warmup 2 --no-reshard"
H="--module language --model hybrid_lm/hybrid_2b --seq 8192 --ssd-backend mamba_ssm --loss fused --compile --steps 5 --warmup 2 --no-bare --no-reshard"
set -x
run 130 $B $H --batch 3 --memory-budget 0.9 | tee $OUT/hybrid_b3_b09.log
run 150 $B $M --memory-budget 0.7 --vision-ac full | tee $OUT/model_b07_vfull_nr.log
run 150 $B $M --memory-budget 0.5 | tee $OUT/model_b05_nr.log
run $((585 - SECONDS)) $B $M --memory-budget 0.85 --vision-ac full | tee $OUT/model_b085_vfull_nr.log
set +x
grep -hE "^\[" $OUT/*.log
