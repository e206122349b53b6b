# Device call L6 (session 10, after h100_call_g0.sh on the same machine start): the 1-GPU trainer
# (vlm_hybrid_1gpu.toml, the ViT's attention through FA4) with its modules unwrapped under
# autocast (the new default on one rank), then wrapped in FSDP2 as before
# (parallelism.fsdp_one_rank = true); then the bench's colocated row, unwrapped.
source benchmarks/call_prelude.sh fa4 || exit 1
F="--modules.vision.model_args.attention_backend=fa4"
M="--module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --no-bare --steps 6 --warmup 3 --no-reshard --memory-budget 0.9 --vision-ac full"
set -x
run 200 $T --job.dump_folder=/tmp/tr_a $F | tail -2; summ /tmp/tr_a/metrics.jsonl trainer_fa4_unwrapped
run 200 $T --job.dump_folder=/tmp/tr_b $F --parallelism.fsdp_one_rank=true | tail -2; summ /tmp/tr_b/metrics.jsonl trainer_fa4_fsdp
run $((585 - SECONDS)) $B $M --attention fa4 | tee $OUT/model_fa4_unwrapped.log
set +x
cat $OUT/summary.log; grep -hE "^\[|host time|rror" $OUT/*.log | cut -c1-400 | head -20
