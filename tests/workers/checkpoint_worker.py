"""Runs several trainer invocations in one torchrun launch (one process group, ~5 s of imports
paid once), each exactly as `python -m titan_mimo.train <argv>` would after process-group
start-up: prepare() -> build_trainer() -> train().

argv[1]: JSON list of cases, run in order, each {"argv": [...], "copy": [src, dst] | null,
"export": [checkpoint, out] | null}. `copy` copies a checkpoint directory (a run that stopped
there) and `export` exports one, both on rank 0 before the case starts.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch.distributed as dist

from titan_mimo.distributed import init_distributed, pick_device
from titan_mimo.export import export_checkpoint
from titan_mimo.train import prepare, train
from titan_mimo.trainer import build_trainer


def main() -> None:
    cases = json.loads(open(sys.argv[1]).read())
    device = pick_device()
    host_group = init_distributed(device, 120)
    for case in cases:
        if dist.get_rank() == 0:
            if case.get("copy"):
                shutil.copytree(*case["copy"])
            if case.get("export"):
                export_checkpoint(*map(Path, case["export"]))
        dist.barrier()
        setup = prepare(case["argv"])
        trainer = build_trainer(setup.cfg, setup.args, setup.placements, setup.dataset, device, host_group)
        train(trainer, setup.resume, setup.initial)
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
