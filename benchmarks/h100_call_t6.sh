# Device call T6 (session 11, after T1-T5 on the same machine start): the last Transformer Engine
# piece, TE installed and its PyTorch extension built (te_setup.sh), then the "te" attention
# backend's GPU tests against SDPA and the 1-GPU trainer with the ViT's attention through TE
# (compare S9: SDPA 0.583 s, FA4 0.567 s).
mkdir -p /tmp/te && cp .te5/part-af /tmp/te/ && cat .te5/dcache_triton.tgz.part-* | tar xz
source benchmarks/gpu_setup.sh || exit 1
source benchmarks/te_setup.sh || exit 1
set -o pipefail
python3 -m pytest -q -rs tests/models/test_attention_kernels.py -k "te_" -p no:cacheprovider 2>&1 | tee $OUT/te_tests.log | tail -15
T="torchrun --nproc-per-node 1 -m titan_mimo.train --config train_configs/vlm_hybrid_1gpu.toml --training.steps=14"
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
timeout $((570 - SECONDS)) $T --job.dump_folder=/tmp/tr_te --modules.vision.model_args.attention_backend=te 2>&1 | grep -v "UserWarning\|warn" | tail -4
python3 -c "
import json, statistics
rows = [json.loads(l) for l in open('/tmp/tr_te/metrics.jsonl')]
t = [r['step_time_s'] for r in rows if 4 <= r['step'] <= 13]
print('trainer_vision_te steps 4-13 mean %.4f s median %.4f' % (sum(t) / len(t), statistics.median(t)), 'min %.3f max %.3f' % (min(t), max(t)), 'mem', {k: round(v['memory_gib'], 1) for k, v in rows[-1]['modules'].items()}, 'loss %.4f' % rows[-1]['loss'])
" | tee $OUT/summary.log; cp /tmp/tr_te/metrics.jsonl $OUT/trainer_vision_te_metrics.jsonl
