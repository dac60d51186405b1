"""Integration: crossedge-sensing is found through its entry point, and its datasets and algorithms resolve."""

import json

from crossedge.core.testing import installed_plugin, run_cli


def test_sensing_registers_its_algorithms_datasets_and_benchmark_through_the_entry_point(tmp_path):
    sensing = installed_plugin("sensing", cache=tmp_path)
    assert sensing["distribution"] == "crossedge-sensing"
    registers = sensing["registers"]
    assert {"coral", "dann", "knn-mmd", "crossfi", "finetune", "protonet"} <= set(registers["algorithm"])
    assert {"watch", "basic-motions", "synthetic-imu", "synthetic-csi", "em-traces"} <= set(registers["dataset"])
    assert registers["benchmark"] == ["sensing"]
    done = run_cli("sensing", "datasets", "--json", cache=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)}
    assert rows["watch"]["built"] is False and "synthetic-shift" in rows  # core's arrays are listed too
