# Device call L5 (session 10, after h100_call_g0.sh on the same machine start): the colocated
# bench with FA4 next to its bare loop (no FSDP: fp32 params under bf16 autocast), with FSDP's
# gradient division by 1 gone on one-rank meshes: what FSDP costs the one-GPU step.
source benchmarks/call_prelude.sh fa4 || exit 1
M="--module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --steps 6 --warmup 3 --no-reshard --memory-budget 0.9 --vision-ac full"
set -x
run $((585 - SECONDS)) $B $M --attention fa4 | tee $OUT/model_fa4_bare.log
set +x
grep -hE "^\[|host time|overhead|rror" $OUT/*.log | cut -c1-400 | head -20
