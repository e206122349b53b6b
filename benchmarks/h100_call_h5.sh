# Device call H5 (session 6): where the time goes with the memory budget: profiles of the hybrid at
# batch 3 (budget 0.85) and of the colocated step (LM budget 0.85, ViT checkpointed).
source benchmarks/call_prelude.sh
set -x
run 200 $B --module language --model hybrid_lm/hybrid_2b --seq 8192 --ssd-backend mamba_ssm --loss fused --compile --steps 5 --warmup 2 --no-bare --no-reshard --batch 3 --memory-budget 0.85 --profile | tee $OUT/hybrid_b3_b085_profile.log
run $((585 - SECONDS)) $B --module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --no-bare --steps 5 --warmup 2 --no-reshard --memory-budget 0.85 --vision-ac full --profile | tee $OUT/model_b085_vfull_nr_profile.log
set +x
