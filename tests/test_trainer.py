"""titan_mimo/trainer.py's step bookkeeping on one process: a step's results are read once, from
the host copy made when the step was queued, and a non-finite step stops the run unless skipping
is on (the loop around it: tests/test_train.py; the numbers: tests/test_layout_invariance.py)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from titan_mimo.config_loader import config_from_dict
from titan_mimo.data.batch import StepData
from titan_mimo.timing import StepTiming
from titan_mimo.trainer import HostCopy, NonFiniteError, StepResult, Trainer


def _result(loss: float, grad_sq: float, stop: float = 0.0) -> StepResult:
    reduced = torch.tensor([loss, grad_sq, stop], dtype=torch.float64)
    return StepResult(global_tokens=10.0, data=StepData(), data_counts={}, timing=StepTiming(),
                      pending=HostCopy(reduced))


def test_step_result_is_read_once_from_its_host_copy():
    result = _result(2.5, 9.0, stop=1.0)
    assert result.loss is None
    result.read()
    assert (result.loss, result.grad_norm, result.stop, result.pending) == (2.5, 3.0, True, None)
    result.read()  # read already: nothing changes
    assert (result.loss, result.grad_norm) == (2.5, 3.0)


def _trainer(skip_nonfinite: bool) -> Trainer:
    cfg = config_from_dict({"training": {"skip_nonfinite_steps": skip_nonfinite}, "modules": {
        "language": {"model": "hybrid_lm/debug", "ranks": 1}}})
    fields = {f.name: None for f in dataclasses.fields(Trainer) if f.init and f.default is dataclasses.MISSING}
    return Trainer(**{**fields, "cfg": cfg})


def test_a_non_finite_step_stops_the_run_unless_skipped():
    result = _result(math.nan, 4.0)
    with pytest.raises(NonFiniteError, match=r"step 3: non-finite loss nan or grad norm 2.0 .*skip_nonfinite_steps"):
        _trainer(skip_nonfinite=False).read_step(2, result)
    _trainer(skip_nonfinite=True).read_step(2, _result(math.inf, 4.0))
    _trainer(skip_nonfinite=False).read_step(2, _result(1.0, 4.0))
