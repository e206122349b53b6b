"""The bench twice in one process: as given, then with the Mamba2 scan's launch cache installed
(`ssd_mamba_ssm.enable_launch_cache`, what `ssd_launch_cache = true` does), so both runs share a
machine start and the second reuses the first's compiled graphs.

    python3 benchmarks/launch_cache_ab.py <titan_mimo.bench arguments>
"""

import sys

from titan_mimo import bench
from titan_mimo.models.language import ssd_mamba_ssm


def main() -> None:
    plain = bench.run(sys.argv[1:])["titan_mimo"]
    launches = ssd_mamba_ssm.enable_launch_cache()
    cached = bench.run(sys.argv[1:])["titan_mimo"]
    hits = sum(launch.stats["hits"] for launch in launches.values())
    print(f"launch cache A/B: {plain.step_s * 1e3:.1f} ms without, {cached.step_s * 1e3:.1f} ms with "
          f"({hits} replayed launches)", flush=True)


if __name__ == "__main__":
    main()
