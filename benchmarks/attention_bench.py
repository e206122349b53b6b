"""Attention fwd and fwd+bwd on one GPU: which SDPA backend (and FlashAttention-4, where the
flash-attn-4 package imports) is fastest at which head dim, and how much the ViT-H/16 shape
(16 heads x 80 = 1280 wide, 4097 tokens with the class token) loses to its head dim and its odd
length.

    python -m benchmarks.attention_bench [--batch 4] [--width 1280] [--causal]

Rows keep the model width (heads x head dim = --width), so every row does the same FLOPs at a
given length: fwd 4·B·T²·width, bwd 2.5x fwd (FlashAttention's count). "pad96"/"pad128" run
head dim 80 zero-padded to 96/128 (q and k padded: scores unchanged; v padded: extra output
columns dropped) with the softmax scale of 80, padding copies included in the time. "fa4" is
titan_mimo's attention_backend = "fa4" on the same tensors laid out [B, T, H, E] (its native
layout). With --causal every row is causal and the FLOPs are still counted for the full square
(torchtitan's convention, as the models' MFU counts it).
"""

import argparse

import contextlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.common import seconds_per_call
from titan_mimo.models import attention_kernels

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def attention(q, k, v, pad_to: int | None, causal: bool):
    e = q.shape[-1]
    if pad_to is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    q, k, v = (F.pad(t, (0, pad_to - e)) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, scale=e ** -0.5, is_causal=causal)[..., :e]


def time_case(backend, q, k, v, grad, pad: int | None, causal: bool) -> tuple[float, float]:
    """(forward seconds, forward+backward seconds) of one backend on one shape."""
    if backend == "fa4":  # [B, H, T, E] -> FA4's [B, T, H, E], outside the timed region
        q, k, v, grad = (t.detach().transpose(1, 2).contiguous() for t in (q, k, v, grad))
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        context = contextlib.nullcontext()

        def run():
            return attention_kernels.attend_fa4(q, k, v, is_causal=causal)
    else:
        context = sdpa_kernel(backend)

        def run():
            return attention(q, k, v, pad, causal)
    with context:
        fwd = seconds_per_call(run, q.device)
        both = seconds_per_call(lambda: torch.autograd.grad(run(), (q, k, v), grad), q.device)
    return fwd, both


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--lengths", type=int, nargs="*", default=[4096, 4097])
    p.add_argument("--head-dims", type=int, nargs="*", default=[64, 80, 128])
    p.add_argument("--causal", action="store_true")
    args = p.parse_args()
    backends = dict(BACKENDS)
    try:
        attention_kernels.attention_function("fa4")
        backends["fa4"] = "fa4"
    except ImportError as err:
        print(f"fa4 not available: {err}", flush=True)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, cuDNN {torch.backends.cudnn.version()}, "
          f"batch {args.batch}, width {args.width}, causal {args.causal}", flush=True)
    cases = [(e, None) for e in args.head_dims] + [(80, 96), (80, 128)]
    for t in args.lengths:
        flops_fwd = 4 * args.batch * t * t * args.width
        for e, pad in cases:
            if args.width % e:
                continue
            h = args.width // e
            q, k, v = (torch.randn(args.batch, h, t, e, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                       for _ in range(3))
            grad = torch.randn(args.batch, h, t, e, device="cuda", dtype=torch.bfloat16)
            for name, backend in backends.items():
                if name == "fa4" and pad:
                    continue
                label = f"T={t} heads={h:2d} x hd={e:3d}{f' pad{pad}' if pad else '':7s} {name:9s}"
                try:
                    fwd, both = time_case(backend, q, k, v, grad, pad, args.causal)
                except (RuntimeError, AssertionError, ValueError) as err:
                    print(f"{label} not available: {str(err).splitlines()[0][:90]}", flush=True)
                    continue
                bwd = both - fwd
                print(f"{label} fwd {fwd * 1e3:6.2f} ms {flops_fwd / fwd / 1e12:4.0f} TFLOP/s | "
                      f"bwd {bwd * 1e3:6.2f} ms {2.5 * flops_fwd / bwd / 1e12:4.0f} TFLOP/s | "
                      f"fwd+bwd {both * 1e3:6.2f} ms {3.5 * flops_fwd / both / 1e12:4.0f} TFLOP/s", flush=True)


if __name__ == "__main__":
    main()
