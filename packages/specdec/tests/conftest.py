"""specdec tests never load entry points: the plugin module is registered per test by hand."""

import os

os.environ["CROSSEDGE_NO_ENTRY_POINTS"] = "1"  # not even first-party packages: tests register what they use

import pytest  # noqa: E402

from crossedge.core import registered  # noqa: E402


@pytest.fixture(autouse=True)
def specdec_plugin():
    """The specdec plugin module registered for each test (built-in drafters and policies resolve by name)."""
    from crossedge.specdec import plugin

    with registered(plugin, name="specdec-test"):
        yield plugin


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models gain nothing from threads, and a shared machine makes extra threads slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _measurements(tmp_path, monkeypatch):
    """Kernel choices and verification costs a test times are its own (never the user's cache)."""
    monkeypatch.setenv("CROSSEDGE_MEASUREMENTS", str(tmp_path / "measurements"))


@pytest.fixture(autouse=True)
def _sequences(tmp_path, monkeypatch):
    """Self-generated training sequences a test caches are its own (never the user's cache)."""
    from crossedge.specdec import exit_head

    monkeypatch.setattr(exit_head, "sequences_folder", lambda: tmp_path / "self-generated")


@pytest.fixture(scope="session")
def heads_tiny():
    """The tiny Llama (and tokenizer) the draft-head tests train on; tests must leave it unchanged."""
    from crossedge.core.testing import tiny_causal_lm

    return tiny_causal_lm("llama", layers=3, hidden=32, seed=1, initializer_range=0.15)


@pytest.fixture(scope="session")
def heads_data(heads_tiny):
    """(data, anchor start): 10 prompts, 10 generated tokens, states of the top layer and two below, top-4."""
    from crossedge.specdec.exit_head import self_generated_sequences, training_prompts
    from crossedge.specdec.heads.base import collect_head_data
    from crossedge.specdec.testing import HEAD_PROMPT_TOKENS, HEAD_TEXTS

    model, tokenizer = heads_tiny
    prompts = training_prompts(tokenizer, HEAD_TEXTS, 10, HEAD_PROMPT_TOKENS)
    sequences = self_generated_sequences(model, prompts, 10, progress=False)
    layers = (model.config.num_hidden_layers, model.config.num_hidden_layers - 2)
    return collect_head_data(model, sequences, layers, top_k=4, progress=False), prompts.shape[1] - 1
