"""Hidden Transfer, Clover and PPD heads: training, what drafting computes against what training taught,
save/load, the drafters' greedy identity, and PPD's riders on the verification forward."""

import pytest
import torch
from transformers import DynamicCache

from crossedge.core.contracts.drafter import DraftContext, Drafter, DrafterError, Riders, TargetCacheView
from crossedge.core.testing import tiny_causal_lm, tiny_windowed_lm
from crossedge.specdec import BatchedSpeculativeDecoder, ConstantPolicy
from crossedge.specdec.engine import SpeculativeDecoder
from crossedge.specdec.errors import SpecdecError
from crossedge.specdec.exit_head import TrainConfig
from crossedge.specdec.heads import HeadsError, heads_class, train_heads
from crossedge.specdec.heads.base import fit_heads, load_heads, save_heads
from crossedge.specdec.heads.clover import CloverHeads
from crossedge.specdec.heads.drafter import CloverDrafter, HiddenTransferDrafter, MedusaDrafter, PPDDrafter
from crossedge.specdec.heads.hidden_transfer import HiddenTransferHeads
from crossedge.specdec.heads.ppd import PromptHeads
from crossedge.specdec.sampling import RunSampler, SamplingConfig
from crossedge.specdec.testing import CONFORMANCE_PROMPTS, add_noise, greedy_reference, record_proposals, tiny_target
from crossedge.specdec.testing import HEAD_PROMPT_TOKENS as PROMPT_TOKENS
from crossedge.specdec.testing import HEAD_TEXTS as TEXTS

KINDS = {
    "hidden-transfer": (HiddenTransferHeads, HiddenTransferDrafter),
    "clover": (CloverHeads, CloverDrafter),
    "ppd": (PromptHeads, PPDDrafter),
}


def random_heads(kind, model, depth=3, seed=0, scale=0.2, **options):
    return add_noise(KINDS[kind][0](model, depth, **options), scale, seed)


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_few_training_steps_lower_the_loss_and_change_only_the_heads(kind, heads_tiny, heads_data):
    model, _ = heads_tiny
    data, start = heads_data
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train, held = data.split(3)
    heads = heads_class(kind)(model, 2)
    result = fit_heads(heads, train, start, TrainConfig(epochs=6, batch_size=4, lr=2e-2), heldout=held, progress=False)
    assert result.kind == kind and result.steps == 12
    assert sum(result.history[-2:]) / 2 < sum(result.history[:2]) / 2, result.history
    assert result.trainable_parameters == sum(p.numel() for p in heads.parameters()) > 0
    assert all(0.0 <= a <= b <= 1.0 for a, b in zip(result.top1, result.topk, strict=True))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def started(model, drafter, prefix, sampling=None):
    """A drafter begun on a view whose cache holds ``prefix`` (the context minus its last token)."""
    cache = DynamicCache(config=model.config)
    view = TargetCacheView(cache)
    sampler = RunSampler(sampling or SamplingConfig(), torch.Generator().manual_seed(0))
    drafter.begin(DraftContext(target=model, cache=view, sampler=sampler, window=512))
    with torch.inference_mode():
        out = view.forward(model, prefix, 1)
    return view, out


@pytest.mark.parametrize("kind", list(KINDS))
def test_drafting_computes_what_training_taught(kind, heads_tiny, heads_data):
    # Teacher-forced training logits at anchor t must be what drafting computes after the
    # context c[0..t+1] (the cache holding c[0..t]), with each depth fed the target's own token.
    model, _ = heads_tiny
    data, start = heads_data
    heads = random_heads(kind, model)
    sequence = data.input_ids[0].tolist()
    with torch.inference_mode():
        taught = heads.training_logits(data, slice(0, 1), start)[0]  # (anchors, depth, vocab)
    for anchor in (start, start + 3):
        context = sequence[: anchor + 2]
        drafter = KINDS[kind][1](heads=heads, tree="chain")
        with torch.inference_mode():
            if kind == "ppd":
                # A chain rides the forward that feeds the anchor itself (the next proposal's c[n-2]).
                view, _ = started(model, drafter, sequence[:anchor])
                out = view.forward(model, [sequence[anchor]], 1, riders=heads.riders(0))
                drafted = out.logits[0, 1:]
            else:
                view, _ = started(model, drafter, context[:-1])
                states, rows = [heads.root(view, context)], []
                for depth in range(1, heads.depth + 1):
                    logits, states = heads.grow(states, [sequence[anchor + depth]], depth)
                    rows.append(logits[0])
                drafted = torch.stack(rows)
        torch.testing.assert_close(drafted.float(), taught[anchor - start].float(), atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("kind", list(KINDS))
def test_save_load_round_trip_and_refusals(kind, heads_tiny, tmp_path):
    model, _ = heads_tiny
    options = {"layer": 2} if kind == "hidden-transfer" else {"window": 5} if kind == "clover" else {}
    heads = random_heads(kind, model, **options)
    heads.rank_accuracy = [[0.5, 0.25], [0.3, 0.1], [0.2, 0.05]]
    folder = save_heads(heads, tmp_path / kind, model_name="tiny")
    loaded = load_heads(type(heads), model, folder)
    assert loaded.options() == heads.options() and loaded.rank_accuracy == heads.rank_accuracy
    for name, value in heads.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    other, _ = tiny_causal_lm("llama", layers=3, hidden=32, seed=7, initializer_range=0.15)
    with pytest.raises(HeadsError, match="whose LM head differs"):
        load_heads(type(heads), other, folder)
    with pytest.raises(HeadsError, match=f"--kind {kind}"):
        load_heads(type(heads), model, tmp_path / "nowhere")
    with pytest.raises(
        HeadsError, match=f"was not written by 'crossedge specdec train-heads --model NAME --kind {kind}"
    ):
        load_heads(type(heads), model, medusa_heads_renamed(model, kind, tmp_path))


def medusa_heads_renamed(model, kind, tmp_path):
    """Medusa heads saved under this kind's file name: a file with another kind's marker."""
    from crossedge.specdec.heads.base import weights_name
    from crossedge.specdec.heads.medusa import MedusaHeads

    medusa_folder = tmp_path / "medusa"
    save_heads(MedusaHeads(model, 2), medusa_folder, model_name="tiny")
    target = tmp_path / "renamed"
    target.mkdir()
    (target / weights_name(kind)).write_bytes((medusa_folder / weights_name("medusa")).read_bytes())
    return target


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("tree", ["sparse", "chain"])
def test_greedy_speculation_with_each_kind_is_token_identical(kind, tree):
    model, tokenizer = tiny_target("llama")
    for prompt in CONFORMANCE_PROMPTS[:2]:
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids
        reference = greedy_reference(model, input_ids, 20)
        drafter = KINDS[kind][1](heads=random_heads(kind, model, scale=0.05), tree=tree, top_k=3)
        result = SpeculativeDecoder(model, drafter, "constant:k=6").generate(input_ids, 20)
        assert result.tokens == reference
        assert result.stats.drafters[kind].drafted > 0


@pytest.mark.parametrize("kind", list(KINDS))
def test_sampled_trees_are_draws_from_the_heads_processed_distribution(kind):
    model, tokenizer = tiny_target("llama")
    input_ids = tokenizer(CONFORMANCE_PROMPTS[1], return_tensors="pt").input_ids
    drafter = KINDS[kind][1](heads=random_heads(kind, model, scale=0.05))
    sampling = SamplingConfig(temperature=0.8, top_k=20, seed=3)
    proposals = record_proposals(drafter)
    result = SpeculativeDecoder(model, drafter, "constant:k=6").generate(input_ids, 16, sampling)
    assert len(result.tokens) == 16 and result.stats.drafters[kind].drafted > 0
    drafts = [d for d in proposals if len(d)]
    assert drafts
    for draft in drafts:
        assert draft.probs is not None and torch.allclose(draft.probs.sum(-1), torch.ones(len(draft)))
        assert all(draft.probs[i, t] > 0 for i, t in enumerate(draft.tokens))
        assert all((row > 0).sum() <= 20 for row in draft.probs)  # processed as the target's (top_k)
        parents = draft.parent_list()
        for i in range(len(draft)):
            for j in range(len(draft)):
                if parents[i] == parents[j]:
                    assert torch.equal(draft.probs[i], draft.probs[j])  # siblings share one q


def test_clover_children_depend_on_their_parents_token(heads_tiny):
    model, tokenizer = heads_tiny
    heads = random_heads("clover", model, scale=0.3)
    context = tokenizer("the cat sat on the mat", return_tensors="pt").input_ids[0].tolist()
    drafter = CloverDrafter(heads=heads)
    view, _ = started(model, drafter, context[:-1])
    with torch.inference_mode():
        root = heads.root(view, context)
        logits, _ = heads.grow([root, root], [5, 9], 1)
    assert not torch.allclose(logits[0], logits[1])


def test_hidden_transfer_drafting_leaves_the_cache_as_it_was(heads_tiny):
    model, tokenizer = heads_tiny
    context = tokenizer("the cat sat on", return_tensors="pt").input_ids[0].tolist()
    drafter = HiddenTransferDrafter(heads=random_heads("hidden-transfer", model))
    view, _ = started(model, drafter, context[:-1])
    before = [layer.keys.clone() for layer in view._cache.layers]
    draft = drafter.propose(context, 8)
    assert 0 < len(draft) <= 8 and max(draft.depths()) <= 3
    assert view.length == len(context) - 1
    for layer, keys in zip(view._cache.layers, before, strict=True):
        assert torch.equal(layer.keys, keys)


def test_riders_leave_the_drafts_logits_and_the_kept_cache_unchanged(heads_tiny):
    model, tokenizer = heads_tiny
    prefix = tokenizer("the cat sat on", return_tensors="pt").input_ids[0].tolist()
    feed, parents = [int(prefix[-1]), 40, 41, 42], [-1, 0, -1]
    heads = random_heads("ppd", model)
    riders = heads.riders(len(parents))
    assert len(riders) == 4 * 3 and riders.parents[:3] == [-1, 3, 4] and riders.parents[3:6] == [0, 6, 7]
    runs = []
    for extra in (None, riders):
        view = TargetCacheView(DynamicCache(config=model.config))
        with torch.inference_mode():
            view.forward(model, prefix[:-1], 1)
            out = view.forward(model, feed, len(feed), parents, extra)
            view.keep_fed(len(feed) + (len(extra) if extra else 0), [0, 1, 2])
        runs.append((out.logits[0], view))
    (plain, plain_view), (carried, carried_view) = runs
    assert carried.shape[0] == plain.shape[0] + len(riders)
    torch.testing.assert_close(carried[: len(feed)], plain, atol=1e-5, rtol=1e-5)
    for a, b in zip(plain_view._cache.layers, carried_view._cache.layers, strict=True):
        torch.testing.assert_close(a.keys, b.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=1e-5)
    with pytest.raises(DrafterError, match="rider 0 has parent 5"):
        view = TargetCacheView(DynamicCache(config=model.config))
        view.forward(model, feed, 1, parents, Riders(riders.embeddings[:1], [5]))


def test_ppd_proposes_nothing_before_a_forward_carried_its_prompts(heads_tiny):
    model, tokenizer = heads_tiny
    context = tokenizer("the cat sat on", return_tensors="pt").input_ids[0].tolist()
    drafter = PPDDrafter(heads=random_heads("ppd", model))
    started(model, drafter, context[:-1])
    assert drafter.propose(context, 8).tokens == []
    assert drafter.context.cache.wanted_layers == frozenset()  # PPD reads no recorded state


def test_refusals_sliding_windows_batches_and_two_riders():
    windowed = tiny_windowed_lm("mistral", window=8)
    for kind in ("hidden-transfer", "ppd"):
        with pytest.raises(HeadsError, match="sliding-window layers: use medusa or clover"):
            heads_class(kind)(windowed, 2)
    model, tokenizer = tiny_target("llama")
    heads = random_heads("ppd", model)
    input_ids = tokenizer("hi there", return_tensors="pt").input_ids
    batched = BatchedSpeculativeDecoder(model, lambda: PPDDrafter(heads=heads), lambda: ConstantPolicy(k=3))
    with pytest.raises(DrafterError, match="does not append a drafter's riders"):
        batched.generate_many([input_ids[0].tolist()], 4)

    class Rider(Drafter):
        name = "rider"

        def propose(self, context_ids, k):
            from crossedge.core.contracts.drafter import Draft

            return Draft([])

        def ride(self, context_ids, draft):
            return None

    with pytest.raises(SpecdecError, match="only one drafter of a chain may ride"):
        SpeculativeDecoder(model, [PPDDrafter(heads=heads), Rider()]).generate(input_ids, 3)
    with pytest.raises(SpecdecError, match="needs ppd heads, got clover heads"):
        PPDDrafter(heads=random_heads("clover", model))
    with pytest.raises(SpecdecError, match="another model"):
        other, _ = tiny_causal_lm("llama", layers=3, hidden=32, seed=4)
        SpeculativeDecoder(other, CloverDrafter(heads=random_heads("clover", model))).generate(input_ids, 3)
    assert MedusaDrafter.name == "medusa"


@pytest.mark.parametrize("kind", list(KINDS))
def test_train_heads_end_to_end_then_draft_from_the_folder(kind, heads_tiny, tmp_path):
    model, tokenizer = heads_tiny
    result = train_heads(
        model,
        tokenizer,
        "tiny",
        kind,
        heads=2,
        out=tmp_path / kind,
        prompts=8,
        prompt_tokens=PROMPT_TOKENS,
        new_tokens=8,
        holdout=2,
        config=TrainConfig(epochs=1, batch_size=4, lr=1e-2),
        texts=TEXTS,
        progress=False,
    )
    assert result.kind == kind and result.heads == 2 and result.steps == 2 and result.folder
    drafter = KINDS[kind][1](heads=result.folder)
    input_ids = tokenizer("the cat sat on", return_tensors="pt").input_ids
    out = SpeculativeDecoder(model, drafter, "constant:k=4").generate(input_ids, 8)
    assert out.tokens == greedy_reference(model, input_ids, 8)
    assert [row[0] for row in drafter.heads.rank_accuracy] == result.top1
