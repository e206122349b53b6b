# Device call J7 (session 8): the LM's memory budget at 0.9 did not raise the peak (J6): the
# trainer on the 1-GPU config with 0.9, and budget 1.0 (the runtime-optimal partition) for the
# hybrid at batch 3 and the colocated model.
source benchmarks/call_prelude.sh
H="$B --module language --model hybrid_lm/hybrid_2b --seq 8192 --ssd-backend mamba_ssm --loss fused --compile --steps 8 --warmup 3 --no-bare --batch 3 --no-reshard"
M="$B --module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --no-bare --steps 8 --warmup 3 --no-reshard --vision-ac full"
set -x
run 180 $T --modules.language.memory_budget=0.9 --job.dump_folder=/tmp/tr_a | tail -4; summ /tmp/tr_a/metrics.jsonl trainer_b090
run 150 $H --memory-budget 1.0 | tee $OUT/hybrid_b3_b100.log
run $((585 - SECONDS)) $M --memory-budget 1.0 | tee $OUT/model_b100_vfull_nr.log
set +x
