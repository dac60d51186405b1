"""Shared conformance tests every backend runs by subclassing :class:`BackendConformance`.

A new backend gets its tests by declaring one class::

    from crossedge.core.conformance.backend import BackendConformance

    class TestMyBackend(BackendConformance):
        backend_factory = MyBackend

Parity is against eager fp32 on a small CNN and a tiny BERT encoder, with ``atol`` (1e-4
by default) as the bar; a backend that declares ``kv_cache_decoding`` must decode a tiny
causal LM greedily to the same tokens as eager, and one that declares ``module_interface``
must run a tiny BERT in place, called by keyword and layer by layer, like eager. The ``minilm-l6`` case needs a real
packaged model and carries the ``model`` marker (deselect it with ``-m "not model"``).
This module imports pytest (the ``test`` extra).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from crossedge.core.contracts.backend import (
    CAPABILITY_LABELS,
    Backend,
    BackendCapabilityError,
    BackendUnavailableError,
    is_backend_class,
    max_abs_diff,
)


def small_cnn(seed: int = 0, classes: int = 10) -> nn.Module:
    """A MobileNet-like block (conv, depthwise conv, batch norm, Hardswish, pooling, linear) for 1x8x8 inputs.

    Its batch norms carry statistics taken from random data: an untrained network in eval
    mode normalizes with mean 0 and variance 1, so its activations shrink layer after
    layer and a parity check would compare near-zeros.
    """
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU6(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),
        nn.BatchNorm2d(16),
        nn.Hardswish(),
        nn.Conv2d(16, 24, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(24, classes),
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(torch.randn(64, 1, 8, 8))
    return model.eval()


class HiddenStates(nn.Module):
    """Wrap a transformers encoder so it maps (ids, mask) tensors to ``last_hidden_state`` (exportable)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def tiny_bert(seed: int = 0, vocab_size: int = 100) -> nn.Module:
    """A randomly initialized two-layer BERT encoder, wrapped by :class:`HiddenStates`, in eval mode."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return HiddenStates(BertModel(config)).eval()


def encoder_inputs(vocab_size: int = 100, batch: int = 2, length: int = 16, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random token ids and a mask with padding on the last row."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab_size, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[-1, length // 2 :] = 0
    return ids, mask


class BackendConformance:
    """Mixin of pytest tests; subclasses set ``backend_factory`` (the class, or a zero-argument callable)."""

    backend_factory: Callable[[], Backend]
    atol: float = 1e-4
    #: results of each parity check, so a report can print them after the run
    parity_log: list[dict[str, Any]] = []

    @pytest.fixture
    def backend(self) -> Backend:
        """The backend under test; skips with the backend's own reason when it cannot run here."""
        backend = self.backend_factory()
        reason = backend.unavailable_reason()
        if reason is not None:
            pytest.skip(reason)
        return backend

    def check_parity(self, backend: Backend, model: nn.Module, inputs: tuple[Any, ...], label: str) -> float:
        """Prepare, compare against eager and assert the difference is under ``atol``."""
        prepared = backend.prepare(model, inputs)
        diff = max_abs_diff(prepared, model, inputs)
        self.parity_log.append({"backend": backend.name, "model": label, "max_abs_diff": diff})
        assert diff <= self.atol, f"{backend.name} on {label}: max abs diff {diff:.3g} > {self.atol}"
        return diff

    def test_is_a_registrable_class(self, backend: Backend) -> None:
        # The registry holds classes and builds them with no options when a spec names none.
        cls = type(backend)
        assert is_backend_class(cls), f"{cls.__name__} must subclass crossedge.core.contracts.backend.Backend"
        assert isinstance(cls.name, str) and cls.name, "a backend class needs a non-empty `name`"
        assert isinstance(cls.description, str) and cls.description, "a backend class needs a `description`"
        assert isinstance(cls(), cls)

    def test_declares_capabilities(self, backend: Backend) -> None:
        caps = backend.capabilities()
        assert caps["name"] == backend.name
        assert "float32" in caps["dtypes"]
        for flag in CAPABILITY_LABELS:
            assert isinstance(caps[flag], bool), f"{flag} must be declared as a bool"
        assert caps["available"] is True and caps["unavailable_reason"] is None

    def test_require_follows_declared_capabilities(self, backend: Backend) -> None:
        for flag in CAPABILITY_LABELS:
            if getattr(backend, flag):
                backend.require(purpose="conformance", **{flag: True})
            else:
                with pytest.raises(BackendCapabilityError, match=rf"{backend.name!r} cannot be used for conformance"):
                    backend.require(purpose="conformance", **{flag: True})

    def test_parity_cnn(self, backend: Backend) -> None:
        model = small_cnn()
        inputs = (torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)),)
        assert model(*inputs).abs().max() > 0.05, "the parity check needs non-vanishing outputs"
        self.check_parity(backend, model, inputs, "small-cnn")

    def test_parity_tiny_bert(self, backend: Backend) -> None:
        self.check_parity(backend, tiny_bert(), encoder_inputs(), "tiny-bert")

    def test_refuses_undeclared_dtype(self, backend: Backend) -> None:
        missing = [d for d in ("bfloat16", "float16") if d not in backend.dtypes]
        if not missing:
            pytest.skip(f"{backend.name} declares every dtype crossedge knows")
        with pytest.raises(BackendCapabilityError, match=missing[0]):
            backend.prepare(small_cnn(), (torch.randn(1, 1, 8, 8),), dtype=missing[0])

    def test_static_backend_refuses_new_shapes(self, backend: Backend) -> None:
        prepared = backend.prepare(small_cnn(), (torch.randn(2, 1, 8, 8),))
        if backend.dynamic_shapes:
            assert prepared(torch.randn(3, 1, 8, 8)).shape == (3, 10)
        else:
            with pytest.raises(BackendCapabilityError, match="dynamic shapes"):
                prepared(torch.randn(3, 1, 8, 8))

    def test_causal_lm_decodes_like_eager(self, backend: Backend) -> None:
        from crossedge.core.testing import tiny_causal_lm

        model, _ = tiny_causal_lm("llama", seed=0)
        if not backend.kv_cache_decoding:
            with pytest.raises(BackendCapabilityError, match="KV cache"):
                backend.prepare_causal_lm(model)
            return
        prompt = torch.tensor([[5, 6, 7, 8, 5, 6]])
        greedy = {"do_sample": False, "max_new_tokens": 12, "min_new_tokens": 12}
        with torch.inference_mode():
            expected = model.generate(prompt, **greedy)
            prepared = backend.prepare_causal_lm(copy.deepcopy(model))
            got = prepared.generate(prompt, **greedy)
        assert got.tolist() == expected.tolist(), f"{backend.name} decodes differently from eager"

    def test_module_keeps_its_interface(self, backend: Backend) -> None:
        model = tiny_bert().encoder
        if not backend.module_interface:
            with pytest.raises(BackendCapabilityError, match="own interface"):
                backend.prepare_module(model)
            return
        ids, mask = encoder_inputs()
        with torch.inference_mode():
            expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
            first_layer = model.encoder.layer[0](model.embeddings(input_ids=ids))[0]
            prepared = backend.prepare_module(copy.deepcopy(model))
            got = prepared(input_ids=ids, attention_mask=mask).last_hidden_state
            got_layer = prepared.encoder.layer[0](prepared.embeddings(input_ids=ids))[0]
        assert float((got - expected).abs().max()) <= self.atol, f"{backend.name} changes the module's outputs"
        assert float((got_layer - first_layer).abs().max()) <= self.atol, f"{backend.name} changes a layer called alone"

    @pytest.mark.model
    def test_parity_minilm(self, backend: Backend) -> None:
        from crossedge.core import load_model

        loaded = load_model("minilm-l6")
        model = HiddenStates(loaded.model).eval()
        batch = loaded.tokenizer(
            ["on-device inference", "a second, longer sentence with padding at the end"],
            return_tensors="pt",
            padding=True,
        )
        self.check_parity(backend, model, (batch["input_ids"], batch["attention_mask"]), "minilm-l6")


def assert_missing_dependency_error(backend: Backend, module: str) -> None:
    """Check that ``backend`` refuses to prepare with a message naming ``module`` and a pip command."""
    with pytest.raises(BackendUnavailableError, match=rf"{module}.*pip install"):
        backend.prepare(small_cnn(), (torch.randn(1, 1, 8, 8),))
