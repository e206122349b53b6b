# Sourced first by the device-call scripts (`source benchmarks/call_prelude.sh [fa4]`): the
# carried Triton autotuning cache, the carried wheels and mamba-ssm source (gpu_setup.sh), with
# "fa4" FlashAttention-4 too (fa4_setup.sh, after h100_call_g0.sh on the same machine start); the
# allocator setting every GPU run here uses; `B` (the bench, results appended to $OUT), `T` (the
# trainer on the 1-GPU config, 14 steps), `run SECONDS CMD...` (CMD under a timeout, warning noise
# filtered out, then a pause) and `summ METRICS NAME` (a trainer run's mean and median step time
# over steps 4-13, memory and last loss, appended to $OUT/summary.log; its metrics kept as
# $OUT/NAME_metrics.jsonl).
# a carried Triton cache (an earlier call's $OUT/dcache_triton.tgz.part-*), where there is one
if compgen -G '.fa4b/dcache_triton.tgz.part-*' > /dev/null; then cat .fa4b/dcache_triton.tgz.part-* | tar xz; fi
source benchmarks/gpu_setup.sh
if [ "$1" = fa4 ]; then source benchmarks/fa4_setup.sh || exit 1; fi
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
set -o pipefail
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
run() { timeout "$1" "${@:2}" 2>&1 | grep -v "lspci\|UserWarning\|exe_args\|DeprecationWarning\|_warn_once\|register_pre_backward"; sleep 2; }
T="torchrun --nproc-per-node 1 -m titan_mimo.train --config train_configs/vlm_hybrid_1gpu.toml --training.steps=14"
summ() { python3 -c "
import json, statistics
rows = [json.loads(l) for l in open('$1')]
rows = rows[max(i for i, r in enumerate(rows) if r['step'] == rows[0]['step']):]  # this run's (a reused folder appends)
t = [r['step_time_s'] for r in rows if 4 <= r['step'] <= 13]
print('$2', 'steps 4-13 mean %.4f s median %.4f' % (sum(t) / len(t), statistics.median(t)), 'min %.3f max %.3f' % (min(t), max(t)),
      'mem', {k: round(v['memory_gib'], 1) for k, v in rows[-1]['modules'].items()}, 'loss %.4f' % rows[-1]['loss'])
" | tee -a $OUT/summary.log; cp $1 $OUT/$2_metrics.jsonl; }
