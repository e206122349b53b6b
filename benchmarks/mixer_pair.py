"""Mamba2 mixer alone vs mamba-ssm's `Mamba2` layer, in ONE process so mamba-ssm's Triton
autotuning (~2 min on first use) is paid once: both call `mamba_chunk_scan_combined` with the
same shapes (d_model 2048, 64 heads x 64, state 128, 8 groups, chunk 256; 2 x 8192 tokens, bf16).
fwd+bwd of the layer with bf16 params, as mixer_bench.py / mamba_anchor.py time them.

    PYTHONPATH=.whl/mamba_src:$PYTHONPATH python3 benchmarks/mixer_pair.py [--profile]

FLOPs: mamba_anchor.py's formula (projections + SSD) for every row, so the ratio is time."""
import sys, time, types, torch
sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
from mamba_ssm.modules.mamba2 import Mamba2  # noqa: E402
from titan_mimo.models.common import init_model_for_testing  # noqa: E402
from titan_mimo.models.language.args import HybridLMArgs  # noqa: E402
from titan_mimo.models.language.mamba2 import Mamba2Mixer  # noqa: E402

b, l, d, n, hd, g, chunk = 2, 8192, 2048, 128, 64, 8, 256
h = 2 * d // hd
d_in = 2 * 2 * d + 2 * g * n + h
flops = 6 * b * l * (d * d_in + 2 * d * d) + 3 * b * l * h * (2 * chunk * n + 2 * chunk * hd + 4 * n * hd)
u = torch.randn(b, l, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)


def timeit(layer, n_it=20):
    step = lambda: layer(u).float().sum().backward()  # noqa: E731
    for _ in range(3):
        step()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n_it):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n_it, step


def report(name, dt):
    print(f"{name}: {dt * 1e3:.2f} ms fwd+bwd, {flops / dt / 1e12:.0f} TFLOP/s "
          f"({flops / dt / 989e12 * 100:.1f}% of 989)", flush=True)
    return dt


def profile(step, top=12):
    from torch.profiler import ProfilerActivity, profile as prof_ctx
    with prof_ctx(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    ev = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.self_device_time_total for e in ev) or 1.0
    print(f"  profile: {total / 3e3:.2f} ms kernel time per step", flush=True)
    for e in sorted(ev, key=lambda e: -e.self_device_time_total)[:top]:
        print(f"    {100 * e.self_device_time_total / total:5.1f}% {e.self_device_time_total / 3e3:6.2f} ms "
              f"x{e.count // 3:<3d} {e.key[:100]}", flush=True)


t0 = time.perf_counter()
peer = Mamba2(d_model=d, d_state=n, headdim=hd, ngroups=g, expand=2, chunk_size=chunk,
              use_mem_eff_path=False).to("cuda", torch.bfloat16)
t_peer, peer_step = timeit(peer)
print(f"(first layer incl. autotune: {time.perf_counter() - t0:.0f} s)", flush=True)
report("mamba-ssm Mamba2 layer (use_mem_eff_path=False)", t_peer)
peer_fused = Mamba2(d_model=d, d_state=n, headdim=hd, ngroups=g, expand=2, chunk_size=chunk,
                    use_mem_eff_path=True).to("cuda", torch.bfloat16)
try:
    report("mamba-ssm Mamba2 layer (use_mem_eff_path=True)", timeit(peer_fused)[0])
except Exception as e:  # its fused path needs causal-conv1d's CUDA extension, absent here
    print(f"mamba-ssm Mamba2 layer (use_mem_eff_path=True): not run: {type(e).__name__}: {str(e)[:120]}")
del peer_fused

args = HybridLMArgs(dim=d, mamba_n_heads=h, mamba_head_dim=hd, mamba_d_state=n, mamba_n_groups=g,
                    mamba_chunk_size=chunk, ssd_backend="mamba_ssm", layer_pattern="M")
ours = Mamba2Mixer(args)
init_model_for_testing(ours, 0)
ours = ours.cuda().bfloat16()
t_eager, _ = timeit(ours)
report("titan_mimo Mamba2Mixer eager", t_eager)
with torch.no_grad():
    y_eager = ours(u).float()
ours.compile()
t0 = time.perf_counter()
t_comp, comp_step = timeit(ours)
report(f"titan_mimo Mamba2Mixer compiled (compile {time.perf_counter() - t0:.0f} s incl. timing)", t_comp)
with torch.no_grad():
    y_comp = ours(u).float()
print(f"compiled vs eager output: relative L2 error {((y_comp - y_eager).norm() / y_eager.norm()).item():.2e}")
print(f"ratio vs mamba-ssm layer: eager {t_peer / t_eager:.2f}x, compiled {t_peer / t_comp:.2f}x (target 1.5x)",
      flush=True)
if "--profile" in sys.argv:
    print("mamba-ssm layer:"); profile(peer_step)
    print("titan_mimo compiled:"); profile(comp_step)
