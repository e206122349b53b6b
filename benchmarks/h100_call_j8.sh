# Device call J8 (session 8): where the host time of the scan's custom ops goes (X17: 3.2 ms of
# Python per backward call, 1.2 ms per forward), and the trainer on the 1-GPU config twice more
# (LM budget 0.85 as configured, then 0.9) for the spread of this host-bound step.
source benchmarks/call_prelude.sh
set -x
run 150 python3 benchmarks/scan_host_bench.py | tee $OUT/scan_host_bench.log
run 180 $T --job.dump_folder=/tmp/tr_a | tail -2; summ /tmp/tr_a/metrics.jsonl trainer_b085
run $((585 - SECONDS)) $T --modules.language.memory_budget=0.9 --job.dump_folder=/tmp/tr_b | tail -2; summ /tmp/tr_b/metrics.jsonl trainer_b090
set +x
