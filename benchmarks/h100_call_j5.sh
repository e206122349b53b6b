# Device call J5 (session 8): the colocated model with the ViT under torch.compile's activation
# memory budget instead of checkpointing every block (0.3 keeps each block's fc1 output, 0.5 its
# qkv too: benchmarks' CPU estimate +2.0 / +4.7 GB at batch 2), then the real trainer on the
# 1-GPU config as it is (vision: every block checkpointed).
source benchmarks/call_prelude.sh
M="$B --module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --no-bare --steps 8 --warmup 3 --no-reshard --memory-budget 0.85"
set -x
run 140 $M --vision-memory-budget 0.3 | tee $OUT/model_b085_v03_nr.log
run 140 $M --vision-memory-budget 0.5 | tee $OUT/model_b085_v05_nr.log
run $((585 - SECONDS)) $T --job.dump_folder=/tmp/tr_a | tail -4; summ /tmp/tr_a/metrics.jsonl trainer_vfull
set +x
