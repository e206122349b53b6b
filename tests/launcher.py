"""One helper every multi-process test uses: launch a worker script under torchrun (gloo, CPU,
one thread per process) and fail with the workers' output if it does not exit cleanly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(nproc: int, target: list[str]) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *target]
    return cmd, env


def start(nproc: int, *target: str) -> subprocess.Popen:
    """torchrun in the background (`target`: a script and its args, or `-m module ...`), stdout
    and stderr merged, for tests that watch or signal a run."""
    cmd, env = _command(nproc, list(target))
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def torchrun(nproc: int, script: Path | str, *args: str, timeout: int = 300,
             check: bool = True) -> subprocess.CompletedProcess:
    cmd, env = _command(nproc, [str(script), *args])
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}"
                             f"\n--- stderr ---\n{proc.stderr[-12000:]}")
    return proc
