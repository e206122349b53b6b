# Device call K8 (session 9, right after K7 on the same machine start): the 1-GPU trainer with
# coordinate-descent tuning and the ViT's attention through FlashAttention-4 (the read-back fix
# of its backward), then that with the LM's memory budget at 0.9.
source benchmarks/call_prelude.sh fa4 || exit 1
F="--training.coordinate_descent_tuning=true --modules.vision.model_args.attention_backend=fa4"
set -x
run 280 $T --job.dump_folder=/tmp/tr_c $F | tail -2; summ /tmp/tr_c/metrics.jsonl trainer_cdt_fa4
run $((585 - SECONDS)) $T --job.dump_folder=/tmp/tr_d $F --modules.language.memory_budget=0.9 | tail -2; summ /tmp/tr_d/metrics.jsonl trainer_cdt_fa4_b090
set +x
