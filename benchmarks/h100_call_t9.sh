# Device call T9 (session 11, after T8 on the same machine start): TE's attention is faster per call
# than SDPA's at the ViT's shape (T8: 1.78 vs 2.80 ms fwd+bwd), yet the trainer with the ViT on TE
# was 27 ms slower than on SDPA (T6 vs T7): is it the graph break around TE's call? The trainer with
# TE's DotProductAttention traced by torch.compile (TE 2.20 supports tracing it) instead.
source benchmarks/gpu_setup.sh > /dev/null || exit 1
source benchmarks/te_setup.sh 2> /dev/null || exit 1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
cat > /tmp/traced_te.py <<'PY'
import sys
from titan_mimo.models import attention_kernels as ak
def _attend_te(q, k, v, is_causal):  # as ak._attend_te, without torch.compiler.disable
    b, s, h, e = q.shape
    return ak._te_attention(h, k.shape[2], e, is_causal)(q, k, v).view(b, s, h, e)
ak._attend_te = _attend_te
from titan_mimo.train import main
main(sys.argv[1:])
PY
timeout 400 torchrun --nproc-per-node 1 /tmp/traced_te.py --config train_configs/vlm_hybrid_1gpu.toml --training.steps=14 --job.dump_folder=/tmp/tr_tt --modules.vision.model_args.attention_backend=te 2>&1 | grep -i "^step    14\|error\|graph break" | head -20
python3 -c "
import json, statistics
rows = [json.loads(l) for l in open('/tmp/tr_tt/metrics.jsonl')]
t = [r['step_time_s'] for r in rows if 4 <= r['step'] <= 13]
print('trainer_vision_te_traced steps 4-13 mean %.4f s median %.4f' % (sum(t) / len(t), statistics.median(t)), 'min %.3f max %.3f' % (min(t), max(t)), 'loss %.4f' % rows[-1]['loss'])
" | tee $OUT/summary.log; cp /tmp/tr_tt/metrics.jsonl $OUT/trainer_vision_te_traced_metrics.jsonl
