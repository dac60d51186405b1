"""Tiny random models and a byte-level tokenizer for fast offline tests.

Public so that every crossedge package and third-party plugin can test against
real transformers architectures without fetching anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def save_tiny_causal_lm(folder: Path | str, arch: str = "llama", *, seed: int = 0, **config_kwargs: Any) -> Path:
    """Write a tiny model as a safetensors model folder that ``from_pretrained`` reads."""
    model, tokenizer = tiny_causal_lm(arch, seed=seed, **config_kwargs)
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


class CountingBackend:
    """A third-party-style backend that runs a causal LM eagerly and counts its forwards.

    Register it (with :class:`BackendPlugin`) to check that a package runs the model
    through ``--backend`` and that the output matches eager.
    """

    name = "counting"

    def __init__(self) -> None:
        self.forwards = 0
        self.requests: list[dict[str, Any]] = []

    def require(self, *, purpose: str, **capabilities: bool) -> None:
        """Accept everything, remembering what was asked."""
        self.requests.append({"purpose": purpose, **capabilities})

    def prepare_causal_lm(self, model: Any) -> Any:
        """The same model, its forward wrapped to count calls."""
        forward = model.forward

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.forwards += 1
            return forward(*args, **kwargs)

        model.forward = counted
        return model


class StaticGraphBackend:
    """A backend that, like an exported static graph, cannot decode with a KV cache: it refuses."""

    name = "static-graph"

    def require(self, *, purpose: str, kv_cache_decoding: bool = False, **capabilities: bool) -> None:
        """Refuse uses that need KV-cache decoding, naming the backend, the capability and what to use."""
        from .errors import CrossedgeError

        if kv_cache_decoding:
            raise CrossedgeError(
                f"backend {self.name!r} cannot be used for {purpose}: it does not support decoding a causal LM "
                "with a mutable KV cache; use --backend torch-eager"
            )

    def prepare_causal_lm(self, model: Any) -> Any:
        """Never reached: ``require`` refuses first."""
        raise AssertionError("a refused backend must not prepare a model")


class BackendPlugin:
    """A plugin registering the given backend objects (``registered(BackendPlugin(b))`` in a test)."""

    def __init__(self, *backends: Any) -> None:
        self.backends = backends

    @hookimpl
    def register_backends(self, register: Any) -> None:
        """Register every backend given to the constructor."""
        for backend in self.backends:
            register(backend)
