"""Domain-generalization baselines: each passes core's conformance suite, and each method's own term is right."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from crossedge.core.builtins.algorithms import ERM
from crossedge.core.conformance.algorithm import AlgorithmConformance, easy_problem
from crossedge.core.contracts.algorithm import AlgorithmError, build_algorithm, get_algorithm, load_algorithm
from crossedge.sensing import plugin as sensing_plugin

DG = ("coral", "mmd", "dann", "groupdro", "mixup", "vrex", "rsc", "andmask", "fish", "sagm", "irm")


def algorithm(name):
    """The class plugin.py registers under ``name``, imported from its reference."""
    reference = dict((n, r) for r, n in sensing_plugin.ALGORITHMS)[name]
    module, attr = reference.split(":")
    return getattr(importlib.import_module(module), attr)


class TestConforms(AlgorithmConformance):
    @pytest.fixture(params=DG)
    def algorithm_class(self, request):
        return algorithm(request.param)


INPUT_SHAPE, NUM_CLASSES = (16, 3), 3


def weights(alg):
    """Every featurizer and classifier parameter, flattened into one vector."""
    return torch.cat([p.detach().flatten() for m in (alg.featurizer, alg.classifier) for p in m.parameters()])


def shifted_domains(offset=3.0, seed=0):
    """The easy problem's two domains with the second moved by ``offset`` on every channel."""
    (xa, ya), (xb, yb) = easy_problem(seed=seed)
    return [(xa, ya), (xb + offset, yb)]


def train_mode_risks(alg, minibatches):
    """Per-domain cross-entropy from the training-mode pooled forward an update starts with."""
    alg.train_mode()
    with torch.no_grad():
        logits = alg.classifier(alg.featurizer(torch.cat([x for x, _ in minibatches])))
    parts = logits.split([len(x) for x, _ in minibatches])
    return torch.stack([F.cross_entropy(z, y) for z, (_, y) in zip(parts, minibatches, strict=True)])


# ---------------------------------------------------------------- registration and shared behaviour


def test_plugin_registers_every_baseline_under_its_own_name(plugin):
    for name in DG:
        cls = get_algorithm(name)
        assert cls is algorithm(name) and cls.name == name and issubclass(cls, ERM)
        assert set(ERM.HPARAMS) <= set(cls.HPARAMS)
    dann = build_algorithm(
        "dann:dann_lambda=0.1,mlp_depth=2", input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES, num_domains=2
    )
    assert dann.hparams["dann_lambda"] == 0.1 and len(dann.discriminator) == 3


@pytest.mark.parametrize("name", DG)
def test_every_baseline_trains_on_one_training_domain(name):
    alg = algorithm(name)(INPUT_SHAPE, NUM_CLASSES, 1)
    batch = easy_problem()[:1]
    results = [alg.update(batch) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(list(r.values()))).all() for r in results)
    assert results[-1].get("penalty", 0.0) == pytest.approx(0.0, abs=1e-6) or name == "irm"
    assert "disc_loss" not in results[-1]


@pytest.mark.parametrize("name", DG)
def test_more_minibatches_than_training_domains_is_refused(name):
    alg = algorithm(name)(INPUT_SHAPE, NUM_CLASSES, 1)
    with pytest.raises(AlgorithmError, match="num_domains=2"):
        alg.update(easy_problem())


@pytest.mark.parametrize(
    ("name", "hparams"),
    [
        ("rsc", {"rsc_f_drop_factor": 1.5}),
        ("andmask", {"tau": 2.0}),
        ("fish", {"meta_lr": 0.0}),
        ("mixup", {"mixup_alpha": 0.0}),
        ("dann", {"mlp_depth": 0}),
        ("vrex", {"vrex_penalty_anneal_iters": -1}),
        ("coral", {"mmd_gamma": -1.0}),
    ],
)
def test_out_of_range_hparams_are_refused_with_the_bounds(name, hparams):
    with pytest.raises(AlgorithmError, match=f"{next(iter(hparams))}.*must be in"):
        algorithm(name)(INPUT_SHAPE, NUM_CLASSES, 2, hparams)


# ERM is each method's limit: where the method's own term vanishes it must take ERM's steps exactly,
# and with its defaults on two domains it must not (so these comparisons can fail).
# (name, hyperparameters that remove the method's term, training domains, hyperparameters that keep it)
REDUCES_TO_ERM = [
    ("coral", {}, 1, {}),
    ("mmd", {}, 1, {}),
    ("groupdro", {}, 1, {"groupdro_eta": 1.0}),
    ("vrex", {}, 1, {}),
    ("andmask", {}, 1, {}),
    ("fish", {"meta_lr": 1.0}, 1, {}),
    ("rsc", {"rsc_b_drop_factor": 0.0}, 2, {}),
    ("sagm", {"sagm_rho": 0.0, "sagm_alpha": 0.0}, 2, {}),
]


@pytest.mark.parametrize(("name", "hparams", "domains", "kept"), REDUCES_TO_ERM, ids=[r[0] for r in REDUCES_TO_ERM])
def test_method_without_its_own_term_takes_erms_steps(name, hparams, domains, kept):
    batches = shifted_domains()[:domains]
    method = algorithm(name)(INPUT_SHAPE, NUM_CLASSES, domains, hparams, seed=4)
    erm = ERM(INPUT_SHAPE, NUM_CLASSES, domains, seed=4)
    default = algorithm(name)(INPUT_SHAPE, NUM_CLASSES, 2, kept, seed=4)
    for _ in range(3):
        method.update(batches)
        erm.update(batches)
        default.update(shifted_domains())
    torch.testing.assert_close(weights(method), weights(erm), rtol=1e-5, atol=1e-6)
    x = easy_problem(seed=1)[0][0]
    torch.testing.assert_close(method.predict(x), erm.predict(x), rtol=1e-5, atol=1e-5)
    erm2 = ERM(INPUT_SHAPE, NUM_CLASSES, 2, seed=4)
    for _ in range(3):
        erm2.update(shifted_domains())
    assert not torch.allclose(weights(default), weights(erm2), atol=1e-4)


# ---------------------------------------------------------------- CORAL and MMD


def test_coral_penalty_is_zero_for_one_distribution_and_matches_numpy_for_two():
    import numpy as np

    from crossedge.sensing.algorithms.coral import coral_penalty

    a = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    assert float(coral_penalty(a, a)) == 0.0
    near, far, scaled = (float(coral_penalty(a, b)) for b in (a + 0.5, a + 1.0, 2 * a))
    assert 0 < near < far and scaled > 0
    b = (a @ torch.randn(8, 8, generator=torch.Generator().manual_seed(1))) + 0.3
    expected = ((a.mean(0) - b.mean(0)) ** 2).mean() + ((np.cov(a.T.numpy()) - np.cov(b.T.numpy())) ** 2).mean()
    assert float(coral_penalty(a, b)) == pytest.approx(float(expected), rel=1e-4)


def test_mmd_penalty_is_zero_for_one_distribution_and_grows_with_the_shift():
    from crossedge.sensing.algorithms.mmd import GAMMAS, gaussian_kernel, mmd_penalty

    a = torch.randn(48, 8, generator=torch.Generator().manual_seed(0))
    b = torch.randn(40, 8, generator=torch.Generator().manual_seed(1))
    expected = sum(torch.exp(-g * torch.cdist(a, b) ** 2) for g in GAMMAS)
    torch.testing.assert_close(gaussian_kernel(a, b), expected, rtol=1e-4, atol=1e-4)
    assert abs(float(mmd_penalty(a, a))) < 1e-5
    shifts = [float(mmd_penalty(a, a + d)) for d in (0.1, 0.5, 2.0)]
    assert 0 < shifts[0] < shifts[1] < shifts[2]
    assert float(mmd_penalty(a, b)) == pytest.approx(float(mmd_penalty(b, a)), rel=1e-5)


@pytest.mark.parametrize("name", ["coral", "mmd"])
def test_alignment_penalty_in_update_is_zero_for_identical_domains_and_is_minimized(name):
    same = easy_problem()[:1] * 2
    assert algorithm(name)(INPUT_SHAPE, NUM_CLASSES, 2).update(same)["penalty"] == pytest.approx(0.0, abs=1e-6)
    shifted = shifted_domains()
    aligned = algorithm(name)(INPUT_SHAPE, NUM_CLASSES, 2, {"mmd_gamma": 10.0})
    plain = ERM(INPUT_SHAPE, NUM_CLASSES, 2)
    first = aligned.update(shifted)["penalty"]
    assert first > 0
    for _ in range(25):
        aligned.update(shifted)
        plain.update(shifted)

    def penalty_of(alg):
        alg.train_mode(False)
        with torch.no_grad():
            a, b = (alg.featurizer(x) for x, _ in shifted)
        return float(aligned.penalty(a, b))

    # the penalty's gradient reaches the featurizer: its domains end closer than ERM's (same seed)
    assert penalty_of(aligned) < 0.75 * penalty_of(plain)


# ---------------------------------------------------------------- DANN


def test_dann_featurizer_gets_the_discriminator_gradient_reversed_and_scaled():
    dann = algorithm("dann")(INPUT_SHAPE, NUM_CLASSES, 2, {"dann_lambda": 0.7})
    x = torch.cat([x for x, _ in shifted_domains()])
    domains = torch.arange(len(x)) // (len(x) // 2)

    def grads(loss_of):
        for module in dann.networks().values():
            module.zero_grad()
        loss_of(dann.featurizer(x)).backward()
        return [
            torch.cat([p.grad.flatten() for p in module.parameters()])
            for module in (dann.featurizer, dann.discriminator)
        ]

    reversed_featurizer, reversed_disc = grads(lambda f: dann.adversarial_loss(f, domains))
    plain_featurizer, plain_disc = grads(lambda f: F.cross_entropy(dann.discriminator(f), domains))
    assert plain_featurizer.abs().sum() > 0
    torch.testing.assert_close(reversed_featurizer, -0.7 * plain_featurizer)
    torch.testing.assert_close(reversed_disc, plain_disc)


def test_dann_discriminator_learns_to_tell_the_domains_apart():
    # a featurizer that does not move (lr 0) leaves the discriminator a fixed problem it must win
    dann = algorithm("dann")(INPUT_SHAPE, NUM_CLASSES, 2, {"lr": 0.0, "lr_d": 3e-3})
    results = [dann.update(shifted_domains()) for _ in range(25)]
    assert results[0]["disc_acc"] < 0.9 and results[-1]["disc_acc"] == 1.0
    assert results[-1]["disc_loss"] < 0.1 * results[0]["disc_loss"]


# ---------------------------------------------------------------- GroupDRO


def test_groupdro_upweights_the_domain_with_the_larger_loss(tmp_path):
    (xa, ya), (xb, yb) = easy_problem()
    hard = [(xa, ya), (xb, yb[torch.randperm(len(yb), generator=torch.Generator().manual_seed(0))])]
    dro = algorithm("groupdro")(INPUT_SHAPE, NUM_CLASSES, 2, {"groupdro_eta": 0.5})
    risks = train_mode_risks(dro, hard)
    dro.update(hard)
    expected = 0.5 * torch.exp(0.5 * risks)
    torch.testing.assert_close(dro.groups.q, expected / expected.sum())
    for _ in range(15):
        dro.update(hard)
    assert float(dro.groups.q[1]) > 0.8  # the shuffled labels stay hard to fit
    restored = load_algorithm(dro.save(tmp_path / "dro.safetensors"), type(dro))
    assert torch.equal(restored.groups.q, dro.groups.q)


def test_groupdro_refuses_fewer_minibatches_than_its_domains():
    with pytest.raises(AlgorithmError, match="one weight per training domain"):
        algorithm("groupdro")(INPUT_SHAPE, NUM_CLASSES, 3).update(easy_problem())


# ---------------------------------------------------------------- Mixup


def test_mixup_mixes_windows_of_two_different_domains():
    domains = [(torch.full((8, *INPUT_SHAPE), float(d)), torch.full((8,), d)) for d in range(3)]
    mixup = algorithm("mixup")(INPUT_SHAPE, NUM_CLASSES, 3)
    mixtures = mixup.mix(domains)
    assert sorted(m[4] for m in mixtures) == sorted(m[5] for m in mixtures) == [0, 1, 2]  # one cycle over domains
    for x, yi, yj, lam, i, j in mixtures:
        assert i != j and 0.0 < lam < 1.0
        torch.testing.assert_close(x, torch.full_like(x, lam * i + (1 - lam) * j))
        assert torch.equal(yi, torch.full((8,), i)) and torch.equal(yj, torch.full((8,), j))


def test_mixup_loss_mixes_the_two_labels_cross_entropies_with_the_window_weight():
    (xa, ya), (xb, yb) = shifted_domains()
    order = torch.randperm(len(yb), generator=torch.Generator().manual_seed(0))
    batches = [(xa, ya), (xb[order], yb[order])]  # window k of one domain and of the other differ in label
    mixup = algorithm("mixup")(INPUT_SHAPE, NUM_CLASSES, 2, {"mixup_alpha": 1.0})
    for _ in range(10):  # confident enough that the two labels' cross-entropies differ
        mixup.update(batches)
    mixtures = mixup.mix(batches)  # the draws depend on the seed and update count only: update draws these
    assert all(0.05 < m[3] < 0.95 for m in mixtures)
    mixup.train_mode()
    with torch.no_grad():
        logits = mixup.classifier(mixup.featurizer(torch.cat([m[0] for m in mixtures])))
    parts = logits.split([len(m[0]) for m in mixtures])
    expected = sum(
        lam * F.cross_entropy(z, yi) + (1 - lam) * F.cross_entropy(z, yj)
        for z, (_, yi, yj, lam, _, _) in zip(parts, mixtures, strict=True)
    ) / len(mixtures)
    assert mixup.update(batches)["loss"] == pytest.approx(float(expected), rel=1e-5)


def test_mixup_draws_follow_the_seed_and_update_count_through_save_and_load(tmp_path):
    batches = easy_problem()
    first, second = (algorithm("mixup")(INPUT_SHAPE, NUM_CLASSES, 2, seed=1) for _ in range(2))
    assert [m[3] for m in first.mix(batches)] == [m[3] for m in second.mix(batches)]
    before = [m[3] for m in first.mix(batches)]
    first.update(batches)
    after = [m[3] for m in first.mix(batches)]
    assert after != before
    restored = load_algorithm(first.save(tmp_path / "mixup.safetensors"), type(first))
    assert [m[3] for m in restored.mix(batches)] == after


def test_mixup_pairs_different_labels_when_domains_arrive_in_the_same_label_order():
    mixtures = algorithm("mixup")(INPUT_SHAPE, NUM_CLASSES, 2).mix(easy_problem())  # both: labels 0, 1, 2, 0...
    assert all(bool((yi != yj).any()) for _, yi, yj, *_ in mixtures)


def test_mixup_with_one_domain_mixes_windows_within_it():
    x = torch.arange(12.0).reshape(12, 1, 1).expand(12, *INPUT_SHAPE).contiguous()
    ((mixed, yi, yj, lam, i, j),) = algorithm("mixup")(INPUT_SHAPE, NUM_CLASSES, 1).mix([(x, torch.arange(12) % 3)])
    partner = (mixed[:, 0, 0] - lam * x[:, 0, 0]) / (1 - lam)
    assert i == j == 0 and sorted(partner.round().tolist()) == list(range(12))
    assert not torch.equal(partner.round(), x[:, 0, 0])  # mixed with other windows, not itself


# ---------------------------------------------------------------- VREx and IRM


def test_vrex_penalty_is_the_variance_of_the_per_domain_risks():
    (xa, ya), (xb, yb) = easy_problem()
    batches = [(xa, ya), (xb, (yb + 1) % NUM_CLASSES)]
    vrex = algorithm("vrex")(INPUT_SHAPE, NUM_CLASSES, 2)
    risks = train_mode_risks(vrex, batches)
    result = vrex.update(batches)
    assert result["penalty"] == pytest.approx(float(torch.var(risks, unbiased=False)), rel=1e-5)
    assert result["penalty"] > 1e-4
    assert result["loss"] == pytest.approx(float(risks.mean() + torch.var(risks, unbiased=False)), rel=1e-5)


@pytest.mark.parametrize("name", ["vrex", "irm"])
def test_penalty_weight_anneals_and_the_schedule_survives_save_and_load(name, tmp_path):
    hparams = {f"{name}_lambda": 5.0, f"{name}_penalty_anneal_iters": 2}
    alg = algorithm(name)(INPUT_SHAPE, NUM_CLASSES, 2, hparams)
    batches = easy_problem()
    adam = alg.optimizer
    assert [alg.update(batches)["penalty_weight"] for _ in range(2)] == [1.0, 1.0]
    assert alg.optimizer is adam
    restored = load_algorithm(alg.save(tmp_path / "a.safetensors"), type(alg))
    assert [restored.update(batches)["penalty_weight"] for _ in range(2)] == [5.0, 5.0]
    assert alg.update(batches)["penalty_weight"] == 5.0 and alg.optimizer is not adam  # Adam rebuilt at the jump


def test_irm_penalty_is_the_product_of_the_two_halves_scale_gradients():
    from crossedge.sensing.algorithms.irm import irm_penalty

    generator = torch.Generator().manual_seed(0)
    logits, y = torch.randn(10, 4, generator=generator), torch.randint(0, 4, (10,), generator=generator)

    def scale_gradient(z, labels):  # d/ds CE(s z, y) at s = 1, by hand
        return (torch.softmax(z, 1) * z).sum(1).sub(z.gather(1, labels[:, None])[:, 0]).mean()

    expected = scale_gradient(logits[::2], y[::2]) * scale_gradient(logits[1::2], y[1::2])
    assert float(irm_penalty(logits, y).detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(irm_penalty(logits[:1], y[:1])) == 0.0


# ---------------------------------------------------------------- RSC, ANDMask, Fish, SAGM


def test_rsc_mutes_the_top_features_of_the_windows_whose_confidence_drops_most():
    from crossedge.sensing.algorithms.rsc import feature_mask, rsc_mask

    grads = torch.stack([torch.randperm(6, generator=torch.Generator().manual_seed(i)).float() for i in range(6)])
    kept = feature_mask(grads, 1 / 3)
    assert torch.equal(kept, grads < 4)  # the two largest gradients of every window are muted
    mask = rsc_mask(kept, torch.tensor([0.0, 5.0, 1.0, 2.0, 4.0, 3.0]), 1 / 3)
    for window in range(6):
        expected = kept[window].float() if window in (1, 4) else torch.ones(6)
        assert torch.equal(mask[window], expected), window


def test_and_mask_keeps_only_the_components_the_domains_agree_on():
    from crossedge.sensing.algorithms.andmask import and_mask

    g1, g2 = torch.tensor([1.0, 1.0, -1.0, 2.0]), torch.tensor([3.0, -1.0, -2.0, 0.0])
    torch.testing.assert_close(and_mask([g1, g2], 1.0), torch.tensor([4.0, 0.0, -3.0, 0.0]))
    torch.testing.assert_close(and_mask([g1, g2], 0.5), torch.tensor([2.0, 0.0, -1.5, 1.0]) / 0.75)


def test_fish_moves_the_network_meta_lr_of_the_way_toward_its_inner_copy():
    batch = easy_problem()[:1]
    fish = algorithm("fish")(INPUT_SHAPE, NUM_CLASSES, 1, {"meta_lr": 0.25}, seed=2)
    erm = ERM(INPUT_SHAPE, NUM_CLASSES, 1, seed=2)
    start = weights(erm)
    fish.update(batch)
    erm.update(batch)  # on one domain the inner copy takes exactly ERM's first step
    torch.testing.assert_close(weights(fish), start + 0.25 * (weights(erm) - start))


def test_sagm_gradient_on_a_quadratic_and_the_weights_come_back_exactly():
    from crossedge.sensing.algorithms.sagm import sagm_gradients

    a = torch.tensor([1.0, 3.0, -2.0])
    w = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))
    start = w.detach().clone()
    loss, perturbed = sagm_gradients([w], lambda: 0.5 * (a * w * w).sum(), rho=0.1, alpha=0.01)
    g = a * start
    moved = start + (0.1 / g.norm() - 0.01) * g
    torch.testing.assert_close(w.grad, 0.5 * (g + a * moved))
    assert torch.equal(w.detach(), start)
    assert float(perturbed) == pytest.approx(float(0.5 * (a * moved * moved).sum()), rel=1e-6)
    assert float(loss) == pytest.approx(float(0.5 * (a * start * start).sum()), rel=1e-6)


def test_sagm_second_pass_leaves_batch_norm_statistics_to_the_first():
    batches = shifted_domains()
    sagm, erm = algorithm("sagm")(INPUT_SHAPE, NUM_CLASSES, 2, seed=1), ERM(INPUT_SHAPE, NUM_CLASSES, 2, seed=1)
    sagm.update(batches)
    erm.update(batches)
    for (key, ours), theirs in zip(
        sagm.featurizer.state_dict().items(), erm.featurizer.state_dict().values(), strict=True
    ):
        if "running" in key or "num_batches" in key:
            assert torch.equal(ours, theirs), key
