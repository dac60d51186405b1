"""The crossedge-sensing plugin: datasets, algorithms, the ``crossedge sensing`` group and the benchmark.

Registrations are lazy ``"module:attr"`` references, so ``crossedge --help`` imports
neither torch nor numpy through this package.
"""

from __future__ import annotations

from crossedge.core import hookimpl

#: (reference, name) of every algorithm class this package registers
ALGORITHMS: tuple[tuple[str, str], ...] = (
    ("crossedge.sensing.algorithms.coral:CORAL", "coral"),
    ("crossedge.sensing.algorithms.mmd:MMD", "mmd"),
    ("crossedge.sensing.algorithms.dann:DANN", "dann"),
    ("crossedge.sensing.algorithms.groupdro:GroupDRO", "groupdro"),
    ("crossedge.sensing.algorithms.mixup:Mixup", "mixup"),
    ("crossedge.sensing.algorithms.vrex:VREx", "vrex"),
    ("crossedge.sensing.algorithms.rsc:RSC", "rsc"),
    ("crossedge.sensing.algorithms.andmask:ANDMask", "andmask"),
    ("crossedge.sensing.algorithms.fish:Fish", "fish"),
    ("crossedge.sensing.algorithms.sagm:SAGM", "sagm"),
    ("crossedge.sensing.algorithms.irm:IRM", "irm"),
    ("crossedge.sensing.algorithms.finetune:FineTune", "finetune"),
    ("crossedge.sensing.algorithms.protonet:ProtoNet", "protonet"),
    ("crossedge.sensing.algorithms.knn_mmd:KNNMMD", "knn-mmd"),
    ("crossedge.sensing.algorithms.crossfi:CrossFi", "crossfi"),
)

#: (reference, name) of every dataset instance this package registers (``()`` calls a factory)
DATASETS: tuple[tuple[str, str], ...] = (
    ("crossedge.sensing.datasets.watch:WATCH", "watch"),
    ("crossedge.sensing.datasets.basic_motions:BASIC_MOTIONS", "basic-motions"),
    ("crossedge.sensing.datasets.synthetic_imu:SYNTHETIC_IMU", "synthetic-imu"),
    ("crossedge.sensing.datasets.synthetic_csi:SYNTHETIC_CSI", "synthetic-csi"),
    ("crossedge.sensing.datasets.em_traces:EM_TRACES", "em-traces"),
)


@hookimpl
def register_algorithms(register):
    """Register the sensing algorithm classes."""
    for reference, name in ALGORITHMS:
        register(reference, name=name)


@hookimpl
def register_datasets(register):
    """Register the sensing array datasets (wheels' recordings and the synthetic generators)."""
    for reference, name in DATASETS:
        register(reference, name=name)


@hookimpl
def register_commands(cli):
    """Add the ``crossedge sensing`` group."""
    from .cli import group

    cli.add_command(group)


@hookimpl
def register_benchmarks(register):
    """Register the ``sensing`` benchmark (a cross-domain sweep on a small scenario)."""
    register("crossedge.sensing.benchmarks:SensingBenchmark()", name="sensing")
