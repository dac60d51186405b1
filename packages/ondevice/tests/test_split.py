"""Slimmable split encoders: wire format, shared weights, controller, training, save/load, CLI."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from crossedge.core import CrossedgeError
from crossedge.ondevice.split.bottleneck import HEADER_BYTES, Payload, pack_codes, payload_size, quantize, unpack_codes
from crossedge.ondevice.split.cli import split
from crossedge.ondevice.split.data import load_task
from crossedge.ondevice.split.evaluation import SettingCost, measure_costs
from crossedge.ondevice.split.link import (
    AdaptivePolicy,
    BandwidthTrace,
    DeadlineController,
    FixedPolicy,
    simulate,
)
from crossedge.ondevice.split.model import SplitConfig, SplitNetwork, load_network, save_network
from crossedge.ondevice.split.training import TrainConfig, sandwich, train, train_step

TINY = {"encoder_channels": (8, 8, 8), "bottleneck_channels": 4, "decoder_channels": 8}


@pytest.fixture(scope="module")
def digits():
    return load_task("digits")


def tiny_network(digits, **overrides) -> SplitNetwork:
    torch.manual_seed(0)
    config = SplitConfig(image_size=8, **{**TINY, **overrides})
    return SplitNetwork(config).eval()


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_unpack_round_trip_is_exact(bits):
    rng = np.random.default_rng(bits)
    for count in (1, 7, 8, 9, 101):
        codes = rng.integers(0, 1 << bits, size=count, dtype=np.uint8)
        data = pack_codes(codes, bits)
        assert len(data) == math.ceil(count * bits / 8)
        assert np.array_equal(unpack_codes(data, count, bits), codes)


def test_codes_that_do_not_fit_are_refused():
    with pytest.raises(CrossedgeError, match="does not fit in 2 bits"):
        pack_codes(np.array([4], dtype=np.uint8), 2)
    with pytest.raises(CrossedgeError, match="need 2 bytes"):
        unpack_codes(b"\x00", 4, 4)


def test_quantizer_uses_every_level_and_keeps_error_within_half_a_step():
    x = torch.rand(3, 2, 4, 4) * 6
    for bits in (2, 4, 8):
        codes, scale = quantize(x, bits)
        assert int(codes.max()) == (1 << bits) - 1  # the per-image maximum maps to the top code
        error = (codes.float() * scale.view(-1, 1, 1, 1) - x).abs()
        assert bool((error <= scale.view(-1, 1, 1, 1) / 2 + 1e-6).all())


def test_bottleneck_sends_the_stated_bytes_and_the_server_reconstructs_exactly(digits):
    network = tiny_network(digits)
    h, w = network.config.bottleneck_size
    assert (h, w) == (2, 2)
    image = digits.test.x[:1]
    seen = set()
    for setting in network.settings:
        data = network.device_encode(image, setting)
        channels = network.config.channels_at(4)[setting.width_index]
        assert len(data) == setting.payload_bytes == HEADER_BYTES + math.ceil(channels * h * w * setting.bits / 8)
        assert len(data) == payload_size(channels, h, w, setting.bits)
        payload = network.receive(data)
        assert (payload.width_index, payload.bits) == (setting.width_index, setting.bits)
        # What the device quantized, bit for bit, and the same logits as running both halves here.
        with torch.no_grad():
            z = network.encoder(image, setting.width_index)
            codes, scale = quantize(z, setting.bits)
            device_values = codes.float() * scale.view(-1, 1, 1, 1)
            assert torch.equal(payload.values(), device_values)
            assert torch.equal(network.server_decode(data), network(image, setting))
        seen.add(len(data))
    assert len(seen) > 3  # the settings really send different amounts


def test_a_corrupt_or_foreign_payload_is_refused(digits):
    network = tiny_network(digits)
    data = network.device_encode(digits.test.x[:1], network.settings[0])
    with pytest.raises(CrossedgeError, match="need"):
        network.server_decode(data[:-1])
    bad = Payload(9, 2, 1.0, np.zeros((1, 2, 2), dtype=np.uint8)).to_bytes()
    with pytest.raises(CrossedgeError, match="width index 9"):
        network.server_decode(bad)


def test_every_width_runs_and_the_widths_share_weights(digits):
    network = tiny_network(digits)
    x = digits.test.x[:5]
    outputs = {}
    for setting in network.settings:
        logits = network(x, setting)
        assert logits.shape == (5, 10) and torch.isfinite(logits).all()
        outputs[setting.label] = logits
    # One weight tensor per conv: the narrow widths use a slice of the wide one.
    conv = network.encoder.convs[1]
    assert conv.weight.shape[0] == 8 and conv.out_per_width == [2, 4, 6, 8]
    assert sum(1 for name, _ in network.named_parameters() if "convs.1.weight" in name) == 1
    # Changing a weight only the full width reads leaves the narrowest output unchanged...
    small, big = network.settings[0], network.settings[-1]
    before_small, before_big = network(x, small), network(x, big)
    with torch.no_grad():
        conv.weight[-1] += 1.0
    assert torch.equal(network(x, small), before_small)
    assert not torch.equal(network(x, big), before_big)
    # ... and one the narrowest reads changes every width.
    with torch.no_grad():
        conv.weight[0, 0] += 1.0
    assert all(not torch.equal(network(x, s), outputs[s.label]) for s in (small, big))


def test_norm_none_has_no_batch_norm_and_runs(digits):
    network = tiny_network(digits, norm="none")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules())
    assert network(digits.test.x[:2], network.settings[0]).shape == (2, 10)


def test_sandwich_always_has_the_extremes():
    network = SplitNetwork(SplitConfig(image_size=8, **TINY))
    rng = random.Random(0)
    for _ in range(10):
        chosen = sandwich(network, rng, 2)
        assert chosen[0].label == "w1.00-b8" and chosen[1].label == "w0.25-b2"
        assert len({s.label for s in chosen}) == 4


def test_training_a_few_steps_lowers_the_loss(digits):
    network = tiny_network(digits)
    x, y = digits.train.x[:128], digits.train.y[:128]
    big, small = network.settings[-1], network.settings[0]

    def loss() -> float:
        network.train()  # batch statistics: the loss the steps minimize, not lagging running averages
        with torch.no_grad():
            return sum(float(torch.nn.functional.cross_entropy(network(x, s), y)) for s in (big, small))

    before = loss()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    rng = random.Random(0)
    for _ in range(25):
        train_step(network, optimizer, x, y, sandwich(network, rng, 1), distill=True)
    assert loss() < 0.7 * before


def test_train_records_losses(digits):
    network = tiny_network(digits)
    result = train(network, digits.train, TrainConfig(epochs=2, batch_size=128), progress=False)
    assert result.steps == 2 * math.ceil(len(digits.train) / 128)
    assert result.largest_loss[1] < result.largest_loss[0]


def test_save_and_reload_is_identical_and_a_mismatched_file_is_refused(digits, tmp_path):
    network = tiny_network(digits)
    train(network, digits.train, TrainConfig(epochs=1, batch_size=256), progress=False)
    path = save_network(network, tmp_path / "split.safetensors")
    again = load_network(path)
    x = digits.test.x[:4]
    for setting in network.settings:
        assert torch.equal(again(x, setting), network(x, setting))
    with pytest.raises(CrossedgeError, match="different split network"):
        load_network(path, SplitConfig(image_size=8, **{**TINY, "bottleneck_channels": 6}))
    # A safetensors file from elsewhere is neither loaded nor overwritten.
    from safetensors.torch import save_file

    foreign = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CrossedgeError, match="not a split network"):
        load_network(foreign)
    with pytest.raises(CrossedgeError, match="--force"):
        save_network(network, foreign)
    assert set(__import__("safetensors.torch").torch.load_file(str(foreign))) == {"w"}
    # Weights that do not match the file's own config are refused too.
    tensors = {k: v for k, v in network.state_dict().items() if k != "decoder.classifier.bias"}
    from crossedge.ondevice.split.model import FILE_FORMAT

    broken = tmp_path / "broken.safetensors"
    save_file(
        tensors,
        str(broken),
        metadata={"format": FILE_FORMAT, "config": __import__("json").dumps(network.config.to_dict())},
    )
    with pytest.raises(CrossedgeError, match="does not match its own config"):
        load_network(broken)


def _cost(name, nbytes, accuracy, device=1.0, server=1.0, width=1.0) -> SettingCost:
    return SettingCost(
        name, "split", width, 4, nbytes, [device] * 3, [server] * 3, accuracy, accuracy, np.ones(10, bool)
    )


COSTS = [
    _cost("small", 50, 90.0, width=0.25),
    _cost("mid", 200, 94.0, width=0.5),
    _cost("big", 800, 97.0, width=1.0),
]


@pytest.mark.parametrize("mbps", [0.02, 0.05, 0.1, 0.5, 1, 5, 100])
def test_the_controller_meets_the_deadline_when_anything_can(mbps):
    controller = DeadlineController(COSTS, deadline_ms=20, rtt_ms=5)
    choice = controller.choose(mbps)
    fitting = [c for c in COSTS if 1 + 5 + 1 + 8 * c.payload_bytes / (mbps * 1e3) <= 20]
    if fitting:
        assert choice.fits and not choice.fallback and choice.predicted_ms <= 20
        assert choice.cost is max(fitting, key=lambda c: c.val_accuracy)  # the widest that fits
    else:
        assert choice.fallback and not choice.fits and choice.cost.name == "small"
        assert "no setting meets the 20 ms deadline" in choice.note and "small" in choice.note


def test_rank_width_prefers_the_widest_and_rank_accuracy_the_most_accurate():
    # A narrow setting that validates better than the wide one (as noise on 500 images can make it).
    costs = [_cost("narrow-b8", 300, 96.0, width=0.5), _cost("wide-b2", 200, 95.0, width=1.0)]
    by_width = DeadlineController(costs, deadline_ms=50, rtt_ms=5)
    by_accuracy = DeadlineController(costs, deadline_ms=50, rtt_ms=5, rank="accuracy")
    assert by_width.choose(100).cost.name == "wide-b2"
    assert by_accuracy.choose(100).cost.name == "narrow-b8"
    with pytest.raises(CrossedgeError, match="unknown rank"):
        DeadlineController(costs, deadline_ms=50, rtt_ms=5, rank="bytes")


def test_the_controller_never_misses_on_a_constant_link_and_fixed_wide_does():
    controller = DeadlineController(COSTS, deadline_ms=20, rtt_ms=5)
    link = BandwidthTrace.constant(0.3)
    adaptive = simulate(AdaptivePolicy(controller), link, steps=50)
    wide = simulate(FixedPolicy(COSTS[2], controller), link, steps=50)
    assert adaptive.deadline_misses == 0 and adaptive.choices == {"mid": 50}
    assert wide.deadline_misses == 50
    # Planning at a fifth of the estimate leaves room for a drop: a smaller payload, still on time.
    careful = simulate(AdaptivePolicy(controller, headroom=0.2), link, steps=5)
    assert careful.choices == {"small": 5} and careful.deadline_misses == 0


def test_a_changing_link_drives_the_choice_and_a_dead_link_falls_back():
    controller = DeadlineController(COSTS, deadline_ms=20, rtt_ms=5)
    trace = BandwidthTrace([0.0, 1.0, 2.0], [5.0, 0.01, 5.0])
    oracle = simulate(AdaptivePolicy(controller, "oracle"), trace, steps=30, period_ms=100)
    assert oracle.chosen[:10] == ["big"] * 10 and oracle.chosen[10:20] == ["small"] * 10
    assert oracle.chosen[21:] == ["big"] * 9
    assert oracle.fallbacks == 10 and "no setting meets" in oracle.notes[0]
    assert oracle.deadline_misses == 10  # at 0.01 Mbit/s even the smallest payload is late
    # The last-transfer estimate reacts one inference late, both to the drop and to the recovery.
    last = simulate(AdaptivePolicy(controller, "last"), trace, steps=30, period_ms=100)
    assert last.chosen[10] == "big" and last.chosen[11:21] == ["small"] * 10 and last.chosen[21] == "big"
    assert last.latency_ms[10] > 600  # 800 B at 0.01 Mbit/s
    assert last.deadline_misses == 10 and last.fallbacks == 10  # steps 11-20; step 20 is on time


def test_transmit_time_follows_the_trace():
    trace = BandwidthTrace([0.0, 1.0], [1.0, 2.0])
    assert trace.transmit_s(0.0, 125_000) == pytest.approx(1.0)  # 1 Mbit at 1 Mbit/s
    assert trace.transmit_s(0.5, 125_000) == pytest.approx(0.5 + 0.25)  # half at 1, half at 2 Mbit/s
    with pytest.raises(CrossedgeError):
        BandwidthTrace([0.0, 1.0], [1.0, 0.0])


def test_measured_costs_match_the_settings(digits):
    network = tiny_network(digits)
    costs = measure_costs(network, digits, repeats=2, warmup=0, progress=False)
    split_costs = [c for c in costs if c.kind == "split"]
    assert [c.payload_bytes for c in split_costs] == [s.payload_bytes for s in network.settings]
    raw = next(c for c in costs if c.kind == "raw")
    assert raw.payload_bytes == 64  # the 8x8 uint8 image
    assert all(c.device_ms > 0 and len(c.device_samples_ms) == 2 for c in costs)


def test_cli_trains_evaluates_and_simulates(tmp_path):
    runner = CliRunner()
    model = tmp_path / "m.safetensors"
    args = ["train", "--data", "digits", "--out", str(model), "--epochs", "1", "--channels", "8,8,8"]
    args += ["--bottleneck-channels", "4", "--decoder-channels", "8", "--batch-size", "256"]
    result = runner.invoke(split, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "w0.25-b2" in result.output and model.exists()
    result = runner.invoke(split, ["eval", "--model", str(model), "--repeats", "2", "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    assert "raw" in result.output and (tmp_path / "e.json").exists()
    trace = tmp_path / "trace.csv"
    trace.write_text("time_s,mbps\n0,5\n1,0.001\n")
    sim = ["simulate", "--model", str(model), "--repeats", "2", "--bandwidths", "0.1,5", "--steps", "5"]
    sim += ["--trace", str(trace), "--trace-seconds", "2", "--json", str(tmp_path / "s.json")]
    result = runner.invoke(split, sim, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "adaptive" in result.output and "fell back to the smallest setting" in result.output
    # Retraining onto a file that is not ours is refused before any training.
    foreign = tmp_path / "notes.safetensors"
    foreign.write_text("mine")
    result = runner.invoke(split, ["train", "--data", "digits", "--out", str(foreign)])
    assert result.exit_code != 0 and "--force" in str(result.exception)
    assert foreign.read_text() == "mine"
