"""``crossedge sensing ...`` commands: datasets, bench, sweep and collect."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from crossedge.core.cli import echo_json

SCENARIO_NAMES = (
    "cross-person",
    "cross-position",
    "cross-device",
    "cross-time",
    "cross-room",
    "cross-dataset",
    "random-split",
)  # crossedge.sensing.scenarios.SCENARIOS, listed here so --help imports no numpy


@click.group(name="sensing")
def group() -> None:
    """Wi-Fi CSI and motion recognition under domain shift: datasets, scenarios, sweeps."""


# ---------------------------------------------------------------- datasets


@group.command("datasets")
@click.argument("name", required=False)
@click.option("--build", is_flag=True, help="Build NAME's cache first (reads its source files or runs its generator).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def datasets_command(name: str | None, build: bool, as_json: bool) -> None:
    """The array datasets available (built or not, size, domains); with NAME, its facts and windows per domain."""
    from crossedge.core.bench import format_table
    from crossedge.core.contracts.array_dataset import ArrayDataset, get_array_dataset
    from crossedge.core.registry import get_registry

    if name is None:
        if build:
            raise click.UsageError("--build needs a dataset NAME")
        rows = []
        for entry in get_registry("dataset").entries():
            dataset = entry.obj
            if not isinstance(dataset, ArrayDataset):
                continue
            facts = dataset.info()
            shape = f"{facts['n']}x{facts['t']}x{facts['c']}" if facts["built"] else ""
            varying = [k for k, v in facts.get("domains", {}).items() if len(v) > 1]
            rows.append(
                {
                    "name": entry.name,
                    "built": facts["built"],
                    "windows": shape,
                    "domains": ", ".join(varying),
                    "description": facts["description"],
                }
            )
        if as_json:
            echo_json(rows)
        else:
            click.echo(format_table(rows, ["name", "built", "windows", "domains", "description"]))
        return
    from .windows import domain_summary

    dataset = get_array_dataset(name)
    facts = dataset.info()
    if build or facts["built"]:
        data = dataset.load()
        facts = dataset.info()
        facts["windows_per_domain"] = domain_summary(data)
        facts["windows_per_label"] = {label: int((data.y == k).sum()) for k, label in enumerate(data.label_names)}
    if as_json:
        echo_json(facts)
        return
    for key in ("name", "description", "built", "path"):
        click.echo(f"{key:>18}: {facts[key]}")
    if facts["built"]:
        click.echo(f"{'windows':>18}: {facts['n']} x {facts['t']} samples x {facts['c']} channels")
        for key in ("windows_per_label", "windows_per_domain"):
            click.echo(f"{key.replace('_', ' '):>18}: {json.dumps(facts.get(key, {}))}")
    else:
        click.echo(f"{'':>18}  not built: `crossedge sensing datasets {name} --build`")


# ---------------------------------------------------------------- shared run options


def _run_options(sweep: bool):
    """The options bench and sweep share (data, scenario, algorithms, budget, executor)."""

    def decorate(command):
        options = [
            click.option("--dataset", required=True, help="A registered dataset, a folder/file of recordings, or a+b."),
            click.option("--scenario", type=click.Choice(SCENARIO_NAMES), default="cross-person", show_default=True),
            click.option(
                "--algorithms",
                default="erm",
                show_default=True,
                help="Algorithm specs, comma-separated: 'erm,coral:mmd_gamma=0.5,knn-mmd' (docs/specs.md).",
            ),
            click.option(
                "--seeds", type=click.IntRange(min=1), default=3, show_default=True, help="Trial seeds 0..N-1."
            ),
            click.option(
                "--shots",
                type=click.IntRange(min=0),
                default=0,
                show_default=True,
                help="Labelled target windows per class (few-shot scenarios).",
            ),
            click.option("--test-domains", default=None, help="Hold out only these domains (comma-separated)."),
            click.option(
                "--new-classes",
                default=None,
                help="Labels kept out of training and tested alone, learnt from the --shots (comma-separated).",
            ),
            click.option("--steps", type=click.IntRange(min=1), default=300, show_default=True),
            click.option(
                "--batch-size",
                type=click.IntRange(min=1),
                default=32,
                show_default=True,
                help="Windows per training domain per step.",
            ),
            click.option("--checkpoint-every", type=click.IntRange(min=1), default=100, show_default=True),
            click.option(
                "--holdout",
                type=click.FloatRange(0.05, 0.5),
                default=0.2,
                show_default=True,
                help="Fraction of each domain held out for validation (and of the test domain for the oracle).",
            ),
            click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True),
            click.option(
                "--workers",
                type=click.IntRange(min=1),
                default=1,
                show_default=True,
                help="Jobs at once (processes, or concurrent Ray trials).",
            ),
            click.option(
                "--threads",
                type=click.IntRange(min=1),
                default=1,
                show_default=True,
                help="Torch threads per job (Ray: CPUs per trial).",
            ),
            click.option(
                "--records",
                type=click.Path(dir_okay=False),
                default=None,
                help="JSON-lines records file; an existing one is resumed." + (" Required." if sweep else ""),
            ),
            click.option(
                "--format",
                "file_format",
                default=None,
                help="Recording format of a PATH, with its options: 'pamap2:imu=each' (default: detected).",
            ),
            click.option("--window", type=click.IntRange(min=1), default=None, help="Window length in samples (PATH)."),
            click.option("--stride", type=click.IntRange(min=1), default=None, help="Window stride in samples (PATH)."),
            click.option(
                "--rate",
                type=click.FloatRange(min=0, min_open=True),
                default=None,
                help="Resample recordings to this rate in Hz (PATH).",
            ),
            click.option("--label-column", default=None, help="Label column of a labelled CSV."),
            click.option(
                "--feature-columns", default=None, help="Feature columns of a labelled CSV: names or globs ('csi_*')."
            ),
            click.option(
                "--group-column", default=None, help="Column naming the person (or other domain) of each row."
            ),
        ]
        if sweep:
            options.insert(
                4,
                click.option(
                    "--hparams-seeds",
                    type=click.IntRange(min=1),
                    default=1,
                    show_default=True,
                    help="Hyperparameter seeds 0..N-1 (0 = defaults).",
                ),
            )
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _load_options(values: dict[str, Any]) -> dict[str, Any]:
    names = {
        "file_format": "format",
        "window": "window",
        "stride": "stride",
        "rate": "rate",
        "label_column": "label_column",
        "feature_columns": "feature_columns",
        "group_column": "group_column",
    }
    return {target: values[source] for source, target in names.items() if values.get(source) is not None}


def algorithm_specs(text: str) -> list[str]:
    """Canonical algorithm specs from ``erm,coral:mmd_gamma=0.5,...`` (one grammar: docs/specs.md)."""
    from crossedge.core.specs import format_spec, parse_chain

    chain = parse_chain(text, kind="algorithm")
    if chain.policy is not None:
        raise click.UsageError("--algorithms takes algorithm specs; '@' (a policy) has no meaning here")
    return [format_spec(spec.name, spec.options) for spec in chain.specs]


def plan_from_options(values: dict[str, Any], hparams_seeds: int = 1) -> list:
    """The sweep's jobs from the command's options (loads the data once, to find the test domains)."""
    from .data import load_data
    from .scenarios import held_out_domains
    from .sweep import plan_jobs

    options = _load_options(values)
    data = load_data(values["dataset"], options or None)
    domains = held_out_domains(data, values["scenario"])
    if values.get("test_domains"):
        wanted = [d.strip() for d in values["test_domains"].split(",") if d.strip()]
        unknown = [d for d in wanted if d not in domains]
        if unknown:
            raise click.UsageError(f"--test-domains {unknown} are not held-out domains here; choose from {domains}")
        domains = wanted
    return plan_jobs(
        dataset=values["dataset"],
        scenario=values["scenario"],
        algorithms=algorithm_specs(values["algorithms"]),
        test_domains=domains,
        hparams_seeds=range(hparams_seeds),
        trial_seeds=range(values["seeds"]),
        shots=values["shots"],
        steps=values["steps"],
        batch_size=values["batch_size"],
        checkpoint_every=values["checkpoint_every"],
        holdout=values["holdout"],
        new_classes=tuple(c.strip() for c in (values.get("new_classes") or "").split(",") if c.strip()),
        load_options=options,
    )


def _run(jobs: list, values: dict[str, Any], records: Path):
    from tqdm import tqdm

    from .sweep import run_jobs

    with tqdm(total=0, desc="sensing jobs", unit="job") as bar:

        def planned(count: int) -> None:
            bar.total = count
            bar.refresh()

        return run_jobs(
            jobs,
            records,
            executor=values["executor"],
            workers=values["workers"],
            threads=values["threads"],
            progress=lambda job: bar.update(1),
            planned=planned,
        )


def _report(experiments: list, as_json: str | None, plot_path: str | None, extra: dict[str, Any]) -> None:
    from crossedge.core.bench import format_table

    from .collect import METHODS, plot

    for experiment in experiments:
        s = experiment.settings
        click.echo(
            f"{s['dataset']} {s['scenario']}, shots {s['shots']}, {s['steps']} steps, "
            f"{len(experiment.domains)} test domains; test-domain accuracy (%), mean +- std over seeds"
        )
        click.echo(format_table(experiment.rows(), ["algorithm", *METHODS]))
    if plot_path is not None and experiments:
        for k, experiment in enumerate(experiments):
            target = Path(plot_path) if k == 0 else Path(plot_path).with_stem(f"{Path(plot_path).stem}-{k}")
            click.echo(f"plot: {plot(experiment, target)}")
    _write_json({**extra, "experiments": [e.to_dict() for e in experiments]}, as_json)


def _records_for(records: str | None, stack) -> Path:
    if records is not None:
        return Path(records)
    import tempfile

    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="crossedge-sensing-"))
    return Path(folder) / "records.jsonl"


# ---------------------------------------------------------------- bench, sweep, collect


@group.command("bench")
@_run_options(sweep=False)
@click.option("--json", "as_json", default=None, help="Write the results as JSON to this file ('-': print).")
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False), help="Write a PNG bar chart.")
def bench_command(as_json: str | None, plot_path: str | None, **values: Any) -> None:
    """Train each algorithm on each held-out domain over --seeds and print both selection protocols.

    Hyperparameters are each algorithm's defaults (with the spec's values); selection picks
    the checkpoint by training-domain validation, or by the held-out test windows (the
    oracle, an upper bound). Use `sweep` for a random hyperparameter search.
    """
    import contextlib

    from .collect import collect, read_sensing_records

    jobs = plan_from_options(values)
    with contextlib.ExitStack() as stack:
        records = _records_for(values["records"], stack)
        result = _run(jobs, values, records)
        mine = {j.key() for j in jobs}
        pairs = [(job, r) for job, r in read_sensing_records([records]) if _job_key(job) in mine]
        experiments = collect(pairs)
    _report(
        experiments, as_json, plot_path, {"jobs": len(jobs), "ran": result.ran, "seconds": round(result.seconds, 1)}
    )
    click.echo(f"{result.ran} jobs run, {result.skipped} already recorded, {result.seconds:.0f} s")


def _job_key(job: dict[str, Any]) -> str:
    from .sweep import Job

    return Job(**job).key()


@group.command("sweep")
@_run_options(sweep=True)
def sweep_command(**values: Any) -> None:
    """Run algorithms x held-out domains x hyperparameter seeds x trial seeds, appending records.

    An existing --records file is resumed: jobs already recorded are skipped. Build the
    tables afterwards with `crossedge sensing collect RECORDS`.
    """
    if values["records"] is None:
        raise click.UsageError("sweep needs --records FILE (a new file, or one an earlier sweep wrote, to resume)")
    jobs = plan_from_options(values, hparams_seeds=values["hparams_seeds"])
    result = _run(jobs, values, Path(values["records"]))
    click.echo(f"{result.ran} jobs run, {result.skipped} already recorded, {result.seconds:.0f} s: {result.records}")


@group.command("collect")
@click.argument("records", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--json", "as_json", default=None, help="Write the tables as JSON to this file ('-': print).")
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False), help="Write a PNG bar chart.")
@click.option(
    "--per-domain", is_flag=True, help="Also print one table per selection method with a column per test domain."
)
def collect_command(records: tuple[str, ...], as_json: str | None, plot_path: str | None, per_domain: bool) -> None:
    """Tables from records alone: per experiment, both selection protocols, mean +- std over trial seeds."""
    from crossedge.core.bench import format_table

    from .collect import METHODS, collect, read_sensing_records

    experiments = collect(read_sensing_records(records))
    if not experiments:
        raise click.ClickException("the records files hold no records")
    _report(experiments, as_json, plot_path, {"records": list(records)})
    if per_domain:
        for experiment in experiments:
            for method in METHODS:
                rows = [
                    {
                        "algorithm": a,
                        **{
                            d: experiment.per_domain[(a, method, d)].text()
                            for d in experiment.domains
                            if (a, method, d) in experiment.per_domain
                        },
                    }
                    for a in experiment.algorithms
                ]
                click.echo(f"{method} selection, per test domain")
                click.echo(format_table(rows, ["algorithm", *experiment.domains]))


# ---------------------------------------------------------------- pretraining and side channels


def _write_json(payload: dict[str, Any], as_json: str | None) -> None:
    if as_json == "-":
        echo_json(payload)
    elif as_json is not None:
        Path(as_json).write_text(json.dumps(payload, indent=2) + "\n")
        click.echo(f"json: {as_json}")


@group.command("pretrain")
@click.option("--dataset", default="synthetic-csi", show_default=True, help="A registered dataset or a path.")
@click.option("--fractions", default="0.01,0.1", show_default=True, help="Labelled fractions of the training split.")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--pretrain-steps", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=200, show_default=True, help="Supervised steps.")
@click.option("--mask-ratio", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.75)
@click.option("--contrastive-weight", type=click.FloatRange(min=0.0), default=0.5, show_default=True)
@click.option("--json", "as_json", default=None, help="Write the table as JSON to this file ('-': print).")
def pretrain_command(
    dataset: str,
    fractions: str,
    seeds: int,
    pretrain_steps: int,
    steps: int,
    mask_ratio: float,
    contrastive_weight: float,
    as_json: str | None,
) -> None:
    """Masked channel autoencoding with a contrastive term, against training from scratch with few labels.

    Pretrains on the training split's windows without labels, then reports linear-probe,
    fine-tune and from-scratch accuracy with each labelled fraction (ContraWiMAE's comparison).
    """
    from .data import load_data
    from .pretrain import PretrainConfig, comparison_table, run_pretrain_comparison

    try:
        chosen = [float(f) for f in fractions.split(",") if f.strip()]
    except ValueError:
        raise click.BadParameter(f"{fractions!r} is not a comma list of fractions", param_hint="--fractions") from None
    config = PretrainConfig(steps=pretrain_steps, mask_ratio=mask_ratio, contrastive_weight=contrastive_weight)
    result = run_pretrain_comparison(
        load_data(dataset), label_fractions=chosen, seeds=range(seeds), config=config, steps=steps,
        progress=lambda message: click.echo(message, err=True),
    )  # fmt: skip
    click.echo(comparison_table(result))
    _write_json({"dataset": dataset, **result}, as_json)


@group.command("portability")
@click.option("--dataset", default="em-traces", show_default=True, help="Traces with a device domain column.")
@click.option("--source", default="d0", show_default=True, help="Device trained on.")
@click.option("--target", default="d1", show_default=True, help="Device applied to.")
@click.option("--shots", type=click.IntRange(min=1), default=50, show_default=True, help="Target traces for transfer.")
@click.option("--steps", type=click.IntRange(min=1), default=1200, show_default=True)
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--json", "as_json", default=None, help="Write the table as JSON to this file ('-': print).")
def portability_command(
    dataset: str, source: str, target: str, shots: int, steps: int, seeds: int, as_json: str | None
) -> None:
    """Cross-device side-channel portability: same device, direct, mixed devices, transfer with few traces."""
    from crossedge.core.bench import format_table

    from .data import load_data
    from .sidechannel import portability

    result = portability(
        load_data(dataset), source=source, target=target, shots=shots, steps=steps, seeds=range(seeds),
        progress=lambda message: click.echo(message, err=True),
    )  # fmt: skip
    rows = [
        {"condition": r["condition"], "accuracy (%)": f"{100 * r['mean']:.1f} +- {100 * r['std']:.1f}"}
        for r in result["rows"]
    ]
    click.echo(f"{dataset}: {source} -> {target}, {shots} target traces, chance {100 * result['chance']:.1f}%")
    click.echo(format_table(rows, ["condition", "accuracy (%)"]))
    _write_json({"dataset": dataset, **result}, as_json)
