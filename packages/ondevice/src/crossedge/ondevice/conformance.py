"""Shared conformance tests every backend runs by subclassing :class:`BackendConformance`.

A new backend gets its tests by declaring one class::

    class TestMyBackend(BackendConformance):
        backend_factory = MyBackend

Parity is against eager fp32 on the package's CNN and a tiny BERT encoder, with
``atol`` (1e-4 by default) as the bar; the ``minilm-l6`` case needs a real model
and carries the ``model`` marker. This module imports pytest (the ``test`` extra).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from .backends import Backend, BackendCapabilityError, BackendUnavailableError, max_abs_diff
from .networks import EncoderOutput, MobileNetV2, encoder_inputs, tiny_bert, with_batch_statistics


class BackendConformance:
    """Mixin of pytest tests; subclasses set ``backend_factory`` (a class or a zero-argument callable)."""

    backend_factory: Callable[[], Backend]
    atol: float = 1e-4
    #: results of each parity check, so a report can print them after the run
    parity_log: list[dict[str, Any]] = []

    @pytest.fixture
    def backend(self) -> Backend:
        """The backend under test; skips with the backend's own reason when its wheel is missing."""
        backend = self.backend_factory()
        reason = backend.unavailable_reason()
        if reason is not None:
            pytest.skip(reason)
        return backend

    def check_parity(self, backend: Backend, model: torch.nn.Module, inputs: tuple[Any, ...], label: str) -> float:
        """Prepare, compare against eager and assert the difference is under ``atol``."""
        prepared = backend.prepare(model, inputs)
        diff = max_abs_diff(prepared, model, inputs)
        self.parity_log.append({"backend": backend.name, "model": label, "max_abs_diff": diff})
        assert diff <= self.atol, f"{backend.name} on {label}: max abs diff {diff:.3g} > {self.atol}"
        return diff

    def test_declares_capabilities(self, backend: Backend) -> None:
        caps = backend.capabilities()
        assert caps["name"] == backend.name and backend.name
        assert "float32" in caps["dtypes"]
        assert isinstance(caps["dynamic_shapes"], bool) and isinstance(caps["training"], bool)
        assert caps["available"] is True and caps["unavailable_reason"] is None

    def test_parity_cnn(self, backend: Backend) -> None:
        torch.manual_seed(0)
        # Batch statistics from data give activations a trained network's scale (see with_batch_statistics).
        model = with_batch_statistics(MobileNetV2(width_mult=0.5), torch.randn(64, 1, 8, 8))
        inputs = (torch.randn(4, 1, 8, 8),)
        assert model(*inputs).abs().max() > 0.05, "the parity check needs non-vanishing outputs"
        self.check_parity(backend, model, inputs, "mobilenetv2-0.5")

    def test_parity_tiny_bert(self, backend: Backend) -> None:
        model = EncoderOutput(tiny_bert()).eval()
        self.check_parity(backend, model, encoder_inputs(vocab_size=100), "tiny-bert")

    def test_refuses_undeclared_dtype(self, backend: Backend) -> None:
        missing = [d for d in ("bfloat16", "float16") if d not in backend.dtypes]
        if not missing:
            pytest.skip(f"{backend.name} declares every dtype crossedge knows")
        with pytest.raises(BackendCapabilityError, match=missing[0]):
            backend.prepare(MobileNetV2(width_mult=0.5), (torch.randn(1, 1, 8, 8),), dtype=missing[0])

    def test_static_backend_refuses_new_shapes(self, backend: Backend) -> None:
        model = MobileNetV2(width_mult=0.5).eval()
        prepared = backend.prepare(model, (torch.randn(2, 1, 8, 8),))
        if backend.dynamic_shapes:
            assert prepared(torch.randn(3, 1, 8, 8)).shape == (3, 10)
        else:
            with pytest.raises(BackendCapabilityError, match="dynamic shapes"):
                prepared(torch.randn(3, 1, 8, 8))

    @pytest.mark.model
    def test_parity_minilm(self, backend: Backend) -> None:
        from crossedge.core import load_model

        loaded = load_model("minilm-l6")
        model = EncoderOutput(loaded.model).eval()
        batch = loaded.tokenizer(
            ["on-device inference", "a second, longer sentence with padding at the end"],
            return_tensors="pt",
            padding=True,
        )
        self.check_parity(backend, model, (batch["input_ids"], batch["attention_mask"]), "minilm-l6")


def assert_missing_dependency_error(backend: Backend, module: str) -> None:
    """Check that ``backend`` refuses to prepare with a message naming ``module`` and a pip command."""
    with pytest.raises(BackendUnavailableError, match=rf"{module}.*pip install"):
        backend.prepare(MobileNetV2(width_mult=0.5), (torch.randn(1, 1, 8, 8),))
