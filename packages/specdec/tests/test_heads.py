"""Trained draft heads: Medusa's offsets, training, save/load and refusals, the sparse tree and the drafter.

The other kinds (hidden-transfer, clover, ppd) are in test_head_kinds.py.
"""

import pytest
import torch

from crossedge.core.contracts.drafter import DraftContext, TargetCacheView
from crossedge.core.testing import tiny_causal_lm
from crossedge.specdec.engine import SpeculativeDecoder
from crossedge.specdec.errors import SpecdecError
from crossedge.specdec.exit_head import TrainConfig, self_generated_sequences, training_prompts
from crossedge.specdec.heads import HeadsError, check_kind, train_heads
from crossedge.specdec.heads.base import (
    collect_head_data,
    final_state_is_normed,
    fit_heads,
    head_targets,
    load_heads,
    save_heads,
    weights_name,
)
from crossedge.specdec.heads.drafter import MedusaDrafter
from crossedge.specdec.heads.medusa import MedusaHeads
from crossedge.specdec.heads.tree import chain, prior_rank_accuracy, sparse_tree, tree_parents
from crossedge.specdec.sampling import RunSampler, SamplingConfig
from crossedge.specdec.testing import CONFORMANCE_PROMPTS, DrafterConformance, add_noise, greedy_reference, tiny_target
from crossedge.specdec.testing import HEAD_PROMPT_TOKENS as PROMPT_TOKENS
from crossedge.specdec.testing import HEAD_TEXTS as TEXTS

WEIGHTS_NAME = weights_name("medusa")


def load_medusa_heads(model, folder):
    return load_heads(MedusaHeads, model, folder)


def random_heads(model, heads=3, seed=0, scale=0.3):
    return add_noise(MedusaHeads(model, heads), scale, seed)


@pytest.fixture(scope="module")
def data(heads_tiny):
    model, tokenizer = heads_tiny
    prompts = training_prompts(tokenizer, TEXTS, 12, PROMPT_TOKENS)
    sequences = self_generated_sequences(model, prompts, 12, progress=False)
    return collect_head_data(model, sequences, (3,), top_k=4, progress=False), prompts.shape[1] - 1


def test_the_recorded_last_state_is_after_the_final_norm_and_untrained_heads_are_the_lm_head(heads_tiny):
    model, _ = heads_tiny
    # transformers 5 ties output_hidden_states[-1] to last_hidden_state (after the final norm).
    assert final_state_is_normed(model)
    medusa = MedusaHeads(model, 3)
    assert not medusa.apply_norm
    state = torch.randn(5, 32)
    with torch.no_grad():
        logits = medusa(state)
        assert logits.shape == (5, 3, model.config.vocab_size)
        for k in range(3):
            torch.testing.assert_close(logits[:, k], model.lm_head(state))
    assert [n for n, _ in medusa.named_parameters()] == ["weight", "bias"]  # the LM head is shared, not copied


def test_head_k_learns_the_targets_own_token_k_plus_2_places_ahead(data):
    data, start = data
    for k in range(3):
        ids, probs, count = head_targets(data, slice(None), start, k)
        assert count == data.input_ids.shape[1] - start - k - 1
        # The sequences are the target's greedy output, so its top token is the token there
        # (the last position's target is the token after the sequence: the teacher's guess).
        positions = torch.arange(start, start + count - 1)
        assert torch.equal(ids[:, : count - 1, 0], data.input_ids[:, positions + k + 2])
        assert torch.allclose(probs.sum(-1), torch.ones(probs.shape[:2]))


def test_training_lowers_the_loss_and_changes_only_the_heads(heads_tiny, data):
    model, _ = heads_tiny
    data, start = data
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train, held = data.split(3)
    medusa = MedusaHeads(model, 2)
    result = fit_heads(medusa, train, start, TrainConfig(epochs=8, batch_size=3, lr=1e-2), heldout=held, progress=False)
    assert result.steps == 24
    assert sum(result.history[-3:]) / 3 < sum(result.history[:3]) / 3
    assert len(result.top1) == len(result.topk) == len(result.untrained_top1) == 2
    assert all(0.0 <= a <= b <= 1.0 for a, b in zip(result.top1, result.topk, strict=True))
    assert len(medusa.rank_accuracy) == 2 and result.top1 == [row[0] for row in medusa.rank_accuracy]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert medusa.model is model
    with pytest.raises(HeadsError, match="generate more than 12 new tokens"):
        fit_heads(MedusaHeads(model, 12), train, start, progress=False)


def test_save_load_round_trip_is_exact(heads_tiny, tmp_path):
    model, _ = heads_tiny
    medusa = random_heads(model)
    medusa.rank_accuracy = [[0.5, 0.25], [0.3, 0.1], [0.2, 0.05]]
    folder = save_heads(medusa, tmp_path / "heads", model_name="tiny")
    loaded = load_medusa_heads(model, folder)
    assert torch.equal(loaded.weight, medusa.weight) and torch.equal(loaded.bias, medusa.bias)
    assert loaded.rank_accuracy == medusa.rank_accuracy
    state = torch.randn(4, 32)
    with torch.no_grad():
        assert torch.equal(loaded(state), medusa(state))
    save_heads(loaded, folder, model_name="tiny")  # heads crossedge wrote may be replaced


def one_line(caught):
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_load_refuses_another_models_heads_and_a_damaged_file(heads_tiny, tmp_path):
    model, _ = heads_tiny
    folder = save_heads(random_heads(model), tmp_path / "heads", model_name="tiny")
    same_shape, _ = tiny_causal_lm("llama", layers=3, hidden=32, seed=7, initializer_range=0.15)
    with pytest.raises(HeadsError, match="whose LM head differs") as caught:
        load_medusa_heads(same_shape, folder)
    one_line(caught)
    wider, _ = tiny_causal_lm("llama", layers=3, hidden=64)
    with pytest.raises(HeadsError, match="hidden_size=32") as caught:
        load_medusa_heads(wider, folder)
    one_line(caught)
    with pytest.raises(HeadsError, match="train-heads") as caught:
        load_medusa_heads(model, tmp_path / "nowhere")
    one_line(caught)
    path = folder / WEIGHTS_NAME
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[-3] ^= 0xFF  # inside the tensor data
    path.write_bytes(bytes(flipped))
    with pytest.raises(HeadsError, match="damaged") as caught:
        load_medusa_heads(model, folder)
    one_line(caught)
    path.write_bytes(good[:50])
    with pytest.raises(HeadsError, match="damaged") as caught:
        load_medusa_heads(model, folder)
    one_line(caught)


def test_saving_refuses_a_folder_holding_foreign_files(heads_tiny, tmp_path):
    model, _ = heads_tiny
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(HeadsError, match="notes.txt that crossedge did not write") as caught:
        save_heads(random_heads(model), folder, model_name="tiny")
    one_line(caught)
    (folder / "notes.txt").unlink()
    (folder / WEIGHTS_NAME).write_bytes(b"someone else's file")
    with pytest.raises(HeadsError, match="did not write"):
        save_heads(random_heads(model), folder, model_name="tiny")
    assert (folder / WEIGHTS_NAME).read_bytes() == b"someone else's file"


def test_sparse_tree_is_best_first_with_parents_before_children():
    accuracy = [[0.6, 0.2, 0.1], [0.5, 0.3, 0.1], [0.4, 0.2, 0.1]]
    tree = sparse_tree(accuracy, 10)
    assert tree[:3] == [(0,), (0, 0), (1,)]

    def score(path):
        value = 1.0
        for depth, rank in enumerate(path):
            value *= accuracy[depth][rank]
        return value

    scores = [score(p) for p in tree]
    assert scores == sorted(scores, reverse=True)
    parents = tree_parents(tree)
    assert all(-1 <= p < i for i, p in enumerate(parents))
    # Any prefix is the best tree of its size.
    for size in range(1, 10):
        assert sparse_tree(accuracy, size) == tree[:size]
    assert all(r < 2 for path in sparse_tree(accuracy, 20, max_rank=2) for r in path)
    assert len(sparse_tree(accuracy, 100)) == 3 + 9 + 27
    assert chain(3) == [(0,), (0, 0), (0, 0, 0)]
    assert tree_parents(chain(3)) == [-1, 0, 1]
    assert len(prior_rank_accuracy(3, 4)) == 3


def started(model, drafter, prompt, sampling=None):
    """A drafter begun on a view whose cache holds the prompt minus its last token, as the engine leaves it."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    view = TargetCacheView(cache)
    sampler = RunSampler(sampling or SamplingConfig(), torch.Generator().manual_seed(0))
    drafter.begin(DraftContext(target=model, cache=view, sampler=sampler, window=512))
    assert view.wanted_layers == {model.config.num_hidden_layers}
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([prompt[:-1]]), cache=cache, use_cache=True, output_hidden_states=True)
    view.record(out.hidden_states, 0)
    return out


def test_the_drafter_reads_the_state_before_the_last_token(heads_tiny):
    # Untrained heads guess what the LM head guesses from the state they read: with the state
    # h[n-2] that is the target's own next token after c[n-2], i.e. the last context token
    # itself (offset +1), when that token was the target's greedy choice.
    model, tokenizer = heads_tiny
    prompt = tokenizer("the cat sat", return_tensors="pt").input_ids[0].tolist()
    with torch.inference_mode():
        greedy = int(model(input_ids=torch.tensor([prompt])).logits[0, -1].argmax())
    context = [*prompt, greedy]
    drafter = MedusaDrafter(heads=MedusaHeads(model, 3), tree="chain")
    out = started(model, drafter, context)
    draft = drafter.propose(context, 3)
    assert draft.tokens == [greedy] * 3
    assert int(out.logits[0, -1].argmax()) == greedy
    assert drafter.propose(context[:-1], 3).tokens == []  # the cache must hold all but the last token


def test_the_drafter_proposes_a_valid_tree_within_k(heads_tiny):
    model, tokenizer = heads_tiny
    prompt = tokenizer("the cat sat on", return_tensors="pt").input_ids[0].tolist()
    drafter = MedusaDrafter(heads=random_heads(model), top_k=3)
    started(model, drafter, prompt)
    for k in (1, 2, 5, 9, 40):
        draft = drafter.propose(prompt, k)
        assert 0 < len(draft) <= k
        assert draft.probs is None
        assert max(draft.depths()) <= 3
        parents = draft.parent_list()
        for i, parent in enumerate(parents):
            siblings = [draft.tokens[j] for j, p in enumerate(parents) if p == parent]
            assert len(siblings) == len(set(siblings)), (i, siblings)  # greedy siblings are distinct guesses
    assert drafter.propose(prompt, 9).is_tree
    assert drafter.propose(prompt, 3).tokens == drafter.propose(prompt, 9).tokens[:3]


def test_sampled_nodes_are_draws_from_their_heads_distribution(heads_tiny):
    model, tokenizer = heads_tiny
    prompt = tokenizer("the cat sat on", return_tensors="pt").input_ids[0].tolist()
    drafter = MedusaDrafter(heads=random_heads(model))
    started(model, drafter, prompt, SamplingConfig(temperature=0.8, top_k=20))
    draft = drafter.propose(prompt, 8)
    assert draft.probs is not None and draft.probs.shape == (len(draft), model.config.vocab_size)
    assert torch.allclose(draft.probs.sum(-1), torch.ones(len(draft)))
    depths = draft.depths()
    for i, token in enumerate(draft.tokens):
        assert draft.probs[i, token] > 0
        for j in range(len(draft)):
            if depths[j] == depths[i]:
                assert torch.equal(draft.probs[i], draft.probs[j])  # one q per head
        assert (draft.probs[i] > 0).sum() <= 20  # processed as the target's logits are (top_k)


def test_drafter_options_and_folders(heads_tiny, tmp_path, monkeypatch):
    model, tokenizer = heads_tiny
    input_ids = tokenizer("hi there", return_tensors="pt").input_ids
    with pytest.raises(SpecdecError, match="sparse, chain"):
        MedusaDrafter(tree="bushy")
    with pytest.raises(SpecdecError, match="at least 1"):
        MedusaDrafter(top_k=0)
    folder = save_heads(random_heads(model), tmp_path / "heads", model_name="tiny")
    drafter = MedusaDrafter(heads=str(folder))
    SpeculativeDecoder(model, drafter, "constant:k=4").generate(input_ids, 6)
    assert drafter.heads.depth == 3
    monkeypatch.setenv("CROSSEDGE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SpecdecError, match="train-heads"):
        SpeculativeDecoder(model, MedusaDrafter(), "constant:k=2").generate(input_ids, 3)
    other, _ = tiny_causal_lm("llama", layers=3, hidden=32, seed=4)
    with pytest.raises(SpecdecError, match="another model"):
        SpeculativeDecoder(other, MedusaDrafter(heads=random_heads(model)), "constant:k=2").generate(input_ids, 3)


class TestMedusaConformance(DrafterConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def target(cls):
        return tiny_target("llama")

    def make_drafter(self, target):
        return MedusaDrafter(heads=random_heads(target))


@pytest.mark.parametrize("tree", ["sparse", "chain"])
def test_greedy_speculation_with_medusa_is_token_identical(tree):
    model, tokenizer = tiny_target("llama")
    for prompt in CONFORMANCE_PROMPTS:
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids
        reference = greedy_reference(model, input_ids, 24)
        drafter = MedusaDrafter(heads=random_heads(model), tree=tree)
        result = SpeculativeDecoder(model, drafter, "constant:k=6").generate(input_ids, 24)
        assert result.tokens == reference
        assert result.stats.drafters["medusa"].drafted > 0


def test_sampling_with_medusa_runs():
    model, tokenizer = tiny_target("llama")
    input_ids = tokenizer(CONFORMANCE_PROMPTS[1], return_tensors="pt").input_ids
    decoder = SpeculativeDecoder(model, MedusaDrafter(heads=random_heads(model)), "constant:k=5")
    result = decoder.generate(input_ids, 20, SamplingConfig(temperature=0.9, seed=3))
    assert len(result.tokens) == result.stats.new_tokens > 0
    assert result.stats.drafters["medusa"].drafted > 0


def test_kinds_and_train_heads_end_to_end(heads_tiny, tmp_path):
    model, tokenizer = heads_tiny
    assert check_kind("medusa") == "medusa" and check_kind("clover") == "clover"
    with pytest.raises(HeadsError, match="the kinds built are: medusa, hidden-transfer, clover, ppd"):
        check_kind("eagle")
    with pytest.raises(HeadsError, match="unknown head kind 'eagle'"):
        train_heads(model, tokenizer, "tiny", "eagle")
    result = train_heads(
        model,
        tokenizer,
        "tiny",
        heads=2,
        out=tmp_path / "heads",
        prompts=10,
        prompt_tokens=PROMPT_TOKENS,
        new_tokens=10,
        holdout=3,
        config=TrainConfig(epochs=2, batch_size=4, lr=1e-2),
        teacher_top_k=1,
        texts=TEXTS,
        progress=False,
    )
    assert result.kind == "medusa" and result.heads == 2 and result.steps == 4
    assert result.seconds > 0 and result.data_seconds > 0 and result.prompt_mix == "tasks"
    with pytest.raises(HeadsError, match="unknown prompt mix 'chat'; the mixes are: explain, tasks"):
        train_heads(model, tokenizer, "tiny", out=tmp_path / "other", prompt_mix="chat", texts=TEXTS)
    assert not (tmp_path / "other").exists()
    loaded = load_medusa_heads(model, result.folder)
    assert [row[0] for row in loaded.rank_accuracy] == result.top1


def test_after_tree_steps_the_drafter_reads_the_accepted_paths_state():
    # The state at n-2 must be what a plain forward of the context computes there, also after
    # the engine verified a tree and gathered the accepted path's cache and recorded states.
    model, tokenizer = tiny_target("llama")
    layer = model.config.num_hidden_layers
    drafter = MedusaDrafter(heads=random_heads(model, scale=0.05))
    propose = drafter.propose
    checked = []

    def checking(context_ids, k):
        state = drafter.context.cache.hidden_states(layer, len(context_ids) - 2, len(context_ids) - 1)
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([list(context_ids[:-1])]), output_hidden_states=True)
        torch.testing.assert_close(state[0, -1], out.hidden_states[layer][0, -1], atol=1e-4, rtol=1e-4)
        draft = propose(context_ids, k)
        checked.append(draft.is_tree)
        return draft

    drafter.propose = checking
    input_ids = tokenizer(CONFORMANCE_PROMPTS[1], return_tensors="pt").input_ids
    result = SpeculativeDecoder(model, drafter, "constant:k=6").generate(input_ids, 24)
    assert result.tokens == greedy_reference(model, input_ids, 24)
    assert len(checked) > 3 and all(checked[:-1])
    assert result.stats.drafters["medusa"].accepted > 0
