"""Quant tests never load entry points: the plugin module is registered per test by hand."""

import os

os.environ["CROSSEDGE_NO_ENTRY_POINTS"] = "1"  # not even first-party packages: tests register what they use

import pytest  # noqa: E402
import torch  # noqa: E402

from crossedge.core import registered  # noqa: E402


@pytest.fixture
def quant_plugin():
    """The crossedge-quant plugin module, registered for one test."""
    import crossedge.quant.plugin as plugin

    with registered(plugin, name="crossedge-quant-test"):
        yield plugin


@pytest.fixture(scope="session")
def tiny_lm():
    """A tiny random Llama (hidden 64, vocab 259) and its byte tokenizer."""
    from crossedge.core.testing import tiny_causal_lm

    return tiny_causal_lm("llama", seed=0, hidden=64, layers=2)


@pytest.fixture(scope="session")
def sample_ids(tiny_lm):
    """One batch of byte tokens of English text."""
    _, tokenizer = tiny_lm
    text = "The quick brown fox jumps over the lazy dog; quantization keeps the logits close. " * 3
    return tokenizer(text, return_tensors="pt").input_ids


@pytest.fixture
def fresh_lm(tiny_lm):
    """A deep copy of the tiny model, safe to quantize in place."""
    import copy

    model, tokenizer = tiny_lm
    return copy.deepcopy(model), tokenizer


class SmallCNN(torch.nn.Module):
    """Two convolutions and a two-layer MLP head: a plain torch.nn model."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(4),
        )
        self.head = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(256, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.fixture
def cnn():
    """A seeded small CNN in eval mode."""
    torch.manual_seed(0)
    return SmallCNN().eval()


@pytest.fixture(autouse=True)
def _measurements(tmp_path, monkeypatch):
    """Kernel choices and verification costs a test times are its own (never the user's cache)."""
    monkeypatch.setenv("CROSSEDGE_MEASUREMENTS", str(tmp_path / "measurements"))
