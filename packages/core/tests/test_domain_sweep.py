"""The pieces compose: synthetic-shift windows, erm trained per held-out subject, records, then selection."""

import pytest
import torch

from crossedge.core.contracts.algorithm import get_algorithm
from crossedge.core.contracts.array_dataset import get_array_dataset, stratified_split
from crossedge.core.selection import Record, append_record, read_records, select


def accuracy(algorithm, x, y):
    return float((algorithm.predict(x).argmax(1) == y).float().mean())


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_tiny_leave_one_subject_out_sweep_selects_from_its_records(cache, tmp_path, one_thread):
    data = get_array_dataset("synthetic-shift").load()
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    subjects = data.domains.values["subject"]
    codes = data.domains.codes("subject")
    erm = get_algorithm("erm")
    path = tmp_path / "records.jsonl"
    test, configs = "s3", [(erm.default_hparams(), 0), (erm.random_hparams(1), 1)]
    for hparams, seed in configs:
        for val in (None, "s0"):
            train = [s for s in subjects if s not in (test, val)]
            fit, held = {}, {}
            for s in train:
                members = (codes == subjects.index(s)).nonzero()[0]
                fit[s], held[s] = stratified_split(data.y, 0.75, seed=seed, indices=members)
            algorithm = erm(data.x.shape[1:], len(data.label_names), len(train), hparams, seed=seed)
            for step in range(1, 9):
                algorithm.update([(x[fit[s]], y[fit[s]]) for s in train])
                if step % 4:
                    continue
                metrics = {s: {"val_acc": accuracy(algorithm, x[held[s]], y[held[s]])} for s in train}
                for s in filter(None, (test, val)):
                    mask = torch.from_numpy(codes == subjects.index(s))
                    metrics[s] = {"acc": accuracy(algorithm, x[mask], y[mask])}
                split = {"column": "subject", "test": test, "val": val}
                append_record(path, {"algorithm": "erm", "hparams": hparams, "seed": seed, "split": split,
                                     "step": step, "metrics": metrics})  # fmt: skip
    records = read_records(path)
    assert len(records) == 2 * 2 * 2
    (by_training,) = select(records, "training-domain")
    (by_lodo,) = select(records, "leave-one-domain-out")
    for chosen in (by_training, by_lodo):
        assert (chosen.algorithm, chosen.test) == ("erm", "s3")
        assert chosen.record.val is None and chosen.test_score == chosen.record.metrics["s3"]["acc"]
    best_mean = max(sum(r.metrics[s]["val_acc"] for s in r.training_domains()) / 3 for r in records if r.val is None)
    assert by_training.val_score == pytest.approx(best_mean)
    lodo_finals = [r for r in records if r.val == "s0" and r.step == 8]
    assert by_lodo.val_score == pytest.approx(max(r.metrics["s0"]["acc"] for r in lodo_finals))
    assert isinstance(Record.from_dict(records[0].to_dict()), Record)
