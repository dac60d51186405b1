"""What a scorer runs on: ``--quant``, ``--backend`` and ``--dtype``, checked before loading, applied after.

The retrieval commands compose the same parts as the other packages, through core: the
``--quant`` spec goes through the one quantizer registry (:func:`crossedge.core.compose.check_quant`
and ``apply_quant``, here on the scorer's encoder), the backend is resolved and asked for what a
scorer needs (dynamic shapes, and its module interface: the rerankers call an encoder's layers one
by one), and ``--dtype bfloat16`` casts the whole scorer::

    stack = check_scorer_stack(quant="int8", backend="torch-onednn", purpose="retrieval search")
    reranker = load_scorer(folder)
    prepare_scorer(reranker, stack)          # in place; returns what it did

The ``int8`` and ``int4`` presets choose their kernels by timing candidates at a row count; for a
scorer that is a reranking batch (batch size times tokens per pair, thousands of rows), not the
one or four rows of a decoding step, so unless the spec sets ``rows`` it is set to the scorer's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from crossedge.core import CrossedgeError
from crossedge.core.compose import QuantPlan, apply_quant, check_quant
from crossedge.core.contracts.backend import DEFAULT_BACKEND, Backend, resolve_dtype

if TYPE_CHECKING:
    from .scorers import Scorer

#: Repeats of the presets' kernel timing at scoring rows when the spec does not set them
#: (a candidate kernel can take a second per call at thousands of rows).
SCORING_TIMING_REPEATS = 3


@dataclass(frozen=True)
class ScorerStack:
    """A checked ``--quant`` plan, backend and dtype for a scorer; nothing is loaded yet."""

    quant: QuantPlan | None
    backend: Backend
    dtype: str = "float32"
    #: for ``--dtype auto``, why this dtype was chosen on this CPU
    dtype_reason: str | None = None

    @property
    def is_plain(self) -> bool:
        """Whether the scorer runs as loaded (float32, eager, not quantized)."""
        return self.quant is None and self.backend.name == DEFAULT_BACKEND and self.dtype == "float32"

    @property
    def was_asked_for(self) -> bool:
        """Whether the user asked for more than the plain stack (``--dtype auto`` alone asks for nothing)."""
        chosen_dtype_only = (
            self.quant is None and self.backend.name == DEFAULT_BACKEND and self.dtype_reason is not None
        )
        return not self.is_plain and not chosen_dtype_only

    def label(self) -> str:
        """A short name for table rows: ``int8, torch-onednn``; empty for the plain stack."""
        parts = [self.quant.spec] if self.quant is not None else []
        if self.dtype != "float32":
            parts.append(self.dtype)
        if self.backend.name != DEFAULT_BACKEND:
            parts.append(self.backend.name)
        return ", ".join(parts)

    def describe(self) -> dict[str, Any]:
        """What reports record beside results."""
        record = {"quant": self.quant.spec if self.quant else None, "backend": self.backend.name, "dtype": self.dtype}
        if self.dtype_reason is not None:
            record["dtype_reason"] = self.dtype_reason
        return record


def check_scorer_stack(
    quant: str | None = None, backend: str | Backend = DEFAULT_BACKEND, dtype: str = "float32", *, purpose: str
) -> ScorerStack:
    """Check the parts a scorer will run on before any model loads; refuse what cannot compose.

    ``dtype="auto"`` is bfloat16 where the CPU has native bfloat16 instructions, else float32
    (:func:`crossedge.core.contracts.backend.resolve_dtype`); the reason is kept on the stack.
    """
    from crossedge.core.backends import resolve_backend

    plan = check_quant(quant)
    name, reason = resolve_dtype(dtype, quantized=plan is not None)
    if plan is not None and name != "float32":
        raise CrossedgeError(
            f"--quant {plan.spec!r} with --dtype {name}: the quantized linears take float32 activations; "
            "choose one of the two"
        )
    wanted = {"dynamic_shapes": True, "module_interface": True, "custom_kernels": plan is not None, "dtype": name}
    if isinstance(backend, Backend):
        backend.require(purpose=purpose, **wanted)
    else:
        backend = resolve_backend(backend, purpose=purpose, **wanted)
    return ScorerStack(plan, backend, name, reason)


def scoring_rows(scorer: Scorer, batch_size: int = 32) -> int:
    """Rows one reranking batch sends through each linear: pairs times tokens per pair (or documents times tokens)."""
    tokens = scorer.max_doc_tokens + 3
    if scorer.name != "bi-encoder":
        tokens += scorer.max_query_tokens
    return batch_size * tokens


def for_scoring(plan: QuantPlan, rows: int) -> QuantPlan:
    """``plan`` with a preset's kernel timing at ``rows`` rows, unless its spec chose the rows itself."""
    from crossedge.core.specs import parse_spec

    config = plan.config
    given = parse_spec(plan.spec, kind="quantizer").options
    if not hasattr(config, "rows") or "rows" in given:
        return plan
    changes: dict[str, Any] = {"rows": [rows]}
    if hasattr(config, "repeats") and "repeats" not in given:
        changes["repeats"] = SCORING_TIMING_REPEATS
    return dataclasses.replace(plan, config=dataclasses.replace(config, **changes))


def prepare_scorer(scorer: Scorer, stack: ScorerStack, *, batch_size: int = 32) -> dict[str, Any]:
    """Put ``scorer`` on ``stack`` in place: cast, quantize its encoder, let the backend ready it; returns a record.

    Only the encoder is quantized: a reranker's head is two small linears whose output is the score.
    """
    from crossedge.core.contracts.backend import torch_dtype

    record = stack.describe()
    scorer.eval()
    if stack.dtype != "float32":
        scorer.to(torch_dtype(stack.dtype))
    if stack.quant is not None:
        plan = for_scoring(stack.quant, scoring_rows(scorer, batch_size))
        result = apply_quant(SimpleNamespace(model=scorer.encoder, tokenizer=scorer.tokenizer), plan)
        if not result.modules:
            raise CrossedgeError(f"--quant {plan.spec!r} replaced no layer of the {scorer.name}'s encoder")
        record.update(quantized_layers=len(result.modules), quant_details=result.details)
        if getattr(plan.config, "rows", None) is not None:
            record["timed_rows"] = list(plan.config.rows)
    scorer.encoder = stack.backend.prepare_module(scorer.encoder)
    return record
