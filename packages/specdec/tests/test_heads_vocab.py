"""Draft heads with a reduced vocabulary: logits over a subset of the LM head, teacher targets mapped into it,
drafting only its tokens (greedy and sampled), the choice of the subset, and saving it with the heads."""

import pytest
import torch

from crossedge.specdec.engine import SpeculativeDecoder
from crossedge.specdec.exit_head import TrainConfig
from crossedge.specdec.heads import HeadsError, heads_class, train_heads
from crossedge.specdec.heads.base import choose_vocab, fit_heads, load_heads, save_heads
from crossedge.specdec.heads.drafter import CloverDrafter, HiddenTransferDrafter, MedusaDrafter
from crossedge.specdec.sampling import SamplingConfig
from crossedge.specdec.testing import CONFORMANCE_PROMPTS, add_noise, greedy_reference, record_proposals, tiny_target
from crossedge.specdec.testing import HEAD_PROMPT_TOKENS as PROMPT_TOKENS
from crossedge.specdec.testing import HEAD_TEXTS as TEXTS

DRAFTERS = {"medusa": MedusaDrafter, "hidden-transfer": HiddenTransferDrafter, "clover": CloverDrafter}


def reduced(kind, model, vocab, seed=0, scale=0.2):
    heads = add_noise(heads_class(kind)(model, 3, vocab=vocab), scale, seed)
    ids = torch.randperm(model.config.vocab_size, generator=torch.Generator().manual_seed(seed))[:vocab]
    heads.set_vocab(ids)
    return heads


@pytest.mark.parametrize("kind", list(DRAFTERS))
def test_reduced_logits_are_the_full_heads_logits_at_the_chosen_tokens(kind, heads_tiny, heads_data):
    model, _ = heads_tiny
    data, start = heads_data
    small = reduced(kind, model, 40)
    full = heads_class(kind)(model, 3)
    full.load_state_dict({k: v for k, v in small.state_dict().items() if k != "vocab_ids"})
    with torch.inference_mode():
        ours = small.training_logits(data, slice(0, 2), start)
        theirs = full.training_logits(data, slice(0, 2), start)
    assert ours.shape[-1] == 40
    torch.testing.assert_close(ours, theirs[..., small.vocab_ids], atol=1e-5, rtol=1e-5)
    # Grad on, rows picked by index as training picks them: training's plain product, not the packed one.
    trained = small.training_logits(data, torch.tensor([0, 1]), start)
    assert trained.requires_grad
    torch.testing.assert_close(trained.detach(), ours, atol=1e-5, rtol=1e-5)
    spread = small.full_logits(ours)
    assert spread.shape == theirs.shape
    assert torch.equal(spread[..., small.vocab_ids], ours)
    outside = torch.ones(model.config.vocab_size, dtype=torch.bool)
    outside[small.vocab_ids] = False
    assert bool((spread[..., outside] == float("-inf")).all())


def test_teacher_targets_drop_tokens_outside_and_renormalise(heads_tiny):
    model, _ = heads_tiny
    heads = heads_class("medusa")(model, 2, vocab=3)
    heads.set_vocab(torch.tensor([7, 2, 9]))
    ids = torch.tensor([[9, 5, 7], [4, 5, 6]])
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1]])
    where, kept = heads.targets(ids, probs)
    assert where[0, 0] == 2 and where[0, 2] == 0  # positions in vocab_ids
    torch.testing.assert_close(kept[0], torch.tensor([0.5 / 0.7, 0.0, 0.2 / 0.7]))
    assert float(kept[1].sum()) == 0.0  # nothing of this anchor's top-k is guessable: it teaches nothing
    assert torch.equal(heads.token_ids(torch.tensor([2, 0])), torch.tensor([9, 7]))


def test_training_with_a_reduced_vocab_lowers_the_loss_and_ranks_only_its_tokens(heads_tiny, heads_data):
    model, _ = heads_tiny
    data, start = heads_data
    train, held = data.split(3)
    heads = heads_class("medusa")(model, 2, vocab=64)
    heads.set_vocab(choose_vocab(64, train, start + 1, heads_tiny[1], TEXTS, model))
    result = fit_heads(heads, train, start, TrainConfig(epochs=6, batch_size=4, lr=2e-2), heldout=held, progress=False)
    assert sum(result.history[-2:]) / 2 < sum(result.history[:2]) / 2, result.history
    assert all(len(row) == 10 for row in heads.rank_accuracy)
    assert all(0.0 <= a <= b <= 1.0 for a, b in zip(result.top1, result.topk, strict=True))


def test_choose_vocab_puts_the_targets_own_tokens_first_and_keeps_eos(heads_tiny, heads_data):
    model, tokenizer = heads_tiny
    data, start = heads_data
    generated_from = start + 1
    ids = choose_vocab(30, data, generated_from, tokenizer, TEXTS, model)
    assert ids.numel() == ids.unique().numel() == 30
    eos = model.generation_config.eos_token_id
    assert all(int(t) in ids.tolist() for t in ([eos] if isinstance(eos, int) else eos))
    own = set(data.input_ids[:, generated_from:].flatten().tolist()) | set(data.top_ids[..., 0].flatten().tolist())
    first = ids.tolist()[: min(len(own), 29)]
    eos_ids = {eos} if isinstance(eos, int) else set(eos)
    assert set(first) - eos_ids <= own
    wider = choose_vocab(200, data, generated_from, tokenizer, TEXTS, model).tolist()
    assert wider[:30] == ids.tolist()  # a larger vocabulary extends a smaller one


@pytest.mark.parametrize("kind", list(DRAFTERS))
def test_greedy_speculation_with_reduced_heads_is_identical_and_drafts_only_their_tokens(kind):
    model, tokenizer = tiny_target("llama")
    heads = reduced(kind, model, 60, scale=0.05)
    allowed = set(heads.vocab_ids.tolist())
    drafter = DRAFTERS[kind](heads=heads, top_k=3)
    proposals = record_proposals(drafter)
    for prompt in CONFORMANCE_PROMPTS[:2]:
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids
        result = SpeculativeDecoder(model, drafter, "constant:k=6").generate(input_ids, 20)
        assert result.tokens == greedy_reference(model, input_ids, 20)
    drafted = [t for d in proposals for t in d.tokens]
    assert drafted and set(drafted) <= allowed


def test_sampled_drafts_from_reduced_heads_have_no_mass_outside_their_tokens():
    model, tokenizer = tiny_target("llama")
    heads = reduced("clover", model, 60, scale=0.05)
    drafter = CloverDrafter(heads=heads)
    proposals = record_proposals(drafter)
    input_ids = tokenizer(CONFORMANCE_PROMPTS[1], return_tensors="pt").input_ids
    result = SpeculativeDecoder(model, drafter, "constant:k=6").generate(input_ids, 16, SamplingConfig(0.8, seed=3))
    assert len(result.tokens) == 16
    drafts = [d for d in proposals if len(d)]
    assert drafts
    outside = torch.ones(model.config.vocab_size, dtype=torch.bool)
    outside[heads.vocab_ids] = False
    for draft in drafts:
        assert draft.probs.shape[-1] == model.config.vocab_size
        torch.testing.assert_close(draft.probs.sum(-1), torch.ones(len(draft)))
        assert float(draft.probs[:, outside].abs().max()) == 0.0


def test_save_load_keeps_the_vocabulary_and_refusals(heads_tiny, tmp_path):
    model, _ = heads_tiny
    heads = reduced("hidden-transfer", model, 25)
    folder = save_heads(heads, tmp_path / "ht", model_name="tiny")
    loaded = load_heads(type(heads), model, folder)
    assert loaded.options() == heads.options() == {"vocab": 25, "layer": heads.layer}
    assert torch.equal(loaded.vocab_ids, heads.vocab_ids)
    x = torch.randn(2, model.config.hidden_size)
    torch.testing.assert_close(loaded.project(x), heads.project(x))
    with pytest.raises(HeadsError, match="guess through the target's own forward"):
        heads_class("ppd")(model, 2, vocab=10)
    with pytest.raises(HeadsError, match="vocab must be between 1 and 259"):
        heads_class("medusa")(model, 2, vocab=1000)
    with pytest.raises(HeadsError, match="need 3 distinct token ids"):
        heads_class("medusa")(model, 2, vocab=3).set_vocab(torch.tensor([1, 1, 2]))
    with pytest.raises(HeadsError, match="must lie in 0..258"):
        heads_class("medusa")(model, 2, vocab=2).set_vocab(torch.tensor([1, 300]))


def test_train_heads_with_a_vocab_end_to_end(heads_tiny, tmp_path):
    model, tokenizer = heads_tiny
    result = train_heads(
        model,
        tokenizer,
        "tiny",
        "clover",
        heads=2,
        out=tmp_path / "clover",
        options={"vocab": 48, "window": 4},
        prompts=8,
        prompt_tokens=PROMPT_TOKENS,
        new_tokens=8,
        holdout=2,
        config=TrainConfig(epochs=1, batch_size=4, lr=1e-2),
        texts=TEXTS,
        progress=False,
    )
    drafter = CloverDrafter(heads=result.folder)
    input_ids = tokenizer("the cat sat on", return_tensors="pt").input_ids
    out = SpeculativeDecoder(model, drafter, "constant:k=4").generate(input_ids, 8)
    assert out.tokens == greedy_reference(model, input_ids, 8)
    assert drafter.heads.vocab == 48 and drafter.heads.vocab_ids.unique().numel() == 48
