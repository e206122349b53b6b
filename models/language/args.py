"""Configuration of the hybrid Mamba2 / attention / MLP language model and its named flavors."""

from dataclasses import dataclass

from ..attention_kernels import check_attention_backend

__all__ = ["BLOCK_KINDS", "HybridLMArgs", "LM_FLAVORS", "MAMBA_KERNELS", "MOE_BACKENDS", "POSITION_EMBEDDINGS", "SSD_BACKENDS"]

BLOCK_KINDS = {"M": "mamba2", "*": "attention", "-": "mlp", "E": "moe"}
"""Layer-pattern characters and the block each one builds."""

SSD_BACKENDS = ("torch", "mamba_ssm")
"""Implementations of the Mamba2 SSD scan: "torch" is the pure-PyTorch reference (and the CPU
path); "mamba_ssm" is mamba-ssm's Triton kernel (GPU only, the `gpu` extra)."""

MAMBA_KERNELS = ("torch", "triton")
"""Kernels of the Mamba2 mixer's causal conv + SiLU and gated RMSNorm: "torch" is PyTorch's
(compiled: Inductor's kernels), the reference and the CPU path; "triton" titan_mimo's Triton
kernels (`conv_triton`, `gated_norm_triton`: one pass forward, one backward each; CUDA, conv
width 4)."""

POSITION_EMBEDDINGS = ("rope", "none")
"""Position information of attention blocks: rotary embeddings, or none (Nemotron-H: its Mamba2
layers carry position)."""

MOE_BACKENDS = ("torch", "grouped_mm")
"""Routed-expert matmuls: "torch" runs one matmul pair per expert (the reference, any device and
dtype); "grouped_mm" one `torch._grouped_mm` per projection for all local experts (CUDA, bf16)."""


@dataclass(kw_only=True)
class HybridLMArgs:
    """Shape of a Nemotron-H style hybrid LM: one pre-norm residual block per pattern character."""

    vocab_size: int = 256
    """Rows of the token embedding and of the output head."""
    dim: int = 64
    """Hidden size of the residual stream."""
    layer_pattern: str = "M-*-M-"
    """One char per layer: 'M' Mamba2 block, '*' GQA attention block, '-' MLP block, 'E'
    mixture-of-experts block."""
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
    mamba_kernels: str = "torch"
    """Kernels of the Mamba2 mixer's causal conv + SiLU and gated RMSNorm: "torch" (reference;
    Inductor's kernels when compiled) or "triton" (`conv_triton`, `gated_norm_triton`: one kernel
    per pass each; CUDA; needs mamba_d_conv = 4). On an H200 at hybrid_2b's 3 x 8192 tokens the
    three convs of a layer take 1.6 instead of 3.2 ms forward + backward and the norm 0.6 instead
    of 0.9 ms (docs/benchmarks.md has the step times)."""
    ssd_keep_states: bool = False
    """ssd_backend="mamba_ssm" only: the scan's backward reads the chunk states its forward made
    instead of recomputing them (~0.35 ms less per Mamba2 layer and step at 3 x 8192 tokens on an
    H100) for mamba_n_heads * mamba_head_dim * mamba_d_state * 2 / mamba_chunk_size bytes per
    token and layer (4 KiB on hybrid_2b). See models/language/ssd_mamba_ssm.py."""
    attention_backend: str = "sdpa"
    """Kernel of the attention blocks: "sdpa" (PyTorch's SDPA, the reference), "fa4"
    (FlashAttention-4, CUDA bf16/fp16 only, the `flash-attn-4` package) or "te" (Transformer
    Engine's DotProductAttention, CUDA bf16/fp16 only, `transformer-engine[pytorch]`)."""
    norm_eps: float = 1e-5
    """Epsilon of every RMSNorm (block norms, final norm, Mamba2 gated norm)."""
    position_embedding: str = "rope"
    """Of attention blocks: "rope" (rotary, base `rope_theta`) or "none" (Nemotron-H)."""
    rope_theta: float = 10000.0
    """Base of the rotary position embedding of attention blocks."""
    n_routed_experts: int = 8
    """Routed experts of each MoE block."""
    n_experts_per_tok: int = 2
    """Experts each token is routed to (top-k)."""
    moe_intermediate_size: int = 32
    """Hidden width of each routed expert's squared-ReLU MLP."""
    moe_shared_expert_intermediate_size: int = 64
    """Hidden width of the shared expert every token passes through (0: no shared expert)."""
    n_group: int = 1
    """Expert groups for group-limited routing (must divide n_routed_experts)."""
    topk_group: int = 1
    """Groups a token may choose experts from (the best by the sum of their top-2 scores)."""
    norm_topk_prob: bool = True
    """Normalise the k gate values of a token to sum to 1 (before routed_scaling_factor)."""
    routed_scaling_factor: float = 1.0
    """Multiplier of the gate values."""
    moe_latent_size: int | None = None
    """If set, routed experts run in this width between two linears (Nemotron-H's latent MoE)."""
    moe_bias_update_rate: float = 1e-3
    """Step of the sign-based correction-bias update per optimizer step (0: no update)."""
    moe_aux_loss_coeff: float = 0.0
    """Coefficient of the sequence-level load-balancing loss (0: none; the reference uses 1e-4)."""
    moe_backend: str = "torch"
    """Routed-expert matmuls: "torch" (per-expert loop, the reference) or "grouped_mm" (CUDA)."""

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
        if self.position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(f"position_embedding={self.position_embedding!r} is unknown; choose one of "
                             f"{list(POSITION_EMBEDDINGS)}")
        if "*" in self.layer_pattern and self.position_embedding == "rope" and self.head_dim % 2 != 0:
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
        if self.mamba_kernels not in MAMBA_KERNELS:
            raise ValueError(f"mamba_kernels={self.mamba_kernels!r} is unknown; choose one of {list(MAMBA_KERNELS)}")
        if "M" in self.layer_pattern and self.mamba_kernels == "triton" and self.mamba_d_conv != 4:
            raise ValueError(f"mamba_kernels='triton' takes mamba_d_conv = 4 (its kernels are written for "
                             f"width 4), not {self.mamba_d_conv}; use mamba_kernels='torch'")
        check_attention_backend(self.attention_backend)
        if "E" in self.layer_pattern:
            self._check_moe()
        if self.mamba_chunk_size < 1 or self.mamba_d_conv < 1:
            raise ValueError(
                f"mamba_chunk_size={self.mamba_chunk_size} and mamba_d_conv={self.mamba_d_conv} "
                "must be >= 1"
            )

    def _check_moe(self) -> None:
        e, k = self.n_routed_experts, self.n_experts_per_tok
        if not 1 <= k <= e:
            raise ValueError(f"n_experts_per_tok={k} must be in [1, n_routed_experts={e}]")
        if self.n_group < 1 or e % self.n_group:
            raise ValueError(f"n_group={self.n_group} must divide n_routed_experts={e}")
        if self.n_group > 1:
            per_group = e // self.n_group
            if per_group < 2:
                raise ValueError(f"n_group={self.n_group}: groups score their top-2 experts, so each needs "
                                 f">= 2 of the {e} experts")
            if not 1 <= self.topk_group <= self.n_group or k > self.topk_group * per_group:
                raise ValueError(f"topk_group={self.topk_group} must be in [1, n_group={self.n_group}] and "
                                 f"leave >= n_experts_per_tok={k} experts ({per_group} per group)")
        if self.moe_backend not in MOE_BACKENDS:
            raise ValueError(f"moe_backend={self.moe_backend!r} is unknown; choose one of {list(MOE_BACKENDS)}")
        if self.moe_intermediate_size < 1 or self.moe_shared_expert_intermediate_size < 0:
            raise ValueError(f"moe_intermediate_size={self.moe_intermediate_size} must be >= 1 and "
                             f"moe_shared_expert_intermediate_size={self.moe_shared_expert_intermediate_size} >= 0")
        if self.moe_latent_size is not None and self.moe_latent_size < 1:
            raise ValueError(f"moe_latent_size={self.moe_latent_size} must be >= 1 or None")
        if self.moe_bias_update_rate < 0 or self.moe_aux_loss_coeff < 0:
            raise ValueError(f"moe_bias_update_rate={self.moe_bias_update_rate} and "
                             f"moe_aux_loss_coeff={self.moe_aux_loss_coeff} must be >= 0")

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
        if "E" in self.layer_pattern and self.moe_shared_expert_intermediate_size:
            divisors["moe_shared_expert_intermediate_size"] = self.moe_shared_expert_intermediate_size
        return divisors


def _nemotron_moe(layer_pattern: str) -> HybridLMArgs:
    return HybridLMArgs(
        vocab_size=131072, dim=2688, layer_pattern=layer_pattern,
        n_heads=32, n_kv_heads=8, head_dim=128, position_embedding="none",
        mamba_n_heads=64, mamba_head_dim=64, mamba_d_state=128, mamba_n_groups=8, mamba_d_conv=4,
        mamba_chunk_size=128,
        n_routed_experts=128, n_experts_per_tok=6, moe_intermediate_size=1856,
        moe_shared_expert_intermediate_size=3712, n_group=1, topk_group=1, norm_topk_prob=True,
        routed_scaling_factor=2.5, moe_bias_update_rate=1e-3, moe_aux_loss_coeff=1e-4,
    )


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
    # Tiny MoE hybrid for CPU tests: every block kind, 8 experts top-2 in 2 groups (one eligible
    # per token, so group-limited routing decides), a shared expert, no position embedding, a
    # bias rate that flips routing decisions within a few steps, and the auxiliary loss on.
    "debug_moe": HybridLMArgs(
        layer_pattern="ME*E-E",
        position_embedding="none",
        n_routed_experts=8,
        n_experts_per_tok=2,
        moe_intermediate_size=32,
        moe_shared_expert_intermediate_size=64,
        n_group=2,
        topk_group=1,
        routed_scaling_factor=2.5,
        moe_bias_update_rate=1e-2,
        moe_aux_loss_coeff=1e-2,
    ),
    # The reference launcher's language model ("Nemotron6-MoE"): 20 layers of Mamba2 / MoE /
    # attention, no position embedding, 128 routed experts top-6 of width 1856 + a shared expert
    # of 3712, sigmoid router with correction bias, scaling 2.5, untied head.
    "nemotron_moe_20l": _nemotron_moe("MEMEM*EMEMEM*EMEMEM*"),
    # Its first 8 layers (3 MoE, 4 Mamba2, 1 attention) at the same widths and expert count:
    # fits one H200 with fp32 AdamW state and activations (the benchmark's size).
    "nemotron_moe_1gpu": _nemotron_moe("MEMEM*EM"),
}
"""Named language-model shapes; build with `titan_mimo.models.build_model("hybrid_lm/<name>")`."""
