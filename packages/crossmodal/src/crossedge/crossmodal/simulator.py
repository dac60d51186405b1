"""A seeded simulator of retrieval-style brain decoding: stimulus embeddings seen through simulated subjects.

Each simulated subject s has its own random mixing matrix W_s (d -> C_s channels or voxels,
C_s differing per subject), a temporal response: the mixed signal is held for T_s samples
and smoothed by a causal exponential (haemodynamic-like) kernel with a subject-specific time
constant, then Gaussian noise at ``noise`` times the signal's standard deviation is added.
The same seed gives the same bytes. Decoding maps responses back into the embedding space.

``shared`` (0..1) is the fraction of the mixing's variance common to all subjects, as brains
share functional anatomy: W_s = sqrt(shared) * W_common[:, :C_s] + sqrt(1 - shared) * W_own,
with W_common drawn from the seed alone. At 0 (the default) subjects share nothing, so a
model trained on some subjects cannot transfer to another without its data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from crossedge.core.errors import CrossedgeError


class EmbeddingModelError(CrossedgeError, RuntimeError):
    """No sentence-embedding model available: crossedge-retrieval (minilm-l6) or a cached all-MiniLM-L6-v2."""


@dataclass(frozen=True)
class SimulatedSubject:
    """One simulated subject: its channel count, its number of samples, its smoothing time constant."""

    name: str
    channels: int
    samples: int
    tau: float = 3.0


DEFAULT_SUBJECTS = (
    SimulatedSubject("sim-s1", channels=48, samples=16, tau=2.0),
    SimulatedSubject("sim-s2", channels=64, samples=20, tau=3.0),
    SimulatedSubject("sim-s3", channels=40, samples=12, tau=4.0),
)


def simulate(
    embeddings: np.ndarray,
    subjects: Sequence[SimulatedSubject] = DEFAULT_SUBJECTS,
    seed: int = 0,
    noise: float = 0.5,
    shared: float = 0.0,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-subject responses {name: (N_stim, T_s, C_s) float32} to every stimulus, and the stimulus ids (0..N-1)."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"embeddings must be (n_stimuli, d), got shape {x.shape}")
    names = [s.name for s in subjects]
    if len(set(names)) != len(names):
        raise ValueError(f"simulated subject names repeat: {names}")
    if not 0.0 <= shared <= 1.0:
        raise ValueError(f"shared must be in [0, 1] (a fraction of the mixing variance), got {shared}")
    widest = max(s.channels for s in subjects)
    common = np.random.default_rng([seed, 1 << 20]).standard_normal((x.shape[1], widest)) / np.sqrt(x.shape[1])
    responses = {}
    for index, subject in enumerate(subjects):
        # one generator per subject, seeded by (seed, index): adding a subject leaves the others unchanged
        rng = np.random.default_rng([seed, index])
        mixing = rng.standard_normal((x.shape[1], subject.channels)) / np.sqrt(x.shape[1])
        if shared > 0.0:
            mixing = np.sqrt(shared) * common[:, : subject.channels] + np.sqrt(1.0 - shared) * mixing
        signal = x @ mixing  # (N, C)
        t = np.arange(subject.samples)
        gain = 1.0 - np.exp(-(t + 1) / subject.tau)  # the step response of a causal exponential kernel
        drift = rng.standard_normal(subject.channels) * 0.1
        clean = signal[:, None, :] * gain[None, :, None] + drift[None, None, :]
        scale = noise * float(signal.std() or 1.0)
        noisy = clean + rng.standard_normal(clean.shape) * scale
        responses[subject.name] = noisy.astype(np.float32)
    return responses, np.arange(len(x), dtype=np.int64)


def sentence_embeddings(texts: Sequence[str]) -> np.ndarray:
    """minilm-l6 sentence embeddings (mean-pooled, unit norm, (N, 384) float32) of ``texts``.

    Uses crossedge-retrieval's ``BiEncoder`` on the packaged ``minilm-l6`` model when
    crossedge-retrieval is installed, else transformers with ``all-MiniLM-L6-v2`` from the local
    Hugging Face cache; raises :class:`EmbeddingModelError` saying what to install otherwise. Tests use
    :func:`random_embeddings_for_tests` instead.
    """
    import torch

    try:
        from crossedge.retrieval.scorers import BiEncoder
    except ImportError:
        BiEncoder = None
    if BiEncoder is not None:
        with torch.no_grad():
            return BiEncoder.from_pretrained("minilm-l6").embed(list(texts)).float().numpy()
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise EmbeddingModelError(
            "sentence embeddings need a model: pip install crossedge-retrieval, then crossedge models pull minilm-l6"
        ) from exc
    name = "sentence-transformers/all-MiniLM-L6-v2"
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
        model = AutoModel.from_pretrained(name, local_files_only=True).eval()
    except OSError as exc:
        raise EmbeddingModelError(
            f"{name} is not in the local Hugging Face cache: pip install crossedge-retrieval, "
            "then crossedge models pull minilm-l6"
        ) from exc
    with torch.no_grad():
        batch = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(pooled, dim=1).numpy()


def random_embeddings_for_tests(n: int, d: int = 384, seed: int = 0) -> np.ndarray:
    """Seeded random unit vectors standing in for sentence embeddings: for tests only, never for results."""
    e = np.random.default_rng(seed).standard_normal((n, d))
    return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)
