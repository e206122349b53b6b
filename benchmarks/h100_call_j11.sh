# Device call J11 (session 8): the 1-GPU config as committed (ssd_keep_states = true, J10's
# faster setting), twice, to confirm the shipped setting on a fresh machine start.
source benchmarks/call_prelude.sh
T="torchrun --nproc-per-node 1 -m titan_mimo.train --config train_configs/vlm_hybrid_1gpu.toml --training.steps=14"
summ() { python3 -c "
import json, statistics
rows = [json.loads(l) for l in open('$1')]
t = [r['step_time_s'] for r in rows if 4 <= r['step'] <= 13]
print('$2', 'steps 4-13 mean %.4f s median %.4f' % (sum(t) / len(t), statistics.median(t)), 'min %.3f max %.3f' % (min(t), max(t)),
      'mem', {k: round(v['memory_gib'], 1) for k, v in rows[-1]['modules'].items()}, 'loss %.4f' % rows[-1]['loss'])
" | tee -a $OUT/summary.log; cp $1 $OUT/$2_metrics.jsonl; }
set -x
run 200 $T --job.dump_folder=/tmp/tr_a | tail -2; summ /tmp/tr_a/metrics.jsonl trainer_config_1
run $((585 - SECONDS)) $T --job.dump_folder=/tmp/tr_b | tail -2; summ /tmp/tr_b/metrics.jsonl trainer_config_2
set +x
