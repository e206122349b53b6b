"""Pixel shuffle grouping and the projector's shapes and errors."""

import pytest
import torch

from titan_mimo.models.vision.projector import Projector, pixel_shuffle


def test_pixel_shuffle_groups_neighbours():
    x = torch.arange(4 * 6, dtype=torch.float32).view(1, 4, 6, 1)
    y = pixel_shuffle(x, 2)
    assert y.shape == (1, 2, 3, 4)
    # Output token (0, 1) holds patches (0,2), (0,3), (1,2), (1,3) in row-major order.
    assert y[0, 0, 1].tolist() == [2.0, 3.0, 8.0, 9.0]
    assert y[0, 1, 2].tolist() == [16.0, 17.0, 22.0, 23.0]


def test_pixel_shuffle_factor_one_is_identity():
    x = torch.randn(2, 3, 5, 7)
    assert torch.equal(pixel_shuffle(x, 1), x)


def test_pixel_shuffle_error():
    with pytest.raises(ValueError, match="3x4 is not divisible by pixel_shuffle=2"):
        pixel_shuffle(torch.randn(1, 3, 4, 8), 2)


def test_projector_shape():
    projector = Projector(dim=8, factor=2, hidden=16, out_dim=12, eps=1e-6)
    y = projector(torch.randn(3, 4 * 6, 8), (4, 6))
    assert y.shape == (3, 6, 12)
    assert projector.norm.normalized_shape == (32,)
