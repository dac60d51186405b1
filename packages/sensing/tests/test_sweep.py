"""Sweeps: records per job, resume after an interruption, refusing foreign files, executors that agree."""

import json

import pytest

from crossedge.sensing import sweep as sweep_module
from crossedge.sensing.sweep import Job, SweepError, job_hparams, plan_jobs, read_done, run_job, run_jobs

SETTINGS = {"steps": 12, "batch_size": 8, "checkpoint_every": 6}


def jobs(algorithms=("erm",), tests=("s0", "s1"), hparams_seeds=(0,), trial_seeds=(0, 1)):
    return plan_jobs(
        dataset="synthetic-shift",
        scenario="cross-person",
        algorithms=list(algorithms),
        test_domains=list(tests),
        hparams_seeds=hparams_seeds,
        trial_seeds=trial_seeds,
        **SETTINGS,
    )


def comparable(path):
    """Records without their wall times, in a canonical order."""
    rows = []
    for line in path.read_text().splitlines():
        data = json.loads(line)
        data.pop("seconds")
        rows.append(json.dumps(data, sort_keys=True))
    return sorted(rows)


def test_a_job_writes_one_record_per_checkpoint_with_both_selection_metrics():
    records = run_job(Job("synthetic-shift", "cross-person", "s2", "erm", **SETTINGS))
    assert [r["step"] for r in records] == [6, 12]
    for record in records:
        assert set(record["metrics"]) == {"s0", "s1", "s2", "s3"}
        assert set(record["metrics"]["s2"]) == {"acc", "oracle_acc"}
        assert all(set(record["metrics"][d]) == {"val_acc"} for d in ("s0", "s1", "s3"))
        assert record["split"] == {"column": "subject", "test": "s2", "val": None}
    # the same job gives the same numbers
    again = run_job(Job("synthetic-shift", "cross-person", "s2", "erm", **SETTINGS))
    assert [r["metrics"] for r in again] == [r["metrics"] for r in records]


def test_hyperparameter_seed_zero_is_the_defaults_and_the_spec_overrides_a_seeded_draw():
    from crossedge.core.builtins.algorithms import ERM

    _, defaults = job_hparams(Job("d", "cross-person", "s0", "erm"))
    assert defaults == ERM.default_hparams()
    _, drawn = job_hparams(Job("d", "cross-person", "s0", "erm:width=16", hparams_seed=3))
    assert drawn == {**ERM.random_hparams(3), "width": 16}


def test_an_interrupted_sweep_resumes_without_rerunning_or_duplicating_jobs(tmp_path, monkeypatch):
    planned = jobs()
    reference = tmp_path / "reference.jsonl"
    run_jobs(planned, reference)
    path = tmp_path / "records.jsonl"
    calls = []
    real = sweep_module.run_job

    def flaky(job):
        calls.append(job)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user presses Ctrl-C during the third job
        return real(job)

    monkeypatch.setattr(sweep_module, "run_job", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_jobs(planned, path)
    assert len(read_done(path)) == 2
    # a write torn by a crash leaves half a line: resuming cuts it and reruns that job
    with open(path, "a") as handle:
        handle.write('{"format": "crossedge.sensing.record/1", "job": {"datas')
    monkeypatch.setattr(sweep_module, "run_job", real)
    result = run_jobs(planned, path)
    assert (result.ran, result.skipped) == (2, 2)
    assert comparable(path) == comparable(reference)
    assert run_jobs(planned, path).ran == 0
    # a last record whose newline never reached the disk is kept, and the next record starts on its own line
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    assert len(read_done(path)) == len(planned) and path.read_bytes().endswith(b"\n")


def test_a_records_file_the_sweep_did_not_write_is_never_appended_to(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text('{"mine": true}\nsecond line\n')
    with pytest.raises(SweepError, match="notes.jsonl:1 is not a crossedge-sensing record"):
        run_jobs(jobs(), path)
    assert path.read_text() == '{"mine": true}\nsecond line\n'


def test_bad_specs_fail_before_any_training(tmp_path):
    from crossedge.core.specs import SpecError

    path = tmp_path / "records.jsonl"
    with pytest.raises(SpecError, match="unknown algorithm 'emr'"):
        run_jobs(jobs(algorithms=("erm", "emr")), path)
    with pytest.raises(SpecError, match="no option 'lrr'"):
        run_jobs(jobs(algorithms=("erm:lrr=1",)), path)
    assert not path.exists() or not path.read_text()
    with pytest.raises(SweepError, match="unknown executor"):
        run_jobs(jobs(), path, executor="slurm")


def test_a_process_pool_gives_the_records_of_an_inline_run(tmp_path):
    planned = jobs(tests=("s0",))
    run_jobs(planned, tmp_path / "inline.jsonl")
    run_jobs(planned, tmp_path / "pool.jsonl", workers=2)
    assert comparable(tmp_path / "pool.jsonl") == comparable(tmp_path / "inline.jsonl")


@pytest.mark.ray
def test_ray_tune_in_local_mode_gives_the_records_of_an_inline_run(tmp_path):
    pytest.importorskip("ray.tune")
    planned = jobs(tests=("s0",))
    run_jobs(planned, tmp_path / "inline.jsonl")
    result = run_jobs(planned, tmp_path / "ray.jsonl", executor="ray", workers=2)
    assert result.ran == len(planned)
    assert comparable(tmp_path / "ray.jsonl") == comparable(tmp_path / "inline.jsonl")
