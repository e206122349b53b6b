"""Hybrid Mamba2 / attention / MLP language model (Nemotron-H style), pure PyTorch."""

from .args import BLOCK_KINDS, LM_FLAVORS, SSD_BACKENDS, HybridLMArgs
from .model import AttentionBlock, HybridLM, MambaBlock, MLPBlock

__all__ = [
    "AttentionBlock",
    "BLOCK_KINDS",
    "HybridLM",
    "HybridLMArgs",
    "LM_FLAVORS",
    "MLPBlock",
    "MambaBlock",
    "SSD_BACKENDS",
]
