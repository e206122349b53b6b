"""Configuration of the vision module (ViT encoder + pixel-shuffle projector) and its flavors."""

from dataclasses import dataclass

from ..attention_kernels import check_attention_backend

__all__ = ["MLP_ACTIVATIONS", "POS_EMBED_RULES", "PROJECTOR_ACTIVATIONS", "PROJECTOR_NORMS", "ViTArgs",
           "VIT_FLAVORS"]

POS_EMBED_RULES = ("bilinear", "radio")
"""How the learned [G, G, D] position table meets an h×w patch grid: "bilinear" resamples it to
h×w; "radio" (C-RADIO's cropped position embedding) resamples it to the square of the longer
side, crops h×w from its top-left corner, and resamples that to h×w if it is still not that size."""

MLP_ACTIVATIONS = ("gelu_tanh", "gelu")
"""GELU of the encoder MLPs: tanh approximation, or exact (erf)."""

PROJECTOR_NORMS = ("layernorm", "rmsnorm")
PROJECTOR_ACTIVATIONS = ("gelu", "relu2")


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
    patch_bias: bool = True
    """The patch projection has a bias (C-RADIO's has none)."""
    pos_embed_rule: str = "bilinear"
    """How the position table is resampled to a patch grid: "bilinear" or "radio" (see
    POS_EMBED_RULES)."""
    norm_mean: tuple[float, ...] | None = None
    """Input conditioner: per-channel mean subtracted from the pixels inside the model (RADIO's);
    None leaves the pixels as they come."""
    norm_std: tuple[float, ...] | None = None
    """Input conditioner: per-channel standard deviation the pixels are divided by (with norm_mean)."""
    mlp_act: str = "gelu_tanh"
    """GELU of the encoder MLPs: "gelu_tanh" (tanh approximation) or "gelu" (exact)."""
    layer_scale: bool = False
    """Learned per-channel scales on each block's attention and MLP outputs (LayerScale)."""
    final_norm: bool = True
    """A LayerNorm on the encoder's output features (RADIO has none; the Nemotron-H Omni model
    adds one before its projector when its LM has MTP layers)."""
    projector_norm: str = "layernorm"
    """Norm on the pixel-shuffled tokens: "layernorm" or "rmsnorm" (Nemotron-H Omni)."""
    projector_norm_eps: float | None = None
    """Epsilon of the projector's norm; None: norm_eps."""
    projector_act: str = "gelu"
    """Activation between the projector's linears: "gelu" or "relu2" (squared ReLU)."""
    projector_bias: bool = True
    """The projector's linears have biases."""

    def __post_init__(self) -> None:
        if self.dim % self.n_heads != 0:
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        check_attention_backend(self.attention_backend)
        for name, allowed in (("pos_embed_rule", POS_EMBED_RULES), ("mlp_act", MLP_ACTIVATIONS),
                              ("projector_norm", PROJECTOR_NORMS), ("projector_act", PROJECTOR_ACTIVATIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is unknown; choose one of {list(allowed)}")
        if (self.norm_mean is None) != (self.norm_std is None):
            raise ValueError("norm_mean and norm_std set the input conditioner together: give both or neither")
        if self.norm_mean is not None and not len(self.norm_mean) == len(self.norm_std) == self.in_channels:
            raise ValueError(f"norm_mean={self.norm_mean} and norm_std={self.norm_std} need in_channels="
                             f"{self.in_channels} values each")
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
