"""Output head + cross-entropy fused over sequence chunks, so the [N, V] logits never exist whole.

At 2 × 8192 tokens and a 131072-word vocabulary, the logits are 4 GiB in bf16, and the usual
`F.cross_entropy(logits.float())` adds an fp32 copy, the fp32 log-softmax and their gradients:
over 20 GiB, which is what ran the 2B hybrid out of memory at batch 2. Here the forward walks
the tokens in chunks; per chunk it forms the logits, the loss, and right away the gradient of the
summed loss w.r.t. the chunk's hidden states and (accumulated, fp32) the head weight. The
backward only scales those by the incoming gradient. Same FLOPs as the unfused head (no
recompute); peak extra memory is one chunk's logits plus an fp32 weight-gradient buffer.

Shape legend: N tokens (batch × sequence flattened), D model dim, V vocabulary.
"""

import torch
from torch import Tensor

__all__ = ["IGNORE_INDEX", "linear_cross_entropy_sum"]

IGNORE_INDEX = -100
"""Label of positions without loss (image placeholders, padding), as in F.cross_entropy."""


def _chunk_loss_and_grad(logits_cV: Tensor, labels_c: Tensor) -> tuple[Tensor, Tensor]:
    """Summed float32 loss of one chunk and d(loss)/d(logits) in the logits' dtype.

    d(sum of losses)/d(logits) = softmax - onehot(label) on rows with a label, 0 elsewhere.
    Written out of place so torch.compile fuses it into two passes over the logits (row
    log-sum-exp, then loss and gradient) without float32 copies; eager (CPU) runs it as written.
    """
    dtype = logits_cV.dtype
    is_valid_c = labels_c != IGNORE_INDEX
    safe_labels_c = torch.where(is_valid_c, labels_c, 0)
    logits_cV = logits_cV.float()
    lse_c = torch.logsumexp(logits_cV, dim=-1)
    target_c = logits_cV.gather(1, safe_labels_c[:, None])[:, 0]
    loss = torch.where(is_valid_c, lse_c - target_c, 0.0).sum()
    vocab_V = torch.arange(logits_cV.shape[1], device=logits_cV.device)
    onehot_cV = vocab_V[None, :] == safe_labels_c[:, None]
    grad_cV = (torch.exp(logits_cV - lse_c[:, None]) - onehot_cV.float()) * is_valid_c[:, None]
    return loss, grad_cV.to(dtype)


_compiled_chunk_loss_and_grad = None


def _chunk_fn(device: torch.device):
    """The compiled chunk function on CUDA (Triton), the eager one elsewhere (CPU tests)."""
    global _compiled_chunk_loss_and_grad
    if device.type != "cuda":
        return _chunk_loss_and_grad
    if _compiled_chunk_loss_and_grad is None:
        _compiled_chunk_loss_and_grad = torch.compile(_chunk_loss_and_grad, dynamic=False)
    return _compiled_chunk_loss_and_grad


class _LinearCrossEntropySum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_ND: Tensor, weight_VD: Tensor, labels_N: Tensor, chunk: int) -> Tensor:
        n = h_ND.shape[0]
        loss = torch.zeros((), dtype=torch.float32, device=h_ND.device)
        grad_h_ND = torch.empty_like(h_ND)
        grad_w_VD = torch.zeros(weight_VD.shape, dtype=torch.float32, device=weight_VD.device)
        chunk_fn = _chunk_fn(h_ND.device)
        for start in range(0, n, chunk):
            h_cD, labels_c = h_ND[start:start + chunk], labels_N[start:start + chunk]
            # Logits in the compute dtype (as the unfused head's GEMM), softmax in float32.
            loss_c, grad_cV = chunk_fn(h_cD @ weight_VD.T, labels_c)
            loss += loss_c
            torch.mm(grad_cV, weight_VD, out=grad_h_ND[start:start + chunk])
            if grad_w_VD.dtype == h_ND.dtype:
                grad_w_VD.addmm_(grad_cV.T, h_cD)
            else:
                grad_w_VD += grad_cV.T @ h_cD
        ctx.save_for_backward(grad_h_ND, grad_w_VD)
        ctx.weight_dtype = weight_VD.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        grad_h_ND, grad_w_VD = ctx.saved_tensors
        return grad_h_ND * grad_loss.to(grad_h_ND.dtype), (grad_w_VD * grad_loss).to(ctx.weight_dtype), None, None


def linear_cross_entropy_sum(h_ND: Tensor, weight_VD: Tensor, labels_N: Tensor,
                             chunk_tokens: int = 4096) -> Tensor:
    """sum over labelled tokens of cross_entropy(h @ weightᵀ, label), in float32, chunked.

    Equals `F.cross_entropy((h @ weight.T).float(), labels, ignore_index=-100, reduction="sum")`
    up to round-off, gradients included. Under autocast, h and the weight are cast to the
    autocast dtype first (as F.linear would); the chunks then run with autocast off.
    """
    if h_ND.dim() != 2 or labels_N.shape != h_ND.shape[:1] or weight_VD.shape[1] != h_ND.shape[1]:
        raise ValueError(f"linear_cross_entropy_sum: h {tuple(h_ND.shape)} must be [N, D] with labels "
                         f"[N] and weight [V, D]; got labels {tuple(labels_N.shape)}, weight "
                         f"{tuple(weight_VD.shape)}")
    if chunk_tokens < 1:
        raise ValueError(f"linear_cross_entropy_sum: chunk_tokens={chunk_tokens} must be >= 1")
    device_type = h_ND.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        h_ND, weight_VD = h_ND.to(dtype), weight_VD.to(dtype)
    else:
        weight_VD = weight_VD.to(h_ND.dtype)
    with torch.autocast(device_type, enabled=False):
        return _LinearCrossEntropySum.apply(h_ND, weight_VD, labels_N, chunk_tokens)
