"""Build a small image-text dataset in the documented format, to try the real-data path:

    python -m titan_mimo.data.make_sample --out outputs/sample_data            # generated images
    python -m titan_mimo.data.make_sample --out my_data --images ~/Pictures    # your own images

Writes into --out:
    images/*.png            generated pictures: a coloured shape on a background, mixed sizes
    captions.jsonl          caption records {"image", "text"} (plus a few deliberately bad ones
                            that training skips and counts; --no-bad-records leaves them out)
    chat.jsonl              conversation records {"image", "conversations"}: loss on answers only
    shards/chat-0000N.tar   the conversations again as WebDataset-style tar shards
                            (key.png + key.json)
    val.jsonl               held-out caption records
    tokenizer.json          a BPE tokenizer trained on the texts, special tokens
                            <pad>=0 <image>=1 <s>=2 </s>=3 <unk>=4

With --images, captions are the file names' words ("red_car.jpg" -> "red car"). The generated
task is learnable only through the image: the caption names the shape and its colour.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ["<pad>", "<image>", "<s>", "</s>", "<unk>"]
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
           "white": (245, 245, 245), "black": (15, 15, 15), "purple": (140, 50, 170), "orange": (245, 140, 30)}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ((16, 16), (24, 24), (32, 32), (16, 32), (32, 16), (24, 40), (40, 24), (48, 32))
"""(height, width) of generated images."""
QUESTIONS = {"colour": "What colour is the shape?", "shape": "What shape do you see?"}


def draw(shape: str, colour: str, background: str, size: tuple[int, int], rng: random.Random) -> Image.Image:
    h, w = size
    im = Image.new("RGB", (w, h), COLOURS[background])
    d = ImageDraw.Draw(im)
    side = int(min(h, w) * rng.uniform(0.55, 0.85))
    x0, y0 = rng.randint(0, w - side), rng.randint(0, h - side)
    box = (x0, y0, x0 + side - 1, y0 + side - 1)
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    elif shape == "triangle":
        d.polygon([(x0 + side // 2, y0), (x0, y0 + side - 1), (x0 + side - 1, y0 + side - 1)], fill=fill)
    else:
        t = max(1, side // 4)
        d.rectangle((x0 + side // 2 - t, y0, x0 + side // 2 + t, y0 + side - 1), fill=fill)
        d.rectangle((x0, y0 + side // 2 - t, x0 + side - 1, y0 + side // 2 + t), fill=fill)
    return im


def generate(folder: Path, n: int, rng: random.Random, prefix: str) -> list[dict]:
    """n generated images in folder/images; returns their facts (path relative to folder)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    facts = []
    for i in range(n):
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        background = rng.choice([c for c in COLOURS if c != colour])
        rel = f"images/{prefix}{i:05d}.png"
        draw(shape, colour, background, rng.choice(SIZES), rng).save(folder / rel)
        facts.append({"image": rel, "shape": shape, "colour": colour, "background": background})
    return facts


def from_folder(folder: Path, images: Path) -> list[dict]:
    """Your own images, linked by absolute path, captioned by their file names."""
    files = sorted(p for p in images.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if not files:
        raise SystemExit(f"--images {images}: no .png/.jpg/.jpeg/.webp files found")
    return [{"image": str(p.resolve()), "caption": " ".join(p.stem.replace("-", "_").split("_"))}
            for p in files]


def caption(fact: dict) -> str:
    if "caption" in fact:
        return fact["caption"]
    return f"a {fact['colour']} {fact['shape']} on {fact['background']}"


def conversation(fact: dict, rng: random.Random) -> list[dict]:
    if "caption" in fact:
        return [{"role": "user", "content": "<image>\nDescribe the picture."},
                {"role": "assistant", "content": fact["caption"]}]
    kind = rng.choice(list(QUESTIONS))
    answer = f"It is {fact['colour']}." if kind == "colour" else f"A {fact['shape']}."
    turns = [{"role": "user", "content": f"<image>\n{QUESTIONS[kind]}"}, {"role": "assistant", "content": answer}]
    if rng.random() < 0.5:  # a second, text-only exchange about the same picture
        turns += [{"role": "user", "content": "And the background?"},
                  {"role": "assistant", "content": f"It is {fact['background']}."}]
    return turns


def write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def write_shards(folder: Path, records: list[dict], per_shard: int, name: str) -> None:
    """WebDataset-style: key.png + key.json per record, `per_shard` records per tar."""
    (folder / "shards").mkdir(exist_ok=True)
    for s in range(0, len(records), per_shard):
        with tarfile.open(folder / "shards" / f"{name}-{s // per_shard:05d}.tar", "w") as tar:
            for k, r in enumerate(records[s: s + per_shard]):
                key = f"{name}{s + k:06d}"
                body = {key_: v for key_, v in r.items() if key_ != "image"}
                for member, data in ((f"{key}.png", Path(r["image"]) if Path(r["image"]).is_absolute()
                                      else folder / r["image"]), (f"{key}.json", json.dumps(body).encode())):
                    payload = data.read_bytes() if isinstance(data, Path) else data
                    info = tarfile.TarInfo(member)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def build(out: Path, n: int = 400, n_val: int = 40, seed: int = 0, images: Path | None = None,
          bad_records: bool = True, vocab_size: int = 256, per_shard: int = 100) -> dict[str, Path]:
    """Write the sample dataset; returns the paths of what it wrote."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    facts = from_folder(out, images) if images else generate(out, n, rng, "")
    val_facts = facts[-max(1, len(facts) // 10):] if images else generate(out, n_val, rng, "val")
    captions = [{"image": f["image"], "text": caption(f)} for f in facts]
    chats = [{"image": f["image"], "conversations": conversation(f, rng)} for f in facts]
    if bad_records:
        (out / "images" / "not_an_image.png").parent.mkdir(parents=True, exist_ok=True)
        (out / "images" / "not_an_image.png").write_text("this is not a PNG")
        captions[len(captions) // 3: len(captions) // 3] = [
            {"image": "images/missing.png", "text": "a picture that does not exist"},
            {"image": "images/not_an_image.png", "text": "a file that is not an image"},
            {"image": captions[0]["image"], "text": " ".join(["far too long"] * 200)},
        ]
    paths = {"captions": out / "captions.jsonl", "chat": out / "chat.jsonl", "val": out / "val.jsonl",
             "tokenizer": out / "tokenizer.json", "shards": out / "shards"}
    write_jsonl(paths["captions"], captions)
    write_jsonl(paths["chat"], chats)
    write_jsonl(paths["val"], [{"image": f["image"], "text": caption(f)} for f in val_facts])
    write_shards(out, chats, per_shard, "chat")
    texts = [r["text"] for r in captions] + [t["content"] for r in chats for t in r["conversations"]]
    texts += ["User: ", "Assistant: ", "System: "]
    train_tokenizer(texts, vocab_size).save(str(paths["tokenizer"]))
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("outputs/sample_data"), help="output folder")
    p.add_argument("--n", type=int, default=400, help="generated training images")
    p.add_argument("--n-val", type=int, default=40, help="generated validation images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=Path, default=None, help="use the images under this folder instead")
    p.add_argument("--vocab-size", type=int, default=256, help="tokenizer vocabulary (<= the LM's)")
    p.add_argument("--no-bad-records", action="store_true", help="leave out the deliberately bad records")
    a = p.parse_args(argv)
    paths = build(a.out, a.n, a.n_val, a.seed, a.images, not a.no_bad_records, a.vocab_size)
    for name, path in paths.items():
        print(f"{name:>9}: {path}")


if __name__ == "__main__":
    main()
