"""titan_mimo/config.py and config_loader.py: TOML loading, `--a.b=c` overrides, round trip, and every error message."""

import copy
import re
from pathlib import Path

import pytest

from titan_mimo.config import JobConfig, Module
from titan_mimo.config_loader import config_from_dict, load_config, write_config

DEBUG_TOML = Path(__file__).resolve().parents[1] / "train_configs" / "debug_cpu.toml"

# vision (encoder, 2 ranks) feeds language (2 ranks): the smallest valid module graph.
BASE = {
    "modules": {
        "vision": {"model": "vit/debug", "ranks": 2, "feeds": "language", "placeholder_id": 1},
        "language": {"model": "hybrid_lm/debug", "ranks": 2},
    },
}


def base(**sections) -> dict:
    """A deep copy of BASE with whole sections replaced or added."""
    data = copy.deepcopy(BASE)
    data.update(copy.deepcopy(sections))
    return data


def load(*overrides: str) -> JobConfig:
    return load_config(["--config", str(DEBUG_TOML), *overrides])


# --------------------------------------------------------------------------------------------
# Loading and overrides


def test_debug_config_loads():
    cfg = load()
    assert list(cfg.modules) == ["vision", "language"]
    assert cfg.language_name == "language"
    assert list(cfg.encoders) == ["vision"]
    vision, language = cfg.modules["vision"], cfg.modules["language"]
    assert (vision.model, vision.ranks, vision.dp_shard, vision.feeds, vision.placeholder_id) == (
        "vit/debug", 2, -1, "language", 1)
    assert vision.is_encoder and not language.is_encoder
    assert (language.model, language.ranks, language.tp, language.pp) == (
        "hybrid_lm/debug", 2, 1, 1)
    t = cfg.training
    assert (t.steps, t.global_batch_size, t.micro_batch_size, t.seq_len) == (200, 8, 2, 32)
    assert cfg.optimizer.lr == 3e-3 and cfg.lr_scheduler.min_lr_factor == 0.5
    assert cfg.data.image_sizes == [[8, 8], [8, 16]]
    assert cfg.comm.timeout_seconds == 120
    assert cfg.parallelism.colocated is False and cfg.parallelism.pipeline_schedule == "1F1B"
    # Unset keys keep the dataclass defaults.
    assert cfg.validation.enable is False and cfg.metrics.enable_tensorboard is True


@pytest.mark.parametrize("argv, section, key, expected", [
    (["--training.steps=3"], "training", "steps", 3),
    (["--training.steps", "3"], "training", "steps", 3),
    (["--optimizer.lr=1e-4"], "optimizer", "lr", 1e-4),
    (["--optimizer.lr", "2"], "optimizer", "lr", 2.0),  # an int where a float goes
    (["--training.max_norm=-1.5"], "training", "max_norm", -1.5),
    (["--training.max_norm", "-1.5"], "training", "max_norm", -1.5),  # not taken for a flag
    (["--metrics.enable_tensorboard=false"], "metrics", "enable_tensorboard", False),
    (["--metrics.enable_tensorboard", "false"], "metrics", "enable_tensorboard", False),
    (["--parallelism.colocated"], "parallelism", "colocated", True),
    (["--parallelism.colocated", "--training.steps=3"], "parallelism", "colocated", True),
    (["--data.image_sizes=[[4, 4], [4, 8]]"], "data", "image_sizes", [[4, 4], [4, 8]]),
    (["--data.image_sizes", "[[2,2]]"], "data", "image_sizes", [[2, 2]]),
    (["--job.dump_folder=outputs/x"], "job", "dump_folder", "outputs/x"),
    (["--job.dump_folder", "outputs/y"], "job", "dump_folder", "outputs/y"),
    (['--job.description="two words"'], "job", "description", "two words"),
    # A string field keeps text that TOML would read as a date, number or bool.
    (["--job.dump_folder=2024-06-01"], "job", "dump_folder", "2024-06-01"),
    (["--job.description=123"], "job", "description", "123"),
    (["--job.description", "true"], "job", "description", "true"),
    (["--training.mixed_precision=bf16"], "training", "mixed_precision", "bf16"),
    (["--parallelism.pipeline_schedule", "GPipe"], "parallelism", "pipeline_schedule", "GPipe"),
    (["--training.steps=3", "--training.steps=4"], "training", "steps", 4),  # last one wins
    (["--job.config_file=" + str(DEBUG_TOML), "--training.seed", "7"], "training", "seed", 7),
])
def test_typed_override(argv, section, key, expected):
    value = getattr(getattr(load(*argv), section), key)
    assert value == expected
    assert type(value) is type(expected)


def test_module_overrides():
    cfg = load("--modules.language.pp=2", "--modules.vision.tp", "2",
               "--modules.vision.frozen", "--modules.language.lr_scale=0.5")
    assert cfg.modules["language"].pp == 2
    assert cfg.modules["vision"].tp == 2
    assert cfg.modules["vision"].frozen is True
    assert cfg.modules["language"].lr_scale == 0.5
    # Untouched fields of the same tables stay as in the file.
    assert cfg.modules["vision"].placeholder_id == 1 and cfg.modules["language"].ranks == 2


def test_config_from_dict_defaults_and_overrides():
    cfg = config_from_dict({"modules": {"lm": {"model": "hybrid_lm/debug"}}},
                           [("training.steps", 5), ("parallelism.colocated", True)])
    assert cfg.modules == {"lm": Module(model="hybrid_lm/debug")}
    assert cfg.language_name == "lm" and cfg.encoders == {}
    assert cfg.training.steps == 5 and cfg.parallelism.colocated is True
    assert cfg.training.global_batch_size == 8 and cfg.optimizer.name == "AdamW"


def test_round_trip(tmp_path):
    cfg = load("--modules.language.pp=2", "--modules.vision.dp_replicate=2",
               "--parallelism.pipeline_schedule=Interleaved1F1B", "--parallelism.stages_per_rank=2",
               "--training.mixed_precision=bf16", "--optimizer.eps=1e-12",
               "--data.image_sizes=[[4, 4]]", "--job.description=round trip",
               "--metrics.enable_tensorboard=false")
    first = tmp_path / "a" / "config.toml"
    write_config(cfg, first)
    again = load_config(["--config", str(first)])
    assert again == cfg
    assert list(again.modules) == ["vision", "language"]  # rank order survives
    second = tmp_path / "b" / "config.toml"
    write_config(again, second)
    assert second.read_text() == first.read_text()


def test_round_trip_three_modules(tmp_path):
    data = base(training={"global_batch_size": 12, "micro_batch_size": 3},
                data={"pad_id": 5})
    data["modules"] = {
        "audio": {"model": "vit/debug", "feeds": "language", "placeholder_id": 3, "frozen": True},
        **data["modules"],
    }
    cfg = config_from_dict(data)
    path = tmp_path / "config.toml"
    write_config(cfg, path)
    assert load_config(["--config", str(path)]) == cfg
    assert list(cfg.modules) == ["audio", "vision", "language"]


# --------------------------------------------------------------------------------------------
# Bad inputs: each fails with a message that names the field and the fix.


def _with_module(name, **fields):
    data = base()
    data["modules"][name] = {**data["modules"].get(name, {}), **fields}
    return data


BAD_DICTS = [
    ("unknown_top_level_key", base(trainig={"steps": 3}),
     r"config: unknown key 'trainig' in the top level \(did you mean 'training'\?\); "
     r"valid keys: job, modules, training, optimizer, lr_scheduler, parallelism, data, "
     r"validation, metrics, comm, checkpoint$"),
    ("unknown_section_key", base(training={"step": 3}),
     r"unknown key 'step' in \[training\] \(did you mean 'steps'\?\); valid keys: steps, "),
    ("unknown_module_key", _with_module("vision", tpp=2),
     r"unknown key 'tpp' in \[modules.vision\] \(did you mean 'tp'\?\)"),
    ("unknown_key_no_hint", base(comm={"zzz": 1}),
     r"unknown key 'zzz' in \[comm\]; valid keys: timeout_seconds$"),
    ("section_not_table", base(training=3), r"\[training\] must be a table, got 3"),
    ("module_not_table", base(modules={"vision": 3}), r"\[modules.vision\] must be a table, got 3"),
    ("modules_not_table_of_tables", base(modules=3), r"\[modules\] must be a table of tables"),
    ("missing_model", _with_module("extra", ranks=1),
     r"\[modules.extra\] is missing required key\(s\): model"),
    ("string_for_int", base(training={"steps": "ten"}),
     r"training.steps = 'ten' must be an integer"),
    ("bool_for_int", base(training={"steps": True}), r"training.steps = True must be an integer"),
    ("float_for_int", base(training={"seq_len": 32.0}),
     r"training.seq_len = 32.0 must be an integer"),
    ("int_for_bool", base(parallelism={"colocated": 1}),
     r"parallelism.colocated = 1 must be true or false"),
    ("string_for_float", base(optimizer={"lr": "fast"}), r"optimizer.lr = 'fast' must be a number"),
    ("int_for_string", _with_module("vision", model=3),
     r"modules.vision.model = 3 must be a string"),
    ("not_a_list", base(data={"image_sizes": 8}), r"data.image_sizes = 8 must be a list"),
    ("list_item_type", base(data={"image_sizes": [[8, "a"]]}),
     r"data.image_sizes\[0\]\[1\] = 'a' must be an integer"),
    ("literal_not_allowed", base(training={"mixed_precision": "fp16"}),
     r"training.mixed_precision = 'fp16' is not one of 'fp32', 'bf16'"),
    ("literal_in_module", _with_module("vision", activation_checkpoint="partial"),
     r"modules.vision.activation_checkpoint = 'partial' is not one of 'none', 'full', 'selective', "
     r"'memory_budget'"),
    ("memory_budget_needs_compile", _with_module("language", activation_checkpoint="memory_budget"),
     r"modules.language: activation_checkpoint = 'memory_budget' needs compile = true"),
    ("coordinate_descent_tuning_needs_compile", base(training={"coordinate_descent_tuning": True}),
     r"training.coordinate_descent_tuning tunes the kernels of compiled blocks; set compile = true "
     r"on a module, or leave it false"),
    ("memory_budget_out_of_range",
     _with_module("language", activation_checkpoint="memory_budget", compile=True, memory_budget=0.0),
     r"modules.language: memory_budget = 0.0 must be in \(0, 1\]"),
    ("ac_every_zero", _with_module("language", activation_checkpoint="selective", ac_every=0),
     r"modules.language: ac_every = 0 must be >= 1"),
    ("ac_layers_unknown_kind", _with_module("language", activation_checkpoint="selective", ac_layers="-x"),
     r"modules.language: ac_layers = '-x': \['x'\] are not block kinds; use 'M' \(Mamba2\), "
     r"'\*' \(attention\), '-' \(MLP\)"),
    ("ac_layers_without_selective", _with_module("language", activation_checkpoint="full", ac_layers="-"),
     r"modules.language: ac_layers / ac_every only apply to activation_checkpoint = 'selective', not 'full'"),
    ("ac_layers_on_encoder", _with_module("vision", activation_checkpoint="selective", ac_layers="-"),
     r"modules.vision: ac_layers = '-': an encoder's blocks are all of one kind; use ac_every alone"),
    ("dp_shard_zero", _with_module("language", dp_shard=0),
     r"modules.language: dp_shard = 0 must be >= 1, or -1 for 'the rest'"),
    ("dp_shard_minus_two", _with_module("language", dp_shard=-2),
     r"modules.language: dp_shard = -2 must be >= 1"),
    ("tp_zero", _with_module("vision", tp=0), r"modules.vision: tp = 0 must be >= 1"),
    ("ranks_zero", _with_module("vision", ranks=0), r"modules.vision: ranks = 0 must be >= 1"),
    ("negative_lr_scale", _with_module("vision", lr_scale=-1.0),
     r"modules.vision: lr_scale = -1.0 must be >= 0"),
    ("pp_on_encoder", _with_module("vision", pp=2),
     r"modules.vision: pp = 2: pipeline parallelism is only supported on the language module"),
    ("global_batch_not_multiple", base(training={"global_batch_size": 7, "micro_batch_size": 2}),
     r"training: global_batch_size = 7 is not a multiple of micro_batch_size = 2"),
    ("steps_zero", base(training={"steps": 0}), r"training: steps = 0 must be >= 1"),
    ("lr_zero", base(optimizer={"lr": 0.0}), r"optimizer: lr = 0.0 must be > 0"),
    ("beta_one", base(optimizer={"beta2": 1.0}), r"optimizer: beta2 = 1.0 must be in \[0, 1\)"),
    ("warmup_negative", base(lr_scheduler={"warmup_steps": -1}),
     r"lr_scheduler: warmup_steps = -1 must be >= 0"),
    ("min_lr_factor", base(lr_scheduler={"min_lr_factor": 1.5}),
     r"lr_scheduler: min_lr_factor = 1.5 must be in \[0, 1\]"),
    ("unknown_schedule", base(parallelism={"pipeline_schedule": "ZeroBubble"}),
     r"parallelism: pipeline_schedule = 'ZeroBubble' is unknown; "
     r"choose one of GPipe, 1F1B, Interleaved1F1B"),
    ("stages_per_rank_zero", base(parallelism={"stages_per_rank": 0}),
     r"parallelism: stages_per_rank = 0 must be >= 1"),
    ("image_size_not_pair", base(data={"image_sizes": [[8]]}),
     r"data: image_sizes = \[\[8\]\] must be a list of \[height, width\]"),
    ("image_sizes_empty", base(data={"image_sizes": []}),
     r"data: image_sizes = \[\] must be a list of \[height, width\]"),
    ("num_values_one", base(data={"num_values": 1}), r"data: num_values = 1 must be >= 2"),
    ("text_only_fraction", base(data={"text_only_fraction": 1.5}),
     r"data: text_only_fraction = 1.5 must be in \[0, 1\]"),
    ("validation_freq", base(validation={"freq": 0}),
     r"validation: freq = 0 and steps = 2 must be >= 1"),
    ("log_freq", base(metrics={"log_freq": 0}), r"metrics: log_freq = 0 must be >= 1"),
    ("profile_kernels_only", base(metrics={"profile_kernels_only": True}),
     r"metrics: profile_kernels_only = true chooses what profile_step records: set profile_step too"),
    ("timeout", base(comm={"timeout_seconds": 0}), r"comm: timeout_seconds = 0 must be >= 1"),
    ("no_modules", {"training": {"steps": 1}}, r"modules: no \[modules.<name>\] table"),
    ("two_language_modules", _with_module("vision", feeds=""),
     r"modules: exactly one module must have no `feeds` \(the language module\); "
     r"found 2: \['vision', 'language'\]"),
    ("no_language_module",
     {"modules": {"a": {"model": "m", "feeds": "b", "placeholder_id": 1},
                  "b": {"model": "m", "feeds": "a", "placeholder_id": 2}}},
     r"modules: exactly one module must have no `feeds` .*found 0: none"),
    ("feeds_missing_module", _with_module("vision", feeds="llm"),
     r"modules.vision.feeds = 'llm' is not a module; known modules: vision, language"),
    ("feeds_itself", _with_module("vision", feeds="vision"),
     r"modules.vision.feeds = 'vision': a module cannot feed itself"),
    ("feeds_cycle",
     {"modules": {"a": {"model": "m", "feeds": "b", "placeholder_id": 1},
                  "b": {"model": "m", "feeds": "a", "placeholder_id": 2},
                  "language": {"model": "hybrid_lm/debug"}}},
     r"modules: the feeds graph has a cycle: a -> b -> a"),
    ("encoder_chain",
     {"modules": {"a": {"model": "m", "feeds": "b", "placeholder_id": 1},
                  "b": {"model": "m", "feeds": "language", "placeholder_id": 2},
                  "language": {"model": "hybrid_lm/debug"}}},
     r"modules.a.feeds = 'b': encoders must feed the language module 'language' directly"),
    ("no_placeholder", _with_module("vision", placeholder_id=-1),
     r"modules.vision.placeholder_id is not set; every encoder needs its own token id"),
    ("placeholder_is_pad", base(data={"pad_id": 1}),
     r"modules.vision.placeholder_id = 1 equals data.pad_id; choose another id"),
    ("duplicate_placeholders", _with_module("audio", model="m", feeds="language", placeholder_id=1),
     r"modules.audio.placeholder_id = 1 is also used by modules.vision; "
     r"each encoder needs its own"),
    ("stages_per_rank_needs_interleaved", base(parallelism={"stages_per_rank": 2}),
     r"parallelism.stages_per_rank = 2 needs pipeline_schedule = 'Interleaved1F1B'"),
]


@pytest.mark.parametrize("data, match", [c[1:] for c in BAD_DICTS], ids=[c[0] for c in BAD_DICTS])
def test_bad_dict(data, match):
    with pytest.raises(ValueError, match=match):
        config_from_dict(data)


BAD_OVERRIDES = [
    ("unknown_top_level", ["--trainig.steps=3"],
     r"unknown key 'trainig' in the top level \(did you mean 'training'\?\)"),
    ("unknown_section_key", ["--training.stepz=3"],
     r"unknown key 'stepz' in \[training\] \(did you mean 'steps'\?\)"),
    ("unknown_module_key", ["--modules.language.ppp", "2"],
     r"unknown key 'ppp' in \[modules.language\] \(did you mean 'pp'\?\)"),
    ("unknown_module", ["--modules.audio.pp=2"],
     r"--modules.audio.pp: no module named 'audio' in \[modules\]; modules: vision, language"),
    ("string_for_int", ["--training.steps=ten"], r"training.steps = 'ten' must be an integer"),
    ("int_for_bool", ["--parallelism.colocated=1"],
     r"parallelism.colocated = 1 must be true or false"),
    ("literal", ["--training.mixed_precision=fp16"],
     r"training.mixed_precision = 'fp16' is not one of 'fp32', 'bf16'"),
    ("dp_shard_zero", ["--modules.language.dp_shard=0"],
     r"modules.language: dp_shard = 0 must be >= 1, or -1"),
    ("global_batch", ["--training.global_batch_size", "9"],
     r"training: global_batch_size = 9 is not a multiple of micro_batch_size = 2"),
    ("schedule", ["--parallelism.pipeline_schedule=ZeroBubble"],
     r"pipeline_schedule = 'ZeroBubble' is unknown"),
    ("stages_per_rank", ["--parallelism.stages_per_rank=2"],
     r"parallelism.stages_per_rank = 2 needs pipeline_schedule = 'Interleaved1F1B'"),
    ("feeds_missing", ["--modules.vision.feeds=llm"],
     r"modules.vision.feeds = 'llm' is not a module"),
    ("placeholder_is_pad", ["--modules.vision.placeholder_id=0"],
     r"modules.vision.placeholder_id = 0 equals data.pad_id"),
    ("names_a_table", ["--training=3"],
     r"--training names a table; set one of its keys, e.g. --training.<key>=\.\.\."),
    ("names_a_module", ["--modules.vision=3"], r"--modules.vision names a table"),
    ("names_modules", ["--modules", "3"], r"--modules names a table"),
    ("through_a_value", ["--training.steps.x=1"],
     r"--training.steps.x: training.steps is a value, not a table"),
    ("stray_argument", ["steps=3"],
     r"unexpected argument 'steps=3'; use --config PATH and --section.key=value"),
    ("timeline_step_zero", ["--metrics.timeline_steps=[0, 2]"],
     r"metrics: timeline_steps = \[0, 2\]: steps are 1-based \(>= 1\)"),
    ("timeline_step_twice", ["--metrics.timeline_steps=[2, 2]"], r"timeline_steps = \[2, 2\] lists a step twice"),
    ("timeline_step_late", ["--metrics.timeline_steps=[201]"],
     r"metrics.timeline_steps = \[201\]: step 201 is after the last step \(training.steps = 200\)"),
    ("timeline_not_a_list", ["--metrics.timeline_steps=5"], r"metrics.timeline_steps = 5 must be a list"),
]


@pytest.mark.parametrize("argv, match", [c[1:] for c in BAD_OVERRIDES],
                         ids=[c[0] for c in BAD_OVERRIDES])
def test_bad_override(argv, match):
    with pytest.raises(ValueError, match=match):
        load(*argv)


def test_errors_name_the_source_file():
    with pytest.raises(ValueError, match="^" + re.escape(f"{DEBUG_TOML}: training.steps = 'x'")):
        load("--training.steps=x")


def test_missing_config():
    with pytest.raises(ValueError, match=r"^missing --config PATH.toml$"):
        load_config(["--training.steps=3"])


def test_config_without_path():
    with pytest.raises(ValueError, match=r"^--config needs a path$"):
        load_config(["--training.steps=3", "--config"])


def test_nonexistent_file(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ValueError, match=re.escape(f"--config {missing}: no such file")):
        load_config(["--config", str(missing)])


def test_invalid_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[training]\nsteps = = 3\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}: invalid TOML: ") + ".*line 2"):
        load_config(["--config", str(path)])


# --------------------------------------------------------------------------------------------
# Model arg overrides per module


def test_model_args_from_toml_and_cli(tmp_path):
    from titan_mimo.build import module_args

    data = base()
    data["modules"]["language"]["model_args"] = {"ssd_backend": "torch", "layer_pattern": "M*M-"}
    cfg = config_from_dict(data)
    assert cfg.modules["language"].model_args == {"ssd_backend": "torch", "layer_pattern": "M*M-"}
    args = module_args(cfg)
    assert args["language"].n_layers == 4 and args["vision"].out_dim == args["language"].dim
    write_config(cfg, tmp_path / "c.toml")
    again = load_config(["--config", str(tmp_path / "c.toml"), "--modules.language.model_args.layer_pattern=M-",
                         "--modules.vision.model_args.n_layers=1"])
    assert again.modules["language"].model_args == {"ssd_backend": "torch", "layer_pattern": "M-"}
    assert module_args(again)["vision"].n_layers == 1 and module_args(again)["language"].n_layers == 2


@pytest.mark.parametrize("argv, match", [
    (["--modules.language.model_args.no_such_field=1"],
     r"modules.language.model_args: model 'hybrid_lm/debug': unknown override\(s\) \['no_such_field'\]; valid fields"),
    (["--modules.language.model_args.ssd_backend=cuda_magic"], r"modules.language.model_args: .*ssd_backend='cuda_magic'"),
])
def test_model_args_errors(argv, match):
    from titan_mimo.build import module_args

    with pytest.raises(ValueError, match=match):
        module_args(load(*argv))


def test_model_args_must_be_values():
    data = base()
    data["modules"]["language"]["model_args"] = {"nested": {"a": 1}}
    with pytest.raises(ValueError, match=r"\[modules.language.model_args\] must be a table of values"):
        config_from_dict(data)
    with pytest.raises(ValueError, match="holds plain values, not tables"):
        load("--modules.language.model_args.a.b=1")
    with pytest.raises(ValueError, match="names a table"):
        load("--modules.language.model_args=1")


@pytest.mark.parametrize("path", sorted((DEBUG_TOML.parent).glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(["--config", str(path)])
    assert cfg.training.steps > 0 and cfg.language_name in cfg.modules
