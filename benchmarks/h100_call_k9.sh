# Device call K9 (session 9, right after K8 on the same machine start): the hybrid LM at batch 3
# (X15's settings) with coordinate-descent tuning, then a profile of the colocated bench (X16's
# settings): where its host and device time go now.
source benchmarks/call_prelude.sh || exit 1
H="--module language --model hybrid_lm/hybrid_2b --seq 8192 --ssd-backend mamba_ssm --loss fused --compile --steps 8 --warmup 3 --no-bare --no-reshard --batch 3 --memory-budget 0.9"
M="--module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --no-bare --steps 6 --warmup 3 --no-reshard --memory-budget 0.9 --vision-ac full"
set -x
run 280 $B $H --coordinate-descent-tuning | tee $OUT/hybrid_b3_b090_cdt.log
run $((585 - SECONDS)) $B $M --profile --profile-top 30 | tee $OUT/model_b090_vfull_nr_profile.log
set +x
grep -hE "^\[|rror" $OUT/*.log | head -20
