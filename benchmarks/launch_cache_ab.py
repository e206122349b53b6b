"""The bench several times in one process, alternating without and with the Mamba2 scan's launch
cache (`ssd_mamba_ssm.enable_launch_cache`, what `ssd_launch_cache = true` does), so all runs share
a machine start and later runs reuse the first one's compiled graphs. Each run's line is printed
as soon as it ends (a timeout keeps what finished).

    python3 benchmarks/launch_cache_ab.py [--rounds N] <titan_mimo.bench arguments>
"""

import argparse
import gc
import sys

import torch

from titan_mimo import bench
from titan_mimo.models.language import ssd_mamba_ssm


def main() -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--rounds", type=int, default=2)
    ours, bench_args = parser.parse_known_args()
    times: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(ours.rounds):
        for cached in (False, True):
            launches = ssd_mamba_ssm.enable_launch_cache() if cached else {}
            result = bench.run(bench_args)["titan_mimo"]
            times[cached].append(result.step_s * 1e3)
            stats = {k: sum(launch.stats[k] for launch in launches.values())
                     for k in ("hits", "misses", "slow")}
            refusals = {n: launch.refusal for n, launch in launches.items() if launch.refusal}
            print(f"launch cache A/B round {round_}: {'with' if cached else 'without'} "
                  f"{result.step_s * 1e3:.1f} ms; "
                  f"launches {stats}; refusals {refusals}", flush=True)
            if cached:
                ssd_mamba_ssm.disable_launch_cache()
            gc.collect()  # the run's model and optimizer, before the next one builds its own
            torch.cuda.empty_cache()
    print("launch cache A/B: without", [f"{t:.1f}" for t in times[False]], "with",
          [f"{t:.1f}" for t in times[True]], "ms", flush=True)


if __name__ == "__main__":
    sys.exit(main())
