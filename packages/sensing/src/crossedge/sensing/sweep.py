"""Sweeps: one job per (algorithm, scenario, test domain, hyperparameter seed, trial seed), written as records.

A job trains one algorithm on one fold (:mod:`crossedge.sensing.scenarios`) and returns
JSON-lines records in core's format (:class:`crossedge.core.selection.Record`) plus the
job that made them. Records are appended one job at a time, so an interrupted sweep resumes
where it stopped: :func:`run_jobs` skips every job whose records are already in the file.
Jobs run in this process, on a local process pool, or as Ray Tune trials; all three give
the same records (each job is seeded and runs on a fixed thread count).

Hyperparameters follow DomainBed's registry: hyperparameter seed 0 is the algorithm's
defaults, seed ``h > 0`` is ``random_hparams(h)``; values the algorithm spec sets
(``coral:mmd_gamma=0.5``) override both. The trial seed sets the data splits and the
network's initialisation.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossedge.core.errors import CrossedgeError

if TYPE_CHECKING:
    import numpy as np

RECORD_FORMAT = "crossedge.sensing.record/1"
EXECUTORS = ("local", "ray")


class SweepError(CrossedgeError):
    """A sweep cannot run: a records file that is not ours, a bad executor, a job that failed."""


@dataclass(frozen=True)
class Job:
    """Everything one training run depends on; its JSON form is the key a resumed sweep skips by."""

    dataset: str
    scenario: str
    test_domain: str
    algorithm: str
    hparams_seed: int = 0
    trial_seed: int = 0
    shots: int = 0
    steps: int = 300
    batch_size: int = 32
    checkpoint_every: int = 100
    holdout: float = 0.2
    new_classes: tuple[str, ...] = ()
    load_options: dict[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        """Canonical JSON of every field."""
        return json.dumps(asdict(self), sort_keys=True)

    def seed(self) -> int:
        """The algorithm's seed, from both seeds (DomainBed's ``seed_hash``)."""
        return zlib.crc32(f"{self.hparams_seed}/{self.trial_seed}".encode()) % (2**31)


def plan_jobs(
    *,
    dataset: str,
    scenario: str,
    algorithms: Sequence[str],
    test_domains: Sequence[str],
    hparams_seeds: Iterable[int] = (0,),
    trial_seeds: Iterable[int] = (0,),
    **settings: Any,
) -> list[Job]:
    """Every job of a sweep: algorithms x test domains x hyperparameter seeds x trial seeds."""
    hparams_seeds, trial_seeds = list(hparams_seeds), list(trial_seeds)
    return [
        Job(dataset, scenario, test, algorithm, h, t, **settings)
        for algorithm in algorithms
        for test in test_domains
        for h in hparams_seeds
        for t in trial_seeds
    ]


def job_hparams(job: Job) -> tuple[type, dict[str, Any]]:
    """The algorithm class and hyperparameters of a job (seeded draw, then the spec's own values)."""
    from crossedge.core.contracts.algorithm import get_algorithm, hparam_signature
    from crossedge.core.errors import UnknownNameError
    from crossedge.core.specs import bind, parse_spec

    parsed = parse_spec(job.algorithm, kind="algorithm")
    try:
        algorithm_class = get_algorithm(parsed.name)
    except UnknownNameError as exc:
        raise parsed.error(str(exc)) from None
    given = bind(parsed, hparam_signature(algorithm_class), kind="algorithm")
    drawn = (
        algorithm_class.default_hparams() if job.hparams_seed == 0 else algorithm_class.random_hparams(job.hparams_seed)
    )
    return algorithm_class, algorithm_class.check_hparams({**drawn, **given})


def standardize(x: np.ndarray, fit: np.ndarray) -> np.ndarray:
    """``x`` scaled per channel by the mean and std of the windows ``fit`` only (so held-out data never informs it)."""
    import numpy as np

    mean = x[fit].mean(axis=(0, 1), keepdims=True)
    std = x[fit].std(axis=(0, 1), keepdims=True) + 1e-6
    return ((x - mean) / std).astype(np.float32)


def sample_batches(x: np.ndarray, y: np.ndarray, pools: Sequence[np.ndarray], batch: int, rng) -> list:
    """One ``(x, y)`` minibatch of ``batch`` windows drawn with replacement from each pool of indices."""
    import torch

    picks = [pool[rng.integers(0, len(pool), batch)] for pool in pools]
    return [(torch.from_numpy(x[pick]), torch.from_numpy(y[pick])) for pick in picks]


def accuracy(algorithm, x, y, indices, batch: int = 512) -> float:
    """Top-1 accuracy of ``algorithm.predict`` on the windows ``indices`` (NaN for none)."""
    import torch

    if not len(indices):
        return float("nan")
    correct = 0
    for start in range(0, len(indices), batch):
        chunk = indices[start : start + batch]
        logits = algorithm.predict(torch.from_numpy(x[chunk]))
        correct += int((logits.argmax(dim=1).numpy() == y[chunk]).sum())
    return correct / len(indices)


def run_job(job: Job) -> list[dict[str, Any]]:
    """Train one job and return its records (one per checkpoint; one after adaptation for adapting algorithms)."""
    import numpy as np
    import torch

    from .data import load_data
    from .scenarios import build_fold

    started = time.perf_counter()
    data = load_data(job.dataset, job.load_options or None)
    fold = build_fold(
        data,
        job.scenario,
        job.test_domain,
        shots=job.shots,
        seed=job.trial_seed,
        holdout=job.holdout,
        new_classes=tuple(job.new_classes),
    )
    algorithm_class, hparams = job_hparams(job)
    x = standardize(data.x, fold.all_training())
    domains = fold.training_domains()
    num_classes = len(data.label_names)
    algorithm = algorithm_class(x.shape[1:], num_classes, len(domains), hparams, seed=job.seed())
    rng = np.random.default_rng([job.trial_seed, job.hparams_seed, 11])
    records: list[dict[str, Any]] = []
    adapts = bool(getattr(algorithm_class, "adapts", False))

    def record(step: int, extra: dict[str, float]) -> None:
        metrics = {d: {"val_acc": accuracy(algorithm, x, data.y, fold.val[d])} for d in domains}
        metrics[fold.test_domain] = {
            "acc": accuracy(algorithm, x, data.y, fold.test),
            "oracle_acc": accuracy(algorithm, x, data.y, fold.oracle),
        }
        records.append(
            {
                "format": RECORD_FORMAT,
                "algorithm": job.algorithm,
                "hparams": hparams,
                "seed": job.trial_seed,
                "split": {"column": fold.column, "test": fold.test_domain, "val": None},
                "step": step,
                "metrics": metrics,
                "train": {k: round(float(v), 6) for k, v in extra.items()},
                "seconds": round(time.perf_counter() - started, 3),
                "job": asdict(job),
            }
        )

    measured: dict[str, float] = {}
    for step in range(1, job.steps + 1):
        batches = sample_batches(x, data.y, [fold.train[name] for name in domains], job.batch_size, rng)
        measured = algorithm.update(batches)
        if not np.isfinite(float(measured["loss"])):
            break  # a diverged run is recorded as it stands; selection never picks it
        if not adapts and (step % job.checkpoint_every == 0 or step == job.steps):
            record(step, measured)
    if adapts:
        unlabelled = np.sort(np.concatenate([fold.oracle, fold.test]))
        measured = {
            **measured,
            **algorithm.adapt(
                torch.from_numpy(x[fold.support]),
                torch.from_numpy(data.y[fold.support]),
                torch.from_numpy(x[unlabelled]),
            ),
        }
        record(job.steps, measured)
    elif not records:
        record(step, measured)
    return records


# ---------------------------------------------------------------- the records file


def read_done(path: Path) -> set[str]:
    """Keys of the jobs whose records the file holds; a torn last line (an interrupted write) is cut off.

    A file with any other line (not JSON, or not a sensing record) is refused: the sweep never
    appends to, or cuts, a file it did not write.
    """
    if not path.exists():
        return set()
    raw = path.read_bytes()
    done, good = set(), 0
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            good += len(line) + 1
            continue
        try:
            data = json.loads(line)
            ok = isinstance(data, dict) and data.get("format") == RECORD_FORMAT and "job" in data
        except ValueError:
            ok = False
            if number == len(lines):  # a torn final line we wrote ourselves: drop it and rerun its job
                with open(path, "r+b") as handle:
                    handle.truncate(good)
                return done
        if not ok:
            raise SweepError(
                f"{path}:{number} is not a crossedge-sensing record; give --records a new file or one a sweep wrote"
            )
        done.add(Job(**data["job"]).key())
        good += len(line) + 1
    if raw and not raw.endswith(b"\n"):
        with open(path, "ab") as handle:  # a whole last record whose newline was lost: end it before appending
            handle.write(b"\n")
    return done


def append_records(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Append one job's records in a single write, flushed to disk before the next job is counted done."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


# ---------------------------------------------------------------- executors


@dataclass
class SweepResult:
    """What :func:`run_jobs` did: jobs run now, jobs skipped as already recorded, wall time."""

    ran: int
    skipped: int
    seconds: float
    records: Path


def _init_worker(threads: int, env: dict[str, str]) -> None:
    os.environ.update(env)
    import torch

    torch.set_num_threads(threads)


def _worker_env() -> dict[str, str]:
    keys = ("CROSSEDGE_CACHE", "CROSSEDGE_NO_ENTRY_POINTS", "CROSSEDGE_LOAD_PLUGINS", "PYTHONPATH")
    return {k: os.environ[k] for k in keys if k in os.environ}


def run_jobs(
    jobs: Sequence[Job],
    records: str | Path,
    *,
    executor: str = "local",
    workers: int = 1,
    threads: int = 1,
    progress: Callable[[Job], None] | None = None,
    register: Callable[[], None] | None = None,
    planned: Callable[[int], None] | None = None,
) -> SweepResult:
    """Run every job not yet in ``records`` and append their records as each finishes.

    ``workers=1`` with the local executor runs in this process; more workers use a process
    pool (spawned, each on ``threads`` torch threads). ``executor="ray"`` runs Ray Tune trials
    with ``threads`` CPUs each. ``progress`` is called after each job and ``planned`` once with the number
    of jobs left to run; ``register`` is run in each worker before its first job (tests use it
    to register plugins without entry points).
    """
    if executor not in EXECUTORS:
        raise SweepError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if workers < 1 or threads < 1:
        raise SweepError(f"workers and threads must be at least 1, got {workers} and {threads}")
    path = Path(records)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = read_done(path)
    pending = [j for j in jobs if j.key() not in done]
    if planned is not None:
        planned(len(pending))
    # validate every job's algorithm spec before any training starts
    for job in {j.algorithm: j for j in pending}.values():
        job_hparams(job)
    started = time.perf_counter()

    def finished(job: Job, job_records: list[dict[str, Any]]) -> None:
        append_records(path, job_records)
        if progress is not None:
            progress(job)

    if executor == "ray":
        _run_ray(pending, finished, workers=workers, threads=threads, register=register)
    elif workers == 1:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for job in pending:
                finished(job, run_job(job))
        finally:
            torch.set_num_threads(before)
    else:
        _run_pool(pending, finished, workers=workers, threads=threads, register=register)
    return SweepResult(len(pending), len(jobs) - len(pending), time.perf_counter() - started, path)


def _pool_job(job: Job, register: Callable[[], None] | None) -> list[dict[str, Any]]:
    if register is not None and not getattr(_pool_job, "registered", False):
        register()
        _pool_job.registered = True  # type: ignore[attr-defined]
    return run_job(job)


def _run_pool(pending, finished, *, workers, threads, register) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")  # forking a process that already runs OpenMP threads can hang
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(threads, _worker_env())
    ) as pool:
        futures = {pool.submit(_pool_job, job, register): job for job in pending}
        try:
            for future in as_completed(futures):
                finished(futures[future], future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _ray_trial(config: dict[str, Any]) -> None:
    import torch
    from ray import tune

    torch.set_num_threads(int(config["threads"]))
    if config.get("register") is not None:
        config["register"]()
    records = run_job(Job(**config["job"]))
    tune.report({"records": json.dumps(records), "job": json.dumps(config["job"])})


def _run_ray(pending, finished, *, workers, threads, register) -> None:
    try:
        import ray
        from ray import tune
    except ImportError as exc:
        raise SweepError("--executor ray needs Ray Tune: pip install 'crossedge-sensing[ray]'") from exc
    if not pending:
        return
    import tempfile

    class AppendRecords(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            records = json.loads(result["records"])
            finished(Job(**json.loads(result["job"])), records)

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            num_cpus=workers * threads,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            _node_ip_address="127.0.0.1",  # a sweep on one machine listens on loopback only
            runtime_env={"env_vars": _worker_env()},
        )
    try:
        with tempfile.TemporaryDirectory(prefix="crossedge-ray-") as storage:
            tuner = tune.Tuner(
                tune.with_resources(_ray_trial, {"cpu": threads}),
                param_space={
                    "job": tune.grid_search([asdict(j) for j in pending]),
                    "threads": threads,
                    "register": register,
                },
                tune_config=tune.TuneConfig(max_concurrent_trials=workers),
                run_config=tune.RunConfig(
                    storage_path=storage, name="sensing-sweep", verbose=0, callbacks=[AppendRecords()]
                ),
            )
            import contextlib
            import io

            # Tune prints where its (temporary) results folder is; our records file is the result
            with contextlib.redirect_stdout(io.StringIO()):
                results = tuner.fit()
            errors = [r.error for r in results if r.error is not None]
            if errors:
                raise SweepError(f"{len(errors)} Ray trial(s) failed; the first: {errors[0]}")
    finally:
        if started_here:
            ray.shutdown()
