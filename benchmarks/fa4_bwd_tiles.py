"""FlashAttention-4's Hopper backward at the ViT-H/16 head width (80): which head-dim tile and
which tile configuration is fastest, and are their gradients right.

    python -m benchmarks.fa4_bwd_tiles [--batch 4] [--seq 4097] [--heads 16] [--head-dim 80]

FA4's SM90 backward kernel tiles the head dim in multiples of 16 (80 stays 80) while its
interface lays out the fp32 dq accumulator in multiples of 32 (96): dq comes back wrong
(flash-attention PR 2896). Variants:

  tile96      the round-up fix (`flash_attn4._fix_sm90_backward_head_dim_rounding`):
              the kernel's tile at 96, so the backward's five GEMMs run 96 wide for 80 columns
  tile80b     the read-back fix (`flash_attn4._fix_sm90_backward_dq_read_back`, what
              titan_mimo applies): the kernel's tile stays 80, the postprocess reads the
              accumulator back at a multiple of 16
  tile80b_128 tile80b with 128 x 64 tiles (FA4's config search's first 128-row config)
  tile80b_nsw tile80b with SdP_swapAB off (the config search's second row)
  tile80      the accumulator allocated and zeroed at 16 as well (FA4's `_flash_attn_bwd`
              rebuilt from its source with that line replaced, this script only: its gradients come back wrong)

Each variant: its forward (once, for reference) and backward time per call (CUDA events, 20
calls after 3), and the gradients of batch element 0 against float32 SDPA (math backend) as
max |error| / max |reference| per tensor, next to tile96's. Prints one line per variant.
"""

import argparse
import dataclasses
import inspect

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.common import seconds_per_call
from titan_mimo.models import flash_attn4


ACCUM_LINE = "hdim_multiple_of = 64 if arch // 10 == 9 and dKV_swapAB else 32"


def accumulator_at_16(fa4, fn):
    """FA4's `_flash_attn_bwd` (`fn`) rebuilt from its source in its module's namespace with
    the accumulator multiple at 16 on Hopper (unswapped dK/dV) for allocation, zeroing and
    read-back. Shares `fn`'s compile caches (the caller clears them)."""
    source = inspect.getsource(fn)
    assert source.count(ACCUM_LINE) == 1, "another flash-attn-4"
    sixteen = "(16 if arch // 10 == 9 and not dKV_swapAB else hdim_multiple_of)"
    source = source.replace(ACCUM_LINE, ACCUM_LINE + "\n    hdim_multiple_of = " + sixteen)
    namespace: dict = {}
    exec(compile(source, "<patched _flash_attn_bwd>", "exec"), fa4.__dict__, namespace)
    new_fn = namespace["_flash_attn_bwd"]
    new_fn.__dict__.update(fn.__dict__)
    return new_fn


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=4097)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=80)
    p.add_argument("--variants", default="tile96,tile80b,tile80b_nsw")
    a = p.parse_args()

    fa4 = flash_attn4.import_fa4()  # with the read-back fix applied
    read_back = fa4._bwd_postprocess_convert
    assert getattr(read_back, "_titan_mimo_read_back", False), "read-back fix not applied"
    post, orig_cls, bwd = read_back.__wrapped__, fa4.FlashAttentionBackwardSm90, fa4._flash_attn_bwd
    flash_attn4._fix_sm90_backward_head_dim_rounding(fa4)
    round_up_cls = fa4.FlashAttentionBackwardSm90
    assert round_up_cls is not orig_cls, "round-up fix not applied"
    orig_cfg = fa4._tile_size_bwd_sm90

    def cfg_with(**changes):
        return lambda *args, **kw: dataclasses.replace(orig_cfg(*args, **kw), **changes)

    cfg128 = cfg_with(m_block_size=128, n_block_size=64, SdP_swapAB=False, AtomLayoutMSdP=2,
                      AtomLayoutNdKV=1, AtomLayoutMdQ=2, dQ_single_wg=False)
    variants = {  # kernel class, _flash_attn_bwd, postprocess, tile configuration
        "tile96": (round_up_cls, bwd, post, orig_cfg),
        "tile80b": (orig_cls, bwd, read_back, orig_cfg),
        "tile80b_128": (orig_cls, bwd, read_back, cfg128),
        "tile80b_nsw": (orig_cls, bwd, read_back, cfg_with(SdP_swapAB=False)),
        "tile80": (orig_cls, accumulator_at_16(fa4, bwd), post, orig_cfg),
    }

    torch.manual_seed(0)
    b, s, h, e = a.batch, a.seq, a.heads, a.head_dim
    q, k, v, dout = (torch.randn(b, s, h, e, device="cuda", dtype=torch.bfloat16)
                     for _ in range(4))
    scale = e ** -0.5
    qr, kr, vr = (t[:1].float().transpose(1, 2).requires_grad_() for t in (q, k, v))
    with sdpa_kernel(SDPBackend.MATH):
        F.scaled_dot_product_attention(qr, kr, vr).backward(dout[:1].float().transpose(1, 2))
    ref = [t.grad.transpose(1, 2) for t in (qr, kr, vr)]
    del qr, kr, vr

    out, lse = fa4._flash_attn_fwd(q, k, v, softmax_scale=scale, causal=False,
                                   return_lse=True)[:2]
    fwd_ms = 1e3 * seconds_per_call(lambda: fa4._flash_attn_fwd(q, k, v, softmax_scale=scale, causal=False,
                                                                return_lse=True), q.device)
    fwd_flop = 4 * b * h * s * s * e
    print(f"shape B={b} S={s} H={h} E={e}: forward {fwd_ms:.3f} ms "
          f"({fwd_flop / fwd_ms / 1e9:.0f} TFLOP/s)", flush=True)
    base_err = None
    for name in a.variants.split(","):
        (fa4.FlashAttentionBackwardSm90, fa4._flash_attn_bwd, fa4._bwd_postprocess_convert,
         fa4._tile_size_bwd_sm90) = variants[name]
        for fn in (bwd, fa4._bwd_preprocess, post):
            fn.compile_cache.clear()
        try:
            def run():
                return fa4._flash_attn_bwd(q, k, v, out, dout, lse, scale, False)[:3]
            grads = run()
            err = [float((g[:1].float() - r).abs().max() / r.abs().max())
                   for g, r in zip(grads, ref)]
            ms = 1e3 * seconds_per_call(run, q.device)
        except Exception as exc:  # noqa: BLE001 - a config that does not compile is a result
            print(f"{name:11s} failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            continue
        base_err = base_err or err
        print(f"{name:11s} backward {ms:.3f} ms ({2.5 * fwd_flop / ms / 1e9:.0f} TFLOP/s "
              f"at 2.5x the forward's FLOPs); rel. error dq {err[0]:.2e} dk {err[1]:.2e} "
              f"dv {err[2]:.2e} (tile96: {base_err[0]:.2e} {base_err[1]:.2e} "
              f"{base_err[2]:.2e})", flush=True)


if __name__ == "__main__":
    main()
