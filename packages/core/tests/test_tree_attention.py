"""Tree verification through the cache view: each node's logits and the gathered cache against a per-path reference."""

import pytest
import torch

from crossedge.core.contracts.drafter import Draft, DrafterError, TargetCacheView, tree_attention
from crossedge.core.testing import tiny_causal_lm, tiny_windowed_lm

# Two subtrees under the context: 0 -> (2 -> 5, 3), 1 -> 4 -> 6; node 4's path (1, 4) skips node 0's subtree.
TOKENS = [11, 12, 13, 14, 15, 16, 17]
PARENTS = [-1, -1, 0, 0, 1, 2, 4]
PREFIX = [3, 9, 4, 1, 7, 2, 8, 5, 6, 10, 3, 9]
LAST = 20


def _llama(attn="sdpa"):
    model, _ = tiny_causal_lm("llama", seed=3)
    model.config._attn_implementation = attn
    return model


def _mistral():
    return tiny_windowed_lm("mistral", window=6, seed=4)


def _gemma3():
    return tiny_windowed_lm("gemma3", window=5, seed=5)


MODELS = {
    "llama-sdpa": _llama,
    "llama-eager": lambda: _llama("eager"),
    "mistral-sliding": _mistral,
    "gemma3-mixed": _gemma3,
}


def _cache_after(model, ids):
    """A cache as the engine keeps it: past recording on for sliding layers, trimmed after each forward."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    if any(getattr(layer, "is_sliding", False) for layer in cache.layers):
        cache.activate_past_recording()
    model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True)
    cache.crop(0)
    return cache


def _full_logits(model, ids):
    return model(input_ids=torch.tensor([ids])).logits[0, -1]


@pytest.fixture(params=list(MODELS), scope="module")
def model(request):
    return MODELS[request.param]()


@torch.inference_mode()
def test_every_node_sees_exactly_its_path(model):
    view = TargetCacheView(_cache_after(model, PREFIX))
    draft = Draft(TOKENS, parents=PARENTS)
    logits = view.forward(model, [LAST, *TOKENS], len(TOKENS) + 1, PARENTS).logits[0]
    torch.testing.assert_close(logits[0], _full_logits(model, [*PREFIX, LAST]), atol=1e-4, rtol=1e-4)
    for node in range(len(TOKENS)):
        path = [TOKENS[i] for i in draft.path(node)]
        reference = _full_logits(model, [*PREFIX, LAST, *path])
        torch.testing.assert_close(logits[node + 1], reference, atol=1e-4, rtol=1e-4, msg=f"node {node}")


@pytest.mark.parametrize("target", [6, 5, 3])
@torch.inference_mode()
def test_gathered_cache_is_the_cache_of_the_path_alone(model, target):
    draft = Draft(TOKENS, parents=PARENTS)
    path = draft.path(target)
    cache = _cache_after(model, PREFIX)
    view = TargetCacheView(cache)
    view.forward(model, [LAST, *TOKENS], len(TOKENS) + 1, PARENTS)
    view.keep_fed(len(TOKENS) + 1, [0, *(i + 1 for i in path)])
    cache.crop(0)
    reference = _cache_after(model, [*PREFIX, LAST, *(TOKENS[i] for i in path)])
    assert cache.get_seq_length() == reference.get_seq_length() == len(PREFIX) + 1 + len(path)
    for ours, theirs in zip(cache.layers, reference.layers, strict=True):
        torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.values, theirs.values, atol=1e-5, rtol=1e-5)
    # Decoding on from the gathered cache is decoding on from the path.
    follow = [21, 22]
    ours = model(input_ids=torch.tensor([follow]), cache=cache, use_cache=True).logits[0, -1]
    full = _full_logits(model, [*PREFIX, LAST, *(TOKENS[i] for i in path), *follow])
    torch.testing.assert_close(ours, full, atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_recorded_hidden_states_follow_the_kept_path():
    model = _llama()
    cache = _cache_after(model, PREFIX)
    view = TargetCacheView(cache)
    view.keep_hidden_states(2)
    view.forward(model, [LAST, *TOKENS], len(TOKENS) + 1, PARENTS)
    path = Draft(TOKENS, parents=PARENTS).path(6)
    view.keep_fed(len(TOKENS) + 1, [0, *(i + 1 for i in path)])
    start = len(PREFIX)
    ours = view.hidden_states(2, start, start + 1 + len(path))
    ids = [*PREFIX, LAST, *(TOKENS[i] for i in path)]
    reference = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[2][:, start:]
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    assert view.hidden_states(2, start, start + 2 + len(path)) is None


def test_masks_never_hide_a_whole_row_and_respect_the_window():
    model = _gemma3()
    with torch.inference_mode():
        cache = _cache_after(model, PREFIX)
    positions, masks = tree_attention(model, cache, PARENTS)
    depths = Draft(TOKENS, parents=PARENTS).depths()
    assert positions[0].tolist() == [len(PREFIX) + d for d in [0, *depths]]
    assert set(masks) == {"full_attention", "sliding_attention"}
    full, sliding = masks["full_attention"][0, 0], masks["sliding_attention"][0, 0]
    assert full.any(dim=-1).all() and sliding.any(dim=-1).all()
    assert full.shape == (8, len(PREFIX) + 8)
    # The sliding layer holds window - 1 = 4 cached keys; the deepest node (depth 3) still sees the newest one only.
    assert sliding.shape == (8, 4 + 8)
    assert sliding[7, :4].tolist() == [False, False, False, True]


def test_bad_trees_and_gathers_are_refused():
    with pytest.raises(DrafterError, match="parent must be -1"):
        Draft([1, 2], parents=[-1, 1])
    with pytest.raises(DrafterError, match="one parent per token"):
        Draft([1, 2], parents=[-1])
    model = _llama()
    with torch.inference_mode():
        view = TargetCacheView(_cache_after(model, PREFIX))
    with pytest.raises(DrafterError, match="ascending"):
        view.keep_fed(3, [0, 2, 1])


def test_greedy_path_follows_the_targets_picks():
    draft = Draft(TOKENS, parents=PARENTS)
    # After the last token the target picks 12 (node 1), then 15 (node 4), then 99: no child matches.
    picks = [12, 0, 15, 0, 0, 99, 0, 0]
    assert draft.greedy_path(picks) == ([1, 4], 99)
    assert draft.is_tree and not Draft([1, 2, 3]).is_tree
    assert draft.truncated(4).parents == [-1, -1, 0, 0]
