# Device call J3 (session 8): the hybrid at batch 3 with the chunk states kept, paid for by
# resharding parameters after forward instead of the smaller memory budget (J2: 0.8 still retried);
# J2's best setting again (run-to-run spread in one call); the colocated model (W5's settings)
# with the default scan and with the states kept.
source benchmarks/call_prelude.sh
H="$B --module language --model hybrid_lm/hybrid_2b --seq 8192 --ssd-backend mamba_ssm --loss fused --compile --steps 8 --warmup 3 --no-bare --batch 3 --memory-budget 0.85"
M="$B --module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --no-bare --steps 8 --warmup 3 --no-reshard --memory-budget 0.85 --vision-ac full"
set -x
run 150 $H --lm-args ssd_keep_states=true | tee $OUT/hybrid_b3_b085_reshard_keep.log
run 150 $H --no-reshard | tee $OUT/hybrid_b3_b085.log
run 130 $M | tee $OUT/model_b085_vfull_nr.log
run $((585 - SECONDS)) $M --lm-args ssd_keep_states=true | tee $OUT/model_b085_vfull_nr_keep.log
set +x
