"""Built-in domain algorithms (``erm``, the reference every other one is compared with) and their commands."""

from __future__ import annotations

import json

import click

from crossedge.core.hookspecs import hookimpl
from crossedge.core.networks import FeaturizerClassifier


class ERM(FeaturizerClassifier):
    """Empirical risk minimization: pool every training domain's minibatch and minimize cross-entropy."""

    name = "erm"
    description = "empirical risk minimization over the pooled training domains (featurizer + linear head, Adam)"

    def update(self, minibatches):
        """One Adam step on the cross-entropy of all training domains' windows together."""
        import torch
        import torch.nn.functional as F

        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        self.train_mode()
        loss = F.cross_entropy(self.classifier(self.featurizer(x)), y)
        self.step(loss)
        return {"loss": float(loss.detach())}


@hookimpl
def register_algorithms(register):
    register(ERM)


def algorithm_facts(entry) -> dict:
    """What ``crossedge algorithms info`` shows: name, plugin, description and the hyperparameter table."""
    cls = entry.obj
    return {
        "name": entry.name,
        "aliases": list(entry.aliases),
        "plugin": entry.plugin,
        "description": cls.description,
        "hparams": {
            key: {"default": hp.default, "type": type(hp.default).__name__, "help": hp.help}
            for key, hp in cls.HPARAMS.items()
        },
    }


@hookimpl
def register_commands(cli):
    from crossedge.core.bench import format_table
    from crossedge.core.cli import echo_json
    from crossedge.core.registry import get_registry

    @cli.group(name="algorithms")
    def algorithms_group() -> None:
        """Domain algorithms and model selection over saved records."""

    @algorithms_group.command(name="list")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def algorithms_list(as_json: bool) -> None:
        """Registered domain algorithms and their hyperparameters."""
        rows = [algorithm_facts(e) for e in get_registry("algorithm").entries()]
        if as_json:
            echo_json(rows)
            return
        shown = [{**r, "hparams": ", ".join(r["hparams"])} for r in rows]
        click.echo(format_table(shown, ["name", "plugin", "hparams", "description"]))

    @algorithms_group.command(name="info")
    @click.argument("spec")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.option("--seed", type=int, default=None, help="Also show random_hparams(SEED).")
    def algorithms_info(spec: str, as_json: bool, seed: int | None) -> None:
        """Facts about the algorithm SPEC names (NAME or NAME:hparam=value,...): hyperparameters and values.

        The values are the defaults overlaid with the spec's, checked and coerced as a run
        would (docs/specs.md); --seed also shows one seeded random draw.
        """
        from crossedge.core.contracts.algorithm import parse_algorithm_spec
        from crossedge.core.specs import format_spec, parse_spec

        algorithm_class, values = parse_algorithm_spec(spec)
        entry = get_registry("algorithm").entry(parse_spec(spec, kind="algorithm").name)
        facts = algorithm_facts(entry)
        chosen = {k: v for k, v in values.items() if v != algorithm_class.HPARAMS[k].default}
        facts["spec"] = format_spec(entry.name, chosen)
        facts["values"] = values
        if seed is not None:
            facts["random_hparams"] = {"seed": seed, **algorithm_class.random_hparams(seed)}
        if as_json:
            echo_json(facts)
            return
        for key in ("name", "spec", "plugin", "description"):
            click.echo(f"{key:>12}: {facts[key]}")
        for key, hp in facts["hparams"].items():
            value = "" if values[key] == hp["default"] else f" = {values[key]!r}"
            drawn = f"  seed {seed}: {facts['random_hparams'][key]}" if seed is not None else ""
            click.echo(f"{key:>12}: {hp['default']!r} ({hp['type']}){value} {hp['help']}{drawn}")

    @algorithms_group.command(name="select")
    @click.argument("records", type=click.Path(dir_okay=False))
    @click.option(
        "--method",
        type=click.Choice(["training-domain", "leave-one-domain-out", "test-domain"]),
        default="training-domain",
        show_default=True,
    )
    @click.option("--metric", default="acc", show_default=True, help="Metric key (higher is better).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def algorithms_select(records: str, method: str, metric: str, as_json: bool) -> None:
        """Pick the best record per (algorithm, test domain) from a JSON-lines RECORDS file."""
        from crossedge.core.selection import read_records, select

        rows = [s.to_dict() for s in select(read_records(records), method, metric=metric)]
        if as_json:
            echo_json(rows)
            return
        shown = [{**r, "hparams": json.dumps(r["hparams"], sort_keys=True)} for r in rows]
        columns = ["algorithm", "test", "val_score", "test_score", "seed", "step", "hparams"]
        click.echo(format_table(shown, columns))
