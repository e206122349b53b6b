"""Model code of titan_mimo: vision encoder + projector, hybrid LM, the MIMO composite.

Registry: `build_model("vit/debug", out_dim=2048)` builds a flavor with field overrides; it
allocates parameters on the current default device, so `with torch.device("meta"):` works.
Parameters of a fresh model are placeholders: always initialise through
`common.init_parameter` (the trainer) or `common.init_model_for_testing`.
"""

import dataclasses

from torch import nn

from .language import LM_FLAVORS, HybridLM, HybridLMArgs
from .mimo import MimoModel, merge_embeddings
from .vision import VIT_FLAVORS, ViTArgs, VisionModule

__all__ = [
    "HybridLM",
    "HybridLMArgs",
    "MODEL_NAMES",
    "MimoModel",
    "ViTArgs",
    "VisionModule",
    "build_from_args",
    "build_model",
    "merge_embeddings",
    "model_args",
]

_FAMILIES: dict[str, tuple[dict, type[nn.Module]]] = {
    "vit": (VIT_FLAVORS, VisionModule),
    "hybrid_lm": (LM_FLAVORS, HybridLM),
}

MODEL_NAMES: tuple[str, ...] = tuple(
    f"{family}/{flavor}" for family, (flavors, _) in _FAMILIES.items() for flavor in flavors
)
"""Every buildable "family/flavor" name."""


def model_args(name: str, **overrides) -> ViTArgs | HybridLMArgs:
    """A fresh copy of a flavor's args with fields overridden (validated again)."""
    family, _, flavor = name.partition("/")
    if family not in _FAMILIES or flavor not in _FAMILIES[family][0]:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    args = _FAMILIES[family][0][flavor]
    fields = {f.name for f in dataclasses.fields(args)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"model {name!r}: unknown override(s) {unknown}; valid fields: {sorted(fields)}"
        )
    return dataclasses.replace(args, **overrides)


def build_from_args(args: ViTArgs | HybridLMArgs) -> nn.Module:
    """The module of already resolved args: VisionModule for ViTArgs, HybridLM for HybridLMArgs
    (the trainer's path, where args may come from a Hugging Face config.json)."""
    return VisionModule(args) if isinstance(args, ViTArgs) else HybridLM(args)


def build_model(name: str, **overrides) -> nn.Module:
    """Build "vit/<flavor>" (VisionModule) or "hybrid_lm/<flavor>" (HybridLM)."""
    args = model_args(name, **overrides)
    return _FAMILIES[name.partition("/")[0]][1](args)
