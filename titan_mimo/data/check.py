"""Check every record of a run's local data ahead of training, pixels included:

    python -m titan_mimo.data.check --config train_configs/debug_real_cpu.toml [--section.key=value ...]

Prints each record training would skip (and why), each image whose header reads but whose pixels
do not decode (training would feed a blank image there), and per source the counts of records,
image tokens and text tokens. Exit code 1 if any record is bad, 0 otherwise.
"""

from __future__ import annotations

import sys
from collections import Counter

from PIL import Image, UnidentifiedImageError

from titan_mimo.build import module_args
from titan_mimo.config_loader import load_config
from titan_mimo.data.build import build_local_dataset
from titan_mimo.data.records import RecordError


def check(dataset, out=sys.stdout, limit: int = 50) -> int:
    """Problems found over every record of every split; prints up to `limit` of them."""
    problems = 0
    for split, sources in dataset.sources.items():
        for spec, source in zip(dataset.specs[split], sources):
            stats = Counter()
            for i in range(len(source)):
                where = f"{spec} record {i}"
                try:
                    raw = source.record(i)
                    where = raw.where
                    lay = dataset.layout_record(raw)
                    for ref, size in lay.images:
                        dataset.policy.load(ref, dataset._handles, size)
                except RecordError as e:
                    message = str(e)
                except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
                        Image.DecompressionBombError) as e:
                    message = f"{where}: pixels do not decode ({e}); training uses a blank image"
                else:
                    stats["good"] += 1
                    stats["image tokens"] += lay.n_image_tokens
                    stats["text tokens"] += len(lay.tokens) - lay.n_image_tokens
                    continue
                problems += 1
                stats["bad"] += 1
                if problems <= limit:
                    print(f"bad: {message}", file=out)
            print(f"{split} {spec}: {len(source)} records, {stats['good']} good, {stats['bad']} bad, "
                  f"{stats['image tokens']} image tokens, {stats['text tokens']} text tokens", file=out)
    if problems > limit:
        print(f"... {problems - limit} more bad records not listed", file=out)
    return problems


def main(argv: list[str] | None = None) -> None:
    try:
        cfg = load_config(sys.argv[1:] if argv is None else argv)
        if cfg.data.dataset != "local":
            raise ValueError('data.dataset is not "local": nothing to check')
        dataset = build_local_dataset(cfg, module_args(cfg))
    except ValueError as e:
        print(f"titan_mimo: configuration error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(1 if check(dataset) else 0)


if __name__ == "__main__":
    main()
