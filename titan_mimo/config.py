"""Typed job configuration: one dataclass per TOML section (`titan_mimo.config_loader` reads a
TOML file and `--section.key=value` overrides into them).

Every field has a docstring under it; cross-field checks that need only the config live in
`__post_init__` (one section) or `JobConfig.validate` (several sections). Checks that need the
world size or model shapes live in `titan_mimo.topology`.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal


PIPELINE_SCHEDULES = ("GPipe", "1F1B", "Interleaved1F1B")


@dataclass(kw_only=True)
class Job:
    dump_folder: str = "outputs/run"
    """Folder for metrics.jsonl, tb/, checkpoint/ and the resolved config.toml."""
    description: str = ""
    """Free text, shown in the first log line."""


AC_LAYER_KINDS = {"M": "Mamba2", "*": "attention", "-": "MLP", "E": "MoE"}
"""Block kinds of the language model's layer pattern that `ac_layers` may name."""


@dataclass(kw_only=True)
class Module:
    model: str
    """Model and flavor from `titan_mimo.models`, e.g. "vit/debug" or "hybrid_lm/debug", or
    "hf:PATH", a Hugging Face folder (nemotron_h, radio, nemotron_h_omni) whose config.json gives
    the shape and whose weights a fresh run starts from (see titan_mimo/hf)."""
    ranks: int = 1
    """Number of ranks this module occupies (ignored when colocated: every module uses all)."""
    dp_replicate: int = 1
    """Replicated data-parallel degree (HSDP outer axis)."""
    dp_shard: int = -1
    """Sharded data-parallel degree (FSDP2); -1 means the module's remaining ranks."""
    tp: int = 1
    """Tensor-parallel degree (with sequence parallelism on the language model)."""
    pp: int = 1
    """Pipeline-parallel degree (language module only for now)."""
    ep: int = 1
    """Expert-parallel degree (language module with MoE blocks): routed experts are split over
    `ep` ranks borrowed from dp_shard x tp (tp first), which exchange tokens by all-to-all; the
    experts are FSDP-sharded over the stage's remaining ranks. Must divide the model's
    n_routed_experts and dp_shard * tp."""
    feeds: str = ""
    """Name of the module this one sends its embeddings to; empty for the language module."""
    placeholder_id: int = -1
    """Token id that marks this encoder's embeddings in the text; required for encoders (an
    encoder from a nemotron_h_omni folder defaults to its image_token_id)."""
    frozen: bool = False
    """Train no parameters of this module (no optimizer, no grad sync, no bridge gradient)."""
    lr_scale: float = 1.0
    """Multiplier on optimizer.lr for this module's parameters."""
    activation_checkpoint: Literal["none", "full", "selective", "memory_budget"] = "none"
    """Activation checkpointing per block: every block ("full"), or the blocks `ac_layers` and
    `ac_every` pick ("selective"), to trade recompute for memory only where it is cheap; or no
    block checkpointing but torch.compile's activation memory budget ("memory_budget", needs
    `compile`): each compiled block keeps less for its backward and recomputes the cheapest of
    the rest (elementwise work, not matmuls, at budgets down to ~0.5)."""
    memory_budget: float = 0.5
    """"memory_budget": the share, in (0, 1], of the activation memory the runtime-optimal
    partition would keep that compiled blocks may keep (torchtitan's `memory_budget`); ignored by
    the other modes, so a command-line switch of the mode needs no second override."""
    ac_layers: str = ""
    """"selective": the language model's block kinds to checkpoint, as layer-pattern characters
    (M Mamba2, * attention, - MLP, E MoE), e.g. "-" for the MLP blocks; empty: every kind."""
    ac_every: int = 1
    """"selective": checkpoint every ac_every-th block of those kinds, counted over the whole
    model from its first such block (2 = half of them), so the choice is the same in any layout."""
    compile: bool = False
    """torch.compile each block."""
    cuda_graphs: bool = False
    """Language module: capture its blocks as CUDA graphs (torch's make_graphed_callables), one
    for the forward through all of them and one for their backward, on the first training
    micro-batch; a step then queues two graph launches instead of thousands of kernels, for a
    host-bound model (hybrid_2b on an H200: the same speed, 9.6 GiB less memory;
    docs/benchmarks.md). Needs a CUDA device and the module on one rank without
    FSDP (tp = pp = ep = 1, parallelism.fsdp_one_rank = false), no block checkpointing
    ("none" or "memory_budget"), no MoE blocks (not verified yet: the build refuses them). A
    forward without gradients (evaluation) or of another shape runs uncaptured."""
    float8: Literal["none", "rowwise", "tensorwise"] = "none"
    """FP8 training of the module's large block linears (torchao's Float8Linear, torchtitan's
    recipes): "rowwise" (e4m3, a scale per row) or "tensorwise" (a scale per tensor, e5m2
    gradients); "none" keeps bf16. Needs training.mixed_precision = "bf16" and tp = 1; meant with
    compile = true (eager float8 is slower than bf16). Embeddings, the LM head, the patch
    embedding, the projector, the MoE router and experts and Mamba2's dt projection stay bf16
    (docs/design.md); float8_filter picks among the rest. Weights keep their precision, so
    checkpoints load across float8 settings."""
    float8_filter: Literal["auto", "all"] = "auto"
    """float8: which of the block linears whose dims divide by 16 convert: "auto" only those
    torchao's size thresholds for the recipe expect to pay (torchtitan's auto_filter_small_kn),
    "all" every one."""
    reshard_after_forward: Literal["default", "always", "never"] = "default"
    """FSDP: free each block's gathered parameters after its forward ("always"), or keep them
    through the step's micro-batches until its last backward ("never": one all-gather per block
    and step instead of two per micro-batch, for the memory of the gathered parameters);
    "default": "always", except on pipelined language stages, whose in-flight micro-batches
    would re-gather them for every backward. A frozen encoder (no backward) always reshards."""
    model_args: dict[str, Any] = field(default_factory=dict)
    """Overrides of the model flavor's args, e.g. `{ssd_backend = "mamba_ssm"}` or
    `--modules.language.model_args.n_layers=4`; unknown names list the valid ones."""

    def __post_init__(self) -> None:
        for name in ("ranks", "dp_replicate", "tp", "pp", "ep"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)} must be >= 1")
        if self.feeds and self.ep > 1:
            raise ValueError(f"ep = {self.ep}: expert parallelism applies to the language module's MoE "
                             "blocks, not to an encoder; remove ep here")
        if self.dp_shard == 0 or self.dp_shard < -1:
            raise ValueError(f"dp_shard = {self.dp_shard} must be >= 1, or -1 for 'the rest'")
        if self.ac_every < 1:
            raise ValueError(f"ac_every = {self.ac_every} must be >= 1")
        bad = sorted(set(self.ac_layers) - set(AC_LAYER_KINDS))
        if bad:
            raise ValueError(f"ac_layers = {self.ac_layers!r}: {bad} are not block kinds; use "
                             f"{', '.join(f'{k!r} ({v})' for k, v in AC_LAYER_KINDS.items())}")
        if self.feeds and self.ac_layers:
            raise ValueError(f"ac_layers = {self.ac_layers!r}: an encoder's blocks are all of one "
                             "kind; use ac_every alone")
        if self.activation_checkpoint != "selective" and (self.ac_layers or self.ac_every != 1):
            raise ValueError(f"ac_layers / ac_every only apply to activation_checkpoint = "
                             f"'selective', not {self.activation_checkpoint!r}")
        if not 0 < self.memory_budget <= 1:
            raise ValueError(f"memory_budget = {self.memory_budget} must be in (0, 1]")
        if self.activation_checkpoint == "memory_budget" and not self.compile:
            raise ValueError("activation_checkpoint = 'memory_budget' needs compile = true: the budget "
                             "is how torch.compile splits each block into forward and backward")
        if self.float8 != "none":
            self._check_float8()
        if self.cuda_graphs:
            self._check_cuda_graphs()
        if self.lr_scale < 0:
            raise ValueError(f"lr_scale = {self.lr_scale} must be >= 0")
        if self.pp > 1 and self.feeds:
            raise ValueError(
                f"pp = {self.pp}: pipeline parallelism is only supported on the language module "
                "(the module without `feeds`); set pp = 1"
            )
        if self.feeds and self.model.startswith("hf:"):
            self._take_hf_placeholder()

    def _check_float8(self) -> None:
        if self.tp > 1:
            raise ValueError(f"float8 = {self.float8!r} with tp = {self.tp}: float8 linears under tensor "
                             "parallelism are not wired (torchtitan's Float8ColwiseParallel plans); "
                             "set tp = 1 or float8 = 'none'")
        if importlib.util.find_spec("torchao") is None:
            raise ValueError(f"float8 = {self.float8!r} needs torchao (its Float8Linear): pip install "
                             "torchao (or the 'titan_mimo[float8]' or '[gpu]' extra)")
        if not self.compile:
            warnings.warn(f"float8 = {self.float8!r} without compile = true: eager float8 linears run "
                          "their scaling and casts as separate kernels and are slower than bf16 on GPUs "
                          "(fine for CPU tests, where they are emulated)", stacklevel=2)

    def _check_cuda_graphs(self) -> None:
        if self.feeds:
            raise ValueError("cuda_graphs captures the language module's blocks; an encoder's are not "
                             "captured (set it on the language module)")
        if self.activation_checkpoint in ("full", "selective"):
            raise ValueError(f"cuda_graphs with activation_checkpoint = {self.activation_checkpoint!r}: a "
                             "checkpointed block saves and restores the RNG state on the host, which a "
                             "CUDA graph cannot capture; use 'memory_budget' (with compile) or 'none'")
        parallel = {k: getattr(self, k) for k in ("tp", "pp", "ep") if getattr(self, k) > 1}
        if parallel:
            raise ValueError(f"cuda_graphs with {', '.join(f'{k} = {v}' for k, v in parallel.items())}: "
                             "captured blocks run on one rank without parallelism; set them to 1 or "
                             "cuda_graphs = false")

    def _take_hf_placeholder(self) -> None:
        """An encoder from a nemotron_h_omni folder: placeholder_id is the folder's image_token_id."""
        # Imported here: titan_mimo.hf needs torch, which only hf: models make config parsing need.
        from titan_mimo.hf.training import folder_of, placeholder_id
        folder = folder_of(self.model)
        image_token_id = placeholder_id(folder)
        if image_token_id is None:
            return
        if self.placeholder_id < 0:
            self.placeholder_id = image_token_id
        elif self.placeholder_id != image_token_id:
            raise ValueError(f"placeholder_id = {self.placeholder_id}, but {folder / 'config.json'} has "
                             f"image_token_id = {image_token_id}; leave placeholder_id unset")

    @property
    def is_encoder(self) -> bool:
        return bool(self.feeds)


@dataclass(kw_only=True)
class Training:
    steps: int = 10
    """Number of optimizer steps to run."""
    global_batch_size: int = 8
    """Samples per optimizer step, over all data-parallel replicas."""
    micro_batch_size: int = 2
    """Samples per language-model micro-batch per language DP replica."""
    seq_len: int = 64
    """Text sequence length (image placeholders included)."""
    seed: int = 0
    """Seed of initialisation, data and dropout; layouts with the same seed train identically."""
    init_device: Literal["device", "cpu"] = "device"
    """Where each parameter's full initial value is drawn (from its (seed, name) generator):
    "device" on the training device (seconds for billions of parameters; a GPU run and a CPU
    run then start from different values, every layout on the same kind of device from the
    same ones), "cpu" on the host (the same values everywhere; minutes for a 2B model)."""
    mixed_precision: Literal["fp32", "bf16"] = "fp32"
    """Compute dtype; master weights, gradient reduction and optimizer state stay fp32."""
    loss: Literal["auto", "fused", "logits"] = "auto"
    """Language-model loss: "fused" = output head + cross-entropy over sequence chunks, so the
    [tokens, vocab] logits never exist whole (needs language tp = 1); "logits" =
    cross-entropy of the full logits; "auto" = fused where it applies, logits elsewhere."""
    max_norm: float = 1.0
    """Global gradient-norm clipping threshold over all modules; <= 0 disables clipping."""
    skip_nonfinite_steps: bool = False
    """Skip (instead of stopping on) a step whose loss or grad norm is not finite. The host must
    read each step's loss and norm before its optimizer step, so this mode waits for the device
    once per step (otherwise the loop reads a step's results after queuing the next)."""
    gc_freq: int = 50
    """Python garbage collection during training (torchtitan's GarbageCollection): automatic
    collection off, a generation-1 collection every gc_freq steps, so no collection lands in the
    middle of a step and stalls the host; 0 leaves Python's automatic collection on."""
    coordinate_descent_tuning: bool = False
    """Inductor's coordinate-descent tuning for the compiled blocks of every module on the rank
    (`torch._inductor.config.coordinate_descent_tuning`, a process-wide setting): each kernel
    Inductor generates (layer norms, GELU, residual adds) has its launch parameters tuned on
    its first run, so the first step takes longer (the results are cached with Inductor's).
    Needs a module with `compile`. ViT-H at batch 12 on an H100: -1.2% step time."""
    zero_encoder_embeddings: bool = False
    """Ablation: the language model receives zeros instead of the encoders' embeddings, which
    shows how far the loss falls on text alone (the mock task needs the images)."""

    def __post_init__(self) -> None:
        for name in ("steps", "global_batch_size", "micro_batch_size", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)} must be >= 1")
        if self.gc_freq < 0:
            raise ValueError(f"gc_freq = {self.gc_freq} must be >= 0 (0: Python's automatic collection)")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"global_batch_size = {self.global_batch_size} is not a multiple of "
                f"micro_batch_size = {self.micro_batch_size}"
            )


@dataclass(kw_only=True)
class Optimizer:
    name: Literal["AdamW"] = "AdamW"
    """Optimizer class (torch.optim)."""
    lr: float = 1e-3
    """Peak learning rate (times each module's lr_scale)."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    implementation: Literal["auto", "for-loop", "foreach", "fused"] = "auto"
    """AdamW kernel: auto picks fused on GPU and foreach on CPU."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr = {self.lr} must be > 0")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} = {getattr(self, name)} must be in [0, 1)")


@dataclass(kw_only=True)
class LRScheduler:
    warmup_steps: int = 2
    """Linear warmup steps."""
    decay_type: Literal["linear", "sqrt", "cosine"] = "cosine"
    """Decay after warmup."""
    min_lr_factor: float = 0.1
    """Lowest LR as a fraction of the peak."""

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps = {self.warmup_steps} must be >= 0")
        if not 0.0 <= self.min_lr_factor <= 1.0:
            raise ValueError(f"min_lr_factor = {self.min_lr_factor} must be in [0, 1]")


@dataclass(kw_only=True)
class Parallelism:
    colocated: bool = False
    """Place every module on every rank (the reference layout); forced on with one rank."""
    pipeline_schedule: str = "1F1B"
    """Language-model pipeline schedule: GPipe, 1F1B or Interleaved1F1B."""
    stages_per_rank: int = 1
    """Language pipeline stages per pp rank (> 1 only with Interleaved1F1B)."""
    fsdp_one_rank: bool = False
    """Wrap a module in FSDP2 even where it runs on a single rank (dp 1, tp 1, not pipelined).
    Off, such a module is not wrapped: fp32 parameters and gradients, its forward under
    autocast to `training.mixed_precision`, as torchtitan trains on one GPU; that spares FSDP's
    per-step copies and hooks (7% of the colocated one-GPU H100 step, docs/benchmarks.md). On,
    it computes with bf16 parameters as FSDP does on several ranks, so a bf16 run on one rank
    has the numerics of the multi-rank layouts. Same numbers either way in fp32."""

    def __post_init__(self) -> None:
        if self.pipeline_schedule not in PIPELINE_SCHEDULES:
            raise ValueError(
                f"pipeline_schedule = {self.pipeline_schedule!r} is unknown; "
                f"choose one of {', '.join(PIPELINE_SCHEDULES)}"
            )
        if self.stages_per_rank < 1:
            raise ValueError(f"stages_per_rank = {self.stages_per_rank} must be >= 1")


@dataclass(kw_only=True)
class Data:
    dataset: Literal["mock", "local"] = "mock"
    """Data source: "mock" (the seeded synthetic image-caption task) or "local" (image-text
    records from local files: `sources`, `tokenizer`; see docs/data.md)."""
    image_sizes: list[list[int]] = field(default_factory=lambda: [[16, 16]])
    """Image sizes [height, width] the mock data draws from, per sample."""
    num_values: int = 16
    """Mock task: number of distinct image cell values (caption tokens) to recognise."""
    text_only_fraction: float = 0.0
    """Mock task: fraction of samples that carry no image."""
    pad_id: int = 0
    """Padding token id (never in the text pool; its labels are -100)."""
    sources: list[str] = field(default_factory=list)
    """Local data: training datasets, each a .jsonl file, a .parquet file (needs pyarrow) or
    .tar shards (a glob such as "data/shards/*.tar"); several are mixed by `weights`."""
    weights: list[float] = field(default_factory=list)
    """Local data: mixing weight per source (any scale); empty = proportional to record counts."""
    validation_sources: list[str] = field(default_factory=list)
    """Local data: held-out datasets for validation (read in order, not shuffled)."""
    tokenizer: str = ""
    """Local data: path of a Hugging Face tokenizer.json."""
    image_token: str = "<image>"
    """Local data: the tokenizer's image placeholder token (its id must be the encoder's
    placeholder_id) and the marker that places images in the text."""
    pad_token: str = "<pad>"
    """Local data: the tokenizer's padding token (its id must be pad_id)."""
    bos_token: str = "<s>"
    """Local data: token that starts every record; empty for none."""
    eos_token: str = "</s>"
    """Local data: token that ends captions and assistant turns (and is trained); empty for none."""
    resize: Literal["dynamic", "fixed"] = "dynamic"
    """Local data: "dynamic" keeps the aspect ratio within [min_pixels, max_pixels], sides rounded
    to multiples of patch_size * pixel_shuffle; "fixed" resizes every image to fixed_size."""
    fixed_size: list[int] = field(default_factory=lambda: [16, 16])
    """Local data, resize = "fixed": [height, width] of every image."""
    min_pixels: int = 256
    """Local data, resize = "dynamic": smallest image area after resizing."""
    max_pixels: int = 1024
    """Local data, resize = "dynamic": largest image area after resizing (bounds image tokens)."""
    max_aspect_ratio: float = 20.0
    """Local data: images more elongated than this are skipped."""
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    """Local data: per-channel mean subtracted after scaling pixels to [0, 1]."""
    image_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    """Local data: per-channel standard deviation the pixels are divided by."""
    pack: bool = False
    """Local data: pack several records per sequence (first fit of pack_max_records candidates)."""
    pack_max_records: int = 8
    """Local data, pack = true: candidate records per packed sequence."""
    balance_patches: bool = False
    """Local data: reorder samples inside each micro-batch so every encoder dp rank gets a similar
    number of image tokens (losses then match other encoder dp sizes to round-off, not bitwise)."""
    max_skips: int = 100
    """Local data: consecutive bad records tolerated for one sample before the run stops."""
    num_workers: int = 2
    """Local data: data-loader worker processes per rank (0 = load in the training process)."""
    prefetch_steps: int = 2
    """Local data: steps each worker prepares ahead."""

    def __post_init__(self) -> None:
        if not self.image_sizes or any(len(s) != 2 or min(s) < 1 for s in self.image_sizes):
            raise ValueError(f"image_sizes = {self.image_sizes} must be a list of [height, width]")
        if self.num_values < 2:
            raise ValueError(f"num_values = {self.num_values} must be >= 2")
        if not 0.0 <= self.text_only_fraction <= 1.0:
            raise ValueError(f"text_only_fraction = {self.text_only_fraction} must be in [0, 1]")
        if self.dataset == "local":
            if not self.sources:
                raise ValueError('dataset = "local" needs sources (paths of .jsonl/.parquet files or .tar shards)')
            if not self.tokenizer:
                raise ValueError('dataset = "local" needs tokenizer (path of a tokenizer.json)')
        if self.dataset == "mock" and (self.balance_patches or self.pack):
            raise ValueError('balance_patches and pack apply to dataset = "local" only')
        if self.weights and len(self.weights) != len(self.sources):
            raise ValueError(f"weights has {len(self.weights)} entries for {len(self.sources)} sources")
        if any(w < 0 for w in self.weights) or (self.weights and sum(self.weights) <= 0):
            raise ValueError(f"weights = {self.weights} must be >= 0 with a positive sum")
        if len(self.fixed_size) != 2 or min(self.fixed_size) < 1:
            raise ValueError(f"fixed_size = {self.fixed_size} must be [height, width]")
        if not 1 <= self.min_pixels <= self.max_pixels:
            raise ValueError(f"min_pixels = {self.min_pixels} and max_pixels = {self.max_pixels} "
                             "need 1 <= min_pixels <= max_pixels")
        if self.max_aspect_ratio < 1:
            raise ValueError(f"max_aspect_ratio = {self.max_aspect_ratio} must be >= 1")
        if any(s <= 0 for s in self.image_std):
            raise ValueError(f"image_std = {self.image_std} must be > 0")
        for name in ("pack_max_records", "prefetch_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)} must be >= 1")
        if self.max_skips < 0 or self.num_workers < 0:
            raise ValueError(f"max_skips = {self.max_skips} and num_workers = {self.num_workers} must be >= 0")


@dataclass(kw_only=True)
class Validation:
    enable: bool = False
    """Run forward-only evaluation on the held-out split."""
    freq: int = 5
    """Evaluate every this many steps."""
    steps: int = 2
    """Batches per evaluation."""

    def __post_init__(self) -> None:
        if self.freq < 1 or self.steps < 1:
            raise ValueError(f"freq = {self.freq} and steps = {self.steps} must be >= 1")


@dataclass(kw_only=True)
class Metrics:
    log_freq: int = 1
    """Log every this many steps."""
    enable_tensorboard: bool = True
    """Write TensorBoard events under dump_folder/tb."""
    peak_tflops: float = 0.0
    """Peak dense TFLOP/s per device for MFU; 0 = detect (GPU) or report MFU as 0 (CPU)."""
    profile_step: int = 0
    """Profile this training step (1-based; 0 = never): every rank writes a Chrome trace to
    dump_folder/profile/rank<r>_step<n>.json and prints its top kernels, the share of the step
    its device was busy, and its top host ops."""
    profile_kernels_only: bool = False
    """With profile_step on GPUs: record the device's kernels only, no host ops, so the profiled
    step runs at its unprofiled speed and its device-busy share is a normal step's (recording
    every host op slows a host-bound step by tens of percent)."""
    timeline_steps: list[int] = field(default_factory=list)
    """Training steps (1-based) to record as one timeline of every rank: each rank's spans
    (encoder forward/backward per micro-batch, bridge waits, each language stage's forward and
    backward per micro-batch, loss, gradient clipping, optimizer step, checkpoint save), device
    time on GPUs, merged by rank 0 into dump_folder/timeline/step-N.json (Chrome trace events:
    Perfetto, chrome://tracing) and step-N.png (a Gantt chart; the `timeline` extra). A recorded
    step waits for the device at its end; other steps record and wait for nothing. Empty: off."""
    timeline_png: bool = True
    """Draw step-N.png next to each recorded step-N.json (needs matplotlib: `pip install
    'titan_mimo[timeline]'`); false writes the JSON only, drawn later by `python -m
    titan_mimo.timeline DUMP_FOLDER --step N`."""

    def __post_init__(self) -> None:
        if self.log_freq < 1:
            raise ValueError(f"log_freq = {self.log_freq} must be >= 1")
        if any(s < 1 for s in self.timeline_steps):
            raise ValueError(f"timeline_steps = {self.timeline_steps}: steps are 1-based (>= 1)")
        if len(set(self.timeline_steps)) != len(self.timeline_steps):
            raise ValueError(f"timeline_steps = {self.timeline_steps} lists a step twice")
        if self.profile_step < 0:
            raise ValueError(f"profile_step = {self.profile_step} must be >= 0 (0 = off)")
        if self.profile_kernels_only and not self.profile_step:
            raise ValueError("profile_kernels_only = true chooses what profile_step records: "
                             "set profile_step too")


@dataclass(kw_only=True)
class Comm:
    timeout_seconds: int = 300
    """Timeout of every collective and point-to-point op: a hang fails instead of waiting."""

    def __post_init__(self) -> None:
        if self.timeout_seconds < 1:
            raise ValueError(f"timeout_seconds = {self.timeout_seconds} must be >= 1")


@dataclass(kw_only=True)
class Checkpoint:
    enable: bool = False
    """Save DCP checkpoints and resume from the newest complete one when the command is re-run."""
    folder: str = "checkpoint"
    """Checkpoint folder; relative paths are under job.dump_folder. Holds step-N/ directories."""
    interval: int = 500
    """Save every this many steps (and always after the last step)."""
    keep_latest_k: int = 0
    """Keep only the newest k complete checkpoints (0 = keep all). Incomplete ones are never deleted."""
    load_step: int = -1
    """Step to resume from: -1 = the newest complete checkpoint (if any); N = step-N, which must
    exist and be complete (an error otherwise)."""
    async_mode: Literal["disabled", "async"] = "disabled"
    """"async" writes in a background thread (over its own gloo group) while training goes on;
    the checkpoint is marked complete once every rank's write has finished."""
    initial_load_path: str = ""
    """A folder written by `python -m titan_mimo.export` (safetensors + export.json): weights
    only, loaded at step 0 when there is no checkpoint to resume from."""
    export_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype of exported weights (export_at_end and the export CLI's default)."""
    export_at_end: bool = False
    """After the last step, export the final checkpoint's weights to folder/export-step-N."""

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise ValueError(f"interval = {self.interval} must be >= 1")
        if self.keep_latest_k < 0:
            raise ValueError(f"keep_latest_k = {self.keep_latest_k} must be >= 0 (0 keeps all)")
        if self.load_step == 0 or self.load_step < -1:
            raise ValueError(f"load_step = {self.load_step}: use -1 (newest complete checkpoint) or a "
                             "saved step >= 1; to start from scratch, point folder somewhere empty")
        if self.export_at_end and not self.enable:
            raise ValueError("export_at_end = true needs enable = true (the export reads the final checkpoint)")


@dataclass(kw_only=True)
class JobConfig:
    job: Job = field(default_factory=Job)
    """Where outputs go."""
    modules: dict[str, Module] = field(default_factory=dict)
    """The module graph, in rank order: encoders (with `feeds`) and one language module."""
    training: Training = field(default_factory=Training)
    """Steps, batch, sequence, precision."""
    optimizer: Optimizer = field(default_factory=Optimizer)
    """AdamW settings."""
    lr_scheduler: LRScheduler = field(default_factory=LRScheduler)
    """Warmup then decay."""
    parallelism: Parallelism = field(default_factory=Parallelism)
    """Colocated or not, pipeline schedule."""
    data: Data = field(default_factory=Data)
    """Data source."""
    validation: Validation = field(default_factory=Validation)
    """Held-out evaluation."""
    metrics: Metrics = field(default_factory=Metrics)
    """Logging."""
    comm: Comm = field(default_factory=Comm)
    """Collective timeouts."""
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    """DCP checkpoints, resume, weight export/import."""

    def validate(self) -> None:
        """Checks across sections that need neither the world size nor model shapes."""
        if not self.modules:
            raise ValueError("modules: no [modules.<name>] table; declare encoders and a language module")
        language = [n for n, m in self.modules.items() if not m.feeds]
        if len(language) != 1:
            raise ValueError(
                f"modules: exactly one module must have no `feeds` (the language module); "
                f"found {len(language)}: {language or 'none'}"
            )
        for name, m in self.modules.items():
            if m.feeds and m.feeds not in self.modules:
                raise ValueError(
                    f"modules.{name}.feeds = {m.feeds!r} is not a module; "
                    f"known modules: {', '.join(self.modules)}"
                )
            if m.feeds == name:
                raise ValueError(f"modules.{name}.feeds = {name!r}: a module cannot feed itself")
        for name in self.modules:  # walk each path; revisiting a module means a cycle
            seen, cur = [name], self.modules[name].feeds
            while cur:
                if cur in seen:
                    raise ValueError(f"modules: the feeds graph has a cycle: {' -> '.join(seen + [cur])}")
                seen.append(cur)
                cur = self.modules[cur].feeds
        for name, m in self.modules.items():
            if m.feeds and self.modules[m.feeds].feeds:
                raise ValueError(
                    f"modules.{name}.feeds = {m.feeds!r}: encoders must feed the language module "
                    f"{language[0]!r} directly (chains of encoders are not supported yet)"
                )
        ids: dict[int, str] = {}
        for name, m in self.encoders.items():
            if m.placeholder_id < 0:
                raise ValueError(f"modules.{name}.placeholder_id is not set; every encoder needs its own token id")
            if m.placeholder_id == self.data.pad_id:
                raise ValueError(
                    f"modules.{name}.placeholder_id = {m.placeholder_id} equals data.pad_id; choose another id"
                )
            if m.placeholder_id in ids:
                raise ValueError(
                    f"modules.{name}.placeholder_id = {m.placeholder_id} is also used by "
                    f"modules.{ids[m.placeholder_id]}; each encoder needs its own"
                )
            ids[m.placeholder_id] = name
        if self.training.coordinate_descent_tuning and not any(m.compile for m in self.modules.values()):
            raise ValueError("training.coordinate_descent_tuning tunes the kernels of compiled blocks; "
                             "set compile = true on a module, or leave it false")
        late = [s for s in self.metrics.timeline_steps if s > self.training.steps]
        if late:
            raise ValueError(f"metrics.timeline_steps = {self.metrics.timeline_steps}: step {late[0]} is after "
                             f"the last step (training.steps = {self.training.steps}) and would never be recorded")
        for name, m in self.modules.items():
            if m.float8 != "none" and self.training.mixed_precision != "bf16":
                raise ValueError(f"modules.{name}.float8 = {m.float8!r} needs training.mixed_precision = "
                                 f"'bf16', not {self.training.mixed_precision!r} (float8 linears replace "
                                 "bf16 matmuls)")
        if self.parallelism.fsdp_one_rank and any(m.cuda_graphs for m in self.modules.values()):
            raise ValueError("cuda_graphs with parallelism.fsdp_one_rank = true: FSDP's hooks and "
                             "collectives run on the host between the blocks a graph would capture; "
                             "set one of them false")
        if self.parallelism.stages_per_rank > 1 and self.parallelism.pipeline_schedule != "Interleaved1F1B":
            raise ValueError(
                f"parallelism.stages_per_rank = {self.parallelism.stages_per_rank} needs "
                "pipeline_schedule = 'Interleaved1F1B'"
            )

    @property
    def language_name(self) -> str:
        return next(n for n, m in self.modules.items() if not m.feeds)

    @property
    def encoders(self) -> dict[str, Module]:
        return {n: m for n, m in self.modules.items() if m.feeds}
