"""Subject adapters with different input sizes, reset-tuning that touches only the new adapter, save/load."""

import pytest
import torch

from crossedge.crossmodal.subjects import CrossSubjectError, CrossSubjectModel, fit, load_model, save_model


def two_class_data(n, t, c, seed, gain=2.0):
    """Class 1 has a positive offset on channel 0: learnable through any adapter."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, t, c, generator=g)
    x[:, :, 0] += gain * (2 * y[:, None].float() - 1)
    return x, y


def test_adapters_take_different_channel_counts_and_lengths_into_one_trunk():
    model = CrossSubjectModel({"a": (40, 6), "b": (55, 7)}, out_dim=3, dim=8, length=16)
    assert model("a", torch.randn(5, 40, 6)).shape == (5, 3)
    assert model("b", torch.randn(4, 55, 7)).shape == (4, 3)
    assert model.adapters["a"](torch.randn(2, 40, 6)).shape == (2, 16, 8)
    with pytest.raises(CrossSubjectError, match="expects"):
        model("a", torch.randn(2, 40, 7))
    with pytest.raises(CrossSubjectError, match="no adapter for subject 'c'"):
        model("c", torch.randn(2, 40, 6))
    with pytest.raises(CrossSubjectError, match="already has an adapter"):
        model.add_subject("a", (40, 6))


def test_fit_learns_both_subjects():
    torch.manual_seed(0)
    model = CrossSubjectModel({"a": (30, 4), "b": (20, 5)}, out_dim=2, dim=8, length=8, hidden=16)
    data = {"a": two_class_data(64, 30, 4, 0), "b": two_class_data(64, 20, 5, 1)}
    losses = fit(model, data, steps=60, seed=0)
    assert losses[-1] < losses[0] * 0.5
    for name, (x, y) in data.items():
        assert (model.predict(name, x).argmax(1) == y).float().mean() > 0.9


@pytest.mark.parametrize("cyclic_weight", [0.0, 0.5])
def test_reset_tune_changes_nothing_but_the_new_adapter(cyclic_weight):
    torch.manual_seed(0)
    model = CrossSubjectModel({"a": (30, 4), "b": (20, 5)}, out_dim=2, dim=8, length=8, hidden=16,
                              cyclic_weight=cyclic_weight)  # fmt: skip
    fit(model, {"a": two_class_data(64, 30, 4, 0), "b": two_class_data(64, 20, 5, 1)}, steps=20, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert any("running_mean" in k and k.startswith("trunk.") for k in before)  # batch-norm buffers are covered
    x, y = two_class_data(20, 25, 3, 2)
    losses = model.reset_tune("new", x, y, steps=40, seed=0)
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    new = [k for k in after if k.startswith("adapters.new.")]
    assert new and not set(new) & set(before)
    assert losses[-1] < losses[0]
    assert all(p.requires_grad for p in model.parameters())  # the freeze is undone afterwards
    assert model.training  # and the mode restored
    assert (model.predict("new", x).argmax(1) == y).float().mean() > 0.8


def test_reset_tune_of_an_existing_subject_replaces_only_its_adapter():
    model = CrossSubjectModel({"a": (30, 4), "b": (20, 5)}, out_dim=2, dim=8, length=8, hidden=16)
    fit(model, {"a": two_class_data(32, 30, 4, 0)}, steps=5, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("adapters.b.")}
    model.reset_tune("b", *two_class_data(16, 20, 5, 3), steps=5)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_cyclic_loss_adds_a_decoder_per_subject_and_is_positive():
    model = CrossSubjectModel({"a": (12, 3)}, out_dim=4, dim=8, length=6, task="embed", cyclic_weight=1.0)
    assert model.adapters["a"].decoder is not None
    x = torch.randn(8, 12, 3)
    z = model("a", x)
    assert model.cyclic_loss("a", x, z) > 0
    plain = CrossSubjectModel({"a": (12, 3)}, out_dim=4, dim=8, length=6, task="embed")
    target = torch.randn(8, 4)
    assert plain.loss("a", x, target) > 0
    with pytest.raises(CrossSubjectError, match="no decoder"):
        plain.adapters["a"].decode(z)


def test_save_load_round_trip_keeps_outputs_and_input_shapes(tmp_path):
    model = CrossSubjectModel({"a": (30, 4), "b": (20, 5)}, out_dim=2, dim=8, length=8, cyclic_weight=0.1)
    fit(model, {"a": two_class_data(16, 30, 4, 0)}, steps=3, seed=0)
    path = save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(path)
    assert loaded.subjects == {"a": (30, 4), "b": (20, 5)}
    x = torch.randn(3, 20, 5)
    assert torch.equal(model.predict("b", x), loaded.predict("b", x))


def test_damaged_or_foreign_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    model = CrossSubjectModel({"a": (30, 4)}, out_dim=2, dim=8, length=8)
    path = save_model(model, tmp_path / "m.safetensors")
    raw = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CrossSubjectError, match="cannot read"):
        load_model(tmp_path / "cut.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CrossSubjectError, match="not a saved cross-subject model"):
        load_model(tmp_path / "foreign.safetensors")
    tensors = dict(model.state_dict())
    tensors.pop("trunk.head.bias")
    meta = {"format": "crossedge.cross-subject/1", "config": '{"out_dim": 2, "dim": 8, "length": 8}',
            "subjects": '{"a": [30, 4]}'}  # fmt: skip
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "partial.safetensors"), metadata=meta)
    with pytest.raises(CrossSubjectError, match="damaged"):
        load_model(tmp_path / "partial.safetensors")
