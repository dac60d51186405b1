"""The few-shot algorithms (finetune, protonet, knn-mmd, crossfi): conformance, and adapting to a shifted target.

The shared check trains every algorithm once on two source domains of a tiny synthetic task
and adapts copies of it to a target domain whose per-channel gain and offset differ enough
to cost ERM about half its accuracy, with k = 1..5 labelled target windows per class.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from crossedge.core.builtins.algorithms import ERM
from crossedge.core.conformance.algorithm import AlgorithmConformance
from crossedge.core.contracts.algorithm import AlgorithmError, load_algorithm
from crossedge.sensing.algorithms.crossfi import CrossFi, new_class_split
from crossedge.sensing.algorithms.finetune import FineTune
from crossedge.sensing.algorithms.knn_mmd import KNNMMD
from crossedge.sensing.algorithms.protonet import ProtoNet

LENGTH, CHANNELS, CLASSES = 24, 3, 3
INPUT_SHAPE = (LENGTH, CHANNELS)
FEWSHOT = (FineTune, ProtoNet, KNNMMD, CrossFi)
SHOTS_POOL = 5  # target windows per class that shots are drawn from; the rest are the test windows
TRAIN_STEPS = 100
CHANCE = 1 / CLASSES


# ---------------------------------------------------------------- conformance


class TestFineTuneConformance(AlgorithmConformance):
    @pytest.fixture
    def algorithm_class(self):
        return FineTune


class TestProtoNetConformance(AlgorithmConformance):
    @pytest.fixture
    def algorithm_class(self):
        return ProtoNet


class TestKNNMMDConformance(AlgorithmConformance):
    @pytest.fixture
    def algorithm_class(self):
        return KNNMMD


class TestCrossFiConformance(AlgorithmConformance):
    @pytest.fixture
    def algorithm_class(self):
        return CrossFi


# ---------------------------------------------------------------- the shifted task


def shifted_task(seed: int = 0, per_class: int = 16, target_per_class: int = 35):
    """Two source domains and one target: class = per-channel mean plus a sine of its own frequency.

    Source domains see the windows through gains near 1 and small offsets; the target
    through gains (1.5, 0.7, 1.3) and an offset of 0.8 standard deviations per channel.
    """
    generator = torch.Generator().manual_seed(seed)
    means = 1.5 * torch.randn(CLASSES, 1, CHANNELS, generator=generator)
    frequencies = torch.arange(1, CLASSES + 1).float()
    t = torch.arange(LENGTH) / LENGTH

    def domain(n, gain, offset):
        y = torch.arange(n * CLASSES) % CLASSES
        phase = 2 * math.pi * torch.rand(len(y), 1, CHANNELS, generator=generator)
        wave = torch.sin(2 * math.pi * frequencies[y].view(-1, 1, 1) * t.view(1, -1, 1) + phase)
        noise = 0.5 * torch.randn(len(y), LENGTH, CHANNELS, generator=generator)
        return ((means[y] + wave + noise) * gain + offset).float(), y

    sources = [
        domain(
            per_class,
            1 + 0.1 * torch.randn(1, 1, CHANNELS, generator=generator),
            0.3 * torch.randn(1, 1, CHANNELS, generator=generator),
        )
        for _ in range(2)
    ]
    gain = torch.tensor([1.5, 0.7, 1.3]).view(1, 1, CHANNELS)
    target = domain(target_per_class, gain, 0.8 * torch.randn(1, 1, CHANNELS, generator=generator))
    return sources, target


def accuracy(algorithm, x, y) -> float:
    return float((algorithm.predict(x).argmax(dim=1) == y).float().mean())


@pytest.fixture(scope="module")
def task():
    """The task and the target's shot pool and test windows."""
    sources, (x, y) = shifted_task()
    pool, test = [], []
    for c in range(CLASSES):
        members = torch.nonzero(y == c).reshape(-1)
        pool.append(members[:SHOTS_POOL])
        test.append(members[SHOTS_POOL:])
    test = torch.cat(test)

    def shots(k):
        index = torch.cat([p[:k] for p in pool])
        return x[index], y[index]

    return {"sources": sources, "x": x, "y": y, "test": test, "shots": shots}


@pytest.fixture(scope="module")
def trained(task):
    """Every few-shot algorithm (and ERM) trained once on the source domains, seed 0."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        algorithms = {}
        for cls in (ERM, *FEWSHOT):
            algorithm = cls(INPUT_SHAPE, CLASSES, 2, seed=0)
            for _ in range(TRAIN_STEPS):
                algorithm.update(task["sources"])
            algorithms[cls.name] = algorithm
        return algorithms
    finally:
        torch.set_num_threads(before)


def target_accuracy(algorithm, task) -> float:
    return accuracy(algorithm, task["x"][task["test"]], task["y"][task["test"]])


def adapted(algorithm, task, k: int):
    copied = copy.deepcopy(algorithm)
    support_x, support_y = task["shots"](k)
    copied.adapt(support_x, support_y, task["x"][task["test"]])
    return copied


def test_the_shift_costs_erm_accuracy(trained, task):
    erm = trained["erm"]
    assert accuracy(erm, *task["sources"][0]) > 0.95
    assert target_accuracy(erm, task) < 0.7


def test_finetune_and_knn_mmd_train_the_erm_network(trained, task):
    # same seed, same ERM updates: "ERM without adaptation" is their own state before adapt
    x = task["x"]
    for name in ("finetune", "knn-mmd"):
        assert torch.equal(trained[name].predict(x), trained["erm"].predict(x))


@pytest.mark.parametrize("cls", FEWSHOT, ids=lambda c: c.name)
def test_adapting_with_k_shots_beats_chance(cls, trained, task):
    erm = target_accuracy(trained["erm"], task)
    for k in range(1, SHOTS_POOL + 1):
        score = target_accuracy(adapted(trained[cls.name], task, k), task)
        assert score > CHANCE + 0.2, f"{cls.name} with {k} shots: {score:.2f}"
        if cls in (FineTune, KNNMMD):
            assert score >= erm, f"{cls.name} with {k} shots: {score:.2f} < ERM {erm:.2f}"


@pytest.mark.parametrize("cls", (ProtoNet, CrossFi), ids=lambda c: c.name)
def test_zero_shot_adapt_falls_back_to_source_prototypes(cls, trained, task):
    algorithm = adapted(trained[cls.name], task, 2)
    unlabelled = task["x"][task["test"]]
    # no support and (for crossfi) no unlabelled windows to refine with: the source prototypes / templates
    measured = algorithm.adapt(torch.zeros(0, *INPUT_SHAPE), [], unlabelled[:0])
    assert measured["support"] == 0
    assert torch.equal(algorithm.predict(unlabelled), trained[cls.name].predict(unlabelled))
    algorithm.adapt([], [], unlabelled)
    assert target_accuracy(algorithm, task) > CHANCE + 0.2


def test_crossfi_zero_shot_refines_templates_with_target_windows(trained, task):
    algorithm = adapted(trained["crossfi"], task, 1)  # refinement starts from the source templates regardless
    measured = algorithm.adapt([], [], task["x"][task["test"]])
    assert measured["refined_templates"] >= 2
    fresh = copy.deepcopy(trained["crossfi"])
    fresh.adapt([], [], task["x"][task["test"]])
    x = task["x"]
    assert torch.equal(algorithm.predict(x), fresh.predict(x))
    assert target_accuracy(algorithm, task) > target_accuracy(trained["crossfi"], task)


@pytest.mark.parametrize("cls", FEWSHOT, ids=lambda c: c.name)
def test_same_seed_gives_the_same_adaptation(cls, task):
    support_x, support_y = task["shots"](2)
    unlabelled = task["x"][task["test"]]
    hparams = {"adapt_steps": 20} if cls is KNNMMD else {}
    runs = []
    for _ in range(2):
        algorithm = cls(INPUT_SHAPE, CLASSES, 2, hparams, seed=4)
        for _ in range(5):
            algorithm.update(task["sources"])
        measured = algorithm.adapt(support_x, support_y, unlabelled)
        runs.append((algorithm.predict(unlabelled), measured))
    assert torch.equal(runs[0][0], runs[1][0])
    assert runs[0][1].keys() == runs[1][1].keys()
    for key, value in runs[0][1].items():
        other = runs[1][1][key]
        assert value == other or (math.isnan(value) and math.isnan(other)), key


@pytest.mark.parametrize("cls", FEWSHOT, ids=lambda c: c.name)
def test_an_adapted_algorithm_saves_and_loads_with_its_adaptation(cls, trained, task, tmp_path):
    algorithm = adapted(trained[cls.name], task, 1)
    restored = load_algorithm(algorithm.save(tmp_path / "adapted.safetensors"), cls)
    x = task["x"][task["test"]]
    assert torch.equal(restored.predict(x), algorithm.predict(x))


def test_knn_mmd_restored_without_its_reservoir_refuses_to_adapt(trained, task, tmp_path):
    restored = load_algorithm(trained["knn-mmd"].save(tmp_path / "knn.safetensors"), KNNMMD)
    support_x, support_y = task["shots"](1)
    with pytest.raises(AlgorithmError, match="keeps in memory during update") as caught:
        restored.adapt(support_x, support_y, task["x"][task["test"]])
    assert "\n" not in str(caught.value)


def test_knn_mmd_reservoir_is_bounded_and_seeded():
    from crossedge.sensing.algorithms.knn_mmd import Reservoir

    x = torch.arange(50, dtype=torch.float32).view(50, 1, 1).expand(50, 2, 1).contiguous()
    y = torch.arange(50) % 2
    kept = []
    for _ in range(2):
        reservoir = Reservoir(num_classes=3, capacity=4, seed=1)
        for start in range(0, 50, 10):
            reservoir.add(x[start : start + 10], y[start : start + 10])
        kept.append(reservoir.arrays())
    assert len(reservoir) == 8 and reservoir.seen == [25, 25, 0]
    assert torch.equal(kept[0][0], kept[1][0]) and torch.equal(kept[0][1], kept[1][1])
    assert set(kept[0][1].tolist()) == {0, 1}
    assert not torch.equal(kept[0][0][:4, 0, 0], torch.tensor([0.0, 2.0, 4.0, 6.0]))  # later windows got in


def test_knn_mmd_stopping_rule_never_ends_worse_on_the_support_set(trained, task):
    support_x, support_y = task["shots"](3)
    before = accuracy(trained["knn-mmd"], support_x, support_y)
    algorithm = copy.deepcopy(trained["knn-mmd"])
    measured = algorithm.adapt(support_x, support_y, task["x"][task["test"]])
    assert measured["support_accuracy"] >= before
    assert accuracy(algorithm, support_x, support_y) == measured["support_accuracy"]
    assert 0 < measured["help"] <= len(task["test"])


def test_crossfi_new_class_mode_recognizes_a_class_it_never_trained_on(task):
    sources = task["sources"]
    seen, new = zip(*(new_class_split(y, [2]) for _, y in sources), strict=True)
    training = [(x[torch.as_tensor(i)], y[torch.as_tensor(i)]) for (x, y), i in zip(sources, seen, strict=True)]
    assert all(2 not in y.tolist() for _, y in training)
    algorithm = CrossFi(INPUT_SHAPE, CLASSES, 2, seed=0)
    for _ in range(TRAIN_STEPS):
        algorithm.update(training)
    (x0, y0), (x1, y1) = sources
    shots = torch.as_tensor(new[0])[:3]
    measured = algorithm.adapt(x0[shots], y0[shots], x1)
    assert measured["support_templates"] == 1 and measured["source_templates"] == 2
    test = torch.as_tensor(new[1])
    predicted = algorithm.predict(x1[test]).argmax(dim=1)
    assert float((predicted == 2).float().mean()) > CHANCE + 0.2
    assert accuracy(algorithm, x1, y1) > CHANCE + 0.2


def test_new_class_split_indices_and_errors():
    y = [0, 1, 2, 1, 2, 0]
    seen, new = new_class_split(y, [2])
    assert seen.tolist() == [0, 1, 3, 5] and new.tolist() == [2, 4]
    with pytest.raises(AlgorithmError, match="at least one new class"):
        new_class_split(y, [])
    with pytest.raises(AlgorithmError, match="new class 7 has no windows"):
        new_class_split(y, [7])
    with pytest.raises(AlgorithmError, match="leave at least one class"):
        new_class_split(y, [0, 1, 2])


@pytest.mark.parametrize("cls", FEWSHOT, ids=lambda c: c.name)
def test_adapt_refuses_malformed_inputs(cls, task):
    algorithm = cls(INPUT_SHAPE, CLASSES, 2, seed=0)
    algorithm.update(task["sources"])
    support_x, support_y = task["shots"](1)
    unlabelled = task["x"][:4]
    with pytest.raises(AlgorithmError, match=r"support_x has shape \(3, 24, 2\)"):
        algorithm.adapt(support_x[:, :, :2], support_y, unlabelled)
    with pytest.raises(AlgorithmError, match="3 support windows but 2 support labels"):
        algorithm.adapt(support_x, support_y[:2], unlabelled)
    with pytest.raises(AlgorithmError, match="support label 3 is outside 0..2"):
        algorithm.adapt(support_x, torch.tensor([0, 1, 3]), unlabelled)


def test_the_plugin_registers_the_few_shot_algorithms(plugin):
    from crossedge.core.contracts.algorithm import build_algorithm, get_algorithm

    for cls in FEWSHOT:
        assert get_algorithm(cls.name) is cls and cls.adapts
    algorithm = build_algorithm(
        "knn-mmd:adapt_steps=10,help_fraction=0.3", input_shape=INPUT_SHAPE, num_classes=3, num_domains=2
    )
    assert algorithm.hparams["adapt_steps"] == 10 and algorithm.hparams["help_fraction"] == 0.3
