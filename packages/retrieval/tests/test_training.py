import json

import pytest
import torch

from crossedge.retrieval.losses import InfoNCE, ListNetKL
from crossedge.retrieval.scorers import BiEncoder, CrossEncoder, UniEncoder
from crossedge.retrieval.testing import tiny_bert
from crossedge.retrieval.training import (
    ListExample,
    TeacherCache,
    TrainConfig,
    Trainer,
    TrainingError,
    list_loss,
    optimizer_from_safetensors,
    optimizer_to_safetensors,
    trans_encoder,
)

EXAMPLES = [
    ListExample("sort list", ("sorted items", "open file", "add one"), labels=(1.0, 0.0, 0.0)),
    ListExample("open file", ("open file path", "sort", "parse"), labels=(1.0, 0.0, 0.0)),
    ListExample("add numbers", ("a plus b", "read", "write"), labels=(1.0, 0.0, 0.0)),
    ListExample("read config", ("config reader", "sum", "max"), labels=(1.0, 0.0, 0.0)),
]
CONFIG = TrainConfig(epochs=3, batch_size=2, lr=1e-3, seed=7)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def make(kind=CrossEncoder):
    model, tok = tiny_bert(seed=0, dropout=0.1)  # dropout makes the RNG state matter on resume
    return kind(model, tok, seed=1) if kind is not BiEncoder else kind(model, tok)


def test_optimizer_state_round_trips_without_pickle():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    tensors, scalars = optimizer_to_safetensors(opt)
    json.dumps(scalars)  # everything that is not a tensor is plain JSON
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    rebuilt = optimizer_from_safetensors(tensors, scalars)
    fresh = torch.optim.AdamW(model.parameters(), lr=0.1)
    fresh.load_state_dict(rebuilt)
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_training_lowers_the_loss():
    model, tok = tiny_bert(seed=0)
    model = CrossEncoder(model, tok, seed=1)
    loss_fn = list_loss(InfoNCE())

    def eval_loss():
        model.eval()
        with torch.no_grad():
            return float(loss_fn(model, EXAMPLES))

    before = eval_loss()
    Trainer(model, EXAMPLES, loss_fn, TrainConfig(epochs=10, batch_size=4, lr=2e-3), progress=False).fit()
    assert eval_loss() < before - 0.1


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
    straight = make()
    Trainer(straight, EXAMPLES, list_loss(InfoNCE()), CONFIG, tmp_path / "a", progress=False).fit()

    class Stop(Exception):
        pass

    def interrupt(epoch, step, loss):
        if epoch == 1 and step == 1:
            raise Stop

    first = make()
    with pytest.raises(Stop):
        Trainer(first, EXAMPLES, list_loss(InfoNCE()), CONFIG, tmp_path / "b", progress=False, on_step=interrupt).fit()
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["epoch-001"]
    resumed_model = make()
    resumed = Trainer(resumed_model, EXAMPLES, list_loss(InfoNCE()), CONFIG, tmp_path / "b", progress=False)
    assert resumed.resume() and resumed.epoch == 1
    resumed.fit()
    expected, got = weights(straight), weights(resumed_model)
    assert all(torch.allclose(expected[k], got[k], atol=1e-6) for k in expected)
    assert resumed.history == json.loads((tmp_path / "a" / "epoch-003" / "state.json").read_text())["history"]


def test_resume_refuses_a_checkpoint_from_other_settings(tmp_path):
    Trainer(make(), EXAMPLES, list_loss(InfoNCE()), TrainConfig(epochs=1, batch_size=2), tmp_path, progress=False).fit()
    other = Trainer(
        make(), EXAMPLES, list_loss(InfoNCE()), TrainConfig(epochs=1, batch_size=4), tmp_path, progress=False
    )
    with pytest.raises(TrainingError, match="different settings"):
        other.resume()


@pytest.mark.parametrize("kind", [BiEncoder, UniEncoder])
def test_every_scorer_kind_trains_on_lists(kind):
    model = make(kind)
    before = weights(model)
    Trainer(model, EXAMPLES, list_loss(InfoNCE()), TrainConfig(epochs=1, batch_size=4, lr=1e-3), progress=False).fit()
    assert any(not torch.equal(before[k], v) for k, v in weights(model).items())


def test_teacher_cache_computes_once(tmp_path):
    calls = []

    def teacher(query, docs):
        calls.append(query)
        return torch.arange(len(docs), dtype=torch.float32)

    lists = [(ex.query, ex.documents) for ex in EXAMPLES]
    cache = TeacherCache(tmp_path)
    first = cache.get_or_compute("t", lists, teacher)
    second = TeacherCache(tmp_path).get_or_compute("t", lists, teacher)
    assert first == second == [[0.0, 1.0, 2.0]] * 4
    assert len(calls) == 4
    assert {p.suffix for p in tmp_path.iterdir()} == {".safetensors", ".json"}
    TeacherCache(tmp_path).get_or_compute("other-teacher", lists, teacher)
    assert len(calls) == 8


def test_trans_encoder_alternates_on_one_model():
    bi = make(BiEncoder)
    before = weights(bi)
    lists = [(ex.query, ex.documents) for ex in EXAMPLES]
    result = trans_encoder(
        bi, lists, cycles=2, loss=ListNetKL(), config=TrainConfig(batch_size=4, lr=1e-3), progress=False
    )
    assert [h["cycle"] for h in result.history] == [1, 2]
    assert all(h["cross_loss"] >= 0 and h["bi_loss"] >= 0 for h in result.history)
    assert any(not torch.equal(before[k], v) for k, v in weights(bi).items())
