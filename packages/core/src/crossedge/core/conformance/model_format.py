"""Conformance suite for model formats: subclass :class:`ModelFormatConformance` and give three fixtures.

::

    class TestMyFormat(ModelFormatConformance):
        @pytest.fixture
        def model_format(self):
            return MyFormat()

        @pytest.fixture
        def folder(self, tmp_path):
            return write_a_tiny_model_in_my_format(tmp_path / "m")

        @pytest.fixture
        def not_folder(self, tmp_path):
            return save_tiny_causal_lm(tmp_path / "plain")  # a folder in another layout

Override ``corrupt`` when the format's weights are not ``*.safetensors`` files.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from crossedge.core.contracts.model_format import ModelFormat
from crossedge.core.errors import CrossedgeError


class ModelFormatConformance:
    """Checks every model format passes: detection, a working load, damaged weights refused with a clear error."""

    #: Token ids the loaded model is run on; small enough for any vocabulary.
    ids: tuple[int, ...] = (1, 2, 3, 4)

    @pytest.fixture
    def model_format(self) -> ModelFormat:
        """The format under test; a subclass must override this fixture."""
        raise NotImplementedError("a ModelFormatConformance subclass defines a `model_format` fixture")

    @pytest.fixture
    def folder(self, tmp_path) -> Path:
        """A folder in the format under test; a subclass must override this fixture."""
        raise NotImplementedError("a ModelFormatConformance subclass defines a `folder` fixture")

    @pytest.fixture
    def not_folder(self, tmp_path) -> Path:
        """A folder not in this format (a plain one); override for a closer look-alike."""
        plain = tmp_path / "plain-folder"
        plain.mkdir()
        (plain / "config.json").write_text("{}")
        return plain

    def corrupt(self, folder: Path) -> None:
        """Damage the weights in ``folder`` (a copy): overwrite each safetensors file's header, keeping its size."""
        files = sorted(folder.glob("*.safetensors"))
        assert files, f"{folder} has no .safetensors file to corrupt; override `corrupt`"
        for path in files:
            data = bytearray(path.read_bytes())
            data[:16] = b"\xff" * 16  # the header length becomes absurd, and any checksum changes
            path.write_bytes(bytes(data))

    def load(self, model_format: ModelFormat, folder: Path):
        """The format's load of ``folder`` with the arguments core passes."""
        return model_format.load(folder, name=str(folder), source=None)

    def test_is_a_model_format_with_a_name(self, model_format):
        assert isinstance(model_format, ModelFormat), f"{type(model_format).__name__} does not subclass ModelFormat"
        assert isinstance(model_format.name, str) and model_format.name, "set `name`"
        assert isinstance(model_format.description, str) and model_format.description, "set `description`"

    def test_detects_its_own_folders_only(self, model_format, folder, not_folder):
        assert model_format.detect(Path(folder)) is True, f"detect() does not claim {folder}"
        assert model_format.detect(Path(not_folder)) is False, f"detect() claims {not_folder}, a plain folder"

    def test_load_gives_a_model_with_finite_logits(self, model_format, folder):
        import torch

        loaded = self.load(model_format, Path(folder))
        with torch.no_grad():
            logits = loaded.model(input_ids=torch.tensor([list(self.ids)])).logits
        assert logits.shape[:2] == (1, len(self.ids))
        assert bool(torch.isfinite(logits).all()), "the loaded model gives non-finite logits"

    def test_same_folder_loads_to_the_same_logits(self, model_format, folder):
        import torch

        ids = torch.tensor([list(self.ids)])
        with torch.no_grad():
            first = self.load(model_format, Path(folder)).model(input_ids=ids).logits
            again = self.load(model_format, Path(folder)).model(input_ids=ids).logits
        assert torch.equal(first, again), "two loads of one folder differ: the weights are not the saved ones"
        assert math.isfinite(float(first.abs().sum()))

    def test_corrupted_weights_are_refused_with_a_crossedge_error(self, model_format, folder, tmp_path):
        damaged = tmp_path / "damaged-copy"
        shutil.copytree(folder, damaged)
        self.corrupt(damaged)
        with pytest.raises(CrossedgeError):
            self.load(model_format, damaged)
