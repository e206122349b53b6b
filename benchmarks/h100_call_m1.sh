# Device call M1 (prepared in session 10, not yet run; after h100_call_g0.sh on the same machine
# start): where the unwrapped colocated trainer step (0.598 s, 39.5%) spends its time, and the
# settings that might close the last ~1.2% to 40%: a kernels-only profile of step 10 (its
# device-busy share is that of a normal step), the LM's memory budget at 0.9 (the bench's),
# and the launch cache again.
source benchmarks/call_prelude.sh fa4 || exit 1
set -x
run 150 $T --job.dump_folder=/tmp/tr_p --metrics.profile_step=10 --metrics.profile_kernels_only=true > $OUT/trainer_profile.log 2>&1; grep -A45 "profile (trace" $OUT/trainer_profile.log | cut -c1-200 | head -50
run 130 $T --job.dump_folder=/tmp/tr_a | tail -1; summ /tmp/tr_a/metrics.jsonl trainer
run 130 $T --job.dump_folder=/tmp/tr_b --modules.language.memory_budget=0.9 | tail -1; summ /tmp/tr_b/metrics.jsonl trainer_b090
run $((585 - SECONDS)) $T --job.dump_folder=/tmp/tr_c --modules.language.model_args.ssd_launch_cache=true | tail -1; summ /tmp/tr_c/metrics.jsonl trainer_cache
set +x
cat $OUT/summary.log
