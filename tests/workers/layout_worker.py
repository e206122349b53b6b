"""Runs a list of training cases in one torchrun launch and saves what the layout tests compare:
per-step losses and gradient norms (rank 0), full step-0 gradients and full final parameters (one
writer rank per module stage), each rank's timeline spans of the last step, the last step's
metrics record and, when `validation.enable`, the validation loss evaluated after the first step
(between training steps, as `train()` does, so the steps after it also show that evaluation
leaves training untouched).

Usage: torchrun --nproc-per-node N tests/workers/layout_worker.py CASES.json OUT_DIR
CASES.json: [{"name": str, "config": path, "overrides": {"a.b": value}, "steps": int}, ...]
"""

import json
import sys
from pathlib import Path

import tomli_w
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from titan_mimo.build import module_args
from titan_mimo.config_loader import load_config
from titan_mimo.distributed import env_world_size, init_distributed, pick_device
from titan_mimo.data.build import build_dataset
from titan_mimo.metrics import StepClock
from titan_mimo.topology import resolve_placements
from titan_mimo.trainer import build_trainer


def toml_value(v) -> str:
    return tomli_w.dumps({"v": v}).split("=", 1)[1].strip()


def full(t):
    return t.full_tensor() if isinstance(t, DTensor) else t


def snapshot(trainer, what: str) -> dict[str, torch.Tensor]:
    """Full tensors of this rank's modules; kept only on each stage's (dp 0, tp 0) rank."""
    out = {}
    for name, m in trainer.modules.items():
        c = trainer.topo.coords(name)
        writer = trainer.topo.dp_rank(name) == 0 and c["tp"] == 0
        for part in m.parts:
            for fqn, p in part.named_parameters():
                t = p.grad if what == "grad" else p
                if t is None:
                    continue
                t = full(t).detach().float().cpu()
                if writer:
                    out[f"{name}.{fqn}"] = t.clone()
    return out


def probe_reshard_after_forward(trainer) -> dict[str, bool]:
    """What FSDP does with each module's first block's gathered parameters: "<module>" ->
    whether they were sharded again (DTensors) right after the block's first forward (a forward
    hook registered after FSDP's own runs after FSDP's post-forward reshard); "<module>:second"
    -> whether they were still gathered when the block's second forward began (a pre-hook put
    in front of FSDP's), i.e. whether they outlived the first micro-batch's backward."""
    seen: dict[str, bool] = {}
    for name, m in trainer.modules.items():
        part = m.parts[0]
        blocks = part.encoder.layers if m.is_encoder else part.layers
        first = next(iter(blocks.values()))
        calls = [0]

        def hook(module, args, output, name=name):
            seen.setdefault(name, isinstance(next(module.parameters()), DTensor))

        def pre_hook(module, args, name=name, calls=calls):
            calls[0] += 1
            if calls[0] == 2:
                seen[f"{name}:second"] = not isinstance(next(module.parameters()), DTensor)

        first.register_forward_hook(hook)
        first.register_forward_pre_hook(pre_hook, prepend=True)
    return seen


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    out_root = Path(sys.argv[2])
    device = pick_device()
    host_group = init_distributed(device, timeout_seconds=120)
    rank = dist.get_rank()
    for case in cases:
        argv = ["--config", case["config"], f"--training.steps={case['steps']}"]
        argv += [f"--{k}={toml_value(v)}" for k, v in case.get("overrides", {}).items()]
        cfg = load_config(argv)
        args = module_args(cfg)
        placements = resolve_placements(cfg, env_world_size(), {n: a.tp_divisors() for n, a in args.items()})
        trainer = build_trainer(cfg, args, placements, build_dataset(cfg, args), device, host_group)
        resharded = probe_reshard_after_forward(trainer)
        init = snapshot(trainer, "param")
        losses, grad_norms, grads, val_loss = [], [], {}, None
        for step in range(case["steps"]):
            clock = StepClock(device, step)  # the record's step time is the last step's
            is_last = step == case["steps"] - 1
            if is_last:
                trainer.timeline.begin()
            result = trainer.forward_backward(step)
            if step == 0:
                grads = snapshot(trainer, "grad")
            trainer.optimizer_step(step, result)
            if is_last:
                trainer.timeline.end()
            result.end = clock.mark()
            trainer.read_step(step, result)
            losses.append(result.loss)
            grad_norms.append(result.grad_norm)
            if step == 0 and cfg.validation.enable:
                val_loss = trainer.evaluate(step)
        # Host issue time is not what these cases compare: 0.
        record = trainer.step_metrics(case["steps"] - 1, result, clock.mean_step_s(case["steps"], result.end), 0.0)
        params = snapshot(trainer, "param")
        case_dir = out_root / case["name"]
        case_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"init": init, "grads": grads, "params": params}, case_dir / f"rank{rank}.pt")
        (case_dir / f"spans{rank}.json").write_text(json.dumps(trainer.timeline.take()["spans"]))
        (case_dir / f"resharded{rank}.json").write_text(json.dumps(resharded))
        if rank == 0:
            (case_dir / "losses.json").write_text(json.dumps(losses))
            (case_dir / "grad_norms.json").write_text(json.dumps(grad_norms))
            (case_dir / "metrics.json").write_text(json.dumps({**record, "val_loss": val_loss}))
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
