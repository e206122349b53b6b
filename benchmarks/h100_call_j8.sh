# Device call J8 (session 8): where the host time of the scan's custom ops goes (X17: 3.2 ms of
# Python per backward call, 1.2 ms per forward), and the trainer on the 1-GPU config twice more
# (LM budget 0.85 as configured, then 0.9) for the spread of this host-bound step.
source benchmarks/call_prelude.sh
T="torchrun --nproc-per-node 1 -m titan_mimo.train --config train_configs/vlm_hybrid_1gpu.toml --training.steps=14"
summ() { python3 -c "
import json
rows = [json.loads(l) for l in open('$1')]
t = [r['step_time_s'] for r in rows if 4 <= r['step'] <= 13]
print('$2', 'steps 4-13 mean %.4f s' % (sum(t) / len(t)), 'min %.3f max %.3f' % (min(t), max(t)),
      'mem', {k: round(v['memory_gib'], 1) for k, v in rows[-1]['modules'].items()}, 'loss %.4f' % rows[-1]['loss'])
" | tee -a $OUT/summary.log; cp $1 $OUT/$2_metrics.jsonl; }
set -x
run 150 python3 benchmarks/scan_host_bench.py | tee $OUT/scan_host_bench.log
run 180 $T --job.dump_folder=/tmp/tr_a | tail -2; summ /tmp/tr_a/metrics.jsonl trainer_b085
run $((585 - SECONDS)) $T --modules.language.memory_budget=0.9 --job.dump_folder=/tmp/tr_b | tail -2; summ /tmp/tr_b/metrics.jsonl trainer_b090
set +x
