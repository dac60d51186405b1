"""Measurements on disk: keyed by machine and model, atomic, and never trusted when unreadable."""

import json

import pytest
import torch
from torch import nn

from crossedge.core.measurements import (
    MEASUREMENTS_ENV,
    MeasurementCache,
    machine,
    measurements_dir,
    module_fingerprint,
)


@pytest.fixture
def store(tmp_path):
    return MeasurementCache("kernels", tmp_path / "m")


def test_a_value_is_measured_once_then_read_back(store):
    calls = []

    def measure():
        calls.append(1)
        return {"576x576": "w8a8"}

    assert store.get_or_measure({"shape": [576, 576]}, measure) == {"576x576": "w8a8"}
    assert store.get_or_measure({"shape": [576, 576]}, measure) == {"576x576": "w8a8"}
    assert len(calls) == 1
    assert store.get_or_measure({"shape": [576, 576]}, measure, again=True) == {"576x576": "w8a8"}
    assert len(calls) == 2
    # Another key misses.
    assert store.get({"shape": [576, 1536]}) is None


def test_the_thread_count_is_part_of_the_key(store):
    previous = torch.get_num_threads()
    store.put({"model": "x"}, 1.5)
    try:
        torch.set_num_threads(previous + 1)
        assert machine()["threads"] == previous + 1
        assert store.get({"model": "x"}) is None
    finally:
        torch.set_num_threads(previous)
    assert store.get({"model": "x"}) == 1.5


def test_a_capped_onednn_instruction_set_is_part_of_the_key(store, monkeypatch):
    import os

    from crossedge.core import measurements

    store.put({"model": "x"}, 1.5)
    cap = "SSE41" if os.environ.get("ONEDNN_MAX_CPU_ISA") == "AVX2" else "AVX2"
    try:
        with monkeypatch.context() as env:
            env.setenv("ONEDNN_MAX_CPU_ISA", cap)
            measurements._processor.cache_clear()
            assert machine()["onednn_max_isa"] == cap
            assert store.get({"model": "x"}) is None
    finally:
        measurements._processor.cache_clear()
    assert store.get({"model": "x"}) == 1.5


def test_a_corrupted_file_is_measured_again_with_a_warning(store):
    path = store.put({"model": "x"}, [1, 2])
    path.write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable measurement file"):
        assert store.get({"model": "x"}) is None
    with pytest.warns(UserWarning, match="unreadable"):
        assert store.get_or_measure({"model": "x"}, lambda: [3]) == [3]
    assert store.get({"model": "x"}) == [3]
    assert json.loads(path.read_text())["value"] == [3]


def test_a_file_for_another_key_is_not_trusted(store):
    path = store.put({"model": "x"}, 1)
    other = store.path({"model": "y"})
    other.write_bytes(path.read_bytes())
    with pytest.warns(UserWarning, match="not the one for this key"):
        assert store.get({"model": "y"}) is None


def test_an_unwritable_folder_warns_and_still_returns_the_value(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = MeasurementCache("kernels", blocker / "below")
    with pytest.warns(UserWarning, match="could not keep the measurement"):
        assert store.get_or_measure({"a": 1}, lambda: 7) == 7


def test_the_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(MEASUREMENTS_ENV, str(tmp_path / "elsewhere"))
    assert measurements_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv(MEASUREMENTS_ENV)
    monkeypatch.setenv("CROSSEDGE_CACHE", str(tmp_path / "cache"))
    assert measurements_dir() == tmp_path / "cache" / "measurements"


def test_the_fingerprint_sees_structure_not_weights():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    b = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert module_fingerprint(a) == module_fingerprint(b)  # other weights, same structure
    assert module_fingerprint(a) != module_fingerprint(b.to(torch.bfloat16))
    wider = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    assert module_fingerprint(a) != module_fingerprint(wider)
    swapped = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
    assert module_fingerprint(a) != module_fingerprint(swapped)
