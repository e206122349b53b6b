"""Vision module: ViT encoder + pixel-shuffle projector, pure PyTorch."""

from .args import VIT_FLAVORS, ViTArgs
from .model import ViT, VisionModule
from .projector import Projector, pixel_shuffle

__all__ = ["Projector", "VIT_FLAVORS", "ViT", "ViTArgs", "VisionModule", "pixel_shuffle"]
