"""em-traces: the array-dataset contract, seeded generation, the leakage model and the cross-device portability gap."""

import warnings

import numpy as np
import pytest

from crossedge.core.conformance.array_dataset import ArrayDatasetConformance
from crossedge.core.contracts.array_dataset import ArrayDatasetError
from crossedge.sensing.datasets.em_traces import PULSE, SBOX, EMTraces, hamming_weight
from crossedge.sensing.windows import DOMAIN_COLUMNS


class TestEMTracesConformance(ArrayDatasetConformance):
    @pytest.fixture
    def array_dataset(self):
        return EMTraces("em-traces-conformance", devices=2, traces=60, seed=3)


def test_the_sbox_is_aes():
    assert len(set(SBOX)) == 256
    assert (SBOX[0x00], SBOX[0x01], SBOX[0x53], SBOX[0xFF]) == (0x63, 0x7C, 0xED, 0x16)
    assert hamming_weight(np.array([0, 1, 0xFF, 0x0F])).tolist() == [0, 1, 8, 4]


def test_generation_is_seeded_and_labels_agree_between_label_kinds():
    one = EMTraces("a", devices=2, traces=50, seed=5).recipe()
    two = EMTraces("b", devices=2, traces=50, seed=5).recipe()
    assert one.x.tobytes() == two.x.tobytes() and np.array_equal(one.y, two.y)
    other = EMTraces("c", devices=2, traces=50, seed=6).recipe()
    assert one.x.tobytes() != other.x.tobytes()
    # the byte labels of one seed are the same draws: their Hamming weights are the default labels
    sbox = EMTraces("d", devices=2, traces=50, seed=5, label="sbox")
    data = sbox.recipe()
    assert len(sbox.label_names) == 256 and sbox.label_names[0x63] == "0x63"
    assert data.x.tobytes() == one.x.tobytes()
    assert np.array_equal(hamming_weight(data.y), one.y)
    assert one.label_names == tuple(f"hw{w}" for w in range(9))
    assert one.shape == (100, 100, 1)


def test_domains_name_the_devices_and_every_sensing_column():
    data = EMTraces("e", devices=4, traces=20, seed=0).recipe()
    assert data.domains.names() == list(DOMAIN_COLUMNS)
    assert data.domains.values["device"] == ("d0", "d1", "d2", "d3")
    assert np.bincount(data.domains.codes("device")).tolist() == [20] * 4
    assert data.domains.values["dataset"] == ("em-traces",)
    for column in ("person", "position", "room", "session"):
        assert data.domains.values[column] == ("unknown",)


def test_devices_differ_in_every_leakage_parameter():
    dataset = EMTraces("f", devices=4, seed=0)
    profiles = dataset.profiles()
    assert [np.sign(p["gain"]) for p in profiles] == [1, -1, 1, -1]
    assert len({p["position"] for p in profiles}) == 4
    assert len({round(p["offset"] / p["gain"], 3) for p in profiles}) == 4
    assert len({p["jitter"] for p in profiles}) == 3 and len({p["noise"] for p in profiles}) == 4
    assert len({tuple(np.round(p["pulse"], 6)) for p in profiles}) == 4
    assert {p["key"] for p in EMTraces("g", devices=4, key=0x2B).profiles()} == {0x2B}
    assert len({p["key"] for p in profiles}) > 1


def test_the_trace_leaks_the_hamming_weight_where_the_device_computes():
    dataset = EMTraces("h", devices=2, traces=400, seed=1)
    data = dataset.recipe()
    devices = data.domains.codes("device")
    for code, profile in enumerate(dataset.profiles()):
        mine = devices == code
        traces, weights = data.x[mine, :, 0], data.y[mine]
        correlation = np.array([np.corrcoef(traces[:, t], weights)[0, 1] for t in range(traces.shape[1])])
        strongest = int(np.argmax(np.abs(correlation)))
        assert profile["position"] <= strongest < profile["position"] + PULSE, (code, strongest)
        assert np.sign(correlation[strongest]) == np.sign(profile["gain"]) and abs(correlation[strongest]) > 0.4
        assert np.abs(correlation[:20]).max() < 0.25, code


def test_bad_arguments_are_refused():
    with pytest.raises(ArrayDatasetError, match="label must be one of hw, sbox"):
        EMTraces(label="key")
    with pytest.raises(ArrayDatasetError, match="key must be a byte"):
        EMTraces(key=300)
    with pytest.raises(ArrayDatasetError, match="at least 40 samples"):
        EMTraces(length=20)


def test_a_template_from_one_device_fails_on_another_and_mixing_recovers():
    # LDA with pooled covariance is the classic profiled side-channel template
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    data = EMTraces("portability", devices=2, traces=1000, seed=0).recipe()
    x, y, devices = data.x[:, :, 0], data.y, data.domains.codes("device")
    rng = np.random.default_rng(0)
    d0, d1 = (rng.permutation(np.flatnonzero(devices == code)) for code in (0, 1))
    train0, test0, train1, test1 = d0[:500], d0[500:], d1[:500], d1[500:]

    def accuracy(train, *tests):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a rare weight class may have a single trace
            model = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(x[train], y[train])
        return [model.score(x[test], y[test]) for test in tests]

    same, other = accuracy(train0, test0, test1)
    assert same > 0.8, same
    assert other < 0.2 and other < same - 0.6, (same, other)
    # the same number of training traces, half from each device
    (mixed,) = accuracy(np.concatenate([train0[:250], train1[:250]]), test1)
    assert mixed > other + 0.2, (other, mixed)
    # and a few target traces added to the source device's
    (few,) = accuracy(np.concatenate([train0, train1[:40]]), test1)
    assert few > other + 0.15, (other, few)


def test_the_plugin_registers_em_traces(plugin):
    from crossedge.core.contracts.array_dataset import get_array_dataset

    dataset = get_array_dataset("em-traces")
    assert isinstance(dataset, EMTraces) and dataset.name == "em-traces"
    assert dataset.devices == 4 and dataset.label == "hw"
