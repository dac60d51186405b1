"""Conformance suite for model sources: subclass :class:`ModelSourceConformance` and give a ``source`` fixture.

::

    class TestMySource(ModelSourceConformance):
        @pytest.fixture
        def source(self, cache):
            return MySource()

The suite's ``cache`` fixture points ``CROSSEDGE_CACHE`` at an empty folder under
``tmp_path``, so pulls never touch the user's cache. Override ``text`` when the
source's tokenizer cannot round-trip the sample.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from crossedge.core.sources import LoadedModel, ModelSource

#: File endings of pickled weights, which a source must never hand out (loading them runs code).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class ModelSourceConformance:
    """Checks every model source passes: a name, offline info, a safetensors folder, idempotent pulls, a usable load."""

    #: A text the source's tokenizer must decode back to itself.
    text: str = "hello world"

    @pytest.fixture
    def cache(self, tmp_path, monkeypatch) -> Path:
        """An empty crossedge cache for one test."""
        root = tmp_path / "crossedge-cache"
        monkeypatch.setenv("CROSSEDGE_CACHE", str(root))
        return root

    @pytest.fixture
    def source(self, cache) -> ModelSource:
        """The source under test; a subclass must override this fixture."""
        raise NotImplementedError("a ModelSourceConformance subclass defines a `source` fixture")

    def test_is_a_model_source_with_a_name(self, source):
        assert isinstance(source, ModelSource), f"{type(source).__name__} does not subclass crossedge's ModelSource"
        assert isinstance(source.name, str) and source.name, "set a non-empty `name`"

    def test_info_before_pull_names_the_source_without_fetching(self, source, monkeypatch):
        import socket

        def no_network(*args, **kwargs):
            raise AssertionError("info() opened a network connection; it must never fetch")

        monkeypatch.setattr(socket.socket, "connect", no_network)
        facts = source.info()
        assert isinstance(facts, dict), f"info() returned {type(facts).__name__}, not a dict"
        assert facts.get("name") == source.name

    def test_pull_gives_a_folder_of_config_and_safetensors(self, source):
        folder = Path(source.pull())
        assert folder.is_dir(), f"pull() returned {folder}, which is not a folder"
        assert (folder / "config.json").is_file(), f"{folder} has no config.json"
        assert list(folder.glob("*.safetensors")), f"{folder} has no .safetensors weights"
        pickled = sorted(p.name for p in folder.rglob("*") if p.suffix in PICKLE_SUFFIXES)
        assert pickled == [], f"{folder} holds pickled weights {pickled}"
        assert source.is_pulled()

    def test_pulling_twice_gives_the_same_unchanged_folder(self, source):
        first = Path(source.pull())
        before = {p.relative_to(first): p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()}
        again = Path(source.pull())
        assert again == first
        after = {p.relative_to(again): p.stat().st_mtime_ns for p in again.rglob("*") if p.is_file()}
        assert after == before, "a second pull rewrote files it already had"

    def test_load_gives_a_model_that_runs_and_a_tokenizer_that_round_trips(self, source):
        import torch

        loaded = source.load()
        assert isinstance(loaded, LoadedModel), f"load() returned {type(loaded).__name__}, not a LoadedModel"
        ids = loaded.tokenizer(self.text, add_special_tokens=False).input_ids
        assert loaded.tokenizer.decode(ids, skip_special_tokens=True) == self.text
        with torch.no_grad():
            out = loaded.model(input_ids=torch.tensor([ids[:2]]))
        values = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
        assert values.shape[:2] == (1, 2)
        assert math.isfinite(float(values.float().abs().sum())), "the forward pass gave non-finite outputs"
