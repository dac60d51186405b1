import pytest
import torch

from crossedge.core import CrossedgeError
from crossedge.core.conformance.policy import DraftLengthPolicyConformance
from crossedge.core.testing import tiny_windowed_lm
from crossedge.specdec import (
    ConstantPolicy,
    CopyDrafter,
    CostAwarePolicy,
    Draft,
    Drafter,
    DraftModelDrafter,
    HeuristicPolicy,
    SamplingConfig,
    SpeculativeDecoder,
    build_policy,
)
from crossedge.specdec.errors import NonFiniteLogitsError, PromptTooLongError, SpecdecError
from crossedge.specdec.testing import greedy_reference, noisy_copy, tiny_target


class OracleDrafter(Drafter):
    """Proposes a known continuation, including whatever follows an EOS."""

    name = "oracle"
    cheap = True

    def __init__(self, prompt_len, continuation, wrong_at=()):
        self.prompt_len = prompt_len
        self.continuation = continuation
        self.wrong_at = set(wrong_at)
        self.feedbacks = []

    def propose(self, context_ids, k):
        start = len(context_ids) - self.prompt_len
        tokens = list(self.continuation[start : start + k])
        # Deliberately wrong guesses force rejections and cache rollbacks at chosen positions.
        tokens = [(t + 1) % 250 if start + i in self.wrong_at else t for i, t in enumerate(tokens)]
        return Draft(tokens)

    def feedback(self, num_accepted):
        self.feedbacks.append(num_accepted)


@pytest.fixture(scope="module")
def llama():
    return tiny_target("llama")


def _ids(tokenizer, text="hello world, hello"):
    return tokenizer(text, return_tensors="pt").input_ids


def test_vanilla_matches_generate_and_streams(llama):
    model, tokenizer = llama
    input_ids = _ids(tokenizer)
    reference = greedy_reference(model, input_ids, 24)
    stream = SpeculativeDecoder(model).stream(input_ids, 24)
    first = next(stream)
    assert first == reference[0]
    assert stream.stats.new_tokens == 1  # tokens arrive before generation ends
    result = stream.result()
    assert result.tokens == reference
    assert result.stats.mean_accepted == 1.0
    assert result.stats.target_forwards == len(reference)


def test_rollback_after_rejections_keeps_output_identical(llama):
    model, tokenizer = llama
    input_ids = _ids(tokenizer)
    reference = greedy_reference(model, input_ids, 40)
    oracle = OracleDrafter(input_ids.shape[1], reference, wrong_at={3, 4, 9, 17, 18, 19, 30})
    result = SpeculativeDecoder(model, oracle, ConstantPolicy(k=6)).generate(input_ids, 40)
    assert result.tokens == reference
    assert 0 in oracle.feedbacks and max(oracle.feedbacks) >= 5
    assert result.stats.drafters["oracle"].accepted < result.stats.drafters["oracle"].drafted


def test_eos_inside_a_draft_stops_there(llama):
    model, tokenizer = llama
    input_ids = _ids(tokenizer, "abc")
    continuation = greedy_reference(model, input_ids, 30)
    cut = next(i for i in range(4, len(continuation)) if continuation[i] not in continuation[:i])
    eos = continuation[cut]
    oracle = OracleDrafter(input_ids.shape[1], continuation)
    result = SpeculativeDecoder(model, oracle, ConstantPolicy(k=8), eos_token_id=eos).generate(input_ids, 30)
    assert result.tokens == continuation[: cut + 1]
    assert result.stats.stop_reason == "eos"
    assert result.stats.drafters["oracle"].drafted > len(result.tokens) - result.stats.target_forwards


def test_length_limit_inside_a_draft(llama):
    model, tokenizer = llama
    input_ids = _ids(tokenizer)
    continuation = greedy_reference(model, input_ids, 20)
    oracle = OracleDrafter(input_ids.shape[1], continuation)
    result = SpeculativeDecoder(model, oracle, ConstantPolicy(k=8), eos_token_id=[]).generate(input_ids, 7)
    assert result.tokens == continuation[:7]
    assert result.stats.stop_reason == "length"


def test_errors(llama):
    model, tokenizer = llama
    decoder = SpeculativeDecoder(model)
    with pytest.raises(SpecdecError, match="empty prompt"):
        decoder.generate([], 5)
    for bad in (0, -3):
        with pytest.raises(SpecdecError, match="max_new_tokens"):
            decoder.generate([1, 2], bad)
    with pytest.raises(PromptTooLongError, match="context window is 512"):
        decoder.generate(list(range(200)) * 3, 5)
    with pytest.raises(SpecdecError, match="batch size 2"):
        decoder.generate(torch.ones(2, 3, dtype=torch.long), 5)


def test_context_window_stops_generation(llama):
    model, _ = llama
    result = SpeculativeDecoder(model, eos_token_id=[]).generate([5] * 508, 50)
    assert len(result.tokens) == 4
    assert result.stats.stop_reason == "context"


def test_nan_logits_raise_a_clear_error():
    model, tokenizer = tiny_target("gpt2")
    with torch.no_grad():
        model.lm_head.weight[7, 0] = float("nan")
    with pytest.raises(NonFiniteLogitsError, match="non-finite logits"):
        SpeculativeDecoder(model, "none").generate(_ids(tokenizer), 5)


def test_sampling_preserves_the_target_distribution_end_to_end(llama):
    """The second token's joint law with the first matches the target's, with a different draft model."""
    model, _ = llama
    config_kwargs = {"temperature": 0.8, "top_k": 3}
    prompt = [72, 101, 108, 108, 111]
    draft = noisy_copy(model, scale=0.15, seed=3)
    decoder = SpeculativeDecoder(model, DraftModelDrafter(draft), ConstantPolicy(k=1), eos_token_id=[])
    trials = 800
    counts: dict[tuple[int, int], int] = {}
    for seed in range(trials):
        tokens = decoder.generate(prompt, 2, SamplingConfig(seed=seed, **config_kwargs)).tokens
        counts[tuple(tokens)] = counts.get(tuple(tokens), 0) + 1
    assert decoder.policy.k == 1
    from crossedge.specdec.sampling import process_logits

    config = SamplingConfig(**config_kwargs)
    with torch.inference_mode():
        first = process_logits(model(input_ids=torch.tensor([prompt])).logits[0, -1], config)
        expected = {}
        for a in torch.nonzero(first).flatten().tolist():
            second = process_logits(model(input_ids=torch.tensor([[*prompt, a]])).logits[0, -1], config)
            for b in torch.nonzero(second).flatten().tolist():
                expected[(a, b)] = float(first[a] * second[b])
    assert set(counts) <= set(expected)
    tv = 0.5 * sum(abs(counts.get(key, 0) / trials - p) for key, p in expected.items())
    assert tv < 0.09


def test_policies():
    assert build_policy("constant:k=3").choose("copy", "", 10) == 3
    heuristic = HeuristicPolicy(k=4, max_k=8)
    heuristic.observe_acceptance("d", "", 4, 4)
    assert heuristic.choose("d", "", 99) == 6
    heuristic.observe_acceptance("d", "", 6, 2)
    assert heuristic.choose("d", "", 99) == 5
    with pytest.raises(CrossedgeError, match="unknown draft-length policy 'fastest'"):
        build_policy("fastest")
    with pytest.raises(CrossedgeError, match="option k takes an integer, got 'many'"):
        build_policy("constant:k=many")
    with pytest.raises(CrossedgeError, match="no option 'kk'.*its options: k"):
        build_policy("constant:kk=2")


def test_cost_aware_drafts_nothing_when_drafting_does_not_pay_and_a_lot_when_it_does():
    policy = CostAwarePolicy(max_k=8, probe_every=1000)
    # Verification cost rises steeply with k, as on a CPU: 60 ms alone, +20 ms per drafted token.
    for k in range(0, 9):
        for _ in range(3):
            policy.observe_verification(k, 0.060 + 0.020 * k)
    for _ in range(50):
        policy.observe_acceptance("poor", "", 4, 0)
        policy.observe_acceptance("good", "", 8, 8)
    assert policy.choose("poor", "", 8) == 0
    assert policy.choose("good", "", 8) == 8
    assert policy.expected_rate("good", "", 8) > policy.expected_rate("good", "", 0)


def test_cost_aware_probes_after_a_zero_streak():
    policy = CostAwarePolicy(max_k=4, probe_every=3)
    for k in range(5):
        policy.observe_verification(k, 1.0 + k)
    for _ in range(30):
        policy.observe_acceptance("d", "", 2, 0)
    picks = []
    for _ in range(6):
        picks.append(policy.choose("d", "", 4))
        if picks[-1]:
            policy.observe_acceptance("d", "", picks[-1], 1)  # the probe found something: keep probing often
    assert picks == [0, 0, 2, 0, 0, 2]
    for _ in range(12):
        k = policy.choose("d", "", 4)
        if k:
            policy.observe_acceptance("d", "", k, 0)  # probes that find nothing back off
    assert policy.probe_interval[("d", "")] > 3


def sliding_window_model(seed):
    """A tiny random Mistral with an 8-token sliding window."""
    return tiny_windowed_lm("mistral", window=8, seed=seed)


def test_sliding_window_cache_rolls_back_past_the_window():
    model = sliding_window_model(0)
    model.generation_config.eos_token_id = None  # run the full length, far past the 8-token window
    input_ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 1, 2, 3, 4, 5, 6]])
    reference = greedy_reference(model, input_ids, 40)
    drafter = DraftModelDrafter(noisy_copy(model, scale=0.03))
    result = SpeculativeDecoder(model, drafter, ConstantPolicy(k=4)).generate(input_ids, 40)
    assert result.tokens == reference
    assert 0 < result.stats.drafters["draft-model"].accepted < result.stats.drafters["draft-model"].drafted


def test_cost_aware_calibrates_once_and_leaves_the_output_and_cache_intact():
    model = sliding_window_model(1)
    model.generation_config.eos_token_id = None
    input_ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 1, 2, 3, 4, 5, 6]])
    reference = greedy_reference(model, input_ids, 30)
    policy = CostAwarePolicy(max_k=6, calibration_rounds=2)
    calls = []
    original = policy.calibrate

    def counting(measure, max_k=None):
        calls.append(1)
        original(measure, max_k)

    policy.calibrate = counting
    decoder = SpeculativeDecoder(model, CopyDrafter(), policy)
    assert decoder.generate(input_ids, 30).tokens == reference
    assert decoder.generate(input_ids, 30).tokens == reference
    assert calls == [1]
    # Every calibration length up to max_k was timed before any draft was verified.
    assert {0, 1, 2, 3, 4, 6} <= set(policy.cost.table())
    assert not CostAwarePolicy(calibrate=False).wants_calibration()


def test_cost_aware_near_the_window_of_a_gpt2_model_stays_inside_it():
    # Defect 5: GPT-2 has no positions past n_positions; calibration used to time 16-token
    # verifications after the prompt and raised IndexError from the position embeddings.
    from crossedge.core.testing import tiny_causal_lm

    model, _ = tiny_causal_lm("gpt2", seed=1, initializer_range=0.15, n_positions=40)
    model.generation_config.eos_token_id = None
    prompt = [5, 6, 7, 8] * 9  # 36 of 40 positions
    vanilla = SpeculativeDecoder(model).generate(prompt, 10)
    policy = CostAwarePolicy()
    result = SpeculativeDecoder(model, CopyDrafter(min_match=1), policy).generate(prompt, 10)
    assert result.tokens == vanilla.tokens and len(result.tokens) == 4
    assert result.stats.stop_reason == "context"
    # Only lengths that fit were timed, so the policy calibrates again on a prompt with room.
    assert max(policy.cost.table()) <= 40 - 36 - 1 and policy.wants_calibration()
    SpeculativeDecoder(model, CopyDrafter(), policy).generate(prompt[:8], 4)
    assert max(policy.cost.table()) == policy.max_k and not policy.wants_calibration()


def test_drafts_never_run_past_the_window(llama):
    model, tokenizer = llama
    prompt = list(range(3, 13)) * 50 + [3, 4, 5, 6, 7, 8, 9]  # 507 of 512 positions
    continuation = SpeculativeDecoder(model, eos_token_id=[]).generate(prompt, 10).tokens
    oracle = OracleDrafter(len(prompt), continuation + [1] * 20)
    asked = []
    propose = oracle.propose

    def recording(context_ids, k):
        asked.append((len(context_ids), k))
        return propose(context_ids, k)

    oracle.propose = recording
    result = SpeculativeDecoder(model, oracle, ConstantPolicy(k=8), eos_token_id=[]).generate(prompt, 10)
    assert result.tokens == continuation
    # A draft of k after a context of n is verified at positions n-1 .. n-1+k: all inside 512.
    assert asked and all(n + k <= 512 for n, k in asked)


def test_drafting_time_is_measured_by_the_engine_and_reaches_the_policy(llama, monkeypatch):
    from crossedge.specdec import engine

    now = [0.0]
    monkeypatch.setattr(engine, "clock", lambda: now[0])

    class SlowOracle(OracleDrafter):
        calls = 0

        def propose(self, context_ids, k):
            self.calls += 1
            now[0] += 0.5  # half a second of drafting per proposal, on the engine's clock
            return super().propose(context_ids, k)

    model, tokenizer = llama
    input_ids = _ids(tokenizer)
    continuation = greedy_reference(model, input_ids, 12)
    policy = CostAwarePolicy(calibrate=False)
    drafter = SlowOracle(input_ids.shape[1], continuation)
    stats = SpeculativeDecoder(model, drafter, policy).generate(input_ids, 12).stats
    entry = stats.drafters["oracle"]
    assert entry.seconds == pytest.approx(0.5 * drafter.calls) and drafter.calls > 0
    assert policy.draft_seconds_per_token["oracle"] > 0
    assert not hasattr(drafter, "seconds")


class TestConstantPolicy(DraftLengthPolicyConformance):
    def make_policy(self):
        return ConstantPolicy(k=5)


class TestHeuristicPolicy(DraftLengthPolicyConformance):
    def make_policy(self):
        return HeuristicPolicy(k=3, max_k=12)


class TestCostAwarePolicy(DraftLengthPolicyConformance):
    def make_policy(self):
        return CostAwarePolicy(max_k=12, probe_every=4)


class TreeOracleDrafter(Drafter):
    """A tree whose first branch is wrong at the root and whose second holds the true continuation,
    with a wrong leaf beside it at each level, so accepted paths skip rejected nodes."""

    name = "tree-oracle"
    cheap = True

    def __init__(self, prompt_len, continuation, depth=3):
        self.prompt_len = prompt_len
        self.continuation = continuation
        self.depth = depth
        self.paths = []

    def propose(self, context_ids, k):
        start = len(context_ids) - self.prompt_len
        truth = list(self.continuation[start : start + self.depth])
        if not truth:
            return Draft([])
        tokens, parents = [(truth[0] + 1) % 250], [-1]  # node 0: a wrong root child with a child of its own
        tokens.append(truth[0])
        parents.append(-1)
        tokens.append(truth[0])
        parents.append(0)
        parent = 1
        for token in truth[1:]:
            tokens += [(token + 7) % 250, token]  # a wrong sibling first, then the true token
            parents += [parent, parent]
            parent = len(tokens) - 1
        return Draft(tokens, parents=parents).truncated(k)

    def feedback(self, num_accepted):
        self.paths.append(num_accepted)


@pytest.mark.parametrize("target", ["llama", "sliding"])
def test_tree_drafts_are_greedy_identical_and_keep_only_the_path(llama, target):
    if target == "llama":
        model, tokenizer = llama
        input_ids = _ids(tokenizer)
    else:
        model = sliding_window_model(2)
        model.generation_config.eos_token_id = None
        input_ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 1, 2, 3, 4, 5, 6]])
    reference = greedy_reference(model, input_ids, 30)
    drafter = TreeOracleDrafter(input_ids.shape[1], reference)
    result = SpeculativeDecoder(model, drafter, ConstantPolicy(k=16)).generate(input_ids, 30)
    assert result.tokens == reference
    # Every full tree has its true path of 3 accepted; the target adds one more per forward
    # (the prefill forward and the short trees near the end pull the mean under 4).
    assert max(drafter.paths) == 3
    assert result.stats.mean_accepted >= 2.5
    stats = result.stats.drafters["tree-oracle"]
    assert stats.drafted > 2 * stats.accepted  # rejected branches are counted as drafted nodes
    assert len(result.stats.acceptance_by_position) == 3


def test_sampling_with_a_tree_drafter_runs_and_is_seeded(llama):
    model, tokenizer = llama
    input_ids = _ids(tokenizer)
    reference = greedy_reference(model, input_ids, 20)
    config = SamplingConfig(temperature=0.8, top_k=20, seed=3)
    runs = [
        SpeculativeDecoder(model, TreeOracleDrafter(input_ids.shape[1], reference), ConstantPolicy(k=9)).generate(
            input_ids, 20, config
        )
        for _ in range(2)
    ]
    assert runs[0].tokens == runs[1].tokens
    assert len(runs[0].tokens) == 20 or runs[0].stats.stop_reason == "eos"


def test_cost_aware_sizes_a_scored_draft_from_t_of_n_and_rescales_the_scores():
    policy = CostAwarePolicy(max_k=8, calibrate=False)
    for n, seconds in {0: 1.0, 1: 1.1, 2: 1.2, 3: 1.3, 4: 1.4, 5: 2.0, 6: 2.1, 7: 2.2, 8: 2.3}.items():
        policy.observe_verification(n, seconds)
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.05, 0.04, 0.03]
    # (1 + 3.0) / 1.4 at four nodes beats every other count; a fifth node costs a jump in t(n).
    assert policy.choose_nodes("medusa", "", scores, 8) == 4
    assert policy.choose_nodes("medusa", "", scores, 2) == 2
    # A drafter whose scores promise far more than verification accepts gets smaller drafts.
    for _ in range(40):
        policy.observe_nodes("medusa", "", scores[:4], 0)
    assert policy.score_scale[("medusa", "")] < 0.1
    assert policy.choose_nodes("medusa", "", scores, 8) < 4
    # The default policy contract ignores scores.
    assert ConstantPolicy(k=3).choose_nodes("medusa", "", scores, 8) == 3


def run_probe(policy, drafter, scores, accepted):
    """Ask until the policy probes ``drafter`` and run the probe's steps, ``accepted`` tokens each; returns the asks."""
    asks = 0
    while not policy.should_propose(drafter, 8):
        asks += 1
    for _ in range(policy.probe_steps):
        assert policy.should_propose(drafter, 8)  # a probe runs all its steps
        n = policy.choose_nodes(drafter, "", scores, 8)
        if n:
            policy.observe_nodes(drafter, "", scores[:n], accepted)
    return asks + 1


def test_cost_aware_stops_asking_a_scored_drafter_whose_drafting_costs_more_than_it_saves():
    policy = CostAwarePolicy(max_k=8, calibrate=False, probe_every=4, probe_steps=2)
    for n in range(9):
        policy.observe_verification(n, 1.0 + 0.05 * n)
    scores = [0.5, 0.3, 0.1]
    # Cheap drafting: 1.9 expected tokens for t(3) = 1.15 plus 0.1 s of drafting pays, so it keeps being asked.
    policy.observe_drafting("clover", 3, 0.1)
    assert policy.should_propose("clover", 8)
    assert policy.choose_nodes("clover", "", scores, 8) == 3
    assert policy.should_propose("clover", 8)
    # Drafting that costs more than a target step: the same draft now loses to plain decoding.
    for _ in range(20):
        policy.observe_drafting("clover", 3, 1.5)
        policy.choose_nodes("clover", "", scores, 8)
    assert policy.draft_gain["clover"] < 1.0
    # Skipped but for probes; a probe that does not pay (nothing accepted: 1 token per t(3) + drafting)
    # doubles the wait.
    assert run_probe(policy, "clover", scores, 0) == 4
    drafting = policy.draft_seconds_per_call["clover"]
    assert policy.draft_gain["clover"] == pytest.approx(2 / (2 * (1.15 + drafting)))
    assert run_probe(policy, "clover", scores, 0) == 8
    assert run_probe(policy, "clover", scores, 0) == 16
    # A probe whose drafts pay again resumes drafting at once.
    policy.observe_drafting("clover", 3, 0.1)
    run_probe(policy, "clover", scores, 3)
    assert policy.draft_gain["clover"] >= 1.0
    assert all(policy.should_propose("clover", 8) for _ in range(5))
    assert not policy.should_propose("clover", 0)
    # Policies that keep no costs always ask.
    assert ConstantPolicy(k=3).should_propose("clover", 8)


def test_cost_aware_probe_measures_instead_of_trusting_the_estimates_that_switched_the_drafter_off():
    policy = CostAwarePolicy(max_k=8, calibrate=False, probe_every=4, probe_steps=3)
    for n in range(9):
        policy.observe_verification(n, 1.0 + 0.05 * n)
    scores = [0.6, 0.4, 0.3, 0.2]
    policy.observe_drafting("medusa", 4, 0.1)
    # A stretch where nothing is accepted: the score scale falls until no node is worth verifying,
    # so every proposal costs its drafting time for nothing and the drafter is switched off.
    for _ in range(60):
        n = policy.choose_nodes("medusa", "", scores, 8)
        if n:
            policy.observe_nodes("medusa", "", scores[:n], 0)
    assert policy.choose_nodes("medusa", "", scores, 8) == 0
    assert policy.draft_gain["medusa"] < 1.0
    stale = policy.score_scale[("medusa", "")]
    assert stale < 0.2
    # The text turns predictable. Judged by the stale scale the probe would not pay (no node chosen);
    # the probe drafts at the drafter's own estimates and measures, and the drafter is back.
    run_probe(policy, "medusa", scores, 3)
    assert policy.draft_gain["medusa"] == pytest.approx(3 * 4 / (3 * (1.2 + policy.draft_seconds_per_call["medusa"])))
    assert policy.should_propose("medusa", 8)
    assert policy.score_scale[("medusa", "")] == pytest.approx((9 + 1) / (3 * 1.5 + 1))
    assert policy.choose_nodes("medusa", "", scores, 8) == 4


def test_a_scored_drafter_too_slow_to_pay_is_skipped_and_the_output_is_unchanged(llama, monkeypatch):
    from crossedge.specdec import engine

    now = [0.0]

    def tick():
        now[0] += 0.01  # every measured interval lasts 10 ms on the engine's clock ...
        return now[0]

    monkeypatch.setattr(engine, "clock", tick)

    class ScoredOracle(OracleDrafter):
        name = "scored-oracle"
        delay = 0.0
        calls = 0

        def propose(self, context_ids, k):
            self.calls += 1
            now[0] += self.delay  # ... and a proposal this much more
            draft = super().propose(context_ids, k)
            return Draft(draft.tokens, scores=[0.9**i for i in range(1, len(draft) + 1)])

    model, tokenizer = llama
    input_ids = _ids(tokenizer)
    continuation = greedy_reference(model, input_ids, 40)
    runs = {}
    for delay in (0.0, 1.0):
        drafter = ScoredOracle(input_ids.shape[1], continuation, wrong_at=range(3, 40, 4))
        drafter.delay = delay
        # One-step probes, so that what the drafter is asked outside probes shows in the count.
        policy = CostAwarePolicy(calibrate=False, probe_every=4, probe_steps=1)
        result = SpeculativeDecoder(model, drafter, policy).generate(input_ids, 40)
        assert result.tokens == continuation
        runs[delay] = (drafter.calls, result.stats.target_forwards)
    fast_calls, fast_forwards = runs[0.0]
    slow_calls, slow_forwards = runs[1.0]
    assert fast_calls >= fast_forwards - 1  # a drafter that pays is asked before every verification
    assert slow_calls <= slow_forwards // 3  # one that does not is asked only to probe
