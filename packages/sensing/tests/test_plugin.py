"""The plugin registers its benchmark, and every name it registers imports and has the right shape."""

import pytest

from crossedge.core import get_registry


@pytest.mark.usefixtures("plugin")
def test_every_registered_name_resolves_and_the_benchmark_runs():
    from crossedge.core.contracts.algorithm import DomainAlgorithm
    from crossedge.core.contracts.array_dataset import ArrayDataset
    from crossedge.sensing.plugin import ALGORITHMS, DATASETS

    for _, name in ALGORITHMS:
        assert issubclass(get_registry("algorithm").get(name), DomainAlgorithm)
    for _, name in DATASETS:
        assert isinstance(get_registry("dataset").get(name), ArrayDataset)
    report = get_registry("benchmark").get("sensing").run(steps=4, seeds=1, batch_size=4)
    assert [row["algorithm"] for row in report.rows] == ["erm"]
    assert report.summary["jobs"] == 4 and 0.0 <= report.rows[0]["training-domain_mean"] <= 1.0
