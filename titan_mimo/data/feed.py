"""What one rank loads each step, and what it tells about it: the rank's data roles (from its
topology), the training steps' loading (worker processes for local data, a background thread
for mock data), the loader state that checkpoints hold, and the data metrics of a step.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch.distributed as dist

from titan_mimo.config import JobConfig
from titan_mimo.data.batch import StepData
from titan_mimo.data.dataset import ImageTextDataset
from titan_mimo.data.loader import Roles, StepLoader, load_roles
from titan_mimo.data.mock import MockImageCaption
from titan_mimo.data.plan import SamplePlan
from titan_mimo.distributed import world_max, world_sum
from titan_mimo.topology import Topology


def is_loss_rank(topo: Topology, language: str) -> bool:
    """The ranks that count the loss once: tp rank 0 of each replica of the last language stage."""
    return (language in topo.my_modules and topo.is_last_stage(language)
            and topo.coords(language)["tp"] == 0)


def data_roles(cfg: JobConfig, topo: Topology) -> Roles:
    """What this rank loads: text on first/last language stages (middle stages take hidden
    states from their neighbours: no data), images on encoder ranks."""
    lm = cfg.language_name
    text = None
    if lm in topo.my_modules and (topo.is_first_stage(lm) or topo.is_last_stage(lm)):
        text = (topo.placements[lm].dp, topo.dp_rank(lm))
    mine = [n for n in cfg.encoders if n in topo.my_modules]
    balance = 0
    if cfg.data.balance_patches and cfg.encoders:
        # Colocated, each rank encodes the images of its language dp slots.
        balance = topo.placements[lm if topo.colocated else next(iter(cfg.encoders))].dp
    return Roles(text=text, text_with_images=topo.colocated,
                 images={} if topo.colocated else {n: (topo.placements[n].dp, topo.dp_rank(n)) for n in mine},
                 colocated_encoders=tuple(mine) if topo.colocated else (), balance_dp=balance)


class DataFeed:
    """This rank's data, step by step (`load`), with its checkpoint state and metrics."""

    def __init__(self, *, cfg: JobConfig, topo: Topology, dataset: MockImageCaption | ImageTextDataset,
                 plan: SamplePlan, patch_sizes: dict[str, int], host_group: dist.ProcessGroup):
        self.cfg, self.topo, self.dataset, self.plan = cfg, topo, dataset, plan
        self.patch_sizes = patch_sizes
        """Encoder name -> its patch size (image pixels per patch side), for the patch metrics."""
        self.host_group = host_group
        self.roles = data_roles(cfg, topo)
        self.is_loss_rank = is_loss_rank(topo, cfg.language_name)
        self.counts = {"skipped": 0, "blank": 0}
        """Records skipped and images blanked in this process's training steps (for metrics)."""
        self._loader: StepLoader | None = None
        """Local data: the worker-process loader of training steps (built on first use)."""
        self._mock_ahead: tuple[int, Future] | None = None
        """Mock data: the next training step's (step, pending load_roles) from a background thread."""
        self._mock_pool: ThreadPoolExecutor | None = None

    def _step_loader(self) -> StepLoader | None:
        """Worker-process loader of training steps (local data only; mock data is generated in
        the training process)."""
        if self.cfg.data.dataset == "mock":
            return None
        if self._loader is None:
            # The loss ranks together see every sample once: they report bad records.
            self.dataset.verbose = self.is_loss_rank
            workers = self.cfg.data.num_workers if self.roles.text or self.roles.images else 0
            self._loader = StepLoader(self.dataset, self.plan, self.roles, self.cfg.training.steps, workers,
                                      self.cfg.data.prefetch_steps)
        return self._loader

    def load(self, step: int, split: str) -> StepData:
        """Only what this rank's roles need: text on language ranks, images on encoder ranks."""
        loader = self._step_loader() if split == "train" else None
        if loader is not None:
            text, images = loader.get(step)
        elif split == "train":
            text, images = self._mock_train_step(step)
        else:
            text, images = load_roles(self.dataset, self.plan, self.roles, step, split)
        if split == "train":  # each sample counted once: on the loss rank / encoder tp 0 ranks
            if self.is_loss_rank:
                self.counts["skipped"] += sum(b.skipped for b in text)
            for name, batches in images.items():
                if name in self.topo.my_modules and self.topo.coords(name)["tp"] == 0:
                    self.counts["blank"] += sum(b.blank_images for b in batches)
        return StepData(text=text, images=images)

    def _mock_train_step(self, step: int):
        """Mock training data, generated one step ahead in a background thread: the images'
        noise (tens of ms per 1024^2 image on the CPU) is then drawn while the device runs the
        previous step instead of in front of it. Every sample comes from its own seeded
        generator, so a thread changes no value."""
        def load(s: int):
            return load_roles(self.dataset, self.plan, self.roles, s, "train")
        ahead, self._mock_ahead = self._mock_ahead, None
        text, images = ahead[1].result() if ahead is not None and ahead[0] == step else load(step)
        if step + 1 < self.cfg.training.steps:
            if self._mock_pool is None:
                self._mock_pool = ThreadPoolExecutor(1, thread_name_prefix="titan_mimo-mock-data")
            self._mock_ahead = (step + 1, self._mock_pool.submit(load, step + 1))
        return text, images

    def state_dict(self) -> dict:
        """This rank's data-loader state for checkpoints, plain Python objects: the loader's
        position and the skip counters (mock data is indexed by step: none)."""
        loader = self._step_loader()
        return {} if loader is None else {"loader": loader.state_dict(), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        loader = self._step_loader()
        if loader is None:
            if state:
                raise ValueError(f"mock data has no loader state, but the checkpoint holds {sorted(state)}")
            return
        if state:
            loader.load_state_dict(state["loader"])
            self.counts.update(state["counts"])

    def metrics(self, data: StepData, counts: dict) -> dict:
        """Every rank calls this (two world reductions): records skipped as bad or too long and
        images blanked since this process started (training split, `counts`: `self.counts` as
        they were after the step's data was loaded), and per encoder the patch
        imbalance of this step over the encoder's dp ranks: the mean over micro-batches of
        max / mean patches per rank (1.0 = balanced)."""
        encoders, patches, counted = list(self.cfg.encoders), [], []
        for name in encoders:
            holds = name in self.topo.my_modules and self.topo.coords(name)["tp"] == 0 and name in data.images
            patch = self.patch_sizes[name]
            per_mb = [0.0] * self.plan.n_microbatches
            if holds:
                for mb, batch in enumerate(data.images[name]):
                    per_mb[mb] = sum(im.shape[-2] * im.shape[-1] / patch**2 for im in batch.images[name])
            patches += per_mb
            counted.append(float(holds))
        sums = world_sum([counts["skipped"], counts["blank"]] + patches + counted, self.host_group)
        maxes = world_max(patches, self.host_group)
        n_mb = self.plan.n_microbatches
        out = {"skipped_samples": int(sums[0]), "blank_images": int(sums[1])}
        for e, name in enumerate(encoders):
            ranks = sums[2 + len(patches) + e]
            ratios = [maxes[e * n_mb + mb] / (sums[2 + e * n_mb + mb] / ranks)
                      for mb in range(n_mb) if sums[2 + e * n_mb + mb] > 0]
            out[f"patch_imbalance/{name}"] = sum(ratios) / len(ratios) if ratios else 1.0
        return out
