"""Retrieval tests never load entry points: the plugin module is registered per test by hand."""

import os

os.environ["CROSSEDGE_NO_ENTRY_POINTS"] = "1"  # not even first-party packages: tests register what they use

import pytest  # noqa: E402


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty crossedge cache for one test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("CROSSEDGE_CACHE", str(root))
    return root


@pytest.fixture
def tiny():
    """A tiny random BERT and its character WordPiece tokenizer."""
    from crossedge.retrieval.testing import tiny_bert

    return tiny_bert(seed=0)


@pytest.fixture
def plugin():
    """The retrieval plugin registered for one test."""
    from crossedge.core import registered
    from crossedge.retrieval import plugin as module

    with registered(module, name="retrieval-test"):
        yield module
