"""Integration: crossedge-crossmodal is found through its entry point; its fusion blocks build from specs."""

from crossedge.core.testing import installed_plugin


def test_crossmodal_registers_its_datasets_and_fusion_blocks_through_the_entry_point(tmp_path):
    crossmodal = installed_plugin("crossmodal", cache=tmp_path)
    assert crossmodal["distribution"] == "crossedge-crossmodal"
    registers = crossmodal["registers"]
    assert set(registers["fusion"]) == {"concat", "cross-attention", "mutual", "gated"}
    assert {"scp1", "scp2", "finger-movements"} <= set(registers["dataset"])


def test_a_fusion_block_builds_from_a_spec_with_entry_points_loaded():
    import torch

    from crossedge.core.contracts.fusion import build_fusion

    block = build_fusion("gated:width=8", 4, 6, 3)
    out = block(torch.randn(2, 5, 4), torch.randn(2, 7, 6))
    assert out.shape == (2, 3)
