"""Built-in datasets: text corpora read from files every Python and Debian install has, and synthetic-shift."""

from __future__ import annotations

from pathlib import Path

from crossedge.core.contracts.array_dataset import ArrayData, ArrayDataset, DomainTable, stratified_split
from crossedge.core.datasets import Document, TextCorpus, read_text_files
from crossedge.core.hookspecs import hookimpl

LICENSES_DIR = Path("/usr/share/common-licenses")


def _pydoc_topics() -> list[Document]:
    from pydoc_data.topics import topics

    return [
        Document(f"pydoc-topics/{key}", text, f"pydoc_data.topics[{key!r}]") for key, text in sorted(topics.items())
    ]


def _licenses() -> list[Document]:
    if not LICENSES_DIR.is_dir():
        return []
    return read_text_files(sorted(p for p in LICENSES_DIR.iterdir() if p.is_file()), "common-licenses")


class SyntheticShift(ArrayDataset):
    """Seeded multichannel windows of a few classes, each subject seen through its own gain, offset and mixing.

    A class is a sine of its own frequency (random phase, noise); subject ``s`` transforms every
    window as ``x @ M_s.T * g_s + b_s`` (channel mixing, per-channel gain, per-channel offset),
    so a model fit on some subjects meets a shifted distribution on a held-out one. Small
    enough to build in milliseconds: the contract's proof and the tests' fixture.
    """

    version = "1"
    recipe_version = "1"

    def __init__(
        self,
        name: str = "synthetic-shift",
        *,
        subjects: int = 4,
        sessions: int = 2,
        classes: int = 3,
        windows: int = 8,
        length: int = 32,
        channels: int = 3,
        seed: int = 0,
    ):
        self.name = name
        self.subjects, self.sessions, self.classes, self.windows = subjects, sessions, classes, windows
        self.length, self.channels, self.seed = length, channels, seed
        self.label_names = tuple(f"freq{k + 1}" for k in range(classes))
        self.description = (
            f"synthetic windows: {classes} classes x {subjects} subjects x {sessions} sessions, "
            f"T={length}, C={channels}; per-subject gain, offset and channel mixing"
        )
        # the parameters change the arrays, so they belong to the recipe's identity
        self.recipe_version = f"1:{subjects}.{sessions}.{classes}.{windows}.{length}.{channels}.{seed}"

    def recipe(self) -> ArrayData:
        """Generate the windows; the same arguments give the same bytes."""
        import numpy as np

        rng = np.random.default_rng(self.seed)
        t = np.arange(self.length) / self.length
        shifts = []
        for _ in range(self.subjects):
            mixing = np.eye(self.channels) + 0.3 * rng.standard_normal((self.channels, self.channels))
            gain = rng.uniform(0.5, 2.0, self.channels)
            offset = rng.standard_normal(self.channels)
            shifts.append((mixing, gain, offset))
        xs, ys, subject_codes, session_codes = [], [], [], []
        for subject, (mixing, gain, offset) in enumerate(shifts):
            for session in range(self.sessions):
                for label in range(self.classes):
                    phase = rng.uniform(0, 2 * np.pi, (self.windows, 1, self.channels))
                    clean = np.sin(2 * np.pi * (label + 1) * t[None, :, None] + phase)
                    noisy = clean + 0.2 * rng.standard_normal(clean.shape)
                    xs.append(noisy @ mixing.T * gain + offset)
                    ys += [label] * self.windows
                    subject_codes += [subject] * self.windows
                    session_codes += [session] * self.windows
        x = np.concatenate(xs).astype(np.float32)
        y = np.asarray(ys, dtype=np.int64)
        train, rest = stratified_split(y, 0.6, seed=self.seed)
        val, test = stratified_split(y, 0.5, seed=self.seed + 1, indices=rest)
        domains = DomainTable(
            columns={
                "subject": np.asarray(subject_codes, dtype=np.int64),
                "session": np.asarray(session_codes, dtype=np.int64),
            },
            values={
                "subject": tuple(f"s{i}" for i in range(self.subjects)),
                "session": tuple(f"session{i}" for i in range(self.sessions)),
            },
        )
        return ArrayData(
            x=x,
            y=y,
            label_names=self.label_names,
            domains=domains,
            splits={"train": train, "val": val, "test": test},
            partitions=[("train", "val", "test")],
        )


PYDOC_TOPICS = TextCorpus(
    "pydoc-topics",
    _pydoc_topics,
    "Python language reference topics shipped with the interpreter (pydoc_data.topics)",
)
COMMON_LICENSES = TextCorpus(
    "common-licenses",
    _licenses,
    "License texts under /usr/share/common-licenses (Debian-based systems)",
)
SYNTHETIC_SHIFT = SyntheticShift()


@hookimpl
def register_datasets(register):
    register(PYDOC_TOPICS)
    register(COMMON_LICENSES)
    register(SYNTHETIC_SHIFT)
