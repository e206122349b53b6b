"""`python -m titan_mimo.train` whose rank 1 dies (os._exit, like a SIGKILL) while writing its
files of checkpoint step-<argv[1]>: the other ranks have written theirs, nobody the marker."""

from __future__ import annotations

import os
import sys

import torch.distributed as dist
from torch.distributed.checkpoint.filesystem import FileSystemWriter

from titan_mimo.train import main

CRASH_STEP = sys.argv.pop(1)
_write_data = FileSystemWriter.write_data


def write_data(self, plan, planner):
    if dist.get_rank() == 1 and str(self.path).endswith(f"step-{CRASH_STEP}"):
        os._exit(9)
    return _write_data(self, plan, planner)


FileSystemWriter.write_data = write_data

if __name__ == "__main__":
    main()
