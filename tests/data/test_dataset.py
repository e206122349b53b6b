"""ImageTextDataset (titan_mimo/data/dataset.py) and the mixture (mixture.py): token and
placeholder counts, loss masks, skip-and-count, packing, mixing weights."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from data_helpers import dataset, tokenizer, write_jsonl

from titan_mimo.data.check import check
from titan_mimo.data.mixture import BLOCK, Mixture, block_counts
from titan_mimo.data.records import RecordError
from titan_mimo.data.batch import IGNORE_INDEX

PAD, IMAGE, BOS, EOS = 0, 1, 2, 3


def _targets(ds, sample) -> str:
    """Decoded tokens that carry loss (the labels that are not -100)."""
    return ds.tokenizer.tok.decode([t for t in sample.labels.tolist() if t != IGNORE_INDEX],
                                   skip_special_tokens=False)


def test_caption_placeholders_and_loss_on_caption(sample_dir: Path) -> None:
    ds = dataset(sample_dir, ["captions.jsonl"])
    records = [json.loads(x) for x in (sample_dir / "captions.jsonl").read_text().splitlines()]
    for i in range(12):
        s, lay = ds.sample(i), ds.resolve(i, "train")
        (img,) = s.images["vision"]
        _, h, w = img.shape
        n_img = (h // 8) * (w // 8)  # (H / patch / pixel_shuffle) * (W / patch / pixel_shuffle)
        assert int((s.tokens == IMAGE).sum()) == n_img == lay.n_image_tokens
        # [bos] [image x n] caption [eos] [pad ...]
        assert s.tokens[0] == BOS and (s.tokens[1: 1 + n_img] == IMAGE).all()
        line = int(lay.where[0].rsplit(":", 1)[1])
        caption = records[line - 1]["text"]
        assert _targets(ds, s) == caption + " </s>"
        n_text = len(ds.tokenizer.encode(caption))
        assert int((s.labels != IGNORE_INDEX).sum()) == n_text + 1
        assert (s.labels[: n_img] == IGNORE_INDEX).all()  # bos and placeholders predict nothing
        assert int((s.tokens != PAD).sum()) == 1 + n_img + n_text + 1


def test_conversation_loss_only_on_assistant_turns(sample_dir: Path, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "c.jsonl", [
        {"image": str(sample_dir / "images/00000.png"), "conversations": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "<image>\nWhat shape do you see?"},
            {"role": "assistant", "content": "A circle."},
            {"role": "user", "content": "And the background?"},
            {"role": "assistant", "content": "It is red."}]},
        {"conversations": [{"from": "human", "value": "What colour is the shape?"},
                           {"from": "gpt", "value": "It is blue."}]},
    ])
    ds = dataset(tmp_path, ["c.jsonl"], tokenizer_dir=sample_dir)
    by_where = {ds.resolve(i, "train").where[0].rsplit(":", 1)[1]: ds.sample(i) for i in range(2)}
    first, second = by_where["1"], by_where["2"]
    assert _targets(ds, first) == "A circle . </s> It is red . </s>"
    assert _targets(ds, second) == "It is blue . </s>"
    # the image comes where its marker is: after the system turn and "User:"
    tok = ds.tokenizer
    prefix = [BOS] + tok.encode("System: ") + tok.encode("Be brief.") + tok.encode("\n") + tok.encode("User: ")
    assert first.tokens[: len(prefix)].tolist() == prefix
    assert first.tokens[len(prefix)] == IMAGE
    assert int((second.tokens == IMAGE).sum()) == 0 and second.images["vision"] == []


@pytest.fixture()
def mixed_quality(sample_dir: Path, tmp_path: Path) -> Path:
    """Six records, three of them bad in different ways, one whose pixels are corrupt."""
    png = (sample_dir / "images/00001.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(png[: len(png) // 2])  # header fine, pixels cut
    (tmp_path / "text.png").write_text("not an image")
    good = str(sample_dir / "images/00002.png")
    write_jsonl(tmp_path / "q.jsonl", [
        {"image": good, "text": "a red circle on blue"},                         # 1 good
        {"image": "missing.png", "text": "no such file"},                        # 2 bad: missing
        {"image": "text.png", "text": "not an image"},                           # 3 bad: not an image
        {"image": good, "text": " ".join(["far too long"] * 40)},                # 4 bad: > seq_len
        {"image": "truncated.png", "text": "a blue square on red"},              # 5 pixels corrupt
        {"image": good, "text": "two markers <image> <image> for one image"},    # 6 bad: markers
    ])
    return tmp_path


def test_bad_records_are_skipped_counted_and_agreed_on(mixed_quality: Path, sample_dir: Path) -> None:
    ds = dataset(mixed_quality, ["q.jsonl"], seq_len=48, max_skips=50, tokenizer_dir=sample_dir)
    skipped, lines = 0, Counter()
    for i in range(60):
        _, r = ds.mixtures["train"].locate(i)
        lay = ds.resolve(i, "train")
        line = int(lay.where[0].rsplit(":", 1)[1])
        lines[line] += 1
        assert line in (1, 5)
        assert (lay.skipped == 0) == (r + 1 in (1, 5))  # skipped iff the first pick was bad
        skipped += lay.skipped
        text_role = ds.sample(i, with_images=False)
        image_role = ds.sample(i)
        assert torch.equal(text_role.tokens, image_role.tokens) and text_role.skipped == image_role.skipped
    # 60 samples = 10 epochs over 6 records: 40 first picks were bad, each redraw is bad w.p. 4/6
    assert sum(c for line, c in lines.items()) == 60 and skipped >= 40
    assert skipped == sum(ds.sample(i).skipped for i in range(60))  # deterministic
    corrupt = next(i for i in range(60) if ds.resolve(i, "train").where[0].endswith(":5"))
    s = ds.sample(corrupt)
    assert s.blank_images == 1 and float(s.images["vision"][0].abs().sum()) == 0.0
    assert ds.sample(corrupt, with_images=False).blank_images == 0


def test_check_lists_every_bad_record(mixed_quality: Path, sample_dir: Path) -> None:
    ds = dataset(mixed_quality, ["q.jsonl"], seq_len=48, tokenizer_dir=sample_dir)
    out = io.StringIO()
    assert check(ds, out) == 5
    lines = out.getvalue().splitlines()
    assert [line.split(": ")[1].rsplit(":", 1)[1] for line in lines[:5]] == ["2", "3", "4", "5", "6"]
    assert "pixels do not decode" in lines[3]
    assert lines[5].endswith("6 records, 1 good, 5 bad, 16 image tokens, 7 text tokens"), lines[5]


def test_all_bad_stops_with_a_message(tmp_path: Path, sample_dir: Path) -> None:
    write_jsonl(tmp_path / "bad.jsonl", [{"image": "missing.png", "text": "x"}, {"text": 3}])
    ds = dataset(tmp_path, ["bad.jsonl"], max_skips=5, tokenizer_dir=sample_dir)
    with pytest.raises(ValueError, match=r"bad.jsonl'?: 6 bad records in a row for sample 0"):
        ds.sample(0)


def test_a_language_model_alone_reads_text_records(sample_dir: Path, tmp_path: Path) -> None:
    """No encoder (encoder = policy = None): captions and conversations as text, packed; a record
    with an image, or with the image token in its text, is bad; a tokenizer needs no image token."""
    write_jsonl(tmp_path / "t.jsonl", [
        {"text": "a red circle on blue"},                                                  # 1
        {"conversations": [{"role": "user", "content": "What shape?"},
                           {"role": "assistant", "content": "A circle."}]},                # 2
        {"image": str(sample_dir / "images/00001.png"), "text": "a picture"},              # 3 bad: an image
        {"text": "a marker <image> in text"},                                              # 4 bad: image token
    ])
    ds = dataset(tmp_path, ["t.jsonl"], seq_len=64, tokenizer_dir=sample_dir, encoder=None, policy=None,
                 pack=True, pack_max_records=4, placeholder_id=None)
    seen = Counter()
    for i in range(8):
        s, lay = ds.sample(i), ds.resolve(i, "train")
        seen.update(w.rsplit(":", 1)[1] for w in lay.where)
        assert s.images == {} and lay.images == [] and lay.n_image_tokens == 0
        assert int((s.tokens == IMAGE).sum()) == 0 and s.tokens[0] == BOS and len(lay.where) >= 2
    assert set(seen) == {"1", "2"}  # the bad records were redrawn
    batch = ds.batch(list(range(8)))
    assert batch.tokens.shape == (8, 64) and batch.images == {} and batch.skipped > 0
    # The caption record alone: bos, its text and eos, loss on text and eos.
    one = dataset(tmp_path, ["t.jsonl"], seq_len=64, tokenizer_dir=sample_dir, encoder=None, policy=None,
                  placeholder_id=None)
    lay = one.layout_record(one.sources["train"][0].record(0))
    assert lay.tokens == [BOS, *one.tokenizer.encode("a red circle on blue"), EOS]
    assert lay.targets == [False] + [True] * (len(lay.tokens) - 1)
    for r, message in ((2, "1 images but the config has no image encoder"),
                       (3, "contains the pad or image token outside an image marker")):
        with pytest.raises(RecordError, match=message):
            one.layout_record(one.sources["train"][0].record(r))


def test_a_text_tokenizer_needs_no_image_token_without_an_encoder(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["some plain text"], trainers.BpeTrainer(
        vocab_size=64, special_tokens=["<pad>", "<s>", "</s>", "<unk>"], show_progress=False))
    tok.save(str(tmp_path / "tokenizer.json"))
    text_only = tokenizer(tmp_path, placeholder_id=None)
    assert text_only.image_id is None and text_only.reserved == {0}
    with pytest.raises(ValueError, match=r"data.image_token = '<image>' is not a token of"):
        tokenizer(tmp_path)  # with an encoder it is needed


def test_packing_fills_rows_without_crossing_record_boundaries(sample_dir: Path) -> None:
    plain = dataset(sample_dir, ["captions.jsonl"], seq_len=64)
    packed = dataset(sample_dir, ["captions.jsonl"], seq_len=64, pack=True, pack_max_records=6)
    for i in range(8):
        s, lay = packed.sample(i), packed.resolve(i, "train")
        n = len(lay.tokens)
        assert len(lay.where) >= 2 and n <= 64
        starts = [t for t in range(n) if s.tokens[t] == BOS]
        assert len(starts) == len(lay.where) and starts[0] == 0
        for t in starts[1:]:
            assert s.labels[t - 1] == IGNORE_INDEX  # eos of one record does not predict the next bos
        assert int((s.tokens == IMAGE).sum()) == lay.n_image_tokens == sum(
            (im.shape[1] // 8) * (im.shape[2] // 8) for im in s.images["vision"])
        assert len(s.images["vision"]) == len(lay.where)
    fill_plain = sum(len(plain.resolve(i, "train").tokens) for i in range(8)) / (8 * 64)
    fill_packed = sum(len(packed.resolve(i, "train").tokens) for i in range(8)) / (8 * 64)
    assert fill_packed > 2 * fill_plain, (fill_plain, fill_packed)


def test_mixture_weights_hold_per_block_and_epochs_cover_each_record() -> None:
    assert block_counts([3.0, 1.0]) == [750, 250]
    assert block_counts([1.0, 1.0, 1.0]) == [334, 333, 333]
    mix = Mixture([40, 7], [3.0, 1.0], seed=5, key="train")
    picks = [mix.locate(i) for i in range(2 * BLOCK)]
    assert Counter(d for d, _ in picks[:BLOCK]) == {0: 750, 1: 250}
    assert Counter(d for d, _ in picks[BLOCK:]) == {0: 750, 1: 250}
    small = [r for d, r in picks if d == 1]
    for e in range(len(small) // 7):  # every epoch of the small dataset is a permutation
        assert sorted(small[7 * e: 7 * e + 7]) == list(range(7))
    assert picks == [Mixture([40, 7], [3.0, 1.0], seed=5, key="train").locate(i) for i in range(2 * BLOCK)]
    assert picks != [Mixture([40, 7], [3.0, 1.0], seed=6, key="train").locate(i) for i in range(2 * BLOCK)]
    with pytest.raises(ValueError, match="get no sample in a block"):
        Mixture([10, 10], [1.0, 1e-4], seed=0, key="train")


def test_two_sources_mix_jsonl_and_tar_shards(sample_dir: Path) -> None:
    ds = dataset(sample_dir, ["captions.jsonl", "shards/chat-*.tar"], weights=[1.0, 3.0])
    picks = [ds.mixtures["train"].locate(i)[0] for i in range(BLOCK)]
    assert Counter(picks) == {0: 250, 1: 750}
    for i in range(20):  # the dataset a sample comes from is the one the mixture picked
        assert ("tar" in ds.resolve(i, "train").where[0]) == (picks[i] == 1)
    tar_sample = next(i for i in range(20) if "tar" in ds.resolve(i, "train").where[0])
    assert _targets(ds, ds.sample(tar_sample)).endswith("</s>")


def test_make_sample_from_your_own_images(tmp_path: Path) -> None:
    from PIL import Image

    from titan_mimo.data.make_sample import build
    pics = tmp_path / "pics"
    pics.mkdir()
    for name, size in [("red_car.png", (40, 24)), ("a-blue-boat.jpg", (16, 16)), ("notes.txt", None)]:
        if size:
            Image.new("RGB", size, (200, 30, 30)).save(pics / name)
        else:
            (pics / name).write_text("not a picture")
    paths = build(tmp_path / "out", images=pics, bad_records=False)
    records = [json.loads(x) for x in paths["captions"].read_text().splitlines()]
    assert [r["text"] for r in records] == ["a blue boat", "red car"]
    ds = dataset(tmp_path / "out", ["captions.jsonl"])
    assert sorted(int((ds.sample(i).tokens == IMAGE).sum()) for i in range(2)) == [4, 15]  # 16x16, 24x40
