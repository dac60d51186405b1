"""Once-for-all sub-network extraction, the meta-learned latency predictor, and the search."""

import random

import pytest
import torch
from torch import nn

from crossedge.core import CrossedgeError
from crossedge.ondevice.data import digits_task
from crossedge.ondevice.elastic import (
    ElasticDepthwise,
    ElasticMobileNet,
    ShrinkingSchedule,
    SubnetConfig,
    calibrate_batch_norm,
    extract_subnet,
    largest,
    progressive_shrinking,
    sample_subnet,
    smallest,
)
from crossedge.ondevice.latency import (
    DeviceConfig,
    MetaLatencyPredictor,
    fit_from_scratch,
    spearman,
    synthetic_latencies,
)
from crossedge.ondevice.search import distinct_subnets, measure_latency, model_memory_bytes
from crossedge.ondevice.training import accuracy


def _perturbed_supernet(seed=0):
    torch.manual_seed(seed)
    net = ElasticMobileNet()
    # Non-trivial statistics and kernel transforms, so a wrong slice or transform would show.
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
        if isinstance(m, ElasticDepthwise):
            for p in m.transforms.values():
                p.data += 0.1 * torch.randn_like(p)
    return net.eval()


def test_extracted_subnet_output_equals_the_elastic_network():
    net = _perturbed_supernet()
    net.sort_channels()
    x = torch.randn(3, 1, 8, 8)
    rng = random.Random(0)
    configs = [largest(net.space), smallest(net.space), *(sample_subnet(net.space, rng) for _ in range(6))]
    for config in configs:
        sub = extract_subnet(net, config)
        with torch.no_grad():
            torch.testing.assert_close(sub(x), net(x, config), rtol=0, atol=1e-5)
        blocks = sum(config.depths) + 1
        assert len(sub.inverted_residuals()) == blocks
    small, big = extract_subnet(net, configs[1]), extract_subnet(net, configs[0])
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in big.parameters())


def test_sorting_channels_keeps_the_function():
    net = _perturbed_supernet(1)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        before = net(x)
        net.sort_channels()
        torch.testing.assert_close(net(x), before, rtol=0, atol=1e-5)


def test_out_of_space_subnet_is_refused():
    net = ElasticMobileNet()
    bad = SubnetConfig((3, 3, 3), (7,) * 9, (6,) * 9)
    with pytest.raises(CrossedgeError, match="outside the elastic space"):
        extract_subnet(net, bad)


def test_progressive_shrinking_runs_every_phase_and_learns():
    task = digits_task()
    schedule = ShrinkingSchedule(full=2, kernel=1, depth=1, width=1, subnets_per_step=1, batch_size=96)
    net = progressive_shrinking(task.train, schedule=schedule)
    assert [e["phase"] for e in schedule.log] == ["full", "full", "kernel", "depth", "width"]
    assert schedule.log[1]["loss"] < schedule.log[0]["loss"]
    # Shared batch-norm statistics fit no single sub-network: calibrate after extraction, as OFA does.
    sub = calibrate_batch_norm(extract_subnet(net, smallest(net.space)), task.train)
    assert accuracy(sub, task.test) > 30.0  # chance is 10%, even for the smallest sub-network


def test_meta_learned_predictor_ranks_a_held_out_configuration():
    net = ElasticMobileNet()
    subnets = distinct_subnets(net.space, 90, seed=0)
    devices = synthetic_latencies(net.space, subnets, 7, seed=1)
    predictor = MetaLatencyPredictor(net.space, subnets[:10], seed=0)
    losses = predictor.meta_train(subnets, {f"synthetic-{i}": devices[i] for i in range(5)}, episodes=300)
    assert sum(losses[-30:]) < sum(losses[:30])
    for held_out in (5, 6):
        truth = devices[held_out]
        predicted = predictor.adapt(truth[:10]).predict(subnets[10:])
        assert spearman(predicted, truth[10:]) > 0.85
        scale = sum(predicted) / sum(truth[10:])
        assert 0.5 < scale < 2.0
    scratch = fit_from_scratch(net.space, subnets[:10], devices[6][:10])(subnets[10:])
    assert len(scratch) == 80


def test_predictor_adaptation_needs_one_latency_per_reference():
    net = ElasticMobileNet()
    subnets = distinct_subnets(net.space, 12)
    predictor = MetaLatencyPredictor(net.space, subnets[:10])
    with pytest.raises(CrossedgeError, match="one latency per reference"):
        predictor.adapt([1e-3] * 3)


def test_device_config_labels_round_trip_and_latency_is_measured():
    config = DeviceConfig.parse("torch-eager/t1/float32")
    assert config == DeviceConfig("torch-eager", 1, "float32") and config.label() == "torch-eager/t1/float32"
    with pytest.raises(CrossedgeError, match="should look like"):
        DeviceConfig.parse("eager")
    net = ElasticMobileNet()
    model = extract_subnet(net, smallest(net.space))
    assert 0 < measure_latency(model, config, repeats=2) < 5
    assert model_memory_bytes(model) < model_memory_bytes(extract_subnet(net, largest(net.space)))
