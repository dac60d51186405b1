"""The cost-aware policy's calibration timings are kept per decoder and machine, and reused."""

import copy

import pytest
import torch

from crossedge.core.measurements import MeasurementCache
from crossedge.specdec.calibration import KIND
from crossedge.specdec.drafters import CopyDrafter
from crossedge.specdec.engine import SpeculativeDecoder
from crossedge.specdec.errors import SpecdecError
from crossedge.specdec.policies import CostAwarePolicy
from crossedge.specdec.testing import CONFORMANCE_PROMPTS, greedy_reference, tiny_target


@pytest.fixture(scope="module")
def target():
    return tiny_target("llama")


@pytest.fixture
def forwards(monkeypatch):
    """Counts the engine's timed verification forwards, by length."""
    timed = []
    real = SpeculativeDecoder._time_verification

    def counted(self, model, cache, token, k):
        timed.append(k)
        return real(self, model, cache, token, k)

    monkeypatch.setattr(SpeculativeDecoder, "_time_verification", counted)
    return timed


def run(model, tokenizer, max_k=8, **kwargs):
    ids = tokenizer(CONFORMANCE_PROMPTS[0]).input_ids
    decoder = SpeculativeDecoder(model, [CopyDrafter()], CostAwarePolicy(max_k=max_k), **kwargs)
    tokens = decoder.generate(ids, 16).tokens
    assert tokens == greedy_reference(model, torch.tensor([ids]), 16)
    return decoder


def test_a_second_decoder_calibrates_from_the_stored_costs(target, forwards):
    model, tokenizer = target
    first = run(model, tokenizer)
    assert set(forwards) == {0, 1, 2, 3, 4, 6, 8}
    forwards.clear()
    second = run(model, tokenizer)
    assert forwards == [], "the stored costs were timed again"
    assert second.policy.calibrated
    for k, seconds in first.stored_costs.known.items():
        assert second.stored_costs.known[k] == seconds


def test_only_missing_lengths_are_timed_and_added(target, forwards):
    model, tokenizer = target
    run(model, tokenizer, max_k=4)
    forwards.clear()
    longer = run(model, tokenizer, max_k=8)
    assert set(forwards) == {6, 8}
    assert set(longer.stored_costs.known) == {0, 1, 2, 3, 4, 6, 8}


def test_refresh_times_everything_and_off_reads_nothing(target, forwards):
    model, tokenizer = target
    run(model, tokenizer)
    forwards.clear()
    run(model, tokenizer, calibration_cache="refresh")
    assert set(forwards) == {0, 1, 2, 3, 4, 6, 8}
    forwards.clear()
    off = run(model, tokenizer, calibration_cache="off")
    assert set(forwards) == {0, 1, 2, 3, 4, 6, 8}
    assert not off.stored_costs.known


def test_off_writes_nothing(target, tmp_path):
    model, tokenizer = target
    run(model, tokenizer, calibration_cache="off")
    assert not (tmp_path / "measurements").exists()


def test_another_structure_is_another_decoder(target, forwards):
    model, tokenizer = target
    run(model, tokenizer)
    forwards.clear()
    run(copy.deepcopy(model).to(torch.bfloat16), tokenizer)
    assert forwards, "a bf16 copy read the fp32 model's costs"


def test_a_corrupted_store_is_timed_again(target, forwards):
    model, tokenizer = target
    decoder = run(model, tokenizer)
    path = MeasurementCache(KIND).path(decoder.stored_costs._key)
    path.write_text('{"key": 1')
    forwards.clear()
    with pytest.warns(UserWarning, match="unreadable measurement file"):
        run(model, tokenizer)
    assert forwards


def test_an_unknown_mode_is_refused(target):
    with pytest.raises(SpecdecError, match="calibration_cache must be one of use, refresh, off"):
        SpeculativeDecoder(target[0], [CopyDrafter()], calibration_cache="sometimes")
