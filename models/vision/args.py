"""Configuration of the vision module (ViT encoder + pixel-shuffle projector) and its flavors."""

from dataclasses import dataclass

from ..attention_kernels import check_attention_backend

__all__ = ["ViTArgs", "VIT_FLAVORS"]


@dataclass(kw_only=True)
class ViTArgs:
    """Shape of a pre-norm ViT and of the projector that maps its patches into the LM."""

    patch_size: int = 4
    """Side of a square patch in pixels; image sides must be multiples of it."""
    dim: int = 32
    """Hidden size of the encoder."""
    n_layers: int = 2
    """Number of transformer blocks."""
    n_heads: int = 4
    """Attention heads; must divide dim."""
    mlp_dim: int = 64
    """Hidden width of each block's GELU MLP."""
    in_channels: int = 3
    """Channels of the input images."""
    base_grid: int = 4
    """Side of the learned position-embedding grid (image_size / patch_size at pretraining);
    other patch grids get a bilinear interpolation of it."""
    n_register_tokens: int = 1
    """Learned register tokens prepended to the patches and dropped from the output."""
    use_cls_token: bool = False
    """Prepend a learned class token (dropped from the output, like the registers)."""
    norm_eps: float = 1e-6
    """Epsilon of every LayerNorm."""
    attention_backend: str = "sdpa"
    """Kernel of same-size-image attention: "sdpa" (PyTorch's SDPA, the reference), "fa4"
    (FlashAttention-4, CUDA bf16/fp16 only, the `flash-attn-4` package) or "te" (Transformer
    Engine's DotProductAttention, CUDA bf16/fp16 only, `transformer-engine[pytorch]`). Packed
    images of mixed sizes keep their varlen kernel (see model.py)."""
    pixel_shuffle: int = 2
    """Projector merges s×s neighbouring patches into one token (1 = no merging)."""
    projector_hidden: int = 64
    """Hidden width of the projector MLP."""
    out_dim: int = 64
    """Width of the projected tokens: the language model's hidden size (the composite sets it)."""

    def __post_init__(self) -> None:
        if self.dim % self.n_heads != 0:
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        check_attention_backend(self.attention_backend)
        if self.pixel_shuffle < 1:
            raise ValueError(f"pixel_shuffle={self.pixel_shuffle} must be >= 1")
        if self.patch_size < 1 or self.base_grid < 1 or self.n_register_tokens < 0:
            raise ValueError(
                f"patch_size={self.patch_size} and base_grid={self.base_grid} must be >= 1, "
                f"n_register_tokens={self.n_register_tokens} >= 0"
            )

    @property
    def n_prefix_tokens(self) -> int:
        """Tokens prepended to the patches (cls + registers)."""
        return int(self.use_cls_token) + self.n_register_tokens

    def tp_divisors(self) -> dict[str, int]:
        """Counts a tensor-parallel degree of the encoder must divide."""
        return {"n_heads": self.n_heads, "mlp_dim": self.mlp_dim}


VIT_FLAVORS: dict[str, ViTArgs] = {
    # Tiny: 16×16 images give a 4×4 patch grid, 4 projected tokens.
    "debug": ViTArgs(),
    # A second, smaller tower for multi-encoder graphs (same 8-pixel cell, different widths).
    "debug_small": ViTArgs(dim=16, n_layers=1, n_heads=2, mlp_dim=32, n_register_tokens=0,
                           use_cls_token=True, projector_hidden=32),
    # ViT-H/16 at 1024² (64×64 patches → 1024 projected tokens), projecting into a 2048-wide LM:
    # 635,909,120 encoder + 14,694,400 projector = 650,603,520 parameters.
    "h16": ViTArgs(
        patch_size=16,
        dim=1280,
        n_layers=32,
        n_heads=16,
        mlp_dim=5120,
        base_grid=64,
        n_register_tokens=0,
        use_cls_token=True,
        pixel_shuffle=2,
        projector_hidden=2048,
        out_dim=2048,
    ),
}
"""Named vision shapes; build them with `titan_mimo.models.build_model("vit/<name>")`."""
