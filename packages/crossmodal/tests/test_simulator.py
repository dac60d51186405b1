"""The decoding simulator: shapes per subject, determinism to the byte, and decodability."""

import numpy as np
import pytest

from crossedge.crossmodal.metrics import n_way_top_k
from crossedge.crossmodal.simulator import (
    DEFAULT_SUBJECTS,
    SimulatedSubject,
    random_embeddings_for_tests,
    simulate,
)


def test_each_subject_has_its_own_shape_and_the_ids_are_the_stimuli():
    e = random_embeddings_for_tests(30, d=24)
    responses, ids = simulate(e, seed=0)
    assert ids.tolist() == list(range(30))
    for s in DEFAULT_SUBJECTS:
        assert responses[s.name].shape == (30, s.samples, s.channels)
        assert responses[s.name].dtype == np.float32


def test_same_seed_same_bytes_other_seed_other_bytes():
    e = random_embeddings_for_tests(20, d=16)
    a, _ = simulate(e, seed=5)
    b, _ = simulate(e, seed=5)
    c, _ = simulate(e, seed=6)
    for name in a:
        assert a[name].tobytes() == b[name].tobytes()
        assert a[name].tobytes() != c[name].tobytes()


def test_adding_a_subject_leaves_the_others_unchanged():
    e = random_embeddings_for_tests(10, d=8)
    one, _ = simulate(e, subjects=DEFAULT_SUBJECTS[:1], seed=1)
    two, _ = simulate(e, subjects=DEFAULT_SUBJECTS[:1] + (SimulatedSubject("x", 5, 4),), seed=1)
    assert one["sim-s1"].tobytes() == two["sim-s1"].tobytes()


def test_a_linear_decoder_recovers_the_stimulus_far_above_chance():
    e = random_embeddings_for_tests(200, d=16, seed=2)
    responses, _ = simulate(e, subjects=(SimulatedSubject("s", 32, 8),), seed=0, noise=0.3)
    x = responses["s"].reshape(200, -1)
    train, test = slice(0, 150), slice(150, 200)
    w, *_ = np.linalg.lstsq(x[train], e[train], rcond=None)
    acc = n_way_top_k(x[test] @ w, e[test], n_way=50, k=(1,))[1]
    assert acc > 0.5  # chance is 0.02
    noisier, _ = simulate(e, subjects=(SimulatedSubject("s", 32, 8),), seed=0, noise=5.0)
    xn = noisier["s"].reshape(200, -1)
    wn, *_ = np.linalg.lstsq(xn[train], e[train], rcond=None)
    assert n_way_top_k(xn[test] @ wn, e[test], n_way=50, k=(1,))[1] < acc


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="n_stimuli, d"):
        simulate(np.zeros(5))
    with pytest.raises(ValueError, match="repeat"):
        simulate(np.zeros((3, 2)), subjects=(SimulatedSubject("a", 2, 2), SimulatedSubject("a", 3, 2)))


def test_shared_mixing_makes_subjects_alike_and_zero_changes_nothing():
    from crossedge.crossmodal.simulator import SimulatedSubject, random_embeddings_for_tests, simulate

    emb = random_embeddings_for_tests(200, 32, seed=1)
    subjects = (SimulatedSubject("a", 12, 4, 1.0), SimulatedSubject("b", 16, 4, 1.0))
    plain, _ = simulate(emb, subjects, seed=3)
    zero, _ = simulate(emb, subjects, seed=3, shared=0.0)
    assert all(np.array_equal(plain[k], zero[k]) for k in plain)

    def likeness(responses):  # mean correlation of the two subjects' matching channels at the last sample
        a, b = responses["a"][:, -1, :12], responses["b"][:, -1, :12]
        return float(np.mean([np.corrcoef(a[:, c], b[:, c])[0, 1] for c in range(12)]))

    assert abs(likeness(plain)) < 0.2
    assert likeness(simulate(emb, subjects, seed=3, shared=1.0, noise=0.1)[0]) > 0.9
    with pytest.raises(ValueError, match="shared"):
        simulate(emb, subjects, shared=1.5)
