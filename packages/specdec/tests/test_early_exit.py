"""The early-exit drafter: lossless on any head, and exact with a head that mirrors the last layer."""

import pytest
import torch

from crossedge.core.contracts.drafter import DraftContext, TargetCacheView
from crossedge.specdec.early_exit import EarlyExitDrafter
from crossedge.specdec.engine import SpeculativeDecoder
from crossedge.specdec.errors import SpecdecError
from crossedge.specdec.exit_head import ExitHead, save_exit_head
from crossedge.specdec.testing import CONFORMANCE_PROMPTS, DrafterConformance, greedy_reference, tiny_target


def random_head(model, exit_layer=1, seed=0):
    head = ExitHead(model, exit_layer)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in head.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.05)
    return head.eval()


class TestEarlyExitConformance(DrafterConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def target(cls):
        return tiny_target("llama")

    def make_drafter(self, target):
        return EarlyExitDrafter(head=random_head(target))


def test_mirroring_head_is_always_accepted():
    # Exiting before the last layer with a head that copies it reproduces the full model exactly,
    # so every draft must be accepted: this checks the shared cache and the head cache positions.
    model, tokenizer = tiny_target("llama")
    head = ExitHead(model, model.config.num_hidden_layers - 1).eval()
    input_ids = tokenizer(CONFORMANCE_PROMPTS[1], return_tensors="pt").input_ids
    reference = greedy_reference(model, input_ids, 24)
    drafter = EarlyExitDrafter(head=head)
    result = SpeculativeDecoder(model, [drafter], "constant:k=3").generate(input_ids, 24)
    assert result.tokens == reference
    stats = result.stats.drafters["early-exit"]
    assert stats.accepted == stats.drafted > 0


def test_drafting_leaves_the_target_cache_as_it_was():
    from transformers import DynamicCache

    model, tokenizer = tiny_target("llama")
    drafter = EarlyExitDrafter(head=random_head(model))
    prompt = tokenizer("the cat sat", return_tensors="pt").input_ids[0].tolist()
    cache = DynamicCache(config=model.config)
    view = TargetCacheView(cache)
    drafter.begin(DraftContext(target=model, cache=view, window=512))
    assert view.wanted_layers == {1}  # the drafter asked for its exit layer's states, explicitly
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([prompt[:-1]]), cache=cache, use_cache=True, output_hidden_states=True)
    view.record(out.hidden_states, 0)
    keys = [layer.keys.clone() for layer in cache.layers]
    draft = drafter.propose(prompt, 5)
    assert len(draft) == 5
    for layer, before in zip(cache.layers, keys, strict=True):
        assert torch.equal(layer.keys, before)
    assert drafter.head_cache.get_seq_length() == len(prompt) - 1


def test_head_from_a_folder_and_errors(tmp_path):
    model, tokenizer = tiny_target("llama")
    folder = save_exit_head(random_head(model), tmp_path / "head", model_name="tiny")
    input_ids = tokenizer("hi", return_tensors="pt").input_ids

    def run(drafter):
        return SpeculativeDecoder(model, drafter, "constant:k=2").generate(input_ids, 3)

    drafter = EarlyExitDrafter(head=str(folder))
    run(drafter)
    assert drafter.exit_layer == 1
    with pytest.raises(SpecdecError, match="trained for layer 1, not 2"):
        run(EarlyExitDrafter(head=str(folder), exit_layer=2))
    with pytest.raises(SpecdecError, match="train-exit"):
        run(EarlyExitDrafter(head=str(tmp_path / "missing")))
    with pytest.raises(SpecdecError, match="another model"):
        other, _ = tiny_target("llama", seed=5)
        SpeculativeDecoder(other, EarlyExitDrafter(head=random_head(model)), "constant:k=2").generate(input_ids, 3)
    with pytest.raises(SpecdecError, match="at least 1"):
        EarlyExitDrafter(exit_layer=0)


def test_no_hooks_are_put_on_the_target():
    model, tokenizer = tiny_target("llama")
    drafter = EarlyExitDrafter(head=random_head(model))
    input_ids = tokenizer(CONFORMANCE_PROMPTS[0], return_tensors="pt").input_ids
    result = SpeculativeDecoder(model, drafter, "constant:k=3").generate(input_ids, 16)
    assert result.stats.drafters["early-exit"].drafted > 0
    # transformers installs its own output recorders for output_hidden_states; none may be crossedge's.
    hooks = [h for m in model.modules() for h in (*m._forward_pre_hooks.values(), *m._forward_hooks.values())]
    owners = {getattr(h, "__module__", "") or "" for h in hooks}
    assert not [o for o in owners if o.startswith("crossedge")], owners
