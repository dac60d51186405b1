"""Controllable multi-task network: shared weights, sandwich training, the controller, Pareto front, files, CLI."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch
from click.testing import CliRunner

from crossedge.core import CrossedgeError
from crossedge.ondevice.multitask.cli import multitask
from crossedge.ondevice.multitask.controller import (
    Candidate,
    ComponentProfile,
    Controller,
    build_profile,
    check_weights,
    dominates,
    grid_candidates,
    non_dominated,
)
from crossedge.ondevice.multitask.data import TASKS, load_data
from crossedge.ondevice.multitask.evaluation import component_quality, configuration_quality
from crossedge.ondevice.multitask.experiment import compare
from crossedge.ondevice.multitask.model import (
    Configuration,
    MultiTaskConfig,
    MultiTaskNetwork,
    check_writable,
    load_network,
    save_network,
)
from crossedge.ondevice.multitask.training import TrainConfig, sandwich, task_losses, train, train_step

TINY = {
    "image_size": 8,
    "encoder_channels": (8, 8),
    "encoder_strides": (1, 2),
    "decoder_channels": 8,
    "widths": (0.5, 1.0),
    "encoder_widths": (0.5, 1.0),
}


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def tiny_network(**overrides) -> MultiTaskNetwork:
    torch.manual_seed(0)
    return MultiTaskNetwork(MultiTaskConfig(**{**TINY, **overrides})).eval()


def test_data_has_real_targets_for_every_task(digits):
    split = digits.val
    assert split.clean.min() >= 0 and split.clean.max() <= 1
    assert set(split.masks.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(split.masks, (split.clean > 0.5).float())
    # The input is the noisy image, so reconstruction has something to remove.
    restored = split.inputs * digits.std + digits.mean
    assert float((restored - split.clean).abs().mean()) > 0.05
    assert len(set(split.labels.tolist())) == 10


def test_every_configuration_runs_with_the_right_shapes(digits):
    network = tiny_network()
    x = digits.val.inputs[:5]
    configurations = network.config.configurations()
    assert len(configurations) == 2 * 2**3
    for configuration in configurations:
        out = network(x, configuration)
        assert out["classify"].shape == (5, 10)
        assert out["reconstruct"].shape == out["segment"].shape == (5, 1, 8, 8)
        assert bool(((out["reconstruct"] >= 0) & (out["reconstruct"] <= 1)).all())
    with pytest.raises(CrossedgeError, match="not a configuration of this network"):
        network(x, Configuration(1.0, (0.75, 1.0, 1.0)))


def test_configurations_share_one_set_of_weights(digits):
    network = tiny_network()
    wide = tiny_network(widths=(1.0,), encoder_widths=(1.0,))
    # Decoders have no per-width tensors at all; the encoder only adds batch norms per width.
    decoder_params = sum(p.numel() for p in network.decoders.parameters())
    assert decoder_params == sum(p.numel() for p in wide.decoders.parameters())
    network.train()
    x = digits.val.inputs[:8]
    out = network(x, network.config.smallest)
    sum(o.float().pow(2).mean() for o in out.values()).backward()
    grad = network.decoders["segment"].second.weight.grad
    assert grad[:4, :4].abs().sum() > 0  # the narrow decoder's slice of the shared weight learns
    assert grad[4:].abs().sum() == 0 and grad[:, 4:].abs().sum() == 0  # nothing outside it
    network.eval()
    with torch.no_grad():
        small = network(x, network.config.smallest)["segment"].clone()
        large = network(x, network.config.largest)["segment"].clone()
        network.decoders["segment"].first.weight[:4] += 0.5  # the narrow slice, which the wide one contains
        assert not torch.allclose(network(x, network.config.smallest)["segment"], small)
        assert not torch.allclose(network(x, network.config.largest)["segment"], large)


def test_sandwich_samples_the_extremes_and_mixes_widths_across_tasks():
    network = tiny_network()
    rng = random.Random(0)
    drawn = [sandwich(network, rng, 2) for _ in range(50)]
    assert all(d[0] == network.config.largest and d[1] == network.config.smallest and len(d) == 4 for d in drawn)
    randoms = [c for d in drawn for c in d[2:]]
    assert any(len(set(c.widths)) > 1 for c in randoms)
    assert {c.encoder_width for c in randoms} == {0.5, 1.0}


def test_sandwich_steps_lower_every_task_loss_at_both_extremes(digits):
    network = tiny_network()
    network.train()
    split = digits.train.subset(128)
    x = split.inputs
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    rng = random.Random(0)

    def losses():
        network.eval()
        with torch.no_grad():
            out = {
                name: task_losses(network(x, c), split.labels, split.clean, split.masks)
                for name, c in (("largest", network.config.largest), ("smallest", network.config.smallest))
            }
        network.train()
        return out

    before = losses()
    for _ in range(25):
        train_step(network, optimizer, x, split.labels, split.clean, split.masks, sandwich(network, rng, 2), (1, 10, 1))
    after = losses()
    for name in ("largest", "smallest"):
        for task in TASKS:
            assert float(after[name][task]) < float(before[name][task]), (name, task)


def test_train_records_both_extremes_per_epoch(digits):
    network = tiny_network()
    data = digits
    small = type(data)(data.name, data.train.subset(96), data.val, data.test, 0.3, data.mean, data.std, 10)
    result = train(network, small, TrainConfig(epochs=2, batch_size=32), progress=False)
    assert result.steps == 6 and len(result.largest) == len(result.smallest) == 2
    assert set(result.largest[0]) == set(TASKS)
    assert not network.training


def test_quality_adds_up_exactly_per_task(digits):
    network = tiny_network()
    val = digits.val.subset(100)
    table = component_quality(network, val)
    assert len(table) == 2 * 3 * 2
    for configuration in network.config.configurations():
        whole = configuration_quality(network, val, configuration)
        for task, width in zip(TASKS, configuration.widths, strict=True):
            assert whole[task] == pytest.approx(table[(configuration.encoder_width, task, width)], abs=1e-5)


def synthetic_candidates(seed: int = 0) -> list[Candidate]:
    """Latency grows with each width (plus timing noise); each task's quality with its own width, as in the network."""
    rng = random.Random(seed)
    widths = (0.25, 0.5, 0.75, 1.0)
    cost = {"classify": 0.1, "reconstruct": 0.6, "segment": 0.5}
    per_task = {(t, w): 10 * w + rng.uniform(0, 0.5) for t in TASKS for w in widths}
    out = []
    for ws in itertools.product(widths, repeat=3):
        latency = 0.2 + sum(cost[t] * w for t, w in zip(TASKS, ws, strict=True)) + rng.uniform(0, 0.01)
        quality = {t: per_task[(t, w)] for t, w in zip(TASKS, ws, strict=True)}
        out.append(Candidate(Configuration(1.0, ws), latency, quality))
    return out


def test_controller_never_exceeds_the_budget_and_is_optimal_within_it():
    candidates = synthetic_candidates()
    controller = Controller(candidates)
    rng = random.Random(1)
    for _ in range(40):
        raw = [rng.random() for _ in TASKS]
        weights = [v / sum(raw) for v in raw]
        weights[-1] = 1 - sum(weights[:-1])
        budget = rng.uniform(0.52, 1.5)
        choice = controller.choose(weights, budget)
        assert choice.candidate.latency_ms <= budget
        feasible = [c for c in candidates if c.latency_ms <= budget]
        assert choice.feasible == len(feasible)
        assert choice.score == pytest.approx(max(controller.score(c, weights) for c in feasible))


def test_controller_errors_clearly_when_nothing_fits():
    controller = Controller(synthetic_candidates())
    fastest = min(c.latency_ms for c in controller.candidates)
    with pytest.raises(CrossedgeError, match=r"no configuration fits 0.1 ms: the fastest, .* takes"):
        controller.choose((1 / 3, 1 / 3, 1 / 3), 0.1)
    assert controller.choose((1 / 3, 1 / 3, 1 / 3), fastest).candidate.latency_ms == fastest
    with pytest.raises(CrossedgeError, match="positive"):
        controller.choose((1 / 3, 1 / 3, 1 / 3), 0)


def test_the_margin_plans_below_the_budget_and_says_when_it_is_the_reason():
    controller = Controller(synthetic_candidates())
    equal = (1 / 3, 1 / 3, 1 / 3)
    for budget in (0.8, 1.0, 1.3):
        choice = controller.choose(equal, budget, margin=0.2)
        assert choice.candidate.latency_ms <= 0.8 * budget
        assert choice.feasible == sum(c.latency_ms <= 0.8 * budget for c in controller.candidates)
        assert choice.budget_ms == budget
    fastest = controller.candidates[0].latency_ms
    with pytest.raises(CrossedgeError, match="less the 0.2 margin.*lower --margin"):
        controller.choose(equal, fastest * 1.1, margin=0.2)
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(CrossedgeError, match=r"margin must be in \[0, 1\)"):
            controller.choose(equal, 1.0, margin=bad)


@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.5, 0.6, -0.1), (0.2, 0.2, 0.2), (float("nan"), 0.5, 0.5)])
def test_bad_weights_are_refused(weights):
    with pytest.raises(CrossedgeError, match="weight"):
        check_weights(weights)


@pytest.mark.parametrize("seed", range(3))
def test_weights_move_the_choice_towards_the_important_task(seed):
    controller = Controller(synthetic_candidates(seed))
    rng = random.Random(seed)
    for _ in range(30):
        budget = rng.uniform(0.52, 1.4)
        a, b = rng.sample(range(3), 2)
        base = [1 / 3] * 3
        shift = rng.uniform(0.05, 1 / 3)
        moved = list(base)
        moved[a] += shift
        moved[b] -= shift
        before, after = controller.choose(base, budget), controller.choose(moved, budget)
        # Moving weight from task b to task a never narrows the chosen lead of a over b (both choices optimal).
        gap_before = before.normalized[TASKS[a]] - before.normalized[TASKS[b]]
        gap_after = after.normalized[TASKS[a]] - after.normalized[TASKS[b]]
        assert gap_after >= gap_before - 1e-9
    # A budget that forces a trade-off: all weight on segmentation buys its full width, all on classification not.
    assert controller.choose((0, 0, 1), 1.0).configuration.width_of("segment") == 1.0
    chose = controller.choose((1, 0, 0), 1.0).configuration
    assert chose.width_of("classify") == 1.0 and chose.width_of("segment") < 1.0


def test_pareto_front_is_non_dominated_and_covers_the_rest():
    controller = Controller(synthetic_candidates(3))

    def objectives(c, weights):
        if weights is None:
            return (c.latency_ms, *(-c.quality[t] for t in TASKS))
        return (c.latency_ms, -controller.score(c, weights))

    for weights in (None, (1 / 3, 1 / 3, 1 / 3), (0.7, 0.2, 0.1)):
        front = controller.front(weights)
        assert front and front == sorted(front, key=lambda c: c.latency_ms)
        points = [objectives(c, weights) for c in controller.candidates]
        for f in front:
            assert not any(dominates(p, objectives(f, weights)) for p in points)
        for c in controller.candidates:
            if c not in front:
                assert any(
                    dominates(objectives(f, weights), objectives(c, weights))
                    or objectives(f, weights) == objectives(c, weights)
                    for f in front
                )
        if weights is not None:  # in two objectives, faster along the front means worse
            scores = [controller.score(c, weights) for c in front]
            assert scores == sorted(scores)
    assert non_dominated([(1, 1), (1, 1), (2, 0), (2, 2)]) == [0, 2]


def test_profile_matches_the_grid_and_round_trips(digits, tmp_path):
    network = tiny_network()
    val, image = digits.val.subset(60), digits.test.inputs[:1]
    profile = build_profile(network, val, image, repeats=2, rounds=1, threads=1, model_sha256="abc")
    grid = grid_candidates(network, val, image, repeats=2, rounds=1, threads=1)
    assert len(profile.candidates()) == len(grid.candidates) == 16
    assert profile.timings == 2 * (1 + 3 * 2) + 3 and profile.scorings == 12
    offset, slope = profile.calibration
    assert 0.5 <= slope <= 2.0 or slope == 1.0
    ours, theirs = profile.controller(), grid.controller()
    rows = compare(ours, theirs, [(1 / 3, 1 / 3, 1 / 3), (0.8, 0.1, 0.1)], [max(c.latency_ms for c in grid.candidates)])
    for row in rows:  # at the loosest budget both may pick anything; scores are comparable, gaps non-negative
        assert row["grid_score"] >= row["uniform_score"] - 1e-9
        assert row["score_gap"] is None or row["score_gap"] >= -1e-9
    path = profile.save(tmp_path / "profile.json")
    again = ComponentProfile.load(path, model_sha256="abc", threads=1)
    assert [c.latency_ms for c in again.candidates()] == pytest.approx([c.latency_ms for c in profile.candidates()])
    assert [c.quality for c in again.candidates()] == [c.quality for c in profile.candidates()]
    with pytest.raises(CrossedgeError, match="another model file"):
        ComponentProfile.load(path, model_sha256="other")
    with pytest.raises(CrossedgeError, match="thread"):
        ComponentProfile.load(path, model_sha256="abc", threads=2)
    foreign = tmp_path / "notes.json"
    foreign.write_text(json.dumps({"mine": True}))
    with pytest.raises(CrossedgeError, match="not a multitask profile"):
        profile.save(foreign)
    assert json.loads(foreign.read_text()) == {"mine": True}


def test_save_and_reload_are_identical_and_other_files_are_refused(digits, tmp_path):
    from safetensors.torch import save_file

    network = tiny_network()
    path = save_network(network, tmp_path / "net.safetensors", extra={"data": "digits"})
    loaded = load_network(path)
    x = digits.val.inputs[:4]
    for configuration in (network.config.smallest, network.config.largest, Configuration(0.5, (1.0, 0.5, 1.0))):
        a, b = network(x, configuration), loaded(x, configuration)
        assert all(torch.equal(a[t], b[t]) for t in TASKS)
    with pytest.raises(CrossedgeError, match="different multi-task network"):
        load_network(path, MultiTaskConfig(**{**TINY, "decoder_channels": 16}))
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "crossedge.ondevice.split/1"})
    with pytest.raises(CrossedgeError, match="not a multi-task network"):
        load_network(other)
    with pytest.raises(CrossedgeError, match="pass --force"):
        check_writable(other)
    with pytest.raises(CrossedgeError, match="no model file"):
        load_network(tmp_path / "missing.safetensors")
    # A file that claims the format but holds other tensors.
    bad = tmp_path / "bad.safetensors"
    save_file(
        {"w": torch.zeros(2)},
        str(bad),
        metadata={"format": "crossedge.ondevice.multitask/1", "config": json.dumps(network.config.to_dict())},
    )
    with pytest.raises(CrossedgeError, match="does not match its own config"):
        load_network(bad)


def test_cli_trains_draws_the_front_and_chooses(tmp_path):
    runner = CliRunner()
    model = tmp_path / "mt.safetensors"
    common = ["--threads", "1"]
    result = runner.invoke(
        multitask,
        ["train", "--data", "digits", "--out", str(model), "--epochs", "1", "--channels", "8,8",
         "--decoder-channels", "8", "--widths", "0.5,1", "--json", str(tmp_path / "train.json"), *common],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert model.exists() and "saved" in result.output
    assert len(json.loads((tmp_path / "train.json").read_text())["quality"]) == 2 * 3 * 2

    result = runner.invoke(
        multitask, ["front", "--model", str(model), "--repeats", "3", "--json", str(tmp_path / "f.json"), *common]
    )
    assert result.exit_code == 0, result.output
    front = json.loads((tmp_path / "f.json").read_text())
    assert len(front["configurations"]) == 16 and front["front"]
    latencies = [r["latency_ms"] for r in front["front"]]
    assert latencies == sorted(latencies)

    table = tmp_path / "table.json"
    args = ["choose", "--model", str(model), "--weights", "0.2,0.3,0.5", "--table", str(table), "--repeats", "3"]
    result = runner.invoke(multitask, [*args, "--budget-ms", "1000", "--json", str(tmp_path / "c.json"), *common])
    assert result.exit_code == 0, result.output
    assert "saved to" in result.output and table.exists()
    chosen = json.loads((tmp_path / "c.json").read_text())
    assert chosen["latency_ms"] <= 1000 and [r["task"] for r in chosen["tasks"]] == list(TASKS)
    result = runner.invoke(multitask, [*args, "--budget-ms", "1000", *common])
    assert result.exit_code == 0 and "read from" in result.output
    result = runner.invoke(multitask, [*args, "--budget-ms", "0.00001", *common])
    assert isinstance(result.exception, CrossedgeError) and "no configuration fits" in str(result.exception)
    result = runner.invoke(multitask, [*args[:4], "0.5,0.6,0.1", "--budget-ms", "1", *common])
    assert isinstance(result.exception, CrossedgeError) and "sum to 1" in str(result.exception)
    result = runner.invoke(multitask, ["train", "--data", "digits", "--out", str(table), "--epochs", "0"])
    assert isinstance(result.exception, CrossedgeError) and "--force" in str(result.exception)


def test_benchmark_runs_on_a_tiny_configuration_and_plots(tmp_path):
    from crossedge.ondevice.multitask.bench import MultiTaskBenchmark

    bench = MultiTaskBenchmark()
    report = bench.run(
        data="digits",
        epochs=1,
        decoder_channels=8,
        widths="0.5,1",
        repeats=2,
        rounds=1,
        weights="0.333333,0.333333,0.333334;0.8,0.1,0.1",
        budget_fractions="0.5,1",
    )
    configs = [r for r in report.rows if r["part"] == "configuration"]
    choices = [r for r in report.rows if r["part"] == "choice"]
    assert len(configs) == report.summary["configurations"] == 16 and len(choices) == 4
    assert report.summary["additive_quality_max_diff"] < 1e-4
    assert report.summary["controller_cost"]["timings"] < report.summary["grid_cost"]["timings"] + 16
    for row in choices:
        # each search respects its own table, less the default margin of 0.1
        assert row["grid_table_ms"] <= 0.9 * row["budget_ms"] + 1e-9
        assert row["controller"] is None or row["controller_table_ms"] <= 0.9 * row["budget_ms"] + 1e-9
        assert row["uniform"] is None or row["uniform_score"] <= row["grid_score"] + 1e-9
    assert any(r["on_front"] for r in configs)
    assert bench.plot(report, tmp_path / "mt.png").stat().st_size > 0
    report.write_json(tmp_path / "mt.json")
