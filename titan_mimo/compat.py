"""The one place private torch APIs are used. Checked on torch 2.13 (CPU); torch 2.11 (GPU)
ships the same names."""

from torch.distributed._composable import checkpoint as composable_checkpoint

__all__ = ["composable_checkpoint"]
