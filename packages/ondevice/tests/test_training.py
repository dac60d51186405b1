"""Digits transfer task, the fine-tuning methods and the sparse-update scheme."""

import pytest
import torch
from torch import nn

from crossedge.core import CrossedgeError
from crossedge.ondevice.data import digits_task, transfer_tasks
from crossedge.ondevice.finetune_methods import PartialConv2d
from crossedge.ondevice.training import run_finetune

SMALL = {"width_mult": 0.5, "pretrain_epochs": 3, "epochs": 2, "batch_size": 32}


def test_transfer_tasks_are_disjoint_real_digits():
    source, target = transfer_tasks()
    assert source.classes == (0, 1, 2, 3, 4) and target.classes == (5, 6, 7, 8, 9)
    for task in (source, target):
        assert task.train.x.shape[1:] == (1, 8, 8)
        assert set(task.train.y.tolist()) == set(range(5)) == set(task.test.y.tolist())
        assert 0.25 < len(task.test) / (len(task.train) + len(task.test)) < 0.35
    whole = digits_task()
    assert len(whole.train) + len(whole.test) == 1797
    with pytest.raises(CrossedgeError, match="distinct digits"):
        digits_task((1, 1))


def test_full_transfer_training_beats_chance_and_improves():
    result = run_finetune("full", blocks=2, **SMALL)
    assert result.accuracy > 60.0  # five classes: chance is 20%
    assert result.accuracy > result.accuracy_before
    assert result.memory.saved_activation_bytes > 0


def test_mobiletl_keeps_less_for_backward_than_full_tuning_of_the_same_blocks():
    full = run_finetune("full", blocks=2, **{**SMALL, "epochs": 1})
    tl = run_finetune("mobiletl", blocks=2, **{**SMALL, "epochs": 1})
    assert tl.memory.saved_activation_bytes < 0.6 * full.memory.saved_activation_bytes
    assert tl.accuracy > 40.0


def test_sparse_scheme_fits_the_budget():
    result = run_finetune("sparse", budget_kb=120, **{**SMALL, "epochs": 1})
    assert result.memory.training_bytes <= 120 * 1024
    scheme = result.details["scheme"]
    assert scheme["biases"] or scheme["weights"]
    with pytest.raises(CrossedgeError, match="budget"):
        run_finetune("sparse", budget_kb=1, **{**SMALL, "epochs": 1})


def test_bias_method_trains_only_shifts_and_head():
    from crossedge.ondevice.networks import MobileNetV2

    result = run_finetune("bias", **{**SMALL, "epochs": 1})
    net = MobileNetV2(width_mult=0.5, num_classes=5)
    shifts = sum(m.num_features for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    head = sum(p.numel() for p in net.classifier.parameters())
    assert result.memory.trainable_parameters == shifts + head
    with pytest.raises(CrossedgeError, match="unknown fine-tuning method"):
        run_finetune("everything")


def test_partial_conv_matches_conv_and_trains_only_its_channels():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1, bias=False)
    partial = PartialConv2d(conv)
    partial.set_ratio(0.25)
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(partial(x), conv(x))
    partial(x).sum().backward()
    assert partial.trained.grad.shape == (2, 4, 3, 3)
    assert [n for n, p in partial.named_parameters() if p.requires_grad] == ["trained"]
