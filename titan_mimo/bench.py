"""Single-GPU benchmark of one module (or the colocated whole model) as the trainer runs it, next
to the same model in a bare PyTorch loop, so the trainer's overhead is a ratio from one run.

    python -m titan_mimo.bench --module vision --model vit/h16 --batch 4 --image 1024 [--compile]
    python -m titan_mimo.bench --module language --model hybrid_lm/attn_1b --batch 2 --seq 8192
    python -m titan_mimo.bench --module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 \
        --seq 8192 --image 1024 --ssd-backend mamba_ssm

"titan_mimo" run: built as the trainer builds a module (meta device → per-block torch.compile →
FSDP2 on a 1-rank mesh, bf16 params / fp32 reduce → to_empty → fqn-seeded init), fused AdamW.
"bare" run: the same model with fp32 params on the device, bf16 autocast, no FSDP, fused AdamW,
starting from the same weights. Both time `--steps` steps after `--warmup` steps (compilation
happens in warm-up), with the device synchronised around the timed region.

FLOPs are the models' own training counts (3 × forward matmul FLOPs):
  vision    batch × VisionModule.flops_per_image(H, W): patch embed, blocks' linears, the full
            bidirectional attention square 4·T²·D per layer forward, projector linears;
  language  batch × seq × HybridLM.flops_per_token(seq): linears, causal attention counted as the
            full square (torchtitan's convention), Mamba2 convs and the chunked SSD scan's matmuls;
  model     the sum of both.
MFU = FLOPs / step time / peak (torchtitan's get_peak_flops for the device, 989e12 for H100 bf16
dense when torchtitan is absent; none on CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import time
from dataclasses import asdict, dataclass

import tomllib
import torch
import torch._inductor.config as inductor_config
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from titan_mimo import metrics
from titan_mimo.build import apply_block_options, checkpointed_layers
from titan_mimo.compat import scope_activation_memory_budget
from titan_mimo.config import Training
from titan_mimo.init import init_module_weights
from titan_mimo.models import build_model, merge_embeddings, model_args
from titan_mimo.models.attention_kernels import ATTENTION_BACKENDS
from titan_mimo.models.fsdp import autocast_forward
from titan_mimo.models.language import parallelize as lm_parallel
from titan_mimo.models.vision import parallelize as vit_parallel
from titan_mimo.optim import LocalShardAdamW
from titan_mimo.profiling import print_profile, report_syncs
from titan_mimo.train import garbage_collection

"""Fallback peak table (dense bf16 FLOP/s) used when torchtitan is not importable."""


@dataclass(kw_only=True)
class BenchResult:
    run: str
    """"titan_mimo" (the trainer's build) or "bare" (plain PyTorch loop)."""
    module: str
    model: str
    compile: bool
    batch: int
    ac: str
    """Activation checkpointing ("none", "full", "mlp"; "lm/vision:x" for the whole model)."""
    loss_kind: str
    """"logits" (fp32 copy of the whole logits + F.cross_entropy) or "fused" (chunked head+CE)."""
    sdpa: str
    """The attention kernel: "fa4" or "te" (`--attention`), else the SDPA backend `--sdpa`
    restricted it to ("auto": PyTorch's choice)."""
    step_s: float
    tokens_per_s: float
    images_per_s: float
    tflops: float
    """Achieved training TFLOP/s by the models' FLOP counts."""
    mfu: float | None
    """Fraction of the device's dense bf16 peak; None where the peak is unknown (CPU)."""
    peak_mem_gib: float
    alloc_retries: int
    """cudaMalloc retries of the caching allocator since warm-up (each frees cached blocks and
    synchronises the device: a sign the run is at its memory limit)."""
    loss: float
    coordinate_descent_tuning: bool = False
    """Inductor's coordinate-descent tuning was on (`--coordinate-descent-tuning`)."""
    fsdp: bool = False
    """The modules were wrapped in FSDP2 on a one-rank mesh (`--fsdp-one-rank`); otherwise
    unwrapped with fp32 parameters under autocast, as the trainer runs a module on one rank."""


def peak_flops(device: torch.device) -> float | None:
    """The trainer's peak (torchtitan's table for the GPU); None where unknown (CPU)."""
    return metrics.peak_flops(device, configured_tflops=0.0) or None


def _blocks(module_name: str, model: nn.Module) -> nn.ModuleDict:
    return model.encoder.layers if module_name == "vision" else model.layers


AC_CHOICES = {"none": ("none", "", 1), "full": ("full", "", 1), "mlp": ("selective", "-", 1),
              "mlp-half": ("selective", "-", 2)}
"""--ac / --vision-ac → the trainer's (activation_checkpoint, ac_layers, ac_every)."""


def _checkpointed(module_name: str, model: nn.Module, ac: str) -> set[int]:
    """Blocks to activation-checkpoint, chosen as the trainer chooses them: none, all ("full"),
    the LM's MLP blocks ("mlp"), or every second MLP block ("mlp-half": half the recompute, for
    runs just over the memory limit)."""
    kinds = model.args.layer_pattern if module_name == "language" else "B" * len(_blocks(module_name, model))
    return checkpointed_layers(kinds, *AC_CHOICES[ac])


def _build(module_name: str, model_name: str, device: torch.device, *, compile_blocks: bool, ac: str,
           fsdp_mesh, param_dtype: torch.dtype, overrides: dict, reshard: bool = True,
           compile_forward_only: bool = False, memory_budget: float | None = None,
           autocast: bool = False) -> nn.Module:
    """meta build → per-block AC and compile → FSDP2 on `fsdp_mesh`, or without a mesh and with
    `autocast` the forward under autocast to `param_dtype` (the trainer's module on one rank) →
    to_empty; weights are set by the caller."""
    with torch.device("meta"):
        model = build_model(model_name, **overrides)
    # torchtitan's per-block AC and compile, exactly as the trainer applies them (AC before
    # compile on each block): every block of a kind is the same graph, so the compile cache
    # makes blocks after the first cheap.
    blocks = _blocks(module_name, model)
    if compile_blocks and compile_forward_only:
        apply_block_options(blocks, _checkpointed(module_name, model, ac), False)
        # What-if: compile each block's forward alone, so module hooks (FSDP's unshard/reshard,
        # checkpointing) run eagerly around one graph instead of inside the compiled call.
        for block in blocks.values():
            block.forward = torch.compile(block.forward)
    else:
        apply_block_options(blocks, _checkpointed(module_name, model, ac), compile_blocks)
    if fsdp_mesh is not None:
        if module_name == "vision":
            vit_parallel.apply_fsdp(model, fsdp_mesh, param_dtype, reshard_after_forward=reshard)
        else:
            lm_parallel.apply_fsdp(model, fsdp_mesh, param_dtype, reshard_after_forward=reshard)
    elif autocast:
        autocast_forward(model, device.type, param_dtype)
    if memory_budget is not None:
        scope_activation_memory_budget(model, memory_budget)
    model.to_empty(device=device)
    return model


@dataclass(kw_only=True)
class Workload:
    """The modules of one benchmark and how one training step's loss is computed."""

    module: str
    names: list[str]
    """Model names in `models` order."""
    flops_per_step: int
    tokens_per_step: int
    images_per_step: int


def workload_for(args: argparse.Namespace) -> Workload:
    names = args.model.split("+")
    if args.module == "model":
        if len(names) != 2 or not names[0].startswith("vit/") or not names[1].startswith("hybrid_lm/"):
            raise ValueError(f"--module model needs --model vit/<flavor>+hybrid_lm/<flavor>, got {args.model!r}")
    elif len(names) != 1 or not names[0].startswith({"vision": "vit/", "language": "hybrid_lm/"}[args.module]):
        raise ValueError(f"--module {args.module}: --model {args.model!r} is not a "
                         f"{'vit' if args.module == 'vision' else 'hybrid_lm'} flavor")
    with torch.device("meta"):
        flops = tokens = images = 0
        lm_dim = None
        if args.module in ("language", "model"):
            lm = build_model(names[-1], **lm_overrides(args))
            lm_dim = lm.args.dim
            tokens = args.batch * args.seq
            flops += tokens * lm.flops_per_token(args.seq)
        if args.module in ("vision", "model"):
            vit = build_model(names[0], **vision_overrides(args, lm_dim))
            images = args.batch
            flops += images * vit.flops_per_image(args.image, args.image)
            if args.module == "model" and vit.tokens_per_image(args.image, args.image) > args.seq:
                raise ValueError(f"--seq {args.seq} is shorter than the "
                                 f"{vit.tokens_per_image(args.image, args.image)} tokens of one image")
    return Workload(module=args.module, names=names, flops_per_step=flops, tokens_per_step=tokens,
                    images_per_step=images)


def _parse_model_args(pairs: list[str]) -> dict:
    """["key=value", ...] → {key: value}, values read as TOML (`n_heads=10`, `use_cls_token=false`,
    bare words are strings: `ssd_backend=mamba_ssm`), as the trainer's `model_args` overrides."""
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"model argument {pair!r} is not key=value")
        try:
            out[key] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = text
    return out


def lm_overrides(args: argparse.Namespace) -> dict:
    """The LM flavor's field overrides: `--lm-args`, then `--ssd-backend` and `--attention`."""
    out = _parse_model_args(args.lm_args)
    if args.ssd_backend:
        out["ssd_backend"] = args.ssd_backend
    if args.attention:
        out["attention_backend"] = args.attention
    return out


def vision_overrides(args: argparse.Namespace, lm_dim: int | None) -> dict:
    """The ViT flavor's field overrides: `--vision-args`, `--attention`, and the LM's width as
    the projector's output in the whole model."""
    out = _parse_model_args(args.vision_args)
    if args.attention:
        out["attention_backend"] = args.attention
    if lm_dim is not None:
        out["out_dim"] = lm_dim
    return out


def build_modules(args, wl: Workload, device, *, fsdp_mesh, param_dtype, autocast: bool = False) -> dict[str, nn.Module]:
    """name → module ("vision" and/or "language"), weights still unset; `autocast`: see `_build`."""
    out = {}
    if args.module in ("language", "model"):
        out["language"] = _build("language", wl.names[-1], device, compile_blocks=args.compile, ac=args.ac,
                                 reshard=not args.no_reshard, compile_forward_only=args.compile_forward,
                                 fsdp_mesh=fsdp_mesh, param_dtype=param_dtype, overrides=lm_overrides(args),
                                 memory_budget=args.memory_budget, autocast=autocast)
    if args.module in ("vision", "model"):
        lm_dim = model_args(wl.names[-1], **lm_overrides(args)).dim if args.module == "model" else None
        over = vision_overrides(args, lm_dim)
        out["vision"] = _build("vision", wl.names[0], device, compile_blocks=args.compile and not args.vision_eager,
                               ac=args.vision_ac, compile_forward_only=args.compile_forward,
                               reshard=not args.no_reshard, fsdp_mesh=fsdp_mesh, param_dtype=param_dtype, overrides=over,
                               memory_budget=args.vision_memory_budget, autocast=autocast)
    return out


def make_batch(args, modules: dict[str, nn.Module], device) -> dict[str, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(args.seed)
    batch = {}
    if "vision" in modules:
        batch["images"] = torch.randn(args.batch, 3, args.image, args.image, generator=g).to(device)
    if "language" in modules:
        vocab = modules["language"].args.vocab_size
        # The last id is reserved as the image placeholder; text never uses it.
        tokens = torch.randint(0, vocab - 1, (args.batch, args.seq + 1), generator=g)
        labels = tokens[:, 1:].clone()
        if "vision" in modules:
            n_img = modules["vision"].tokens_per_image(args.image, args.image)
            tokens[:, :n_img] = vocab - 1          # one image at the start of every sample
            labels[:, : n_img - 1] = -100          # no loss on predicting image positions
        batch["tokens"], batch["labels"] = tokens[:, :-1].to(device), labels.to(device)
    return batch


def step_loss(modules: dict[str, nn.Module], batch: dict[str, torch.Tensor], loss_kind: str = "logits") -> torch.Tensor:
    """The step's loss. "logits": logits out of the model, then F.cross_entropy on their fp32
    copy (what the trainer's schedule does today); "fused": the model's chunked head + CE
    (`HybridLM.forward(labels=...)`), which never holds the whole logits."""
    if "language" not in modules:
        emb_ND = modules["vision"](batch["images"])
        return emb_ND.float().square().mean()
    lm = modules["language"]
    merge_args = []
    if "vision" in modules:
        placeholder = lm.args.vocab_size - 1
        lm.input_merge = lambda h, tok, emb: merge_embeddings(h, tok, {placeholder: emb})
        merge_args = [modules["vision"](batch["images"])]
    # Summed per token, divided by the count of loss tokens: the trainer's normalisation.
    labels = batch["labels"]
    if loss_kind == "fused":
        loss = lm(batch["tokens"], *merge_args, labels=labels)
    else:
        logits = lm(batch["tokens"], *merge_args)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                               reduction="sum")
    return loss / (labels != -100).sum()


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(modules, batch, optimizers, device, *, warmup: int, steps: int, autocast_dtype,
               profile: bool = False, profile_top: int = 15, profile_host: bool = True,
               loss_kind: str = "logits", sync_debug: bool = False,
               python_gc: bool = False, sync_every_step: bool = False):
    """Warm up, then time `steps` full training steps; returns (seconds per step, last loss)."""
    def one_step():
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = step_loss(modules, batch, loss_kind)
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss

    # As the trainer runs, with its default training.gc_freq: no automatic Python collection
    # inside a step (and the bench's few steps never reach a periodic one); python_gc is the
    # what-if of training.gc_freq = 0.
    gc.collect()
    with garbage_collection(0 if python_gc else Training.gc_freq) as collector:
        return _time_steps(one_step, device, warmup=warmup, steps=steps, profile=profile,
                           sync_debug=sync_debug, collector=collector, sync_every_step=sync_every_step,
                           profile_top=profile_top, profile_host=profile_host)


def _time_steps(one_step, device, *, warmup: int, steps: int, profile: bool, sync_debug: bool,
                collector=None, sync_every_step: bool = False, profile_top: int = 15,
                profile_host: bool = True):
    for i in range(warmup):
        one_step()
        if collector is not None:  # as the trainer: a collection after the first step
            collector.run(i + 1)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.reset_accumulated_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = one_step()
        if sync_every_step:  # as the trainer, which reads each step's loss and norm
            _sync(device)
    host_s = (time.perf_counter() - start) / steps
    _sync(device)
    step_s = (time.perf_counter() - start) / steps
    # The host runs ahead of the device unless something synchronises or the host is the
    # bottleneck: host time close to step time means launch overhead or syncs, not kernels.
    print(f"  host time to issue a step: {host_s * 1e3:.1f} ms of {step_s * 1e3:.1f} ms", flush=True)
    if profile:
        print_profile(one_step, device, top=profile_top, host=profile_host)
    if sync_debug:
        report_syncs(one_step, device)
    return step_s, float(loss.detach())


def run_one(args, wl: Workload, device, *, bare: bool, state: dict | None):
    param_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    # As the trainer builds a module on one rank: unwrapped, its forward under autocast, or
    # with --fsdp-one-rank (parallelism.fsdp_one_rank) FSDP2 on a one-rank mesh.
    fsdp = not bare and args.fsdp_one_rank
    mesh = init_device_mesh(device.type, (1,), mesh_dim_names=("dp_shard",)) if fsdp else None
    modules = build_modules(args, wl, device, fsdp_mesh=mesh, param_dtype=param_dtype, autocast=not bare)
    for name, m in modules.items():
        if state is not None:
            m.load_state_dict(state[name])
        else:
            # The trainer's init; "device" (its default, training.init_device) draws on the GPU.
            init_module_weights(m, args.seed, prefix=name, on_device=args.init == "device")
    snapshot = None
    if not bare:
        # The bare run starts from these same weights (copied off the device to free it), so in
        # fp32 both runs compute the same losses: a check that they train the same model.
        snapshot = {name: {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().float().cpu().clone()
                           for k, v in m.state_dict().items()} for name, m in modules.items()}
    fused = device.type == "cuda"
    # The trainer's AdamW (local-shard steps of the FSDP DTensors); on the bare run's plain
    # tensors it is torch.optim.AdamW.
    optimizers = [LocalShardAdamW(m.parameters(), lr=1e-4, weight_decay=0.1, fused=fused,
                                  foreach=not fused) for m in modules.values()]
    batch = make_batch(args, modules, device)
    autocast = param_dtype if (bare and param_dtype != torch.float32) else None
    step_s, loss = time_steps(modules, batch, optimizers, device, warmup=args.warmup, steps=args.steps,
                              autocast_dtype=autocast, profile=args.profile and not bare,
                              profile_top=args.profile_top, profile_host=not args.profile_kernels_only,
                              loss_kind=args.loss, sync_debug=args.sync_debug and not bare,
                              python_gc=args.python_gc, sync_every_step=args.sync_every_step)
    peak = peak_flops(device)
    tflops = wl.flops_per_step / step_s
    result = BenchResult(
        run="bare" if bare else "titan_mimo", module=args.module, model=args.model, compile=args.compile,
        batch=args.batch, ac=_ac_label(args), loss_kind=args.loss,
        sdpa=args.attention if args.attention not in (None, "sdpa") else args.sdpa,
        step_s=step_s, tokens_per_s=wl.tokens_per_step / step_s, images_per_s=wl.images_per_step / step_s,
        tflops=tflops / 1e12, mfu=tflops / peak if peak else None,
        peak_mem_gib=(torch.cuda.max_memory_allocated(device) / 2**30) if device.type == "cuda" else 0.0,
        coordinate_descent_tuning=args.coordinate_descent_tuning, fsdp=fsdp,
        alloc_retries=metrics.alloc_retries(device),
        loss=loss)
    del modules, optimizers, batch
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result, snapshot


def fmt(r: BenchResult) -> str:
    rate = (f"tokens/s={r.tokens_per_s:,.0f} " if r.tokens_per_s else "") + \
           (f"images/s={r.images_per_s:.2f} " if r.images_per_s else "")
    mfu = f"MFU={100 * r.mfu:.1f}% " if r.mfu is not None else ""
    compiled = "compile+cdt" if r.coordinate_descent_tuning else "compile"
    return (f"[{r.run:10s}] {r.module} {r.model} b={r.batch} {compiled if r.compile else 'eager'}"
            f"{' fsdp' if r.fsdp else ''} "
            f"ac={r.ac} loss={r.loss_kind} sdpa={r.sdpa}: "
            f"step={r.step_s * 1e3:.1f} ms {rate}{r.tflops:.1f} TFLOP/s {mfu}"
            f"peak_mem={r.peak_mem_gib:.1f} GiB alloc_retries={r.alloc_retries} loss={r.loss:.4f}")


def sdpa_backend(name: str):
    """Context restricting SDPA to one backend ("auto": PyTorch's own choice). Compiled blocks
    pick their SDPA kernel while tracing, which happens inside this context (warm-up)."""
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel({"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                        "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[name])


def _ac_label(args) -> str:
    def label(ac: str, budget: float | None) -> str:
        return ac if budget is None else f"{ac}+budget:{budget:g}"
    lm, vision = label(args.ac, args.memory_budget), label(args.vision_ac, args.vision_memory_budget)
    return {"model": f"{lm}/vision:{vision}", "vision": vision}.get(args.module, lm)


def run(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns {"titan_mimo": BenchResult, "bare": BenchResult | None,
    "overhead": trainer step time / bare step time - 1 (or None)}."""
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if args.dtype is None:
        args.dtype = "bf16" if device.type == "cuda" else "fp32"
    wl = workload_for(args)
    owns_pg = not dist.is_initialized()
    if owns_pg:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                store=dist.HashStore(), rank=0, world_size=1)
    try:
        print(f"bench: {args.module} {args.model} batch={args.batch} seq={args.seq} image={args.image} "
              f"dtype={args.dtype} compile={args.compile} device={device} "
              f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}) "
              f"torch={torch.__version__} flops/step={wl.flops_per_step:.4g}", flush=True)
        with sdpa_backend(args.sdpa), inductor_config.patch(
                coordinate_descent_tuning=args.coordinate_descent_tuning or
                inductor_config.coordinate_descent_tuning):
            trainer, state = run_one(args, wl, device, bare=False, state=None)
            print(fmt(trainer), flush=True)
            bare = None
            if not args.no_bare:
                bare, _ = run_one(args, wl, device, bare=True, state=state)
                print(fmt(bare), flush=True)
        overhead = trainer.step_s / bare.step_s - 1 if bare else None
        if overhead is not None:
            print(f"trainer overhead vs bare loop: {100 * overhead:+.1f}%", flush=True)
    finally:
        if owns_pg:
            dist.destroy_process_group()
    out = {"titan_mimo": trainer, "bare": bare, "overhead": overhead}
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({k: (asdict(v) if isinstance(v, BenchResult) else v)
                                for k, v in out.items()}) + "\n")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m titan_mimo.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--module", required=True, choices=["vision", "language", "model"])
    p.add_argument("--model", required=True,
                   help="vit/<flavor>, hybrid_lm/<flavor>, or vit/<flavor>+hybrid_lm/<flavor> for --module model")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=8192, help="LM sequence length")
    p.add_argument("--image", type=int, default=1024, help="square image side in pixels")
    p.add_argument("--compile", action="store_true", help="torch.compile each block")
    p.add_argument("--ac", choices=list(AC_CHOICES), default="none",
                   help="LM activation checkpointing: every block ('full'), the MLP blocks ('mlp'), "
                        "every second MLP block ('mlp-half')")
    p.add_argument("--vision-ac", choices=["none", "full"], default="none",
                   help="ViT activation checkpointing: every block ('full')")
    p.add_argument("--compile-forward", action="store_true",
                   help="with --compile: torch.compile each block's forward instead of the module "
                        "call (hooks stay eager; a what-if against the trainer's Module.compile)")
    p.add_argument("--vision-eager", action="store_true", help="with --compile: leave the ViT blocks eager")
    p.add_argument("--memory-budget", type=float, default=None, metavar="F",
                   help="with --compile: the LM's compiled blocks keep this share, in (0, 1], of the "
                        "activation memory they would keep, recomputing the cheapest rest (the trainer's "
                        "activation_checkpoint = \"memory_budget\"); use with --ac none")
    p.add_argument("--vision-memory-budget", type=float, default=None, metavar="F",
                   help="the same for the ViT's compiled blocks (activation_checkpoint = "
                        "\"memory_budget\" of the vision module); use with --vision-ac none")
    p.add_argument("--coordinate-descent-tuning", action="store_true",
                   help="with --compile: Inductor's coordinate-descent tuning of the generated kernels "
                        "(the trainer's training.coordinate_descent_tuning)")
    p.add_argument("--python-gc", action="store_true",
                   help="leave Python's automatic garbage collection on during the steps (the trainer's "
                        "training.gc_freq = 0); by default it is off, as in the trainer")
    p.add_argument("--sync-every-step", action="store_true",
                   help="wait for the device after every timed step, as the trainer does when it reads "
                        "each step's loss and gradient norm (a what-if for the trainer's loop)")
    p.add_argument("--no-reshard", action="store_true",
                   help="FSDP keeps each block's gathered params from forward to backward, in every "
                        "module (the trainer's reshard_after_forward = \"never\"); only with "
                        "--fsdp-one-rank, as unwrapped modules have nothing to reshard")
    p.add_argument("--fsdp-one-rank", action="store_true",
                   help="wrap the modules in FSDP2 on a one-rank mesh (bf16 params, fp32 master "
                        "weights; the trainer's parallelism.fsdp_one_rank) instead of running them "
                        "unwrapped under autocast, as the trainer does by default on one rank")
    p.add_argument("--loss", choices=["logits", "fused"], default="logits",
                   help="'fused': chunked head + cross-entropy in the LM (no whole-batch logits)")
    p.add_argument("--sdpa", choices=["auto", "flash", "cudnn", "efficient", "math"], default="auto",
                   help="restrict F.scaled_dot_product_attention to one backend")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dtype", choices=["bf16", "fp32"], default=None,
                   help="compute dtype (FSDP param dtype / bare autocast); default bf16 on GPU, fp32 on CPU")
    p.add_argument("--ssd-backend", default=None, help="override the LM's Mamba2 ssd_backend")
    p.add_argument("--attention", choices=ATTENTION_BACKENDS, default=None,
                   help="override both modules' attention_backend ('fa4': FlashAttention-4, 'te': "
                        "Transformer Engine's DotProductAttention)")
    p.add_argument("--lm-args", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override LM flavor fields, e.g. mamba_chunk_size=128 (a what-if: FLOPs are "
                        "counted for the overridden shape)")
    p.add_argument("--vision-args", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override ViT flavor fields, e.g. use_cls_token=false")
    p.add_argument("--sync-debug", action="store_true",
                   help="after timing, run one step with CUDA sync debug mode on and list where "
                        "the host waited for the device")
    p.add_argument("--init", choices=["device", "cpu"], default="device",
                   help="where initial weights are drawn, as training.init_device ('cpu': minutes "
                        "for billions of parameters)")
    p.add_argument("--no-bare", action="store_true", help="skip the bare PyTorch loop")
    p.add_argument("--profile", action="store_true", help="print top kernels of the titan_mimo run")
    p.add_argument("--profile-top", type=int, default=15, metavar="N",
                   help="with --profile: how many kernels (by device time) to list")
    p.add_argument("--profile-kernels-only", action="store_true",
                   help="with --profile: record the device's kernels only, no host ops, so the "
                        "profiled steps run at unprofiled speed and the device-busy share is "
                        "that of a normal step")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="append results as one JSON line to this file")
    args = p.parse_args(argv)
    if args.memory_budget is not None and not (args.compile and 0 < args.memory_budget <= 1
                                               and args.module != "vision" and args.ac == "none"):
        p.error(f"--memory-budget {args.memory_budget} needs --compile, --ac none, a value in (0, 1] "
                "and the LM")
    if args.vision_memory_budget is not None and not (
            args.compile and not args.vision_eager and 0 < args.vision_memory_budget <= 1
            and args.module != "language" and args.vision_ac == "none"):
        p.error(f"--vision-memory-budget {args.vision_memory_budget} needs --compile (not --vision-eager), "
                "--vision-ac none, a value in (0, 1] and the ViT")
    if args.coordinate_descent_tuning and not args.compile:
        p.error("--coordinate-descent-tuning tunes compiled kernels: add --compile")
    if args.profile_kernels_only and not args.profile:
        p.error("--profile-kernels-only chooses what --profile records: add --profile")
    if args.batch < 1 or args.steps < 1 or args.warmup < 0:
        p.error(f"--batch {args.batch} and --steps {args.steps} must be >= 1, --warmup {args.warmup} >= 0")
    return args


if __name__ == "__main__":
    run(sys.argv[1:])
