"""fp32 beside 4-bit: both trained from scratch with one seed and schedule, saved, reloaded and compared."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from crossedge.core.bench import BenchmarkReport, format_table, save_figure

from .config import FourBitTrainingConfig
from .datasets import ImageSet, load_images
from .saved import WEIGHTS_FILE, load_four_bit, save_four_bit, saved_bytes
from .trainer import TrainingRun, accuracy, build_model, train

BENCHMARK = "quant-cnn4"
COLUMNS = ["dataset", "seed", "fp32_acc", "int4_acc", "diff_points", "fp32_train_s", "int4_train_s",
           "fp32_bytes", "int4_bytes", "kernel", "reload_identical"]  # fmt: skip


@dataclass
class Comparison:
    """The report plus the two training runs it came from."""

    report: BenchmarkReport
    fp32: TrainingRun
    fourbit: TrainingRun


def float_bytes(model: torch.nn.Module) -> int:
    """Bytes of the fp32 model's parameters and batch-norm statistics (its float32 tensors)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values() if t.is_floating_point())


def _infer_ms(model: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        model(x[:64])
        start = time.perf_counter()
        model(x)
    return 1000.0 * (time.perf_counter() - start)


def compare(
    dataset: str | ImageSet,
    config: FourBitTrainingConfig,
    out: Path | str,
    *,
    force: bool = False,
    limit: int | None = None,
    command: str | None = None,
) -> Comparison:
    """Train fp32 then 4-bit, save the 4-bit model to ``out``, reload it and check its outputs bit for bit."""
    data = load_images(dataset) if isinstance(dataset, str) else dataset
    if limit is not None:
        data = data.limited(limit)
    fp32 = train(build_model(data, config, "fp32"), data, config, desc=f"{data.name} fp32")
    fourbit = train(build_model(data, config, "fourbit"), data, config, desc=f"{data.name} 4-bit")
    folder = save_four_bit(fourbit.model, config, out, force=force)
    loaded = load_four_bit(folder)
    with torch.no_grad():
        identical = torch.equal(loaded(data.test_x), fourbit.model(data.test_x))
    kernel = next(m.kernel for m in loaded.modules() if hasattr(m, "kernel"))
    fp32_acc, int4_acc = accuracy(fp32.model, data.test_x, data.test_y), accuracy(loaded, data.test_x, data.test_y)
    row = {
        "dataset": data.name,
        "seed": config.seed,
        "fp32_acc": round(fp32_acc, 2),
        "int4_acc": round(int4_acc, 2),
        "diff_points": round(int4_acc - fp32_acc, 2),
        "fp32_train_s": round(fp32.seconds, 1),
        "int4_train_s": round(fourbit.seconds, 1),
        "fp32_bytes": float_bytes(fp32.model),
        "int4_bytes": saved_bytes(folder),
        "int4_file_bytes": (Path(folder) / WEIGHTS_FILE).stat().st_size,
        "kernel": kernel,
        "reload_identical": identical,
        "fp32_infer_ms": round(_infer_ms(fp32.model, data.test_x), 1),
        "int4_infer_ms": round(_infer_ms(loaded, data.test_x), 1),
        "train_images": len(data.train_y),
        "test_images": len(data.test_y),
    }
    report = BenchmarkReport(
        benchmark=BENCHMARK,
        rows=[row],
        summary={
            "config": config.to_dict(),
            "shape": data.shape.to_dict(),
            "saved": str(folder),
            "accuracy": "final epoch on the fixed test split, no early stopping; percent",
            "curves": {
                "fp32": {"loss": fp32.losses, "test_accuracy": fp32.test_accuracy},
                "int4": {"loss": fourbit.losses, "test_accuracy": fourbit.test_accuracy},
            },
        },
        command=command,
    )
    return Comparison(report, fp32, fourbit)


def table(report: BenchmarkReport) -> str:
    """The terminal table of a comparison report."""
    return format_table(report.rows, COLUMNS, floatfmt=".2f")


def plot(report: BenchmarkReport, path: Path | str) -> Path:
    """Test accuracy per epoch of fp32 and 4-bit, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = report.summary["curves"]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for label, key, color in (("fp32", "fp32", "#3b75af"), ("4-bit", "int4", "#d1495b")):
        accs = curves[key]["test_accuracy"]
        ax.plot(range(1, len(accs) + 1), accs, label=label, color=color)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    row = report.rows[0]
    ax.set_title(f"{row['dataset']}, seed {row['seed']}: fp32 {row['fp32_acc']:.2f}, 4-bit {row['int4_acc']:.2f}")
    ax.legend()
    return save_figure(fig, path)
