"""WiSE-FT (training/wise.py): the mix of the probe's and the fine-tuned weights is chosen on
validation evidence, and on constructed cases whose answer is known it picks that answer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regraft.training.loop import EvalResult
from regraft.training.wise import choose_mix, mix_state

# two well separated classes on a line through the origin
X = torch.cat([torch.randn(40, 2, generator=torch.Generator().manual_seed(0)) * 0.3 + torch.tensor([2.0, 0.0]),
               torch.randn(40, 2, generator=torch.Generator().manual_seed(1)) * 0.3 - torch.tensor([2.0, 0.0])])
Y = torch.cat([torch.zeros(40, dtype=torch.long), torch.ones(40, dtype=torch.long)])
RIGHT = {"weight": torch.tensor([[2.0, 0.0], [-2.0, 0.0]]), "bias": torch.zeros(2)}


def _evaluate(model: nn.Module) -> EvalResult:
    with torch.no_grad():
        logits = model(X)
    acc = float((logits.argmax(1) == Y).float().mean())
    return EvalResult(loss=float(F.cross_entropy(logits, Y)), n=len(Y), figures={"val_acc": acc})


def _ends(start, end) -> tuple[tuple[float, float], tuple[float, float]]:
    model = nn.Linear(2, 2)
    out = []
    for state in (start, end):
        model.load_state_dict(state)
        r = _evaluate(model)
        out.append((r.score, r.loss))
    return out[0], out[1]


def _choose(start, end):
    model = nn.Linear(2, 2)
    mix = choose_mix(model, start=start, end=end, ends=_ends(start, end), evaluate=_evaluate)
    return mix, model


def test_fine_tuning_that_broke_the_probe_keeps_alpha_0():
    wrong = {"weight": -RIGHT["weight"], "bias": RIGHT["bias"]}  # the fine-tuned end predicts every class backwards
    mix, model = _choose(RIGHT, wrong)
    assert mix.alpha == 0.0 and mix.result is None
    assert torch.equal(model.weight, RIGHT["weight"])  # the model holds the chosen weights
    assert [a for a, _, _ in mix.tried] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_fine_tuning_that_beat_the_probe_everywhere_keeps_alpha_1():
    weak = {"weight": torch.tensor([[0.05, 0.0], [-0.05, 0.0]]), "bias": torch.tensor([0.3, -0.3])}  # right on some, shy
    mix, model = _choose(weak, RIGHT)
    assert mix.alpha == 1.0
    assert torch.equal(model.weight, RIGHT["weight"])


def test_two_ends_wrong_in_opposite_ways_meet_in_the_middle():
    # each end has a bias that drowns the features: all class 0, or all class 1; their mean is RIGHT
    to_zero = {"weight": RIGHT["weight"], "bias": torch.tensor([20.0, -20.0])}
    to_one = {"weight": RIGHT["weight"], "bias": torch.tensor([-20.0, 20.0])}
    mix, model = _choose(to_zero, to_one)
    assert mix.alpha == 0.5 and mix.score == 1.0
    assert mix.result is not None and mix.result.score == 1.0
    torch.testing.assert_close(model.bias, torch.zeros(2))


def test_mix_state_mixes_floats_and_takes_integer_buffers_from_the_end():
    bn_a, bn_b = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    bn_a.running_mean.fill_(1.0)
    bn_b.running_mean.fill_(3.0)
    bn_b.num_batches_tracked.fill_(7)
    mixed = mix_state(bn_a.state_dict(), bn_b.state_dict(), 0.25)
    torch.testing.assert_close(mixed["running_mean"], torch.full((3,), 1.5))
    assert mixed["num_batches_tracked"].item() == 7 and mixed["num_batches_tracked"].dtype == torch.long


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_mix_state_at_the_ends_is_each_end(alpha):
    a, b = nn.Linear(3, 2).state_dict(), nn.Linear(3, 2).state_dict()
    mixed = mix_state(a, b, alpha)
    for key in a:
        torch.testing.assert_close(mixed[key], (a if alpha == 0 else b)[key])
