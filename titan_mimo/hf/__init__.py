"""Hugging Face checkpoints in and out: Nemotron-H, C-RADIO and the Nemotron-H Omni VLM.

    model = from_pretrained("path/to/folder")       # our model, called like transformers' one
    save_pretrained(model, "path/to/out", dtype="bfloat16")

A `nemotron_h` folder gives our hybrid LM (`model(input_ids=...)` -> logits), a `radio` folder our
ViT as RADIO (`model(pixel_values=..., image_grid_hw=...)` -> patch features), a
`nemotron_h_omni` folder our MIMO composite (`model(input_ids=..., pixel_values=...,
image_grid_hw=...)` -> logits). Folders are read and written in the on-disk format (the
released checkpoints' and what transformers' save_pretrained writes), with JSON and safetensors
only: transformers is not needed at runtime (it is the oracle of the tests).

The trainer takes such a folder as `[modules.<name>] model = "hf:PATH"` (`module_args`,
`load_weights`), and `python -m titan_mimo.export CHECKPOINT OUT --format hf` writes one
(`export_checkpoint`). The name and layout mapping lives in `names.py` and `layout.py`, the
config mapping in `configs.py`; the models themselves know nothing of transformers.
"""

from .configs import SUPPORTED_MODEL_TYPES
from .layout import Layout, describe
from .models import NemotronH, NemotronHOmni, Radio, from_pretrained, save_pretrained

__all__ = ["Layout", "NemotronH", "NemotronHOmni", "Radio", "SUPPORTED_MODEL_TYPES", "describe",
           "from_pretrained", "save_pretrained"]
