"""Peer: timm's ViT-H/16 (patch 16, width 1280, 32 blocks, 16 heads, MLP 4x, class token, no
head) trained on one GPU: fp32 parameters, bf16 autocast, SDPA attention, the whole model under
`torch.compile`, fused AdamW, the loss the mean square of its output tokens. Measures images/s and
MFU by the same count as titan_mimo's ViT: 6 x parameters x tokens + 12 x blocks x tokens² x width
per image (fwd + bwd, the attention square in full).

    python -m benchmarks.peer_vit [--batch 12] [--image 1024] [--no-compile] [--json PATH]

Needs timm (`pip install timm`).
"""

import torch

from benchmarks import common


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--image", type=int, default=1024, help="square image side in pixels")
    p.add_argument("--no-compile", action="store_true")
    opts = p.parse_args()
    import timm  # a peer's package, on GPU hosts only (with torch pinned, it would replace it)
    device, dtype = common.device_and_dtype(opts.tiny)
    width, depth, heads = (64, 2, 4) if opts.tiny else (1280, 32, 16)
    image, batch = (32, 2) if opts.tiny else (opts.image, opts.batch)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=image, patch_size=16, embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=4.0,
        num_classes=0, global_pool="").to(device)
    if not (opts.no_compile or opts.tiny):
        model = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    images = torch.randn(batch, 3, image, image, device=device)
    n_params = sum(p.numel() for p in model.parameters())
    tokens = (image // 16) ** 2 + 1
    flops_per_image = 6 * n_params * tokens + 12 * depth * tokens * tokens * width

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = model(images)
        out.float().square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step_s, host_s = common.time_step(step, device, opts.warmup, opts.steps)
    out = common.result(step_s, host_s, device, flops=flops_per_image * batch, images=batch)
    common.report(f"timm ViT {'tiny' if opts.tiny else 'H/16'}", out)
    common.write({"timm": out}, opts.json)


if __name__ == "__main__":
    main()
