"""The Mamba-2 SSD scan: chunked (the training path) and sequential (the test oracle).

Recurrence per head h, with state s_t of shape [P, N]:
    s_t = exp(dt_t * A_h) * s_{t-1} + (dt_t * x_t) B_tᵀ        y_t = s_t C_t + D_h * x_t
Heads are split into G groups; head h reads B and C of group h // (H / G), mamba-ssm's convention.

Shape legend:
    B batch, S sequence, H SSM heads, P head dim, G groups of B/C, N state size,
    R heads per group (H / G), C chunks, L chunk length (L and S also index positions inside a
    chunk in einsums: l the output position, s the source position).
"""

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["segsum", "ssd_chunked", "ssd_sequential"]


def segsum(a_XL: Tensor) -> Tensor:
    """out[..., i, j] = a[j+1] + ... + a[i] for j <= i, and -inf above the diagonal.

    Built by a masked cumsum instead of differences of one cumsum, which would cancel
    catastrophically for long chunks (Mamba-2 paper, Listing 1).
    """
    length = a_XL.shape[-1]
    a_XLL = a_XL[..., None].expand(*a_XL.shape, length)
    strictly_lower = torch.tril(
        torch.ones(length, length, dtype=torch.bool, device=a_XL.device), diagonal=-1
    )
    a_XLL = a_XLL.masked_fill(~strictly_lower, 0)
    seg_XLL = torch.cumsum(a_XLL, dim=-2)
    lower = torch.tril(torch.ones(length, length, dtype=torch.bool, device=a_XL.device))
    return seg_XLL.masked_fill(~lower, -torch.inf)


def _check_shapes(x_BSHP: Tensor, dt_BSH: Tensor, A_H: Tensor, B_BSGN: Tensor, C_BSGN: Tensor):
    b, s, h, _ = x_BSHP.shape
    g = B_BSGN.shape[2]
    if dt_BSH.shape != (b, s, h) or A_H.shape != (h,):
        raise ValueError(
            f"ssd: x {tuple(x_BSHP.shape)} needs dt [{b}, {s}, {h}] and A [{h}], "
            f"got dt {tuple(dt_BSH.shape)} and A {tuple(A_H.shape)}"
        )
    if B_BSGN.shape != C_BSGN.shape or B_BSGN.shape[:2] != (b, s) or h % g != 0:
        raise ValueError(
            f"ssd: B {tuple(B_BSGN.shape)} and C {tuple(C_BSGN.shape)} must both be "
            f"[{b}, {s}, G, N] with G dividing the {h} heads"
        )


def ssd_chunked(
    x_BSHP: Tensor,
    dt_BSH: Tensor,
    A_H: Tensor,
    B_BSGN: Tensor,
    C_BSGN: Tensor,
    chunk_size: int,
    D_H: Tensor | None = None,
) -> Tensor:
    """Chunked SSD scan (Mamba-2 paper, Listing 1, with B/C groups kept unexpanded).

    Args:
        x_BSHP: inputs per head.
        dt_BSH: positive step sizes (softplus already applied).
        A_H: negative per-head decay rates.
        B_BSGN, C_BSGN: input and output projections of the state, per group.
        chunk_size: chunk length L; S need not be a multiple (inputs are zero-padded at the end,
            which cannot affect earlier outputs of a causal scan).
        D_H: optional per-head skip connection y += D * x.

    Returns:
        y_BSHP in the dtype of x. The scan runs in at least float32 (float64 stays float64):
        exp/cumsum of decays in bf16 lose too much precision, and mamba-ssm's kernels accumulate
        in float32 too.
    """
    _check_shapes(x_BSHP, dt_BSH, A_H, B_BSGN, C_BSGN)
    b, s, h, p = x_BSHP.shape
    g, n = B_BSGN.shape[2:]
    r = h // g
    compute_dtype = torch.promote_types(x_BSHP.dtype, torch.float32)
    x, dt, A, Bm, Cm = (t.to(compute_dtype) for t in (x_BSHP, dt_BSH, A_H, B_BSGN, C_BSGN))

    pad = (-s) % chunk_size
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        Bm = F.pad(Bm, (0, 0, 0, 0, 0, pad))
        Cm = F.pad(Cm, (0, 0, 0, 0, 0, pad))
    c, L = (s + pad) // chunk_size, chunk_size

    xdt_BCLGRP = (x * dt[..., None]).view(b, c, L, g, r, p)
    a_BGRCL = (dt * A).view(b, c, L, g, r).permute(0, 3, 4, 1, 2)
    B_BCLGN = Bm.view(b, c, L, g, n)
    C_BCLGN = Cm.view(b, c, L, g, n)
    a_cum_BGRCL = torch.cumsum(a_BGRCL, dim=-1)

    # 1. Outputs from inputs of the same chunk: (decay ⊙ C Bᵀ) X, the quadratic "attention" form.
    CB_BGCLS = torch.einsum("bclgn,bcsgn->bgcls", C_BCLGN, B_BCLGN)
    scores_BGRCLS = CB_BGCLS[:, :, None] * torch.exp(segsum(a_BGRCL))
    y_diag_BCLGRP = torch.einsum("bgrcls,bcsgrp->bclgrp", scores_BGRCLS, xdt_BCLGRP)

    # 2. State each chunk contributes at its end.
    decay_to_end_BCLGR = torch.exp(a_cum_BGRCL[..., -1:] - a_cum_BGRCL).permute(0, 3, 4, 1, 2)
    states_BCGRPN = torch.einsum(
        "bclgn,bclgrp->bcgrpn", B_BCLGN, xdt_BCLGRP * decay_to_end_BCLGR[..., None]
    )

    # 3. Pass states between chunks: state entering chunk z = decayed sum of earlier chunk states.
    states_BCGRPN = torch.cat([torch.zeros_like(states_BCGRPN[:, :1]), states_BCGRPN], dim=1)
    decay_chunk_BGRZC = torch.exp(segsum(F.pad(a_cum_BGRCL[..., -1], (1, 0))))
    states_BCGRPN = torch.einsum("bgrzc,bcgrpn->bzgrpn", decay_chunk_BGRZC, states_BCGRPN)[:, :-1]

    # 4. Outputs from the state entering each chunk, decayed to each position.
    decay_in_BCLGR = torch.exp(a_cum_BGRCL).permute(0, 3, 4, 1, 2)
    y_off_BCLGRP = torch.einsum("bclgn,bcgrpn->bclgrp", C_BCLGN, states_BCGRPN)
    y_off_BCLGRP = y_off_BCLGRP * decay_in_BCLGR[..., None]

    y_BSHP = (y_diag_BCLGRP + y_off_BCLGRP).reshape(b, c * L, h, p)[:, :s]
    if D_H is not None:
        y_BSHP = y_BSHP + x[:, :s] * D_H.to(compute_dtype)[:, None]
    return y_BSHP.to(x_BSHP.dtype)


def ssd_sequential(
    x_BSHP: Tensor,
    dt_BSH: Tensor,
    A_H: Tensor,
    B_BSGN: Tensor,
    C_BSGN: Tensor,
    D_H: Tensor | None = None,
) -> Tensor:
    """The recurrence one step at a time: slow, obviously correct; the oracle for ssd_chunked."""
    _check_shapes(x_BSHP, dt_BSH, A_H, B_BSGN, C_BSGN)
    b, s, h, p = x_BSHP.shape
    g, n = B_BSGN.shape[2:]
    B_BSHN = B_BSGN.repeat_interleave(h // g, dim=2)
    C_BSHN = C_BSGN.repeat_interleave(h // g, dim=2)
    state_BHPN = x_BSHP.new_zeros(b, h, p, n)
    ys = []
    for t in range(s):
        decay_BH = torch.exp(dt_BSH[:, t] * A_H)
        update_BHPN = (dt_BSH[:, t, :, None] * x_BSHP[:, t])[..., None] * B_BSHN[:, t, :, None, :]
        state_BHPN = state_BHPN * decay_BH[..., None, None] + update_BHPN
        ys.append(torch.einsum("bhpn,bhn->bhp", state_BHPN, C_BSHN[:, t]))
    y_BSHP = torch.stack(ys, dim=1)
    if D_H is not None:
        y_BSHP = y_BSHP + x_BSHP * D_H[:, None]
    return y_BSHP
