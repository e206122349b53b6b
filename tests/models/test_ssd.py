"""ssd_chunked (the training path) against ssd_sequential (the recurrence, step by step)."""

import pytest
import torch

from titan_mimo.models.language.ssd import segsum, ssd_chunked, ssd_sequential


def _inputs(seq_len: int, *, b=2, h=4, p=3, g=2, n=5, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, seq_len, h, p, generator=gen, dtype=dtype)
    dt = torch.rand(b, seq_len, h, generator=gen, dtype=dtype) * 0.5 + 0.01
    A = -torch.rand(h, generator=gen, dtype=dtype) * 3 - 0.1
    B = torch.randn(b, seq_len, g, n, generator=gen, dtype=dtype)
    C = torch.randn(b, seq_len, g, n, generator=gen, dtype=dtype)
    D = torch.randn(h, generator=gen, dtype=dtype)
    return x, dt, A, B, C, D


@pytest.mark.parametrize("seq_len", [1, 5, 8, 13, 24, 37])
@pytest.mark.parametrize("with_D", [True, False])
def test_chunked_matches_sequential(seq_len, with_D):
    x, dt, A, B, C, D = _inputs(seq_len)
    D = D if with_D else None
    y_chunked = ssd_chunked(x, dt, A, B, C, chunk_size=8, D_H=D)
    y_seq = ssd_sequential(x, dt, A, B, C, D_H=D)
    assert y_chunked.shape == (2, seq_len, 4, 3)
    assert (y_chunked - y_seq).abs().max().item() < 1e-10


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_groups(groups):
    x, dt, A, B, C, D = _inputs(11, h=4, g=groups, seed=1)
    err = (ssd_chunked(x, dt, A, B, C, 4, D) - ssd_sequential(x, dt, A, B, C, D)).abs().max()
    assert err.item() < 1e-10


def test_gradients_match_sequential():
    inputs = [t.requires_grad_() for t in _inputs(13, seed=2)]
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(2, 13, 4, 3, dtype=torch.float64, generator=gen)
    y_chunked = ssd_chunked(*inputs[:5], 4, inputs[5])
    grads_chunked = torch.autograd.grad((y_chunked * weight).sum(), inputs)
    grads_seq = torch.autograd.grad((ssd_sequential(*inputs) * weight).sum(), inputs)
    for name, gc, gs in zip("x dt A B C D".split(), grads_chunked, grads_seq):
        assert torch.isfinite(gc).all(), name
        assert (gc - gs).abs().max().item() < 1e-10, name


def test_strong_decay_stays_finite():
    # exp of a long negative segment sum underflows to 0; masked entries must not turn into NaN.
    x, dt, A, B, C, D = _inputs(64, seed=4, dtype=torch.float32)
    A = A * 100
    y = ssd_chunked(x.requires_grad_(), dt, A, B, C, 32, D)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    err = (y.double() - ssd_sequential(*(t.double() for t in (x, dt, A, B, C, D)))).abs().max()
    assert err.item() < 1e-4


def test_low_precision_input_keeps_dtype():
    x, dt, A, B, C, D = _inputs(9, dtype=torch.bfloat16)
    assert ssd_chunked(x, dt, A, B, C, 4, D).dtype == torch.bfloat16


def test_segsum():
    a = torch.tensor([1.0, 2.0, 3.0])
    expected = torch.tensor(
        [[0.0, -torch.inf, -torch.inf], [2.0, 0.0, -torch.inf], [5.0, 3.0, 0.0]]
    )
    assert torch.equal(segsum(a), expected)


def test_shape_errors():
    x, dt, A, B, C, D = _inputs(4, h=4, g=2)
    with pytest.raises(ValueError, match="dt"):
        ssd_chunked(x, dt[..., :3], A, B, C, 4)
    with pytest.raises(ValueError, match="G dividing"):
        three_groups = B[:, :, :1].expand(-1, -1, 3, -1)
        ssd_chunked(x, dt, A, three_groups, three_groups, 4)
