# Device call T8 (session 11, after T7 on T6's machine start): which attention TE chooses for the
# ViT's shape (NVTE_DEBUG) and its fwd+bwd time against SDPA's. T7 runs this first; T7's own run
# lost te_setup's PYTHONPATH in a pipe's subshell and failed here at import, so T8 ran it alone.
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
