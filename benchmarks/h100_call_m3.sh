# Device call M3 (session 11, after M2 on the same machine start): the bench's colocated row with
# the ViT checkpointing nothing (M2: the trainer 0.569 s median, 41.5%), next to its bare loop
# (trainer overhead), and the trainer once more with the new config (vision activation_checkpoint
# = "none").
source benchmarks/call_prelude.sh fa4 || exit 1
M="--module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --steps 6 --warmup 3 --no-reshard --memory-budget 0.85 --attention fa4"
set -x
run 330 $B $M --vision-ac none | tee $OUT/model_fa4_vision_ac_none.log
run $((585 - SECONDS)) $T --job.dump_folder=/tmp/tr_f | tail -1; summ /tmp/tr_f/metrics.jsonl trainer_config
set +x
cat $OUT/summary.log
