"""Config -> the dataset (the mock task, or local image-text or text files), with every check that
needs no process group (files, tokenizer ids against the model config, image sizes against the
encoder), so bad data config fails before start-up like any other config error."""

from __future__ import annotations

from titan_mimo.config import JobConfig
from titan_mimo.data.dataset import ImageTextDataset
from titan_mimo.data.images import ImagePolicy
from titan_mimo.data.mock import EncoderSpec, MockImageCaption
from titan_mimo.data.tokenizer import TextTokenizer


def build_dataset(cfg: JobConfig, args: dict) -> MockImageCaption | ImageTextDataset:
    """`args`: the modules' model args (`build.module_args`)."""
    if cfg.data.dataset == "local":
        return build_local_dataset(cfg, args)
    lm_args = args[cfg.language_name]
    encoders = [EncoderSpec(name=n, placeholder_id=m.placeholder_id,
                            cell=args[n].patch_size * args[n].pixel_shuffle, channels=args[n].in_channels)
                for n, m in cfg.encoders.items()]
    return MockImageCaption(seed=cfg.training.seed, seq_len=cfg.training.seq_len,
                            vocab_size=lm_args.vocab_size, pad_id=cfg.data.pad_id, encoders=encoders,
                            image_sizes=cfg.data.image_sizes, num_values=cfg.data.num_values,
                            text_only_fraction=cfg.data.text_only_fraction)


def build_local_dataset(cfg: JobConfig, args: dict) -> ImageTextDataset:
    """A language model with one image encoder (image-text records), or alone (text records;
    a record with images is then bad, and the tokenizer needs no image token)."""
    d = cfg.data
    encoders = list(cfg.encoders)
    if len(encoders) > 1:
        raise ValueError(f'data.dataset = "local" feeds at most one image encoder; the config has '
                         f"{len(encoders)}: {', '.join(encoders)}")
    if cfg.validation.enable and not d.validation_sources:
        raise ValueError("validation.enable = true needs data.validation_sources with local data")
    name = encoders[0] if encoders else None
    policy = None
    if name is not None:
        enc = args[name]
        if enc.in_channels not in (1, 3):
            raise ValueError(f"modules.{name}: in_channels = {enc.in_channels}; local images are read as "
                             "RGB (3) or grayscale (1)")
        policy = ImagePolicy(cell=enc.patch_size * enc.pixel_shuffle, resize=d.resize,
                             fixed_size=tuple(d.fixed_size), min_pixels=d.min_pixels, max_pixels=d.max_pixels,
                             max_aspect_ratio=d.max_aspect_ratio, mean=tuple(d.image_mean),
                             std=tuple(d.image_std), channels=enc.in_channels)
    tokenizer = TextTokenizer(d.tokenizer, image_token=d.image_token, pad_token=d.pad_token,
                              bos_token=d.bos_token, eos_token=d.eos_token,
                              placeholder_id=None if name is None else cfg.modules[name].placeholder_id,
                              pad_id=d.pad_id, vocab_size=args[cfg.language_name].vocab_size,
                              placeholder_field=f"modules.{name}.placeholder_id")
    sources = {"train": d.sources}
    if d.validation_sources:
        sources["validation"] = d.validation_sources
    dataset = ImageTextDataset(sources=sources, weights={"train": d.weights}, tokenizer=tokenizer,
                               policy=policy, encoder=name, seq_len=cfg.training.seq_len,
                               seed=cfg.training.seed, pack=d.pack, pack_max_records=d.pack_max_records,
                               max_skips=d.max_skips)
    return dataset
