"""The accelerate training loop: it learns, and it changes only the parameters it is given."""

import pytest
import torch

from crossedge.crossmodal.training import train_steps


def test_learns_and_leaves_other_parameters_alone():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1))
    frozen = {k: v.clone() for k, v in model[0].state_dict().items()}
    x = torch.randn(64, 4)
    y = x.sum(1, keepdim=True)
    seen = []
    losses = train_steps(
        model, list(model[1].parameters()), lambda m, step: ((m(x) - y) ** 2).mean(), 100, lr=1e-2,
        progress=seen.append, clip=1.0,
    )  # fmt: skip
    assert len(losses) == 100 and len(seen) == 100
    assert losses[-1] < 0.5 * losses[0]
    for key, value in model[0].state_dict().items():
        assert torch.equal(value, frozen[key])


def test_all_frozen_is_refused():
    model = torch.nn.Linear(2, 1).requires_grad_(False)
    with pytest.raises(ValueError, match="frozen"):
        train_steps(model, list(model.parameters()), lambda m, s: m(torch.ones(1, 2)).sum(), 1)
