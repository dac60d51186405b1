"""Tiny random models and a byte-level tokenizer for fast offline tests.

Public so that every crossedge package and third-party plugin can test against
real transformers architectures without fetching anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .backends import TorchEagerBackend
from .contracts.backend import Backend
from .hookspecs import hookimpl

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")
CHAT_TEMPLATE = (
    "{% for message in messages %}<s>{{ message['role'] }}: {{ message['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def byte_tokenizer(permutation: Sequence[int] | None = None) -> Any:
    """A transformers fast tokenizer over the 256 byte values plus pad, bos and eos.

    Any text round-trips exactly, so tests can use real strings. ``permutation[i]``
    renumbers the byte that the default numbers ``i``: the same text then gets a
    different vocabulary (for cross-tokenizer tests).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    ids = list(range(len(alphabet))) if permutation is None else list(permutation)
    if sorted(ids) != list(range(len(alphabet))):
        raise ValueError(f"permutation must reorder the {len(alphabet)} byte ids")
    vocab = {ch: ids[i] for i, ch in enumerate(alphabet)}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_config(
    arch: str = "llama", *, vocab_size: int = 259, layers: int = 2, hidden: int = 32, **overrides: Any
) -> Any:
    """A transformers config for a tiny model of the given architecture."""
    from transformers import GPT2Config, LlamaConfig

    ids = {"bos_token_id": 257, "eos_token_id": 258, "pad_token_id": 256}
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=True,
            **ids,
        )
    elif arch == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=4, n_positions=512, **ids)
    else:
        raise ValueError(f"tiny_config knows 'llama' and 'gpt2', not {arch!r}")
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def tiny_causal_lm(arch: str = "llama", *, seed: int = 0, **config_kwargs: Any) -> tuple[Any, Any]:
    """A (model, tokenizer) pair with random weights fixed by ``seed``, in eval mode, fp32."""
    import torch
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, **config_kwargs)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.eval()
    return model, byte_tokenizer()


def tiny_windowed_lm(kind: str = "mistral", *, window: int = 8, seed: int = 0) -> Any:
    """A tiny random model with sliding-window attention, eval mode, fp32.

    ``kind="mistral"``: every layer slides over ``window`` tokens (2 layers);
    ``kind="gemma3"``: sliding, full and sliding layers (3), as gemma3 mixes them.
    """
    import torch
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, MistralConfig

    shared = {
        "vocab_size": 259,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "sliding_window": window,
        "max_position_embeddings": 512,
        "bos_token_id": 257,
        "eos_token_id": 258,
        "pad_token_id": 256,
        "initializer_range": 0.15,
    }
    if kind == "mistral":
        config = MistralConfig(num_hidden_layers=2, **shared)
    elif kind == "gemma3":
        layer_types = ["sliding_attention", "full_attention", "sliding_attention"]
        config = Gemma3TextConfig(num_hidden_layers=3, head_dim=8, layer_types=layer_types, **shared)
    else:
        raise ValueError(f"tiny_windowed_lm knows 'mistral' and 'gemma3', not {kind!r}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config).eval()


def save_tiny_causal_lm(folder: Path | str, arch: str = "llama", *, seed: int = 0, **config_kwargs: Any) -> Path:
    """Write a tiny model as a safetensors model folder that ``from_pretrained`` reads."""
    model, tokenizer = tiny_causal_lm(arch, seed=seed, **config_kwargs)
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


class CountingBackend(TorchEagerBackend):
    """A third-party-style backend that runs a causal LM eagerly and counts its forwards.

    The registry builds a fresh instance for every command, so the counters are on the
    class: take ``CountingBackend.fresh()`` (a subclass with its own counters) for each
    test, register it with :class:`BackendPlugin`, then read ``forwards`` and ``requests``.
    """

    name = "counting"
    description = "eager PyTorch that counts the causal LM's forward calls (tests)"
    forwards: int = 0
    requests: list[dict[str, Any]] = []

    @classmethod
    def fresh(cls) -> type[CountingBackend]:
        """A subclass with zeroed counters, for one test."""
        return type(cls.__name__, (cls,), {"forwards": 0, "requests": []})

    def require(self, *, purpose: str, **capabilities: Any) -> None:
        """Remember what was asked, then check it like any backend."""
        type(self).requests.append({"purpose": purpose, **capabilities})
        super().require(purpose=purpose, **capabilities)

    def prepare_causal_lm(self, model: Any) -> Any:
        """The same model, its forward wrapped to count calls."""
        forward = model.forward
        cls = type(self)

        def counted(*args: Any, **kwargs: Any) -> Any:
            cls.forwards += 1
            return forward(*args, **kwargs)

        model.forward = counted
        return model


class StaticGraphBackend(Backend):
    """A backend that, like an exported static graph, declares no dynamic shapes and no KV-cache decoding."""

    name = "static-graph"
    description = "a static-graph backend that refuses decoding (tests)"


class BackendPlugin:
    """A plugin registering the given backend classes (``registered(BackendPlugin(cls))`` in a test)."""

    def __init__(self, *backends: Any) -> None:
        self.backends = backends

    @hookimpl
    def register_backends(self, register: Any) -> None:
        """Register every backend given to the constructor."""
        for backend in self.backends:
            register(backend)


def run_cli(
    *args: str,
    cache: Path | str | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> Any:
    """Run ``crossedge ARGS`` in a fresh process with entry points loaded, as a user's shell would.

    The plugin switches of the calling test process (``CROSSEDGE_LOAD_PLUGINS``,
    ``CROSSEDGE_NO_ENTRY_POINTS``) are dropped, ``cache`` becomes ``CROSSEDGE_CACHE`` and
    ``env`` is applied last. Returns the ``subprocess.CompletedProcess`` (text output).
    """
    import os
    import subprocess
    import sys

    environment = {
        k: v for k, v in os.environ.items() if k not in ("CROSSEDGE_LOAD_PLUGINS", "CROSSEDGE_NO_ENTRY_POINTS")
    }
    if cache is not None:
        environment["CROSSEDGE_CACHE"] = str(cache)
    environment.update(env or {})
    command = [sys.executable, "-m", "crossedge.core.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=timeout)


def installed_plugin(name: str, cache: Path | str | None = None) -> dict[str, Any]:
    """The ``crossedge plugins --json`` row of plugin ``name``, as a user's shell sees it (entry points loaded)."""
    import json

    done = run_cli("plugins", "--json", cache=cache)
    if done.returncode != 0:
        raise AssertionError(f"crossedge plugins --json failed: {done.stderr}")
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    if name not in rows:
        raise AssertionError(f"plugin {name!r} is not loaded; loaded: {', '.join(sorted(rows))}")
    return rows[name]
