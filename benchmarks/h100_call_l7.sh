# Device call L7 (session 10, after h100_call_g0.sh on the same machine start): the 1-GPU trainer
# unwrapped with FA4 (L6's first run) as is, with the Mamba2 scan's launch cache, with Inductor's
# coordinate-descent tuning, with both, and as is again (the call's drift).
source benchmarks/call_prelude.sh fa4 || exit 1
F="--modules.vision.model_args.attention_backend=fa4"
C="--modules.language.model_args.ssd_launch_cache=true"
D="--training.coordinate_descent_tuning=true"
set -x
run 120 $T --job.dump_folder=/tmp/tr_a $F | tail -1; summ /tmp/tr_a/metrics.jsonl trainer_fa4
run 110 $T --job.dump_folder=/tmp/tr_c $F $C | tail -1; summ /tmp/tr_c/metrics.jsonl trainer_fa4_cache
run 120 $T --job.dump_folder=/tmp/tr_d $F $D | tail -1; summ /tmp/tr_d/metrics.jsonl trainer_fa4_cdt
run 110 $T --job.dump_folder=/tmp/tr_e $F $C $D | tail -1; summ /tmp/tr_e/metrics.jsonl trainer_fa4_cache_cdt
run $((585 - SECONDS)) $T --job.dump_folder=/tmp/tr_f $F | tail -1; summ /tmp/tr_f/metrics.jsonl trainer_fa4_again
set +x
cat $OUT/summary.log
