# Device call I1 (session 7): mamba-ssm's SSD scan per kernel, with CB in fp32 (as shipped) and
# bf16 (benchmarks/scan_variants.py); the hybrid at batch 3 and the colocated step profiled with
# the kernel time by kind (--profile-top 40).
source benchmarks/call_prelude.sh
set -x
run 200 python3 benchmarks/scan_variants.py 2 3 | tee $OUT/scan_variants.log
run 200 $B --module language --model hybrid_lm/hybrid_2b --seq 8192 --ssd-backend mamba_ssm --loss fused --compile --steps 5 --warmup 2 --no-bare --no-reshard --batch 3 --memory-budget 0.85 --profile --profile-top 40 | tee $OUT/hybrid_b3_b085_profile.log
run $((585 - SECONDS)) $B --module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --no-bare --steps 5 --warmup 2 --no-reshard --memory-budget 0.85 --vision-ac full --profile --profile-top 40 | tee $OUT/model_b085_vfull_nr_profile.log
set +x
