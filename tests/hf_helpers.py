"""Tiny random transformers folders for tests/test_hf.py and its workers (needs transformers).

Every floating tensor is drawn again after transformers' init, buffers included (the MoE
correction bias, RADIO's conditioner), so ones, zeros and ties cannot hide a wrong mapping."""

from __future__ import annotations

from pathlib import Path

import torch

IMAGE_ID = 7
PATCH = 4
VOCAB = 96
BLOCKS = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error ‖a − b‖ / ‖b‖."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=g)
            if name.endswith(("norm_std", "norm_mean")):
                t.copy_(0.2 + noise.abs() * 0.3)
            elif t.ndim == 1 and not name.endswith(("bias", "dt_bias", "A_log")):
                t.copy_(1.0 + 0.3 * noise)  # norm weights, D, layer scales: around one
            else:
                t.copy_(0.3 * noise / max(1.0, t.shape[-1] ** 0.5) ** 0.5)
    return model.eval()


def text_config(pattern: str, **extra) -> dict:
    return dict(vocab_size=VOCAB, hidden_size=32, layers_block_type=[BLOCKS[c] for c in pattern],
                num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=48,
                ssm_state_size=8, mamba_num_heads=4, mamba_head_dim=8, n_groups=2, chunk_size=4,
                n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                moe_shared_expert_intermediate_size=24, routed_scaling_factor=1.5, **extra)


def vision_config(**extra) -> dict:
    return dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, patch_size=PATCH, max_img_size=32,
                num_cls_tokens=2, num_registers=3, image_size=16, **extra)


def make_nemotron_h(path: Path, pattern: str, **extra) -> Path:
    from transformers import NemotronHConfig, NemotronHForCausalLM
    randomise(NemotronHForCausalLM(NemotronHConfig(**text_config(pattern, **extra)))).save_pretrained(path)
    return path


def make_radio(path: Path) -> Path:
    from transformers import RadioConfig, RadioModel
    randomise(RadioModel(RadioConfig(**vision_config()))).save_pretrained(path)
    return path


def make_omni(path: Path, pattern: str, **text_extra) -> Path:
    from transformers.models.nemotron_h_omni import NemotronH_Omni_Reasoning_V3, NemotronH_Omni_Reasoning_V3_Config
    config = NemotronH_Omni_Reasoning_V3_Config(
        vision_config=vision_config(video_temporal_patch_size=2), text_config=text_config(pattern, **text_extra),
        projector_hidden_size=40, vision_hidden_size=32, image_token_id=IMAGE_ID)
    randomise(NemotronH_Omni_Reasoning_V3(config)).save_pretrained(path)
    return path


def omni_inputs(seed: int = 4) -> dict:
    """Two images of different sizes (6×4 and 2×6 patches -> 6 and 3 tokens) in a batch of two
    texts, the first with both images' placeholders, the second with none."""
    g = torch.Generator().manual_seed(seed)
    grids = torch.tensor([[4, 6], [6, 2]])
    pixels = torch.rand(int(grids.prod(-1).sum()), 3 * PATCH * PATCH, generator=g)
    ids = torch.randint(IMAGE_ID + 1, VOCAB, (2, 20), generator=g)
    ids[0, 2:8] = IMAGE_ID
    ids[0, 11:14] = IMAGE_ID
    return {"input_ids": ids, "pixel_values": pixels, "image_grid_hw": grids}
