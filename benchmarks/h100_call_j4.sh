# Device call J4 (session 8): the scan as torch.library custom ops (the Mamba2 mixer one compiled
# graph, no graph break): GPU tests (eager, states kept, compiled with fullgraph), the hybrid at
# batch 3 with and without the states kept, the colocated model (W5's settings).
source benchmarks/call_prelude.sh
H="$B --module language --model hybrid_lm/hybrid_2b --seq 8192 --ssd-backend mamba_ssm --loss fused --compile --steps 8 --warmup 3 --no-bare --batch 3 --memory-budget 0.85 --no-reshard"
M="$B --module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --no-bare --steps 8 --warmup 3 --no-reshard --memory-budget 0.85 --vision-ac full"
set -x
run 150 $H | tee $OUT/hybrid_b3_b085.log
run 150 $H --lm-args ssd_keep_states=true | tee $OUT/hybrid_b3_b085_keep.log
run 130 $M | tee $OUT/model_b085_vfull_nr.log
run $((585 - SECONDS)) python3 -m pytest -q -p no:cacheprovider tests/models/test_ssd_kernels.py | tee $OUT/test_ssd_kernels.log
set +x
