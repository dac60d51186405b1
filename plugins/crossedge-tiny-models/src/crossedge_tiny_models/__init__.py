"""Example crossedge plugin: tiny random causal LMs registered as model sources."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crossedge.core import hookimpl
from crossedge.core.sources import CachedSource
from crossedge.core.testing import save_tiny_causal_lm


class TinyRandomModel(CachedSource):
    """A tiny transformers causal LM with seeded random weights, saved as safetensors."""

    def __init__(self, name: str, arch: str, *, seed: int = 0, layers: int = 2, hidden: int = 64):
        self.name = name
        self.arch = arch
        self.seed = seed
        self.layers = layers
        self.hidden = hidden
        self.task = "causal-lm"
        self.description = f"random {arch} ({layers} layers, width {hidden}, seed {seed}) with a byte tokenizer"
        self.license = "Apache-2.0"

    def build(self, workdir: Path) -> dict[str, Any]:
        save_tiny_causal_lm(workdir, self.arch, seed=self.seed, layers=self.layers, hidden=self.hidden)
        return {"generator": "crossedge_tiny_models", "arch": self.arch, "seed": self.seed}


SOURCES = (
    TinyRandomModel("tiny-llama", "llama"),
    TinyRandomModel("tiny-gpt2", "gpt2"),
)


@hookimpl
def register_model_sources(register):
    for source in SOURCES:
        register(source)
