# Device call T7 (session 11, after T6 on the same machine start): which attention TE chose for
# the ViT's shape (NVTE_DEBUG) and its time against SDPA's, and the trainer with the ViT on SDPA in
# the same machine start as T6's TE run. (Its first run lost te_setup's PYTHONPATH in a pipe's
# subshell: the kernel timing failed at import, the trainer run is T7's result; T8 reran the
# timing alone.)
source benchmarks/gpu_setup.sh > /dev/null || exit 1
source benchmarks/te_setup.sh 2> /dev/null || exit 1
python3 - <<'PY' 2>&1 | grep -i "backend\|selected\|available\|ms" | head -12
import os, torch
os.environ["NVTE_DEBUG"] = "1"; os.environ["NVTE_DEBUG_LEVEL"] = "2"
from titan_mimo.models import attention_kernels as ak
q, k, v = (torch.randn(2, 4096, 16, 80, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
for name in ("te", "sdpa"):
    f = ak.attention_function(name)
    for _ in range(3):
        f(q, k, v, is_causal=False).sum().backward()
    torch.cuda.synchronize(); s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True); s.record()
    for _ in range(10):
        f(q, k, v, is_causal=False).sum().backward()
    e.record(); torch.cuda.synchronize(); print(f"{name}: ViT-H attention fwd+bwd [2, 4096, 16, 80] {s.elapsed_time(e) / 10:.2f} ms")
PY
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
T="torchrun --nproc-per-node 1 -m titan_mimo.train --config train_configs/vlm_hybrid_1gpu.toml --training.steps=14"
timeout 300 $T --job.dump_folder=/tmp/tr_sd --modules.vision.model_args.attention_backend=sdpa 2>&1 | grep "^step    14"
python3 -c "
import json, statistics
rows = [json.loads(l) for l in open('/tmp/tr_sd/metrics.jsonl')]
t = [r['step_time_s'] for r in rows if 4 <= r['step'] <= 13]
print('trainer_vision_sdpa steps 4-13 mean %.4f s median %.4f' % (sum(t) / len(t), statistics.median(t)), 'min %.3f max %.3f' % (min(t), max(t)), 'loss %.4f' % rows[-1]['loss'])
" | tee $OUT/summary.log; cp /tmp/tr_sd/metrics.jsonl $OUT/trainer_vision_sdpa_metrics.jsonl
