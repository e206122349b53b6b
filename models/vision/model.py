"""ViT encoder and the vision module (encoder + projector) that feeds the language model.

Patches are embedded by an nn.Linear on flattened (C, p, p) pixels instead of a Conv2d: it is
the same map (a Conv2d weight [D, C, p, p] flattens to this Linear's weight), but Linear layers
shard with plain TP plans and take varlen-packed patches.

Attention kernels. Same-size images (`ViT.forward`) run `attention_backend` (SDPA, or
FlashAttention-4: `models/attention_kernels.py`) on [B, T, H, E], no mask.
Mixed sizes (`ViT.forward_packed`) run as ONE packed sequence [1, T, D] described by `cu_seqlens`
(int32 [N+1], segment starts and the total) and `max_seqlen`; each attention picks its kernel from
its own q, so the choice is automatic and follows the dtype the block really computes in (FSDP
casts inside the block):
  - CUDA, fp16/bf16, sm80+, and `torch.nn.attention.varlen.varlen_attn` importable (torch >= 2.10):
    varlen_attn, FlashAttention's variable-length kernel on [T, H, E]. Memory and compute grow
    with sum(P_i²), not T², and no mask is materialised.
  - Anywhere else (CPU, fp32 on CUDA, older torch or GPUs): SDPA with a dense block-diagonal
    [T, T] boolean mask built from `cu_seqlens`. It is the reference: on CPU fp32 it gives what
    encoding each image alone gives (the tests check it), and it is what the varlen path is
    tested against on CUDA.

Shape legend:
    B images, C channels, H/W image height/width in pixels, h/w patch-grid rows/columns,
    P patches (h·w), T tokens (prefix + patches; in a pack, of all images), D encoder dim,
    H heads (this TP shard's), E head dim, F MLP hidden, N images in a pack / projected tokens
    of all images, O output (LM) dim.
"""

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention_kernels import attention_function
from ..common import INIT_STD, fused_linears, to_device
from .args import ViTArgs
from .projector import Projector

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # torch < 2.10: packed attention keeps the dense mask everywhere
    varlen_attn = None

__all__ = ["ViT", "ViTBlock", "VisionModule", "block_diagonal_mask", "pack_lengths", "patchify"]

_VARLEN_DTYPES = (torch.float16, torch.bfloat16)


def patchify(images_BCHW: Tensor, patch_size: int) -> Tensor:
    """[B, C, H, W] → [B, h·w, C·p·p], patches row-major, pixels in (C, p, p) order."""
    b, c, H, W = images_BCHW.shape
    p = patch_size
    x = images_BCHW.reshape(b, c, H // p, p, W // p, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (H // p) * (W // p), c * p * p)


def pack_lengths(lengths: list[int], device: torch.device) -> tuple[Tensor, int]:
    """Per-segment token counts → (cu_seqlens [N+1] int32 on `device`, max_seqlen: int).

    cu_seqlens = [0, l0, l0+l1, ..., T], built on the host and copied once; on CUDA from pinned
    memory without blocking, so packing never waits for the GPU. max_seqlen stays a Python int:
    varlen kernels take it as a launch size, and reading it back from a device tensor would sync.
    """
    if not lengths or min(lengths) < 1:
        raise ValueError(f"pack_lengths: need at least one segment, all non-empty; got {lengths}")
    cu_seqlens = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    return to_device(cu_seqlens, device), max(lengths)


def block_diagonal_mask(cu_seqlens: Tensor, n_tokens: int) -> Tensor:
    """[T, T] boolean mask, True where query and key lie in the same segment of the pack.

    Built on cu_seqlens' device from the tensor alone (no read-back), so it also traces. Each
    attention rebuilds it: O(T²) booleans next to its own O(T²·D) work, and no mask argument."""
    positions_T = torch.arange(n_tokens, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    segment_T = torch.bucketize(positions_T, cu_seqlens[1:], right=True)
    return segment_T[:, None] == segment_T[None, :]


def uses_varlen(q: Tensor) -> bool:
    """Whether packed attention on `q` runs varlen_attn (see the module docstring); else the
    dense block-diagonal mask. FlashAttention takes only fp16/bf16 and needs sm80+."""
    return (varlen_attn is not None and q.is_cuda and q.dtype in _VARLEN_DTYPES
            and torch.cuda.get_device_properties(q.device).major >= 8)


class ViTAttention(nn.Module):
    """Bidirectional multi-head attention with biased wq/wk/wv/wo.

    Without `cu_seqlens` every row of the batch attends to itself (plain SDPA). With it, x is
    one packed sequence [1, T, D] and tokens attend only within their own segment, through
    varlen_attn where `uses_varlen` says so, else through the dense block-diagonal mask.
    """

    def __init__(self, dim: int, n_heads: int, attention_backend: str = "sdpa"):
        super().__init__()
        self.head_dim = dim // n_heads
        self.attend = attention_function(attention_backend)
        self.wq = nn.Linear(dim, dim)
        self.wk = nn.Linear(dim, dim)
        self.wv = nn.Linear(dim, dim)
        self.wo = nn.Linear(dim, dim)

    def forward(self, x_BTD: Tensor, cu_seqlens: Tensor | None = None,
                max_seqlen: int = 0) -> Tensor:
        q, k, v = fused_linears(x_BTD, [self.wq, self.wk, self.wv])
        # Head count from the projection: under tensor parallelism q holds a slice of the heads.
        b, t = q.shape[:2]
        q, k, v = (y.view(b, t, -1, self.head_dim) for y in (q, k, v))
        if cu_seqlens is not None and uses_varlen(q):
            assert b == 1, f"a packed sequence has batch 1, got {b}"
            # Positional core arguments only: the rest differ across torch versions (2.10 has a
            # positional is_causal, 2.11 keyword-only window_size, 2.13 more keywords); every
            # version defaults to full, non-causal attention.
            o_THE = varlen_attn(q[0], k[0], v[0], cu_seqlens, cu_seqlens, max_seqlen, max_seqlen)
            return self.wo(o_THE.reshape(b, t, -1))
        if cu_seqlens is None:
            return self.wo(self.attend(q, k, v, is_causal=False).reshape(b, t, -1))
        mask_TT = block_diagonal_mask(cu_seqlens, t)
        q, k, v = (y.transpose(1, 2) for y in (q, k, v))
        o_BHTE = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_TT)
        return self.wo(o_BHTE.transpose(1, 2).reshape(b, t, -1))


class ViTMLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str = "gelu_tanh"):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh" if act == "gelu_tanh" else "none")
        self.w2 = nn.Linear(hidden, dim)

    def forward(self, x_BTD: Tensor) -> Tensor:
        return self.w2(self.act(self.w1(x_BTD)))


class ViTBlock(nn.Module):
    def __init__(self, args: ViTArgs):
        super().__init__()
        self.attn_norm = nn.LayerNorm(args.dim, eps=args.norm_eps)
        self.attn = ViTAttention(args.dim, args.n_heads, args.attention_backend)
        self.mlp_norm = nn.LayerNorm(args.dim, eps=args.norm_eps)
        self.mlp = ViTMLP(args.dim, args.mlp_dim, args.mlp_act)
        # LayerScale: per-channel gains on the two residual branches (absent by default).
        self.attn_scale = nn.Parameter(torch.ones(args.dim)) if args.layer_scale else None
        self.mlp_scale = nn.Parameter(torch.ones(args.dim)) if args.layer_scale else None

    def forward(self, x_BTD: Tensor, cu_seqlens: Tensor | None = None,
                max_seqlen: int = 0) -> Tensor:
        """`cu_seqlens`/`max_seqlen` (from `pack_lengths`) mark x as one packed sequence [1, T, D];
        plain tensors and ints, so per-block torch.compile, FSDP and checkpointing pass them on."""
        a_BTD = self.attn(self.attn_norm(x_BTD), cu_seqlens, max_seqlen)
        if self.attn_scale is not None:
            a_BTD = a_BTD * self.attn_scale
        h_BTD = x_BTD + a_BTD
        m_BTD = self.mlp(self.mlp_norm(h_BTD))
        if self.mlp_scale is not None:
            m_BTD = m_BTD * self.mlp_scale
        return h_BTD + m_BTD

    def init_param(self, name: str, t: Tensor, g: torch.Generator) -> None:
        if name not in ("attn_scale", "mlp_scale"):
            raise ValueError(f"ViTBlock has no directly owned parameter {name!r}")
        with torch.no_grad():
            t.fill_(1.0)


class ViT(nn.Module):
    """Images [B, C, H, W] (H, W multiples of patch_size) → patch features [B, h·w, D]."""

    def __init__(self, args: ViTArgs):
        super().__init__()
        self.args = args
        self.patch_embed = nn.Linear(args.in_channels * args.patch_size**2, args.dim, bias=args.patch_bias)
        self.pos_embed = nn.Parameter(torch.zeros(args.base_grid, args.base_grid, args.dim))
        self.cls_token = nn.Parameter(torch.zeros(1, args.dim)) if args.use_cls_token else None
        self.register_tokens = (
            nn.Parameter(torch.zeros(args.n_register_tokens, args.dim))
            if args.n_register_tokens > 0
            else None
        )
        # A ModuleDict keyed by layer index, like the LM, so FQNs survive future encoder PP.
        self.layers = nn.ModuleDict({str(i): ViTBlock(args) for i in range(args.n_layers)})
        self.norm = nn.LayerNorm(args.dim, eps=args.norm_eps) if args.final_norm else None

    def position_embedding(self, grid_h: int, grid_w: int) -> Tensor:
        """The learned [G, G, D] table resampled to the patch grid by `pos_embed_rule`: [h·w, D]."""
        table_1DGG = self.pos_embed.permute(2, 0, 1).unsqueeze(0)
        if self.args.pos_embed_rule == "radio":
            return self._radio_position_embedding(table_1DGG, grid_h, grid_w)
        resized_1Dhw = F.interpolate(
            table_1DGG, size=(grid_h, grid_w), mode="bilinear", align_corners=False
        )
        return resized_1Dhw[0].permute(1, 2, 0).reshape(grid_h * grid_w, -1)

    @staticmethod
    def _radio_position_embedding(table_1DGG: Tensor, grid_h: int, grid_w: int) -> Tensor:
        """C-RADIO's cropped position embedding, op for op as transformers' RadioPatchEmbeddings
        (interpolation in float32): resample to the longer side's square, crop, resample again
        only if the crop is not already h×w."""
        dtype, side = table_1DGG.dtype, max(grid_h, grid_w)
        pos_1DSS = F.interpolate(table_1DGG.float(), size=(side, side), mode="bilinear",
                                 align_corners=False).to(dtype)
        pos_1Dhw = pos_1DSS[..., :grid_h, :grid_w]
        if pos_1Dhw.shape[-2:] != (grid_h, grid_w):
            pos_1Dhw = F.interpolate(pos_1Dhw.float(), size=(grid_h, grid_w), mode="bilinear",
                                     align_corners=False).to(dtype)
        return pos_1Dhw[0].flatten(1).transpose(0, 1)

    def condition(self, images_BCHW: Tensor) -> Tensor:
        """The input conditioner: (pixels - norm_mean) / norm_std per channel, in float32 (a no-op
        without norm_mean)."""
        if self.args.norm_mean is None:
            return images_BCHW
        # Host values copied without blocking (to_device), so the forward never waits on the device.
        mean_C11 = to_device(torch.tensor(self.args.norm_mean, dtype=torch.float32), images_BCHW.device)[:, None, None]
        std_C11 = to_device(torch.tensor(self.args.norm_std, dtype=torch.float32), images_BCHW.device)[:, None, None]
        return ((images_BCHW.float() - mean_C11) / std_C11).to(images_BCHW.dtype)

    def _embed(self, images_BCHW: Tensor) -> Tensor:
        """Patch + position embedding with the prefix tokens prepended: [B, T, D]."""
        b, _, H, W = images_BCHW.shape
        p = self.args.patch_size
        if H % p or W % p:
            raise ValueError(f"ViT: image {H}x{W} is not a multiple of patch_size={p}")
        patches_BPC = patchify(self.condition(images_BCHW), p)
        x_BPD = self.patch_embed(patches_BPC.to(self.patch_embed.weight.dtype))
        x_BPD = x_BPD + self.position_embedding(H // p, W // p)
        prefix = [t for t in (self.cls_token, self.register_tokens) if t is not None]
        return torch.cat([t.expand(b, -1, -1) for t in prefix] + [x_BPD], dim=1)

    def forward(self, images_BCHW: Tensor) -> Tensor:
        """Same-size images [B, C, H, W] → patch features [B, P, D] (prefix tokens dropped)."""
        x_BTD = self._embed(images_BCHW)
        for layer in self.layers.values():
            x_BTD = layer(x_BTD)
        if self.norm is not None:
            x_BTD = self.norm(x_BTD)
        return x_BTD[:, self.args.n_prefix_tokens:]

    def forward_packed(self, images: list[Tensor]) -> list[Tensor]:
        """Images of any sizes, packed into ONE sequence with block-diagonal attention, so the
        blocks run exactly once whatever the mix of sizes (FSDP needs every rank to run the
        same number of block forwards). Returns each image's patch features [P_i, D].

        The pack is described by cu_seqlens/max_seqlen (`pack_lengths`); each block's attention
        runs varlen_attn on CUDA in fp16/bf16 and the dense-mask reference elsewhere (module
        docstring). Nothing here reads a device value back: lengths are host ints."""
        segments = [self._embed(im.unsqueeze(0))[0] for im in images]
        lengths = [seg.shape[0] for seg in segments]
        cu_seqlens, max_seqlen = pack_lengths(lengths, segments[0].device)
        x_1TD = torch.cat(segments).unsqueeze(0)
        for layer in self.layers.values():
            x_1TD = layer(x_1TD, cu_seqlens, max_seqlen)
        out_TD = (self.norm(x_1TD) if self.norm is not None else x_1TD)[0]
        n_prefix = self.args.n_prefix_tokens
        return [seg[n_prefix:] for seg in out_TD.split(lengths)]

    def init_param(self, name: str, t: Tensor, g: torch.Generator) -> None:
        if name not in ("pos_embed", "cls_token", "register_tokens"):
            raise ValueError(f"ViT has no directly owned parameter {name!r}")
        with torch.no_grad():
            torch.nn.init.trunc_normal_(t, 0.0, INIT_STD, -2 * INIT_STD, 2 * INIT_STD, generator=g)

    def forward_flops(self, grid_h: int, grid_w: int) -> int:
        """Forward FLOPs for one image: patch embedding, blocks' linears, full attention square."""
        a = self.args
        n_patches = grid_h * grid_w
        tokens = a.n_prefix_tokens + n_patches
        flops = 2 * n_patches * a.in_channels * a.patch_size**2 * a.dim
        per_block = 2 * tokens * (4 * a.dim * a.dim + 2 * a.dim * a.mlp_dim)
        per_block += 4 * tokens * tokens * a.dim
        return flops + len(self.layers) * per_block


class VisionModule(nn.Module):
    """Encoder + projector: a list of images → their projected tokens, concatenated [N, O]."""

    def __init__(self, args: ViTArgs):
        super().__init__()
        self.args = args
        self.encoder = ViT(args)
        self.projector = Projector(
            args.dim, args.pixel_shuffle, args.projector_hidden, args.out_dim,
            args.norm_eps if args.projector_norm_eps is None else args.projector_norm_eps,
            norm=args.projector_norm, act=args.projector_act, bias=args.projector_bias,
        )

    def grid(self, h: int, w: int) -> tuple[int, int]:
        """Patch grid of an h×w image; ValueError unless it patches and pixel-shuffles evenly."""
        p, s = self.args.patch_size, self.args.pixel_shuffle
        if h % p or w % p or (h // p) % s or (w // p) % s:
            raise ValueError(
                f"image size h={h}, w={w} must be a multiple of patch_size * pixel_shuffle = "
                f"{p} * {s} = {p * s}"
            )
        return h // p, w // p

    def tokens_per_image(self, h: int, w: int) -> int:
        grid_h, grid_w = self.grid(h, w)
        s = self.args.pixel_shuffle
        return (grid_h // s) * (grid_w // s)

    def forward(self, images: list[Tensor] | Tensor) -> Tensor:
        """Images ([C, H, W] each, or one [B, C, H, W] batch) → emb_NO in image order.

        Same-size images run as one batch; mixed sizes run as one packed sequence with
        block-diagonal attention. Either way the encoder blocks run once per call. No images gives a
        (0, out_dim) tensor of the projector's dtype and device, so a text-only micro-batch still
        has something to send; it carries no gradient to the parameters.
        """
        if isinstance(images, Tensor):
            images = list(images.unbind(0))
        w_out = self.projector.w2.weight
        if not images:
            return torch.zeros(0, self.args.out_dim, dtype=w_out.dtype, device=w_out.device)
        for i, image in enumerate(images):
            if image.dim() != 3:
                raise ValueError(f"image {i}: expected [C, H, W], got shape {tuple(image.shape)}")
        sizes = [tuple(image.shape[1:]) for image in images]
        grids = [self.grid(h, w) for h, w in sizes]
        if len(set(sizes)) == 1:
            feats_BPD = self.encoder(torch.stack(images))
            return self.projector(feats_BPD, grids[0]).flatten(0, 1)
        feats = self.encoder.forward_packed(images)
        per_image = [self.projector(f_PD.unsqueeze(0), g)[0] for f_PD, g in zip(feats, grids)]
        return torch.cat(per_image, dim=0)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_image(self, h: int, w: int) -> int:
        """Training FLOPs (3 × forward) of one h×w image: encoder (see ViT.forward_flops, full
        bidirectional attention square) plus the projector's two linears per output token."""
        grid_h, grid_w = self.grid(h, w)
        forward = self.encoder.forward_flops(grid_h, grid_w)
        forward += self.tokens_per_image(h, w) * self.projector.forward_flops_per_token()
        return 3 * forward
