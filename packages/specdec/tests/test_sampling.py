import pytest
import torch
from scipy.stats import chisquare

from crossedge.core.contracts.drafter import Draft
from crossedge.specdec.errors import NonFiniteLogitsError, SpecdecError
from crossedge.specdec.sampling import SamplingConfig, check_finite, process_logits, verify_sampled, verify_tree_sampled

VOCAB = 8
CONFIGS = [
    SamplingConfig(temperature=1.0),
    SamplingConfig(temperature=0.6),
    SamplingConfig(temperature=1.3, top_k=4),
    SamplingConfig(temperature=0.9, top_p=0.8),
]


def test_top_k_and_top_p_mask_the_right_tokens():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0])
    probs = process_logits(logits, SamplingConfig(temperature=1.0, top_k=2))
    assert probs[2] == 0 and probs[3] == 0 and torch.isclose(probs.sum(), torch.tensor(1.0))
    full = logits.softmax(-1)
    probs = process_logits(logits, SamplingConfig(temperature=1.0, top_p=float(full[0]) + 1e-3))
    assert probs[0] > 0 and probs[1] > 0 and probs[2] == 0


def test_bad_sampling_settings_are_refused():
    with pytest.raises(SpecdecError, match="temperature"):
        SamplingConfig(temperature=-1)
    with pytest.raises(SpecdecError, match="top_p"):
        SamplingConfig(temperature=1, top_p=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_raise(bad):
    logits = torch.zeros(2, VOCAB)
    logits[1, 3] = bad
    with pytest.raises(NonFiniteLogitsError):
        check_finite(logits, "test")
    check_finite(torch.tensor([0.0, float("-inf")]), "masked tokens are fine")
    with pytest.raises(NonFiniteLogitsError):
        check_finite(torch.full((VOCAB,), float("-inf")), "all masked")


def _emitted_histogram(config, draft_kind, trials=12000, seed=0):
    """Histogram of the first two emitted tokens under speculative sampling with 2 drafted tokens."""
    gen = torch.Generator().manual_seed(seed)
    target_logits = torch.randn(3, VOCAB, generator=gen) * 1.5
    draft_logits = torch.randn(2, VOCAB, generator=gen) * 1.5  # deliberately a different distribution
    p = process_logits(target_logits, config)
    q = process_logits(draft_logits, config)
    counts = torch.zeros(VOCAB, VOCAB)
    for _ in range(trials):
        if draft_kind == "sampled":
            tokens = [int(torch.multinomial(q[i], 1, generator=gen)) for i in range(2)]
            probs = q
        else:  # a deterministic drafter: always the same guess, a point mass
            tokens, probs = [int(p[0].argmin()), int(p[1].argmax())], None
        accepted, nxt = verify_sampled(p, tokens, probs, gen)
        out = [*tokens[:accepted], nxt]
        if len(out) < 2:
            # The step ended after one token; draw the second from the target as the next step would.
            out.append(int(torch.multinomial(p[1], 1, generator=gen)))
        counts[out[0], out[1]] += 1
    # Rows of p do not depend on earlier tokens here, so the target's joint law is p0 x p1.
    expected = torch.outer(p[0], p[1]) * trials
    return counts, expected


def _assert_same_law(counts, expected):
    """Counts of emitted token pairs follow the expected law (chi-square and total variation)."""
    keep = expected.flatten() > 0
    assert counts.flatten()[~keep].sum() == 0, "a token the target cannot produce was emitted"
    observed, wanted = counts.flatten()[keep], expected.flatten()[keep]
    _, p_value = chisquare(observed.numpy(), wanted.numpy() * observed.sum().item() / wanted.sum().item())
    assert p_value > 1e-3
    assert 0.5 * (observed / observed.sum() - wanted / wanted.sum()).abs().sum() < 0.03


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"t{c.temperature}-k{c.top_k}-p{c.top_p}")
@pytest.mark.parametrize("draft_kind", ["sampled", "point-mass"])
def test_rejection_sampling_preserves_the_target_distribution(config, draft_kind):
    counts, expected = _emitted_histogram(config, draft_kind)
    _assert_same_law(counts, expected)


def _exact_output_law(p, q_sampled, q_used):
    """Law of the first emitted token when drafts come from q_sampled but acceptance uses q_used."""
    accept = torch.where(q_used > 0, (p / q_used).clamp(max=1.0), torch.ones_like(p))
    residual = (p - q_used).clamp_min(0.0)
    residual = residual / residual.sum()
    reject_mass = (q_sampled * (1 - accept)).sum()
    return q_sampled * accept + reject_mass * residual


def test_processed_q_is_exact_and_raw_q_is_biased():
    # Why p and q must both be processed: q taken before temperature/top-k (transformers' old bug) is biased.
    config = SamplingConfig(temperature=0.5, top_k=3)
    gen = torch.Generator().manual_seed(1)
    p = process_logits(torch.randn(VOCAB, generator=gen) * 1.5, config)
    draft_logits = torch.randn(VOCAB, generator=gen) * 1.5
    q_processed = process_logits(draft_logits, config)
    q_raw = draft_logits.softmax(-1)
    assert torch.allclose(_exact_output_law(p, q_processed, q_processed), p, atol=1e-6)
    assert 0.5 * (_exact_output_law(p, q_processed, q_raw) - p).abs().sum() > 0.01


def _tree_histogram(config, draft_kind, trials=12000, seed=0):
    """Histogram of the first two emitted tokens when a tree of two root candidates, each with two
    children, is verified; the target's second distribution depends on the first token."""
    gen = torch.Generator().manual_seed(seed)
    p0 = process_logits(torch.randn(VOCAB, generator=gen) * 1.5, config)
    p1 = process_logits(torch.randn(VOCAB, VOCAB, generator=gen) * 1.5, config)  # row x: after token x
    q0 = process_logits(torch.randn(VOCAB, generator=gen) * 1.5, config)
    q1 = process_logits(torch.randn(VOCAB, VOCAB, generator=gen) * 1.5, config)
    parents = [-1, -1, 0, 0, 1, 1]
    counts = torch.zeros(VOCAB, VOCAB)
    for _ in range(trials):
        if draft_kind == "sampled":
            # Siblings are independent draws from their parent's q, as the contract asks.
            roots = [int(torch.multinomial(q0, 1, generator=gen)) for _ in range(2)]
            leaves = [int(torch.multinomial(q1[r], 1, generator=gen)) for r in roots for _ in range(2)]
            tokens = [*roots, *leaves]
            probs = torch.stack([q0, q0, q1[roots[0]], q1[roots[0]], q1[roots[1]], q1[roots[1]]])
        else:  # deterministic candidates: two distinct guesses at each level
            order0 = q0.argsort(descending=True).tolist()
            roots = order0[:2]
            leaves = [t for r in roots for t in q1[r].argsort(descending=True).tolist()[:2]]
            tokens, probs = [*roots, *leaves], None
        rows = torch.stack([p0, *(p1[t] for t in tokens)])
        path, nxt = verify_tree_sampled(rows, Draft(tokens, probs, parents=parents), gen)
        out = [*(tokens[i] for i in path), nxt]
        if len(out) < 2:
            out.append(int(torch.multinomial(p1[out[0]], 1, generator=gen)))
        counts[out[0], out[1]] += 1
    return counts, p0[:, None] * p1 * trials


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"t{c.temperature}-k{c.top_k}-p{c.top_p}")
@pytest.mark.parametrize("draft_kind", ["sampled", "point-mass"])
def test_tree_rejection_sampling_preserves_the_target_distribution(config, draft_kind):
    counts, expected = _tree_histogram(config, draft_kind)
    _assert_same_law(counts, expected)


def test_tree_sampling_that_keeps_q_after_a_rejection_would_be_caught():
    """The histogram test can fail: verifying each sibling against the untouched p is biased."""
    config = CONFIGS[0]
    gen = torch.Generator().manual_seed(1)
    p = process_logits(torch.randn(VOCAB, generator=gen) * 1.5, config)
    q = process_logits(torch.randn(VOCAB, generator=gen) * 1.5, config)
    counts = torch.zeros(VOCAB)
    for _ in range(12000):
        roots = [int(torch.multinomial(q, 1, generator=gen)) for _ in range(2)]
        out = None
        for token in roots:  # the wrong rule: no residual between siblings
            if float(torch.rand((), generator=gen)) < min(1.0, float(p[token] / q[token])):
                out = token
                break
        if out is None:
            residual = (p - q).clamp_min(0)
            out = int(torch.multinomial(residual / residual.sum(), 1, generator=gen))
        counts[out] += 1
    _, p_value = chisquare(counts.numpy(), (p * counts.sum()).numpy())
    assert p_value < 1e-3
