# Device call L4 (session 10, after h100_call_g0.sh on the same machine start): is the colocated
# step host-bound? Kernel-only profiles (no host ops recorded, so the steps run at unprofiled
# speed) of Y13's settings with the ViT's attention through FA4 (read-back fix) and through SDPA.
source benchmarks/call_prelude.sh fa4 || exit 1
M="--module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --no-bare --steps 6 --warmup 3 --no-reshard --memory-budget 0.9 --vision-ac full"
set -x
run 290 $B $M --attention fa4 --profile --profile-kernels-only --profile-top 60 | tee $OUT/model_fa4_kprofile.log
run $((580 - SECONDS)) $B $M --profile --profile-kernels-only --profile-top 60 | tee $OUT/model_sdpa_kprofile.log
set +x
grep -hE "^\[|host time|busy|by kind|rror" $OUT/*.log | cut -c1-400 | head -20
