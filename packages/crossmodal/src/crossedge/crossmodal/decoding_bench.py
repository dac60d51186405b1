"""The ``scp-cross-subject`` benchmark: adapters + reset-tuning against the new subject alone and no adapters.

Per seed: a model with an adapter for the source subject is trained on the source's train
split; for each number of target trials k, (adapters) a fresh target adapter is reset-tuned
on k target trials with the trunk frozen, (alone) a fresh model is trained on the same k
trials only, (no-adapters) one shared input layer sees both subjects with channels
zero-padded to a common count: trained on the source, then fine-tuned whole on the k trials.
All three are scored on the target's test split.

For context, the result also holds ``ceiling``: a linear model (standardized per-channel means
of four time windows, logistic regression) trained on *all* of the target's train trials. On
SelfRegulationSCP2 that full-data linear model scores close to chance, so no few-shot method
can be expected to do much better there (see docs/benchmarks.md#crossmodal).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

METHODS = ("adapters", "alone", "no-adapters")


def _tensors(data, split: str):
    import torch

    idx = data.split(split)
    return torch.as_tensor(np.asarray(data.x[idx], dtype=np.float32)), torch.as_tensor(data.y[idx].astype(np.int64))


def _pad(x, channels: int):
    import torch

    return torch.nn.functional.pad(x, (0, channels - x.shape[2])) if x.shape[2] < channels else x


def _pick(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k trial indices, seeded, with every class present when k allows (few-shot draws must see both)."""
    rng = np.random.default_rng([seed, k])
    classes = np.unique(y)
    first = [rng.choice(np.flatnonzero(y == c)) for c in classes] if k >= len(classes) else []
    rest = rng.permutation(np.setdiff1d(np.arange(len(y)), first))[: k - len(first)]
    return np.concatenate([np.asarray(first, dtype=np.int64), rest]).astype(np.int64)


def window_means(x: np.ndarray, windows: int = 4) -> np.ndarray:
    """(N, T, C) trials to (N, windows * C): each channel's mean over ``windows`` equal time windows."""
    t = x.shape[1] // windows * windows
    return x[:, :t].reshape(len(x), windows, t // windows, x.shape[2]).mean(axis=2).reshape(len(x), -1)


def linear_ceiling(data, windows: int = 4) -> float:
    """Test accuracy of logistic regression on :func:`window_means` trained on every train trial."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, test = data.split("train"), data.split("test")
    features = window_means(np.asarray(data.x, dtype=np.float64), windows)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    model.fit(features[train], data.y[train])
    return float((model.predict(features[test]) == data.y[test]).mean())


def scp_cross_subject(
    source,
    target,
    shots: Sequence[int] = (10, 20, 50),
    seeds: Sequence[int] = (0, 1, 2),
    pretrain_steps: int = 300,
    tune_steps: int = 150,
    model_options: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark on two loaded :class:`ArrayData`; returns per-seed accuracies and mean +- std."""
    import torch

    from .metrics import accuracy, mean_std
    from .subjects import CrossSubjectModel, fit

    options = dict(dim=16, length=64, hidden=32)
    options.update(model_options or {})
    xs, ys = _tensors(source, "train")
    xt, yt = _tensors(target, "train")
    xe, ye = _tensors(target, "test")
    n_classes = len(target.label_names)
    if len(source.label_names) != n_classes:
        raise ValueError("source and target must share their label set")
    max_k = len(yt)
    bad = [k for k in shots if not 1 <= k <= max_k]
    if bad:
        raise ValueError(f"shots {bad} are outside 1..{max_k} (the target's train trials)")
    channels = max(xs.shape[2], xt.shape[2])
    src_shape, tgt_shape = (xs.shape[1], xs.shape[2]), (xt.shape[1], xt.shape[2])
    scores: dict[str, dict[int, list[float]]] = {m: {k: [] for k in shots} for m in METHODS}
    for seed in seeds:
        torch.manual_seed(seed)
        base = CrossSubjectModel({"source": src_shape}, n_classes, **options)
        fit(base, {"source": (xs, ys)}, steps=pretrain_steps, seed=seed)
        torch.manual_seed(seed)
        shared = CrossSubjectModel({"shared": (xs.shape[1], channels)}, n_classes, **options)
        fit(shared, {"shared": (_pad(xs, channels), ys)}, steps=pretrain_steps, seed=seed)
        for k in shots:
            idx = torch.as_tensor(_pick(yt.numpy(), k, seed))
            xk, yk = xt[idx], yt[idx]
            adapted = copy.deepcopy(base)
            adapted.reset_tune("target", xk, yk, steps=tune_steps, seed=seed)
            scores["adapters"][k].append(accuracy(adapted.predict("target", xe).numpy(), ye.numpy()))
            torch.manual_seed(seed)
            alone = CrossSubjectModel({"target": tgt_shape}, n_classes, **options)
            fit(alone, {"target": (xk, yk)}, steps=tune_steps, seed=seed)
            scores["alone"][k].append(accuracy(alone.predict("target", xe).numpy(), ye.numpy()))
            tuned = copy.deepcopy(shared)
            fit(tuned, {"shared": (_pad(xk, channels), yk)}, steps=tune_steps, seed=seed)
            scores["no-adapters"][k].append(accuracy(tuned.predict("shared", _pad(xe, channels)).numpy(), ye.numpy()))
            if progress:
                progress(f"seed {seed} k={k}")
    summary = {
        m: {str(k): dict(zip(("mean", "std"), mean_std(v), strict=True)) | {"per_seed": v} for k, v in per.items()}
        for m, per in scores.items()
    }
    return {
        "task": "scp-cross-subject",
        "source": source.manifest.get("name", "source"),
        "target": target.manifest.get("name", "target"),
        "shots": list(shots),
        "seeds": list(seeds),
        "pretrain_steps": pretrain_steps,
        "tune_steps": tune_steps,
        "chance": 1.0 / n_classes,
        "test_trials": len(ye),
        "ceiling": {
            "method": "logistic regression on 4-window channel means, all target train trials",
            "accuracy": linear_ceiling(target),
        },
        "results": summary,
    }


def format_table(result: dict[str, Any]) -> str:
    """A terminal table: one row per method, one column per number of target trials, mean +- std."""
    shots = result["shots"]
    head = f"{'method':<12}" + "".join(f"{f'k={k}':>16}" for k in shots)
    lines = [
        f"{result['task']}: {result['source']} -> {result['target']}, accuracy on the target's test split "
        f"({result['test_trials']} trials, chance {result['chance']:.2f}, seeds {result['seeds']})",
        head,
    ]
    for method, per in result["results"].items():
        cells = "".join(f"{per[str(k)]['mean']:>9.3f} +- {per[str(k)]['std']:.3f}" for k in shots)
        lines.append(f"{method:<12}{cells}")
    if "ceiling" in result:
        lines.append(f"ceiling: {result['ceiling']['accuracy']:.3f} ({result['ceiling']['method']})")
    return "\n".join(lines)


def classify_tasks(
    datasets: Sequence[tuple[str, Any]],
    seeds: Sequence[int] = (0, 1, 2),
    steps: int = 300,
    model_options: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Within-subject accuracy on each ``(name, ArrayData)``: the adapter + trunk network on all train trials.

    The further EEG/MEG tasks (FingerMovements, EyesOpenShut, HandMovementDirection, and the
    SCP problems) through the same network as the cross-subject benchmark, beside the
    :func:`linear_ceiling` of the same data and chance.
    """
    import torch

    from .metrics import accuracy, mean_std
    from .subjects import CrossSubjectModel, fit

    options = dict(dim=16, length=64, hidden=32)
    options.update(model_options or {})
    rows = {}
    for name, data in datasets:
        x, y = _tensors(data, "train")
        xe, ye = _tensors(data, "test")
        n_classes = len(data.label_names)
        per_seed = []
        for seed in seeds:
            torch.manual_seed(seed)
            model = CrossSubjectModel({name: (x.shape[1], x.shape[2])}, n_classes, **options)
            fit(model, {name: (x, y)}, steps=steps, seed=seed)
            per_seed.append(accuracy(model.predict(name, xe).numpy(), ye.numpy()))
            if progress:
                progress(f"{name} seed {seed}")
        mean, std = mean_std(per_seed)
        rows[name] = {
            "mean": mean, "std": std, "per_seed": per_seed, "ceiling": linear_ceiling(data),
            "chance": float(np.bincount(ye.numpy()).max() / len(ye)), "classes": n_classes,
            "train_trials": len(y), "test_trials": len(ye), "shape": [int(x.shape[1]), int(x.shape[2])],
        }  # fmt: skip
    return {"task": "neuro-classify", "seeds": list(seeds), "steps": steps, "results": rows}


def format_classify_table(result: dict[str, Any]) -> str:
    """One row per dataset: network accuracy mean +- std, the linear ceiling, the majority-class rate."""
    lines = [
        f"neuro-classify: test accuracy, seeds {result['seeds']}, {result['steps']} steps",
        f"{'dataset':<26}{'network':>18}{'linear':>9}{'majority':>10}{'trials':>14}",
    ]
    for name, row in result["results"].items():
        trials = f"{row['train_trials']}/{row['test_trials']}"
        lines.append(
            f"{name:<26}{row['mean']:>9.3f} +- {row['std']:.3f}{row['ceiling']:>9.3f}{row['chance']:>10.3f}{trials:>14}"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path) -> Any:
    """A PNG of a scp-cross-subject result (accuracy against target trials, one line per method,
    the ceiling and chance as dashed lines) or a neuro-classify result (bars per dataset)."""
    from pathlib import Path

    from .charts import chart

    with chart(path, (7, 4)) as ax:
        _draw(ax, result)
    return Path(path)


def _draw(ax: Any, result: dict[str, Any]) -> None:
    if result["task"] == "neuro-classify":
        names = list(result["results"])
        rows = [result["results"][n] for n in names]
        at = np.arange(len(names))
        ax.bar(at - 0.2, [r["mean"] for r in rows], 0.4, yerr=[r["std"] for r in rows], label="network")
        ax.bar(at + 0.2, [r["ceiling"] for r in rows], 0.4, label="linear (window means)")
        ax.scatter(at, [r["chance"] for r in rows], color="k", marker="_", s=400, label="majority class", zorder=3)
        ax.set_xticks(at, names, rotation=15)
        ax.set_title("within-subject test accuracy")
    else:
        shots = result["shots"]
        for method, per in result["results"].items():
            means = np.array([per[str(k)]["mean"] for k in shots])
            stds = np.array([per[str(k)]["std"] for k in shots])
            ax.errorbar(shots, means, yerr=stds, marker="o", capsize=3, label=method)
        ax.axhline(result["chance"], color="k", linestyle=":", label="chance")
        if "ceiling" in result:
            ax.axhline(result["ceiling"]["accuracy"], color="grey", linestyle="--", label="linear, all target trials")
        ax.set_xlabel("target trials")
        ax.set_title(f"{result['source']} -> {result['target']}")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8)
