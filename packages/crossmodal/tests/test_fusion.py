"""Each fusion block passes the fusion conformance suite, plus one check per block that a wrong design would fail."""

import pytest
import torch

from crossedge.core.conformance.fusion import FusionConformance
from crossedge.core.contracts.fusion import FusionError, build_fusion
from crossedge.core.specs import SpecError
from crossedge.crossmodal.fusion.concat import ConcatFusion
from crossedge.crossmodal.fusion.cross_attention import CrossAttentionFusion
from crossedge.crossmodal.fusion.gated import GatedFusion
from crossedge.crossmodal.fusion.mutual import MutualCrossAttentionFusion


class TestConcat(FusionConformance):
    @pytest.fixture
    def fusion_class(self):
        return ConcatFusion

    @pytest.fixture
    def spec_options(self):
        return {"hidden": 12}


class TestCrossAttention(FusionConformance):
    @pytest.fixture
    def fusion_class(self):
        return CrossAttentionFusion

    @pytest.fixture
    def spec_options(self):
        return {"width": 8, "heads": 2}


class TestMutual(FusionConformance):
    @pytest.fixture
    def fusion_class(self):
        return MutualCrossAttentionFusion

    @pytest.fixture
    def spec_options(self):
        return {"width": 12, "heads": 3}


class TestGated(FusionConformance):
    @pytest.fixture
    def fusion_class(self):
        return GatedFusion

    @pytest.fixture
    def spec_options(self):
        return {"width": 5}


def views(n=3, la=5, lb=4, dim_a=8, dim_b=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, la, dim_a, generator=generator), torch.randn(n, lb, dim_b, generator=generator)


def test_concat_is_the_mlp_of_both_pooled_views_and_ignores_token_order():
    torch.manual_seed(0)
    block = ConcatFusion(8, 6, 4, hidden=10).eval()
    a, b = views()
    expected = block.mlp(torch.cat([a.mean(1), b.mean(1)], dim=-1))
    torch.testing.assert_close(block(a, b), expected)
    torch.testing.assert_close(block(a.flip(1), b[:, torch.randperm(4)]), expected, rtol=1e-5, atol=1e-6)


def test_cross_attention_depends_on_the_one_token_of_b_that_the_mask_leaves():
    torch.manual_seed(0)
    block = CrossAttentionFusion(8, 6, 4, width=8, heads=2).eval()
    a, b = views()
    out = block(a, b)
    for token in range(4):
        changed = b.clone()
        changed[:, token] += 1.0
        assert not torch.allclose(block(a, changed), out), f"b's token {token} does not matter unmasked"
    keep = 2
    mask_b = torch.zeros(3, 4, dtype=torch.bool)
    mask_b[:, keep] = True
    masked = block(a, b, mask_b=mask_b)
    others = b.clone()
    others[:, [0, 1, 3]] = torch.randn(3, 3, 6)
    torch.testing.assert_close(block(a, others, mask_b=mask_b), masked)
    kept = b.clone()
    kept[:, keep] += 1.0
    assert not torch.allclose(block(a, kept, mask_b=mask_b), masked)
    # one visible key takes all the attention, and it is the same as a b of that one token
    weights = block.attention(a, b, mask_b=mask_b)
    assert weights.shape == (3, 2, 5, 4)
    torch.testing.assert_close(weights[..., keep], torch.ones(3, 2, 5))
    torch.testing.assert_close(block(a, b[:, keep : keep + 1]), masked)


def test_cross_attention_is_not_symmetric_a_is_the_query_side():
    torch.manual_seed(0)
    block = CrossAttentionFusion(6, 6, 4, width=8, heads=2).eval()
    a, b = views(dim_a=6, dim_b=6)
    # pooling runs over a's tokens: adding a token to a changes the pool, masking it restores it
    extra = torch.cat([a, torch.randn(3, 1, 6)], dim=1)
    mask_a = torch.ones(3, 6, dtype=torch.bool)
    mask_a[:, -1] = False
    assert not torch.allclose(block(extra, b), block(a, b))
    torch.testing.assert_close(block(extra, b, mask_a=mask_a), block(a, b), rtol=1e-5, atol=1e-6)


def test_mutual_runs_both_directions_each_over_the_other_view():
    torch.manual_seed(0)
    block = MutualCrossAttentionFusion(6, 6, 4, width=8, heads=2).eval()
    # the same weights in both directions make swapping the views swap the two directions
    block.b_over_a.load_state_dict(block.a_over_b.state_dict())
    a, b = views(dim_a=6, dim_b=6)
    a_dir, b_dir = block.directions(a, b)
    swapped_a, swapped_b = block.directions(b, a)
    torch.testing.assert_close(swapped_a, b_dir)
    torch.testing.assert_close(swapped_b, a_dir)
    # b's direction pools b's tokens after attending over a: a's lone visible token decides it
    mask_a = torch.zeros(3, 5, dtype=torch.bool)
    mask_a[:, 0] = True
    _, b_one = block.directions(a, b, mask_a=mask_a)
    _, b_first_only = block.directions(a[:, :1], b)
    torch.testing.assert_close(b_one, b_first_only)
    assert not torch.allclose(a_dir, b_dir)


@pytest.mark.parametrize(("bias", "view"), [(40.0, "a"), (-40.0, "b")])
def test_gated_with_the_gate_forced_returns_one_view(bias, view):
    torch.manual_seed(0)
    block = GatedFusion(8, 6, 4, width=5).eval()
    with torch.no_grad():
        block.gate.weight.zero_()
        block.gate.bias.fill_(bias)
    a, b = views()
    projected = block.project_a(a.mean(1)) if view == "a" else block.project_b(b.mean(1))
    torch.testing.assert_close(block(a, b), block.head(projected))
    other_a, other_b = views(seed=9)
    moved = block(a, other_b) if view == "a" else block(other_a, b)
    torch.testing.assert_close(moved, block(a, b), rtol=1e-5, atol=1e-6)
    gate = block.gate_values(a, b)
    assert torch.all(gate > 0.999) if view == "a" else torch.all(gate < 0.001)


def test_blocks_build_from_specs_through_the_plugin(plugin):
    block = build_fusion("cross-attention:width=16,heads=4", 8, 6, 3)
    assert isinstance(block, CrossAttentionFusion) and block.attend.heads == 4 and block.attend.width == 16
    for _reference, name in plugin.FUSION_BLOCKS:
        assert build_fusion(name, 4, 5, 2).name == name
    with pytest.raises(SpecError, match="width"):
        build_fusion("gated:widht=3", 4, 5, 2)
    with pytest.raises(FusionError, match="heads"):
        build_fusion("mutual:width=10,heads=4", 4, 5, 2)


def test_fusion_blocks_are_registered_lazily():
    import subprocess
    import sys

    code = (
        "import sys; import crossedge.crossmodal.plugin as p; "
        "assert len(p.FUSION_BLOCKS) == 4; assert 'torch' not in sys.modules, 'plugin imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
