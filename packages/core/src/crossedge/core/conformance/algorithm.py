"""Conformance suite for domain algorithms: subclass :class:`AlgorithmConformance` and give a fixture.

```python
import pytest
from crossedge.core.conformance.algorithm import AlgorithmConformance


class TestMyAlgorithm(AlgorithmConformance):
    @pytest.fixture
    def algorithm_class(self):
        return MyAlgorithm
```

The checks run on a small, easily separable synthetic problem (:func:`easy_problem`) with the
algorithm's default hyperparameters; override ``steps`` (a fixture) if the algorithm needs
more than the default few dozen updates to show that it learns.
"""

from __future__ import annotations

import pytest

from crossedge.core.contracts.algorithm import AlgorithmError, DomainAlgorithm, load_algorithm

INPUT_SHAPE = (16, 3)
NUM_CLASSES = 3
NUM_DOMAINS = 2


def easy_problem(
    input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES, num_domains=NUM_DOMAINS, per_domain=24, seed=0
) -> list[tuple]:
    """One ``(x, y)`` pair per domain: each class has its own per-channel mean, each domain a small offset."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    length, channels = input_shape
    class_means = 2.0 * torch.randn(num_classes, 1, channels, generator=generator)
    batches = []
    for _ in range(num_domains):
        offset = 0.3 * torch.randn(1, 1, channels, generator=generator)
        y = torch.arange(per_domain) % num_classes
        noise = 0.5 * torch.randn(per_domain, length, channels, generator=generator)
        batches.append(((class_means[y] + offset + noise).float(), y.long()))
    return batches


class AlgorithmConformance:
    """Shared checks every :class:`DomainAlgorithm` passes; a subclass supplies the ``algorithm_class`` fixture."""

    @pytest.fixture
    def algorithm_class(self) -> type[DomainAlgorithm]:
        """The algorithm class under test; override in the subclass."""
        raise NotImplementedError("declare an `algorithm_class` fixture returning the DomainAlgorithm subclass")

    @pytest.fixture(autouse=True)
    def _one_thread(self):
        # the problems are tiny: extra threads only add contention (and CI machines are shared)
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(before)

    @pytest.fixture
    def steps(self) -> int:
        """How many updates the learning check may take."""
        return 40

    @staticmethod
    def build(algorithm_class, hparams=None, seed=0) -> DomainAlgorithm:
        """An instance on the easy problem's shapes."""
        return algorithm_class(INPUT_SHAPE, NUM_CLASSES, NUM_DOMAINS, hparams, seed=seed)

    @staticmethod
    def train(algorithm, steps) -> list[float]:
        """``steps`` updates on the easy problem; the losses they returned."""
        batches = easy_problem()
        return [float(algorithm.update(batches)["loss"]) for _ in range(steps)]

    def test_is_a_named_domain_algorithm_class(self, algorithm_class):
        assert isinstance(algorithm_class, type) and issubclass(algorithm_class, DomainAlgorithm)
        assert isinstance(algorithm_class.name, str) and algorithm_class.name
        assert algorithm_class.description

    def test_default_hparams_are_declared_and_valid(self, algorithm_class):
        defaults = algorithm_class.default_hparams()
        assert set(defaults) == set(algorithm_class.HPARAMS)
        algorithm = self.build(algorithm_class, defaults)
        assert algorithm.hparams == defaults
        assert self.build(algorithm_class).hparams == defaults

    def test_random_hparams_are_valid_and_deterministic_per_seed(self, algorithm_class):
        draws = [algorithm_class.random_hparams(seed) for seed in range(8)]
        assert draws == [algorithm_class.random_hparams(seed) for seed in range(8)]
        for hparams in draws[:3]:
            assert set(hparams) == set(algorithm_class.HPARAMS)
            algorithm = self.build(algorithm_class, hparams)
            assert algorithm.hparams == hparams
            self.train(algorithm, 1)
        if algorithm_class.HPARAMS:
            assert len({repr(sorted(d.items())) for d in draws}) > 1, "random_hparams ignores its seed"

    def test_unknown_hparams_are_refused_with_the_valid_names(self, algorithm_class):
        with pytest.raises(AlgorithmError, match="no_such_hparam") as caught:
            self.build(algorithm_class, {"no_such_hparam": 1})
        for name in algorithm_class.HPARAMS:
            assert name in str(caught.value)

    def test_update_lowers_the_loss_on_an_easy_problem(self, algorithm_class, steps):
        losses = self.train(self.build(algorithm_class), steps)
        first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
        assert last < 0.5 * first, f"loss went from {first:.3f} to {last:.3f} in {steps} steps"

    def test_predict_returns_logits_for_every_window(self, algorithm_class):
        import torch

        algorithm = self.build(algorithm_class)
        x = easy_problem()[0][0]
        logits = algorithm.predict(x)
        assert isinstance(logits, torch.Tensor)
        assert tuple(logits.shape) == (len(x), NUM_CLASSES)
        assert logits.dtype.is_floating_point and bool(torch.isfinite(logits).all())

    def test_save_and_load_round_trip_predictions_exactly(self, algorithm_class, tmp_path):
        import torch

        algorithm = self.build(algorithm_class, seed=3)
        self.train(algorithm, 3)
        path = algorithm.save(tmp_path / "algorithm.safetensors")
        restored = load_algorithm(path, algorithm_class)
        assert restored.hparams == algorithm.hparams and restored.seed == 3
        x = easy_problem(seed=1)[0][0]
        assert torch.equal(restored.predict(x), algorithm.predict(x))

    def test_damaged_save_file_is_one_line_error(self, algorithm_class, tmp_path):
        path = self.build(algorithm_class).save(tmp_path / "algorithm.safetensors")
        raw = path.read_bytes()
        path.write_bytes(raw[:6])
        with pytest.raises(AlgorithmError, match="not a saved crossedge algorithm"):
            load_algorithm(path, algorithm_class)
        flipped = bytearray(raw)
        flipped[-1] ^= 0xFF  # the last byte is tensor data, past the header
        path.write_bytes(bytes(flipped))
        with pytest.raises(AlgorithmError, match="damaged"):
            load_algorithm(path, algorithm_class)

    def test_same_seed_gives_the_same_predictions(self, algorithm_class):
        import torch

        x = easy_problem(seed=2)[0][0]
        first, second = self.build(algorithm_class, seed=5), self.build(algorithm_class, seed=5)
        self.train(first, 3)
        self.train(second, 3)
        assert torch.equal(first.predict(x), second.predict(x))
