"""``bench --task sim-retrieval``: zero-shot 200-way retrieval of unseen sentences from simulated subjects.

Stimuli are real sentences split at run time from texts on this machine (Python's
``pydoc_data.topics`` and, where present, ``/usr/share/common-licenses``), embedded with
``minilm-l6`` (:func:`~crossedge.crossmodal.simulator.sentence_embeddings`), and seen
through N simulated subjects (:func:`~crossedge.crossmodal.simulator.simulate`). The
stimuli are split per seed into train and test; test sentences are never trained on.
The NeuroBridge-style contrastive alignment (:func:`~crossedge.crossmodal.align.train_alignment`)
is trained per protocol:

- ``intra``: trained and tested on the same subject (one model per subject);
- ``inter``: trained on the pooled responses of every other subject and tested on the held-out
  subject. Subjects differ in channel and sample count, so every response is zero-padded to the
  largest (samples, channels); the channels of different subjects do not correspond (each has its
  own random mixing), so this protocol measures what a model without any subject-specific part
  transfers to a subject it never saw, which is the papers' harder inter-subject setting.

Scores: N-way top-1 / top-5 (N = min(200, test stimuli); chance 1/N and 5/N) and 2-way
identification (chance 0.5), averaged over subjects per seed, then mean +- std over seeds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crossedge.core.errors import CrossedgeError

LICENSES_DIR = Path("/usr/share/common-licenses")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


class RetrievalBenchError(CrossedgeError, ValueError):
    """A sim-retrieval configuration that cannot run (too few sentences, stimuli or subjects)."""


def _source_texts() -> list[str]:
    from pydoc_data.topics import topics

    texts = [topics[key] for key in sorted(topics)]
    if LICENSES_DIR.is_dir():
        texts += [p.read_text(errors="replace") for p in sorted(LICENSES_DIR.iterdir()) if p.is_file()]
    return texts


def build_sentences(n: int, seed: int = 0, min_words: int = 6, max_words: int = 40) -> list[str]:
    """``n`` distinct real sentences (seeded choice) split from pydoc topics and the common licenses."""
    pool: dict[str, None] = {}
    for text in _source_texts():
        for raw in _SENTENCE_END.split(text):
            sentence = " ".join(raw.split())
            words = sentence.split()
            # prose only: a sentence ends in punctuation, has mostly alphabetic words and a sane length
            if not min_words <= len(words) <= max_words or sentence[-1] not in ".!?":
                continue
            if sum(w.isalpha() for w in words) < 0.6 * len(words):
                continue
            pool.setdefault(sentence, None)
    sentences = list(pool)
    if n > len(sentences):
        raise RetrievalBenchError(
            f"only {len(sentences)} distinct sentences found; pass --stimuli {len(sentences)} or fewer"
        )
    chosen = np.random.default_rng(seed).choice(len(sentences), n, replace=False)
    return [sentences[i] for i in sorted(chosen)]


def make_subjects(n: int) -> list[Any]:
    """``n`` simulated subjects: the simulator's defaults first, then more with varied size and smoothing."""
    from .simulator import DEFAULT_SUBJECTS, SimulatedSubject

    if n < 2:
        raise RetrievalBenchError(f"the inter-subject protocol needs at least 2 subjects; got --subjects {n}")
    subjects = list(DEFAULT_SUBJECTS[:n])
    for i in range(len(subjects), n):
        subjects.append(
            SimulatedSubject(
                f"sim-s{i + 1}", channels=32 + 8 * (i % 5), samples=10 + 2 * (i % 4), tau=1.5 + 0.5 * (i % 6)
            )
        )
    return subjects


def _pad(x: np.ndarray, samples: int, channels: int) -> np.ndarray:
    out = np.zeros((len(x), samples, channels), dtype=np.float32)
    out[:, : x.shape[1], : x.shape[2]] = x
    return out


def _score(model: Any, signal: np.ndarray, stimuli: np.ndarray, ways: int, seed: int) -> dict[str, float]:
    import torch

    from .metrics import n_way_top_k, two_way_identification

    with torch.no_grad():
        z_signal = model.embed_signal(torch.as_tensor(signal)).numpy()
        z_stimulus = model.embed_stimulus(torch.as_tensor(stimuli)).numpy()
    top = n_way_top_k(z_signal, z_stimulus, n_way=ways, k=(1, 5), seed=seed)
    return {"top1": top[1], "top5": top[5], "two_way": two_way_identification(z_signal, z_stimulus)}


def sim_retrieval(
    *,
    subjects: int = 3,
    stimuli: int = 600,
    seeds: Sequence[int] = (0, 1),
    epochs: int = 40,
    test_fraction: float = 1 / 3,
    noise: float = 0.5,
    shared: float = 0.0,
    embed: Callable[[list[str]], np.ndarray] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Intra- and inter-subject zero-shot retrieval on the simulator; results as a JSON-ready dict."""
    from . import simulator
    from .align import train_alignment
    from .metrics import mean_std

    subject_list = make_subjects(subjects)
    n_test = int(round(stimuli * test_fraction))
    if n_test < 2 or stimuli - n_test < 2:
        raise RetrievalBenchError(f"--stimuli {stimuli} leaves {n_test} test stimuli; pass at least 6 stimuli")
    ways = min(200, n_test)
    texts = build_sentences(stimuli, seed=0)
    # looked up at call time, so that tests can substitute the embedder on the module
    embeddings = np.asarray((embed or simulator.sentence_embeddings)(texts), dtype=np.float32)
    samples = max(s.samples for s in subject_list)
    channels = max(s.channels for s in subject_list)
    per_seed: dict[str, dict[str, list[float]]] = {
        p: {"top1": [], "top5": [], "two_way": []} for p in ("intra", "inter")
    }
    for seed in seeds:
        responses, _ = simulator.simulate(embeddings, subject_list, seed=seed, noise=noise, shared=shared)
        order = np.random.default_rng([seed, 7]).permutation(stimuli)
        test, train = order[:n_test], order[n_test:]
        scores: dict[str, list[dict[str, float]]] = {"intra": [], "inter": []}
        for subject in subject_list:
            x = responses[subject.name]
            model = train_alignment(x[train], embeddings[train], epochs=epochs, seed=seed).model
            scores["intra"].append(_score(model, x[test], embeddings[test], ways, seed))
            if progress:
                progress(f"intra {subject.name}")
        for held in subject_list:
            others = [s for s in subject_list if s.name != held.name]
            x_train = np.concatenate([_pad(responses[s.name][train], samples, channels) for s in others])
            e_train = np.concatenate([embeddings[train]] * len(others))
            model = train_alignment(x_train, e_train, epochs=epochs, seed=seed).model
            x_test = _pad(responses[held.name][test], samples, channels)
            scores["inter"].append(_score(model, x_test, embeddings[test], ways, seed))
            if progress:
                progress(f"inter {held.name}")
        for protocol, rows in scores.items():
            for metric in ("top1", "top5", "two_way"):
                per_seed[protocol][metric].append(float(np.mean([r[metric] for r in rows])))
    results = {
        protocol: {
            metric: dict(zip(("mean", "std"), mean_std(values), strict=True), per_seed=values)
            for metric, values in metrics.items()
        }
        for protocol, metrics in per_seed.items()
    }
    return {
        "task": "sim-retrieval",
        "subjects": [s.name for s in subject_list],
        "stimuli": stimuli,
        "train_stimuli": stimuli - n_test,
        "test_stimuli": n_test,
        "ways": ways,
        "epochs": epochs,
        "noise": noise,
        "shared": shared,
        "seeds": list(seeds),
        "chance": {"top1": 1 / ways, "top5": min(5, ways) / ways, "two_way": 0.5},
        "results": results,
    }


def format_table(result: dict[str, Any]) -> str:
    """A terminal table: one row per protocol, one column per metric, mean +- std over seeds."""
    ways = result["ways"]
    names = {"top1": f"{ways}-way top-1", "top5": f"{ways}-way top-5", "two_way": "2-way"}
    chance = result["chance"]
    lines = [
        f"sim-retrieval: {len(result['subjects'])} simulated subjects, {result['train_stimuli']} train / "
        f"{result['test_stimuli']} unseen test sentences, shared mixing {result.get('shared', 0.0)}, "
        f"seeds {result['seeds']}",
        f"{'protocol':<10}" + "".join(f"{names[m]:>20}" for m in names),
        f"{'chance':<10}" + "".join(f"{chance[m]:>20.3f}" for m in names),
    ]
    for protocol, per in result["results"].items():
        lines.append(f"{protocol:<10}" + "".join(f"{per[m]['mean']:>11.3f} +- {per[m]['std']:.3f}" for m in names))
    return "\n".join(lines)


def plot(result: dict[str, Any], path) -> Path:
    """A PNG: N-way top-1 / top-5 and 2-way per protocol (bars, std as error bars) with chance marked."""
    from .charts import chart

    metrics = ("top1", "top5", "two_way")
    with chart(path, (6, 3.5)) as ax:
        _draw(ax, result, metrics)
    return Path(path)


def _draw(ax: Any, result: dict[str, Any], metrics: tuple[str, ...]) -> None:
    at = np.arange(len(metrics))
    protocols = list(result["results"])
    width = 0.8 / len(protocols)
    for i, protocol in enumerate(protocols):
        per = result["results"][protocol]
        ax.bar(at + i * width, [per[m]["mean"] for m in metrics], width, yerr=[per[m]["std"] for m in metrics],
               label=protocol)  # fmt: skip
    ax.scatter(at + width * (len(protocols) - 1) / 2, [result["chance"][m] for m in metrics], color="k", marker="_",
               s=500, label="chance", zorder=3)  # fmt: skip
    ways = result["ways"]
    ax.set_xticks(at + width * (len(protocols) - 1) / 2, [f"{ways}-way top-1", f"{ways}-way top-5", "2-way"])
    ax.set_title(f"sim-retrieval (shared mixing {result.get('shared', 0.0)})")
    ax.legend(fontsize=8)
