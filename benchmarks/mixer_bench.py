"""Our Mamba2 mixer alone at the peer's layer shape (d_model 2048, 64 heads x 64, state 128,
8 groups, chunk 256; 2 x 8192 tokens, bf16 params), fwd+bwd, next to mamba_anchor.py's layer.
FLOPs: the same projections+SSD formula as mamba_anchor.py, and our own
Mamba2Mixer.forward_flops_per_token (x3 for training). Run: python3 mixer_bench.py [torch|mamba_ssm] [compile]"""
import sys, time, torch
from titan_mimo.models.common import init_model_for_testing
from titan_mimo.models.language.args import HybridLMArgs
from titan_mimo.models.language.mamba2 import Mamba2Mixer

backend = sys.argv[1] if len(sys.argv) > 1 else "mamba_ssm"
b, l, d, n, hd, g, chunk = 2, 8192, 2048, 128, 64, 8, 256
h = 2 * d // hd
args = HybridLMArgs(dim=d, mamba_n_heads=h, mamba_head_dim=hd, mamba_d_state=n, mamba_n_groups=g,
                    mamba_chunk_size=chunk, ssd_backend=backend, layer_pattern="M")
mixer = Mamba2Mixer(args)
init_model_for_testing(mixer, 0)
mixer = mixer.cuda().bfloat16()
if "compile" in sys.argv:
    mixer = torch.compile(mixer)
u = torch.randn(b, l, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
def step():
    mixer(u).float().sum().backward()
for _ in range(3): step()
torch.cuda.synchronize(); t = time.perf_counter(); n_it = 10
for _ in range(n_it): step()
torch.cuda.synchronize(); dt = (time.perf_counter() - t) / n_it
d_in = 2 * 2 * d + 2 * g * n + h
anchor_flops = 6 * b * l * (d * d_in + 2 * d * d) + 3 * b * l * h * (2 * chunk * n + 2 * chunk * hd + 4 * n * hd)
ours = 3 * b * l * Mamba2Mixer.forward_flops_per_token(args, l)
print(f"titan_mimo Mamba2Mixer ssd_backend={backend} {'compile' if 'compile' in sys.argv else 'eager'} "
      f"fwd+bwd: {dt*1e3:.1f} ms, anchor-formula {anchor_flops/dt/1e12:.0f} TFLOP/s ({anchor_flops/dt/989e12*100:.1f}% of 989), "
      f"own-formula {ours/dt/1e12:.0f} TFLOP/s ({ours/dt/989e12*100:.1f}%)", flush=True)
