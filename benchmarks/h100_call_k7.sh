# Device call K7 (session 9, after h100_call_g0.sh on a fresh machine start): the 1-GPU trainer
# (vlm_hybrid_1gpu.toml) as committed, then with Inductor's coordinate-descent tuning.
source benchmarks/call_prelude.sh fa4 || exit 1
set -x
run 230 $T --job.dump_folder=/tmp/tr_a | tail -2; summ /tmp/tr_a/metrics.jsonl trainer_config
run $((585 - SECONDS)) $T --job.dump_folder=/tmp/tr_b --training.coordinate_descent_tuning=true | tail -2; summ /tmp/tr_b/metrics.jsonl trainer_cdt
set +x
