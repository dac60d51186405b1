"""Conformance suite for fusion blocks: subclass :class:`FusionConformance` and give a fixture.

```python
import pytest
from crossedge.core.conformance.fusion import FusionConformance


class TestMyFusion(FusionConformance):
    @pytest.fixture
    def fusion_class(self):
        return MyFusion

    @pytest.fixture
    def spec_options(self):
        return {"hidden": 12}  # options a spec sets; the suite builds `name:hidden=12`
```

The checks: the output shape for several lengths and widths (La != Lb, length 1), gradients
reaching both inputs and every parameter, the same output for the same seed, rows of a batch
never mixing, masked (padding) tokens changing nothing, a one-line :class:`FusionError` for
inputs of the wrong width, and a spec building the block with its options. This module
imports pytest (the ``test`` extra) and torch.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from crossedge.core.contracts.fusion import FusionBlock, FusionError
from crossedge.core.specs import SpecError, build, format_spec

#: (La, Lb, dim_a, dim_b, out_dim) cases the shape check runs
SHAPES = ((5, 3, 8, 6, 4), (1, 7, 4, 10, 3), (6, 1, 12, 12, 5), (1, 1, 3, 5, 2))


class FusionConformance:
    """Shared checks every :class:`FusionBlock` passes; a subclass supplies the ``fusion_class`` fixture."""

    @pytest.fixture
    def fusion_class(self) -> type[FusionBlock]:
        """The fusion block class under test; override in the subclass."""
        raise NotImplementedError("declare a `fusion_class` fixture returning the FusionBlock subclass")

    @pytest.fixture
    def spec_options(self) -> dict[str, Any]:
        """Options the spec check sets (``name:key=value``); override to exercise the block's own."""
        return {}

    @pytest.fixture(autouse=True)
    def _one_thread(self):
        # the inputs are tiny: extra threads only add contention on shared CI machines
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(before)

    @staticmethod
    def make(fusion_class, dim_a=8, dim_b=6, out_dim=4, seed=0, **options) -> FusionBlock:
        """A block built under ``seed`` and put in eval mode (dropout off) for exact comparisons."""
        torch.manual_seed(seed)
        return fusion_class(dim_a, dim_b, out_dim, **options).eval()

    @staticmethod
    def views(n=4, la=5, lb=3, dim_a=8, dim_b=6, seed=1) -> tuple[torch.Tensor, torch.Tensor]:
        """Two random token sequences (n, la, dim_a) and (n, lb, dim_b)."""
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(n, la, dim_a, generator=generator), torch.randn(n, lb, dim_b, generator=generator)

    def test_declares_name_and_description(self, fusion_class):
        assert issubclass(fusion_class, FusionBlock)
        assert fusion_class.name and isinstance(fusion_class.name, str)
        assert fusion_class.description and isinstance(fusion_class.description, str)

    @pytest.mark.parametrize(("la", "lb", "dim_a", "dim_b", "out_dim"), SHAPES)
    def test_output_shape(self, fusion_class, la, lb, dim_a, dim_b, out_dim):
        block = self.make(fusion_class, dim_a, dim_b, out_dim)
        a, b = self.views(3, la, lb, dim_a, dim_b)
        out = block(a, b)
        assert out.shape == (3, out_dim)
        assert torch.isfinite(out).all()

    def test_gradients_reach_both_inputs_and_every_parameter(self, fusion_class):
        block = self.make(fusion_class).train()
        a, b = self.views()
        a.requires_grad_(True)
        b.requires_grad_(True)
        weights = torch.randn(4, 4, generator=torch.Generator().manual_seed(2))
        (block(a, b) * weights).sum().backward()
        for label, x in (("a", a), ("b", b)):
            assert x.grad is not None and x.grad.abs().sum() > 0, f"no gradient reaches view {label}"
        params = [(n, p) for n, p in block.named_parameters() if p.requires_grad]
        assert params, "a fusion block with no trainable parameters cannot learn how to fuse"
        for name, param in params:
            assert param.grad is not None, f"parameter {name} gets no gradient"
            assert torch.isfinite(param.grad).all(), f"parameter {name} has a non-finite gradient"
            assert param.grad.abs().sum() > 0, f"parameter {name} gets a zero gradient"

    def test_deterministic_under_a_seed(self, fusion_class):
        a, b = self.views()
        first = self.make(fusion_class, seed=3)(a, b)
        again = self.make(fusion_class, seed=3)(a, b)
        other = self.make(fusion_class, seed=4)(a, b)
        assert torch.equal(first, again)
        assert not torch.allclose(first, other), "a different seed should give different initial weights"

    def test_rows_never_mix(self, fusion_class):
        block = self.make(fusion_class)
        a, b = self.views(n=5)
        out = block(a, b)
        a2, b2 = a.clone(), b.clone()
        a2[2] += 3.0 * torch.randn_like(a2[2])
        b2[2] += 3.0 * torch.randn_like(b2[2])
        changed = block(a2, b2)
        keep = [0, 1, 3, 4]
        torch.testing.assert_close(changed[keep], out[keep], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(changed[2], out[2]), "row 2's output ignores row 2's inputs"
        one_by_one = torch.cat([block(a[i : i + 1], b[i : i + 1]) for i in range(5)])
        torch.testing.assert_close(one_by_one, out, rtol=1e-5, atol=1e-6)

    def test_output_depends_on_both_views(self, fusion_class):
        block = self.make(fusion_class)
        a, b = self.views()
        out = block(a, b)
        assert not torch.allclose(block(a + 1.0, b), out), "the output ignores view a"
        assert not torch.allclose(block(a, b + 1.0), out), "the output ignores view b"

    def test_masked_tokens_change_nothing(self, fusion_class):
        block = self.make(fusion_class)
        a, b = self.views(n=3, la=4, lb=3)
        reference = block(a, b)
        # pad each view with junk tokens that the masks hide: the result must not move
        pad_a = torch.cat([a, 50.0 * torch.randn(3, 2, a.shape[-1])], dim=1)
        pad_b = torch.cat([b, 50.0 * torch.randn(3, 3, b.shape[-1])], dim=1)
        mask_a = torch.arange(6).expand(3, 6) < 4
        mask_b = torch.arange(6).expand(3, 6) < 3
        padded = block(pad_a, pad_b, mask_a=mask_a, mask_b=mask_b)
        torch.testing.assert_close(padded, reference, rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize("wrong", ["a", "b"])
    def test_refuses_mismatched_width_in_one_line(self, fusion_class, wrong):
        block = self.make(fusion_class, 8, 6, 4)
        a, b = self.views(dim_a=9 if wrong == "a" else 8, dim_b=7 if wrong == "b" else 6)
        with pytest.raises(FusionError) as info:
            block(a, b)
        message = str(info.value)
        assert "\n" not in message and f"dim_{wrong}" in message

    def test_refuses_different_batch_sizes(self, fusion_class):
        block = self.make(fusion_class)
        a, _ = self.views(n=4)
        _, b = self.views(n=3)
        with pytest.raises(FusionError, match="rows"):
            block(a, b)

    def test_a_spec_builds_it_with_options(self, fusion_class, spec_options):
        spec = format_spec(fusion_class.name, spec_options)
        torch.manual_seed(5)
        from_spec = build(spec, fusion_class, kind="fusion block", dim_a=8, dim_b=6, out_dim=4).eval()
        direct = self.make(fusion_class, 8, 6, 4, seed=5, **spec_options)
        assert isinstance(from_spec, fusion_class)
        a, b = self.views()
        torch.testing.assert_close(from_spec(a, b), direct(a, b))
        with pytest.raises(SpecError, match="no option"):
            spec = f"{fusion_class.name}:no_such_option=1"
            build(spec, fusion_class, kind="fusion block", dim_a=8, dim_b=6, out_dim=4)
