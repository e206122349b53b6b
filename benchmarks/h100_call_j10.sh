# Device call J10 (session 8): the 1-GPU trainer with the scan's chunk states kept (X7 fitted them
# at batch 2, 65.6 GiB, before the custom ops lowered the peak), then as configured, for the
# device time keeping them saves (~0.35 ms per Mamba2 layer at batch 3).
source benchmarks/call_prelude.sh
set -x
run 200 $T --modules.language.model_args.ssd_keep_states=true --job.dump_folder=/tmp/tr_a | tail -2; summ /tmp/tr_a/metrics.jsonl trainer_keep
run $((585 - SECONDS)) $T --job.dump_folder=/tmp/tr_b | tail -2; summ /tmp/tr_b/metrics.jsonl trainer_b085
set +x
