# Device call J11 (session 8): the 1-GPU config as committed (ssd_keep_states = true, J10's
# faster setting), twice, to confirm the shipped setting on a fresh machine start.
source benchmarks/call_prelude.sh
set -x
run 200 $T --job.dump_folder=/tmp/tr_a | tail -2; summ /tmp/tr_a/metrics.jsonl trainer_config_1
run $((585 - SECONDS)) $T --job.dump_folder=/tmp/tr_b | tail -2; summ /tmp/tr_b/metrics.jsonl trainer_config_2
set +x
