"""The benchmark harness every crossedge package uses.

Timings on shared CPUs are noisy, so the harness always: warms up, repeats,
reports the median with its spread, compares methods by ratios against a
baseline measured in the same run, and records the thread count. Reports are
JSON with a declared schema (:data:`REPORT_SCHEMA`), a terminal table and a PNG plot.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import BenchmarkError

SCHEMA_ID = "crossedge.bench/1"

#: JSON Schema (draft 2020-12) of a report written by :meth:`BenchmarkReport.write_json`.
REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    "type": "object",
    "required": ["schema", "benchmark", "environment", "rows", "summary"],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "benchmark": {"type": "string", "minLength": 1},
        "created": {"type": "string"},
        "command": {"type": ["string", "null"]},
        "environment": {
            "type": "object",
            "required": ["threads", "python", "torch", "platform"],
            "properties": {"threads": {"type": "integer", "minimum": 1}},
        },
        "rows": {"type": "array", "items": {"type": "object"}},
        "summary": {"type": "object"},
    },
    "additionalProperties": True,
}


@dataclass
class Measurement:
    """Repeated timings of one thing, in seconds."""

    name: str
    samples: list[float]

    @property
    def median(self) -> float:
        """Median of the samples."""
        return statistics.median(self.samples)

    @property
    def spread(self) -> float:
        """Interquartile range of the samples (0 for fewer than two)."""
        if len(self.samples) < 2:
            return 0.0
        q = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q[2] - q[0]

    @property
    def p90(self) -> float:
        """90th percentile of the samples."""
        if len(self.samples) < 2:
            return self.samples[0]
        return statistics.quantiles(self.samples, n=10, method="inclusive")[-1]

    def to_dict(self) -> dict[str, Any]:
        """Summary statistics plus the raw samples."""
        return {
            "name": self.name,
            "median_s": self.median,
            "iqr_s": self.spread,
            "p90_s": self.p90,
            "min_s": min(self.samples),
            "repeats": len(self.samples),
            "samples_s": list(self.samples),
        }


def measure(
    fn: Callable[[], Any],
    *,
    name: str = "",
    warmup: int = 1,
    repeats: int = 5,
    progress: bool = False,
) -> Measurement:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed with perf_counter."""
    if repeats < 1:
        raise BenchmarkError(f"repeats must be at least 1, got {repeats}")
    for _ in range(max(0, warmup)):
        fn()
    samples = []
    for _ in progress_bar(range(repeats), desc=name or "measuring", enabled=progress):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return Measurement(name=name, samples=samples)


def ratio(baseline: float, other: float) -> float:
    """How many times faster ``other`` is than ``baseline`` given two durations."""
    if other <= 0:
        raise BenchmarkError(f"cannot compare against a non-positive duration {other}")
    return baseline / other


def geometric_mean(values: Sequence[float]) -> float:
    """Geometric mean of positive values (the right average for speedups)."""
    values = [v for v in values if v is not None]
    if not values or any(v <= 0 for v in values):
        raise BenchmarkError(f"geometric mean needs positive values, got {values}")
    return math.exp(sum(math.log(v) for v in values) / len(values))


@contextlib.contextmanager
def threads(count: int | None) -> Iterator[int]:
    """Pin torch's intra-op thread count for a block; yields the count in force."""
    import torch

    previous = torch.get_num_threads()
    if count is not None:
        if count < 1:
            raise BenchmarkError(f"thread count must be at least 1, got {count}")
        torch.set_num_threads(count)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def instruction_caps(capability: str | None = None) -> dict[str, str | None]:
    """The instruction sets the kernels may use: PyTorch's (``ATEN_CPU_CAPABILITY`` lowers it) and
    oneDNN's cap (``ONEDNN_MAX_CPU_ISA``, ``all`` when unset). Both can hide flags the CPU has."""
    if capability is None:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "all"
    return {"torch_cpu_capability": capability, "onednn_max_isa": onednn}


def environment() -> dict[str, Any]:
    """Facts that make a timing interpretable: threads, versions, CPU."""
    try:
        import torch

        torch_version, thread_count = torch.__version__, torch.get_num_threads()
        capability = torch.backends.cpu.get_cpu_capability()
    except ImportError:  # pragma: no cover - torch is a core dependency
        torch_version, thread_count, capability = None, os.cpu_count() or 1, None
    return {
        "threads": thread_count,
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        **instruction_caps(capability),
        "python": platform.python_version(),
        "torch": torch_version,
        "platform": platform.platform(),
    }


def layer_kernels(model: Any) -> dict[str, str]:
    """Which kernel each kind of linear layer runs (``q_proj``, ``lm_head``, ...), for reports.

    A module that says so itself (a ``kernel`` attribute, as quantized layers have) is taken at
    its word; a plain ``nn.Linear`` runs torch's linear in its weight's dtype. Kinds whose
    layers run different kernels list them all.
    """
    import torch

    found: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        kernel = getattr(type(module), "kernel", None) and module.kernel
        if not kernel and isinstance(module, torch.nn.Linear):
            kernel = f"torch linear ({str(module.weight.dtype).removeprefix('torch.')})"
        if kernel:
            kinds = found.setdefault(name.rsplit(".", 1)[-1], [])
            if kernel not in kinds:
                kinds.append(kernel)
    return {kind: "; ".join(kernels) for kind, kernels in found.items()}


#: Instruction-set flags that change which CPU kernels run (and so how fast), in report order.
KERNEL_FLAGS: tuple[str, ...] = (
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """The :data:`KERNEL_FLAGS` this CPU has, from /proc/cpuinfo (empty where it is unavailable)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            present = set(value.split())
            return [flag for flag in KERNEL_FLAGS if flag in present]
    return []


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where available."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@dataclass
class BenchmarkReport:
    """Rows of results plus a summary, with the environment they were measured in."""

    benchmark: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=environment)
    command: str | None = None
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, schema id first."""
        return {"schema": SCHEMA_ID, **asdict(self)}

    def write_json(self, path: Path | str) -> Path:
        """Validate and write the report; returns the path."""
        data = self.to_dict()
        validate_report(data)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
        return path

    @classmethod
    def read_json(cls, path: Path | str) -> BenchmarkReport:
        """Read a report back, refusing files that do not follow the schema."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise BenchmarkError(f"cannot read benchmark report {path}: {exc}") from exc
        validate_report(data)
        data.pop("schema")
        return cls(**data)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def validate_report(data: dict[str, Any]) -> None:
    """Raise :class:`BenchmarkError` when ``data`` does not follow :data:`REPORT_SCHEMA`."""
    import jsonschema

    try:
        jsonschema.validate(data, REPORT_SCHEMA)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise BenchmarkError(f"benchmark report does not follow {SCHEMA_ID} at {where}: {exc.message}") from exc


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], floatfmt: str = ".3g") -> str:
    """A plain-text table of the given columns, numbers right-aligned."""

    def cell(value: Any) -> str:
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float):
            return format(value, floatfmt)
        return "" if value is None else str(value)

    body = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in body)]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row.get(c), (int, float)) or row.get(c) is None for row in rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)
        ).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(columns), sep, *(line(r) for r in body)])


def plot_bars(
    rows: Sequence[dict[str, Any]],
    *,
    label: str,
    value: str,
    path: Path | str,
    title: str,
    ylabel: str | None = None,
    reference: float | None = None,
) -> Path:
    """Write a bar chart PNG of ``value`` per ``label``; ``reference`` draws a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [str(r[label]) for r in rows]
    values = [float(r[value]) for r in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(labels) + 2), 3.5))
    ax.bar(range(len(values)), values, color="#3b75af")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    if reference is not None:
        ax.axhline(reference, color="#444", linestyle="--", linewidth=1)
    ax.set_ylabel(ylabel or value)
    ax.set_title(title)
    return save_figure(fig, path)


def save_figure(fig: Any, path: Path | str) -> Path:
    """Lay out, write as PNG (creating the folder) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def progress_bar(iterable, *, desc: str, total: int | None = None, enabled: bool = True, unit: str = "it"):
    """A tqdm bar on stderr, silent when disabled or when stderr is not a terminal (its rate is ``unit``/s)."""
    from tqdm.auto import tqdm

    disable = not enabled or not sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, disable=disable, leave=False, unit=unit)


class Benchmark:
    """Base class of registered benchmarks: a name and ``run(**options) -> BenchmarkReport``."""

    name: str = ""
    description: str = ""

    def run(self, **options: Any) -> BenchmarkReport:
        """Measure and return a report."""
        raise NotImplementedError

    def plot(self, report: BenchmarkReport, path: Path) -> Path | None:
        """Write the report's PNG to ``path`` and return it; ``None`` leaves it to ``bench run``'s bar chart."""
        return None


def bind_options(benchmark: Benchmark, options: Mapping[str, Any]) -> dict[str, Any]:
    """``-o key=value`` options coerced to the types of ``benchmark.run``'s keyword parameters.

    An unknown key is a :class:`crossedge.core.specs.SpecError` listing the valid ones, raised
    before the benchmark runs; a ``run`` that takes ``**options`` receives keys it does not
    name and must check them itself (retrieval's does).
    """
    from .specs import Spec, bind

    return bind(Spec(benchmark.name, dict(options), kind="benchmark"), benchmark.run, kind="benchmark")
