"""Configuration of the hybrid Mamba2 / attention / MLP language model and its named flavors."""

from dataclasses import dataclass

from ..attention_kernels import check_attention_backend

__all__ = ["BLOCK_KINDS", "HybridLMArgs", "LM_FLAVORS", "SSD_BACKENDS"]

BLOCK_KINDS = {"M": "mamba2", "*": "attention", "-": "mlp"}
"""Layer-pattern characters and the block each one builds."""

SSD_BACKENDS = ("torch", "mamba_ssm")
"""Implementations of the Mamba2 SSD scan: "torch" is the pure-PyTorch reference (and the CPU
path); "mamba_ssm" is mamba-ssm's Triton kernel (GPU only, the `gpu` extra)."""


@dataclass(kw_only=True)
class HybridLMArgs:
    """Shape of a Nemotron-H style hybrid LM: one pre-norm residual block per pattern character."""

    vocab_size: int = 256
    """Rows of the token embedding and of the output head."""
    dim: int = 64
    """Hidden size of the residual stream."""
    layer_pattern: str = "M-*-M-"
    """One char per layer: 'M' Mamba2 block, '*' GQA attention block, '-' MLP block."""
    n_heads: int = 4
    """Query heads of each attention block."""
    n_kv_heads: int = 2
    """Key/value heads of each attention block (GQA); must divide n_heads."""
    head_dim: int = 16
    """Width of one attention head."""
    mlp_hidden: int = 128
    """Hidden width of each squared-ReLU MLP block."""
    mamba_n_heads: int = 4
    """SSM heads of each Mamba2 mixer."""
    mamba_head_dim: int = 16
    """Channels per SSM head (d_inner = mamba_n_heads * mamba_head_dim)."""
    mamba_d_state: int = 16
    """SSM state size N per group."""
    mamba_n_groups: int = 2
    """B/C groups shared by mamba_n_heads / mamba_n_groups heads each; must divide mamba_n_heads."""
    mamba_d_conv: int = 4
    """Kernel width of the depthwise causal convolutions on x, B and C."""
    mamba_chunk_size: int = 8
    """Chunk length of the chunked SSD scan; sequences are padded internally to a multiple."""
    ssd_backend: str = "torch"
    """Implementation of the SSD scan: "torch" (reference) or "mamba_ssm" (Triton, GPU)."""
    ssd_keep_states: bool = False
    """ssd_backend="mamba_ssm" only: the scan's backward reads the chunk states its forward made
    instead of recomputing them (~0.35 ms less per Mamba2 layer and step at 3 x 8192 tokens on an
    H100) for mamba_n_heads * mamba_head_dim * mamba_d_state * 2 / mamba_chunk_size bytes per
    token and layer (4 KiB on hybrid_2b). See models/language/ssd_mamba_ssm.py."""
    ssd_launch_cache: bool = False
    """ssd_backend="mamba_ssm" only: mamba-ssm's Triton kernels are launched again without
    Triton's per-launch Python once a call of the same shape was recorded (process-wide once
    any mixer asks for it; see models/language/triton_launch.py): less host time per step,
    where a host-bound step waits on it."""
    attention_backend: str = "sdpa"
    """Kernel of the attention blocks: "sdpa" (PyTorch's SDPA, the reference), "fa4"
    (FlashAttention-4, CUDA bf16/fp16 only, the `flash-attn-4` package) or "te" (Transformer
    Engine's DotProductAttention, CUDA bf16/fp16 only, `transformer-engine[pytorch]`)."""
    norm_eps: float = 1e-5
    """Epsilon of every RMSNorm (block norms, final norm, Mamba2 gated norm)."""
    rope_theta: float = 10000.0
    """Base of the rotary position embedding of attention blocks."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.layer_pattern) - set(BLOCK_KINDS))
        if not self.layer_pattern or unknown:
            raise ValueError(
                f"layer_pattern={self.layer_pattern!r}: must be non-empty and use only "
                f"{sorted(BLOCK_KINDS)} (unknown: {unknown})"
            )
        if "*" in self.layer_pattern and self.n_heads % self.n_kv_heads != 0:
            raise ValueError(
                f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}"
            )
        if "*" in self.layer_pattern and self.head_dim % 2 != 0:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if "M" in self.layer_pattern and self.mamba_n_heads % self.mamba_n_groups != 0:
            raise ValueError(
                f"mamba_n_heads={self.mamba_n_heads} is not divisible by "
                f"mamba_n_groups={self.mamba_n_groups}"
            )
        if self.ssd_backend not in SSD_BACKENDS:
            raise ValueError(
                f"ssd_backend={self.ssd_backend!r} is unknown; choose one of {list(SSD_BACKENDS)}"
            )
        if self.ssd_keep_states and self.ssd_backend != "mamba_ssm":
            raise ValueError(
                f"ssd_keep_states=True applies to ssd_backend='mamba_ssm', not {self.ssd_backend!r} "
                "(the torch scan's autograd keeps what its backward needs)"
            )
        if self.ssd_launch_cache and self.ssd_backend != "mamba_ssm":
            raise ValueError(
                f"ssd_launch_cache=True applies to ssd_backend='mamba_ssm', not {self.ssd_backend!r} "
                "(the torch scan launches no Triton kernels)"
            )
        check_attention_backend(self.attention_backend)
        if self.mamba_chunk_size < 1 or self.mamba_d_conv < 1:
            raise ValueError(
                f"mamba_chunk_size={self.mamba_chunk_size} and mamba_d_conv={self.mamba_d_conv} "
                "must be >= 1"
            )

    @property
    def n_layers(self) -> int:
        return len(self.layer_pattern)

    def tp_divisors(self) -> dict[str, int]:
        """Counts a tensor-parallel degree must divide, for the block kinds present.

        vocab_size is included because the embedding and output head are vocab-parallel.
        """
        divisors = {"vocab_size": self.vocab_size}
        if "*" in self.layer_pattern:
            divisors["n_heads"] = self.n_heads
            divisors["n_kv_heads"] = self.n_kv_heads
        if "M" in self.layer_pattern:
            divisors["mamba_n_heads"] = self.mamba_n_heads
            divisors["mamba_n_groups"] = self.mamba_n_groups
        if "-" in self.layer_pattern:
            divisors["mlp_hidden"] = self.mlp_hidden
        return divisors


LM_FLAVORS: dict[str, HybridLMArgs] = {
    # Tiny: every block kind twice-ish, fast on one CPU core.
    "debug": HybridLMArgs(),
    # Dense ~2B Nemotron-H mix: 22 Mamba2 (46%), 4 attention (8%), 22 MLP (46%) layers, attention
    # always followed by an MLP as in Nemotron-H. 1,975,076,992 parameters (of which 537M are the
    # untied embedding + output head).
    "hybrid_2b": HybridLMArgs(
        vocab_size=131072,
        dim=2048,
        layer_pattern="M-M-M-M*-M-" * 4 + "M-M-",
        n_heads=16,
        n_kv_heads=8,
        head_dim=128,
        mlp_hidden=8192,
        mamba_n_heads=64,
        mamba_head_dim=64,
        mamba_d_state=128,
        mamba_n_groups=8,
        mamba_d_conv=4,
        mamba_chunk_size=256,
        rope_theta=10000.0,
    ),
    # Attention + MLP only at the Llama-3.2-1B shape (GPU peer's baseline), squared-ReLU MLP,
    # untied head: 1,230,047,232 parameters.
    "attn_1b": HybridLMArgs(
        vocab_size=128256,
        dim=2048,
        layer_pattern="*-" * 16,
        n_heads=32,
        n_kv_heads=8,
        head_dim=64,
        mlp_hidden=8192,
        rope_theta=500000.0,
    ),
}
"""Named language-model shapes; build with `titan_mimo.models.build_model("hybrid_lm/<name>")`."""
