# Device call J6 (session 8): with the scan's custom ops the hybrid at batch 3 peaks 1.3 GiB lower
# (X8): a larger LM memory budget (less recompute) at batch 3 and in the colocated model, and
# X8's run profiled (kernel time by kind) for where the time goes now.
source benchmarks/call_prelude.sh
H="$B --module language --model hybrid_lm/hybrid_2b --seq 8192 --ssd-backend mamba_ssm --loss fused --compile --steps 8 --warmup 3 --no-bare --batch 3 --no-reshard"
M="$B --module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --no-bare --steps 8 --warmup 3 --no-reshard --vision-ac full"
set -x
run 150 $H --memory-budget 0.9 | tee $OUT/hybrid_b3_b090.log
run 130 $M --memory-budget 0.9 | tee $OUT/model_b090_vfull_nr.log
run $((585 - SECONDS)) $H --memory-budget 0.85 --steps 5 --warmup 2 --profile --profile-top 40 | tee $OUT/hybrid_b3_b085_profile.log
set +x
