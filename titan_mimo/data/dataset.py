"""Real image-text data behind the sample plan: global sample index -> `Sample`, the same objects
the mock task produces. A language model alone (no encoder: `encoder = policy = None`) trains on
text records; a record with images is then bad.

Sample i is a pure function of (seed, split, i): the mixture picks a dataset and a record
(mixture.py); the record is laid out into tokens with image placeholders and loss targets; a
record that cannot be used (bad JSON, missing or unreadable image header, no loss tokens, longer
than seq_len, ...) is replaced by a redraw seeded by (seed, i, attempt) from the same dataset,
and the rejections are counted in `Sample.skipped`.

Who reads what. The decision to skip must be the same on every role, so it is made from what
every role reads: the record itself (text, tokenised: microseconds with the Rust tokenizer)
and each image's header (its stored size, without decoding pixels). Language ranks therefore
never decode pixels; encoder ranks tokenise the text (they need the placeholder count per
sample anyway, to route embeddings over the bridge). An image whose header is fine but whose
pixels fail to decode is discovered only on the encoder rank, after the language ranks have laid
out its placeholders; it becomes a blank (zero) image of the same size and is counted in
`Sample.blank_images` instead of being skipped (`python -m titan_mimo.data.check` finds such
files ahead of a run).

Layout of a caption record:       [bos] [img x n]... caption [eos]             loss: caption, eos
Layout of a conversation record:  [bos] "User: " ... "\\n" "Assistant: " ... [eos] ...
                                                                               loss: assistant turns, their eos
`<image>` markers in the text place the images; without markers the images go first (before
the caption, or at the start of the first turn). Labels are the next token where that token is
a loss target, else -100, exactly as in the mock task.

Packing (`pack = true`): sample i concatenates, first-fit, the candidates at virtual indices
i*K .. i*K+K-1 (K = pack_max_records) that fit in seq_len; the first record of a packed row no
longer predicts into the next (its next record's first token is not a target). Records attend
across the boundary (the language model has no document mask yet).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from PIL import Image, UnidentifiedImageError

from titan_mimo.data.batch import IGNORE_INDEX, Batch, Sample
from titan_mimo.data.images import ImagePolicy
from titan_mimo.data.mixture import Mixture
from titan_mimo.data.records import (
    FileHandles,
    ImageRef,
    RawRecord,
    RecordError,
    open_source,
)
from titan_mimo.data.tokenizer import TextTokenizer

ROLE_PREFIX = {"system": "System: ", "user": "User: ", "assistant": "Assistant: "}
ROLE_ALIASES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant",
                "gpt": "assistant"}
MAX_WARNINGS = 10


@dataclass(kw_only=True)
class Layout:
    """Everything the roles agree on about one sample (no pixels)."""

    tokens: list[int] = field(default_factory=list)
    targets: list[bool] = field(default_factory=list)
    """targets[t]: token t is predicted (its label sits at t - 1)."""
    images: list[tuple[ImageRef, tuple[int, int]]] = field(default_factory=list)
    """Each image and the (H, W) it is resized to, in placeholder order."""
    where: list[str] = field(default_factory=list)
    """The records it was built from (several when packed)."""
    skipped: int = 0
    """Records rejected on the way."""
    n_image_tokens: int = 0
    """Placeholder tokens of all its images (what the encoder's work scales with)."""

    def add(self, ids: list[int], trained: bool) -> None:
        self.tokens.extend(ids)
        self.targets.extend([trained] * len(ids))


class ImageTextDataset:
    """Map-style: `sample(i)` / `batch(indices)` like MockImageCaption, for one image encoder or
    none (`encoder = policy = None`: text records only)."""

    def __init__(self, *, sources: dict[str, list[str]], weights: dict[str, list[float]],
                 tokenizer: TextTokenizer, policy: ImagePolicy | None, encoder: str | None,
                 seq_len: int, seed: int, pack: bool = False, pack_max_records: int = 8,
                 max_skips: int = 100) -> None:
        self.tokenizer, self.policy, self.encoder = tokenizer, policy, encoder
        self.seq_len, self.seed, self.pack, self.pack_k = seq_len, seed, pack, pack_max_records
        self.max_skips = max_skips
        self.sources = {split: [open_source(s) for s in specs] for split, specs in sources.items()}
        self.specs = sources
        self.mixtures = {}
        for split, srcs in self.sources.items():
            sizes = [len(s) for s in srcs]
            w = weights.get(split) or [float(n) for n in sizes]
            self.mixtures[split] = Mixture(sizes, w, seed, split, shuffle=split == "train")
        self._handles = FileHandles()
        self.verbose = os.environ.get("RANK", "0") == "0"
        """Print the first MAX_WARNINGS bad records (the trainer turns it on for the ranks that
        see every sample once: the loss ranks)."""
        self._warned = 0
        self._init_cache()

    def _init_cache(self) -> None:
        self.resolve = lru_cache(maxsize=4096)(self._resolve)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "resolve"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_cache()

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources["train"])

    # ---- record -> layout ----------------------------------------------------------------------

    def _turns(self, raw: RawRecord) -> list[tuple[str, str]]:
        f, where = raw.fields, raw.where
        if ("text" in f) == ("conversations" in f):
            raise RecordError(f"{where}: needs exactly one of 'text' (caption) or 'conversations'")
        if "text" in f:
            if not isinstance(f["text"], str):
                raise RecordError(f"{where}: 'text' must be a string")
            return [("caption", f["text"])]
        turns = f["conversations"]
        if not isinstance(turns, list) or not turns:
            raise RecordError(f"{where}: 'conversations' must be a non-empty list of turns")
        out = []
        for k, turn in enumerate(turns):
            if not isinstance(turn, dict):
                raise RecordError(f"{where}: turn {k} is not an object")
            role = turn.get("role", turn.get("from"))
            content = turn.get("content", turn.get("value"))
            if role not in ROLE_ALIASES or not isinstance(content, str):
                raise RecordError(f"{where}: turn {k} needs a role (user/assistant/system, or "
                                  f"human/gpt) and string content, got role {role!r}")
            out.append((ROLE_ALIASES[role], content))
        if not any(role == "assistant" for role, _ in out):
            raise RecordError(f"{where}: no assistant turn, so nothing to train on")
        return out

    def layout_record(self, raw: RawRecord) -> Layout:
        """Tokens, loss targets and resized image sizes of one record; RecordError if unusable."""
        tok, marker = self.tokenizer, self.tokenizer.image_token
        turns = self._turns(raw)
        if self.encoder is None:
            if raw.images:
                raise RecordError(f"{raw.where}: {len(raw.images)} images but the config has no image "
                                  "encoder (a language model alone trains on text records)")
            marker = ""  # nothing places images: the text is plain text
        markers = sum(content.count(marker) for _, content in turns) if marker else 0
        if markers == 0 and raw.images:
            first = next(k for k, (role, _) in enumerate(turns) if role in ("caption", "user", "system"))
            role, content = turns[first]
            turns[first] = (role, marker * len(raw.images) + content)
        elif markers != len(raw.images):
            raise RecordError(f"{raw.where}: {markers} {marker!r} markers in the text but "
                              f"{len(raw.images)} images")
        try:
            sizes = [self.policy.target_size(*self.policy.header_size(ref, self._handles)) for ref in raw.images]
        except RecordError as e:
            raise RecordError(f"{raw.where}: {e}") from None
        lay = Layout(images=list(zip(raw.images, sizes)), where=[raw.where])
        if tok.bos_id is not None:
            lay.add([tok.bos_id], False)
        next_image = iter(sizes)
        for role, content in turns:
            trained = role in ("caption", "assistant")
            if role != "caption":
                lay.add(tok.encode(ROLE_PREFIX[role]), False)
            for k, piece in enumerate(content.split(marker) if marker else [content]):
                if k:
                    n = self.policy.tokens(next(next_image))
                    lay.add([tok.image_id] * n, False)
                    lay.n_image_tokens += n
                if piece:
                    ids = tok.encode(piece)
                    if tok.reserved.intersection(ids):
                        raise RecordError(f"{raw.where}: the text contains the pad or image token "
                                          "outside an image marker")
                    lay.add(ids, trained)
            if trained and tok.eos_id is not None:
                lay.add([tok.eos_id], True)
            elif role != "caption":
                lay.add(tok.encode("\n"), False)
        if not any(lay.targets[1:]):
            raise RecordError(f"{raw.where}: no loss tokens (empty caption or assistant turns)")
        if len(lay.tokens) > self.seq_len:
            raise RecordError(f"{raw.where}: {len(lay.tokens)} tokens do not fit training.seq_len = "
                              f"{self.seq_len}")
        return lay

    # ---- sample index -> layout ----------------------------------------------------------------

    def _warn(self, e: RecordError) -> None:
        if self.verbose and self._warned < MAX_WARNINGS:
            self._warned += 1
            tail = " (further bad records are counted, not printed)" if self._warned == MAX_WARNINGS else ""
            print(f"titan_mimo: skipping a record: {e}{tail}", file=sys.stderr, flush=True)

    def _one(self, index: int, split: str) -> Layout:
        """The record for (virtual) index: the mixture's pick, or the first good redraw."""
        mix = self.mixtures[split]
        d, r = mix.locate(index)
        source = self.sources[split][d]
        for attempt in range(self.max_skips + 1):
            try:
                lay = self.layout_record(source.record(r))
                lay.skipped = attempt
                return lay
            except RecordError as e:
                self._warn(e)
                last = e
            r = mix.redraw(index, attempt + 1, d)
        raise ValueError(f"data source {self.specs[split][d]!r}: {self.max_skips + 1} bad records in a row "
                         f"for sample {index} ({split}); last: {last}. Check the data with "
                         "`python -m titan_mimo.data.check --config ...`")

    def _resolve(self, index: int, split: str) -> Layout:
        if not self.pack:
            return self._one(index, split)
        packed = Layout()
        for j in range(self.pack_k):
            lay = self._one(index * self.pack_k + j, split)
            packed.skipped += lay.skipped
            if len(packed.tokens) + len(lay.tokens) > self.seq_len:
                continue
            if packed.tokens:
                lay.targets[0] = False  # a record does not predict the next one's first token
            packed.tokens += lay.tokens
            packed.targets += lay.targets
            packed.images += lay.images
            packed.where += lay.where
            packed.n_image_tokens += lay.n_image_tokens
        return packed

    def image_tokens(self, index: int, split: str = "train") -> int:
        """Image tokens of sample `index` (what the encoder's work scales with)."""
        return self.resolve(index, split).n_image_tokens

    # ---- layout -> tensors ---------------------------------------------------------------------

    def sample(self, index: int, split: str = "train", with_images: bool = True) -> Sample:
        lay = self.resolve(index, split)
        n = len(lay.tokens)
        tokens = torch.full((self.seq_len,), self.tokenizer.pad_id)
        tokens[:n] = torch.tensor(lay.tokens, dtype=torch.int64)
        labels = torch.full((self.seq_len,), IGNORE_INDEX)
        nxt = tokens[1:n]
        labels[: n - 1] = torch.where(torch.tensor(lay.targets[1:], dtype=torch.bool), nxt, IGNORE_INDEX)
        images, blanks = [], 0
        if with_images:
            for ref, size in lay.images:
                try:
                    images.append(self.policy.load(ref, self._handles, size))
                except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                    # The language ranks already placed this image's tokens: keep the shape.
                    self._warn(RecordError(f"{ref.describe()}: pixels do not decode ({e}); "
                                           "using a blank image"))
                    images.append(torch.zeros(self.policy.channels, *size))
                    blanks += 1
        return Sample(tokens=tokens, labels=labels,
                      images={} if self.encoder is None else {self.encoder: images},
                      skipped=lay.skipped, blank_images=blanks)

    def batch(self, indices, split: str = "train", with_images: bool = True) -> Batch:
        samples = [self.sample(i, split, with_images) for i in indices]
        return Batch.of(samples, [] if self.encoder is None else [self.encoder])
