"""Image preprocessing: the size an image is resized to (from its header alone), and its
pixels decoded, resized and normalised (encoder ranks only).

The target size depends only on the image's stored size, so a language rank can lay out the
image's placeholder tokens, (H / cell) * (W / cell) of them with cell = patch_size *
pixel_shuffle, from the header without decoding pixels, and agree with the encoder rank that
decodes them.

Policies:
- fixed: every image is resized to `fixed_size` [H, W] (aspect ratio not kept).
- dynamic: aspect ratio kept, each side rounded to a multiple of `cell`, scaled so the area
  lies within [min_pixels, max_pixels] (the rule of Qwen2-VL's `smart_resize`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from titan_mimo.data.records import ImageRef, RecordError

_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that displays the image upright (as ImageOps.exif_transpose).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
            7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
_TRANSPOSED = {5, 6, 7, 8}  # orientations that swap width and height


def _orientation(im: Image.Image) -> int:
    """EXIF orientation from what `Image.open` parsed. `getexif()` alone could decode the whole
    file to find a late EXIF chunk (PNG), and both roles must see the same value: only EXIF
    present at open time counts."""
    return im.getexif().get(_EXIF_ORIENTATION, 1) if "exif" in im.info else 1


@dataclass(frozen=True, kw_only=True)
class ImagePolicy:
    cell: int
    """patch_size * pixel_shuffle of the encoder: one image token per cell x cell pixels."""
    resize: str = "dynamic"
    """"fixed" or "dynamic"."""
    fixed_size: tuple[int, int] = (16, 16)
    min_pixels: int = 64
    max_pixels: int = 4096
    max_aspect_ratio: float = 20.0
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    channels: int = 3

    def __post_init__(self) -> None:
        c = self.cell
        if self.resize == "fixed" and (self.fixed_size[0] % c or self.fixed_size[1] % c):
            raise ValueError(f"data.fixed_size = {list(self.fixed_size)} is not a multiple of {c} pixels "
                             "(patch_size * pixel_shuffle of the encoder)")
        if self.resize == "dynamic" and self.max_pixels < c * c:
            raise ValueError(f"data.max_pixels = {self.max_pixels} is below one {c}x{c} cell "
                             "(patch_size * pixel_shuffle of the encoder)")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"data.image_mean / data.image_std need {self.channels} values "
                             f"(the encoder's in_channels), got {list(self.mean)} / {list(self.std)}")

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) the image is resized to: multiples of cell."""
        if self.resize == "fixed":
            return self.fixed_size
        c = self.cell
        h = max(c, round(height / c) * c)
        w = max(c, round(width / c) * c)
        if h * w > self.max_pixels:
            beta = math.sqrt(height * width / self.max_pixels)
            h = max(c, math.floor(height / beta / c) * c)
            w = max(c, math.floor(width / beta / c) * c)
        elif h * w < self.min_pixels:
            beta = math.sqrt(self.min_pixels / (height * width))
            h = math.ceil(height * beta / c) * c
            w = math.ceil(width * beta / c) * c
        return h, w

    def tokens(self, size: tuple[int, int]) -> int:
        """Image tokens the encoder emits for a resized image: (H / cell) * (W / cell)."""
        return (size[0] // self.cell) * (size[1] // self.cell)

    def header_size(self, ref: ImageRef, handles) -> tuple[int, int]:
        """Stored (height, width) after EXIF rotation, from the header only (no pixel decode);
        RecordError if the file is missing, not an image, or too elongated."""
        try:
            with ref.open(handles) as f, Image.open(f) as im:
                width, height = im.size
                if _orientation(im) in _TRANSPOSED:
                    width, height = height, width
        except RecordError:
            raise
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise RecordError(f"image {ref.describe()}: {type(e).__name__}: {e}") from None
        if min(width, height) < 1 or max(width, height) / min(width, height) > self.max_aspect_ratio:
            raise RecordError(f"image {ref.describe()}: {width}x{height} is more elongated than "
                              f"data.max_aspect_ratio = {self.max_aspect_ratio}")
        return height, width

    def load(self, ref: ImageRef, handles, size: tuple[int, int]) -> Tensor:
        """Decoded, EXIF-rotated, resized to `size` (H, W) and normalised: [C, H, W] float32."""
        with ref.open(handles) as f, Image.open(f) as im:
            orientation = _orientation(im)
            if orientation in _UPRIGHT:
                im = im.transpose(_UPRIGHT[orientation])
            im = im.convert("RGB" if self.channels == 3 else "L")
            im = im.resize((size[1], size[0]), Image.Resampling.BICUBIC)
            pixels = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        x_CHW = pixels.view(size[0], size[1], self.channels).permute(2, 0, 1).float() / 255.0
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return (x_CHW - mean) / std
