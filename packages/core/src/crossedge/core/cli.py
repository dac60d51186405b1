"""The ``crossedge`` command line: a click group whose subcommands come from plugins."""

from __future__ import annotations

import json
import os
import sys
import warnings
from typing import Any

import click

from . import plugins
from .errors import CrossedgeError, CrossedgeWarning

DEBUG_ENV = "CROSSEDGE_DEBUG"


class CrossedgeGroup(click.Group):
    """A click group that turns :class:`CrossedgeError` into one red line and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CrossedgeError as exc:
            if ctx.params.get("debug") or os.environ.get(DEBUG_ENV):
                raise
            click.secho(f"Error: {exc}", fg="red", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.secho("Interrupted.", fg="red", err=True)
            ctx.exit(130)


def build_cli() -> click.Group:
    """Build the top-level group and let every plugin add its commands."""

    @click.group(cls=CrossedgeGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(package_name="crossedge-core", prog_name="crossedge")
    @click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
    def cli(debug: bool) -> None:
        """crossedge: efficient and on-device machine learning, composed from plugins."""

    for _ in plugins.call_each("register_commands", cli=cli):
        pass
    return cli


def echo_json(data: Any) -> None:
    """Print data as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, default=str))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, CrossedgeWarning):
        click.secho(f"Warning: {message}", fg="yellow", err=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    warnings.showwarning = _show_warning
    build_cli()(args=argv if argv is not None else sys.argv[1:], prog_name="crossedge")


if __name__ == "__main__":  # pragma: no cover
    main()
