# Device call H8 (session 6): does waiting for the device after every step explain the trainer's
# +5.5% over the bench on the colocated step (H4: 0.723 s vs 684.9 ms)? The bench's colocated
# run with the trainer-config settings, alternating plain and --sync-every-step.
source benchmarks/call_prelude.sh
M="--module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --no-bare --steps 8 --warmup 3 --no-reshard --memory-budget 0.85 --vision-ac full"
set -x
run 170 $B $M | tee $OUT/model_1.log
run 120 $B $M --sync-every-step | tee $OUT/model_sync_1.log
run 120 $B $M | tee $OUT/model_2.log
run $((585 - SECONDS)) $B $M --sync-every-step | tee $OUT/model_sync_2.log
set +x
grep -hE "^\[|host time" $OUT/model_1.log $OUT/model_sync_1.log $OUT/model_2.log $OUT/model_sync_2.log
