"""Built-in command: ``crossedge new-package NAME``, a new package from the template."""

from __future__ import annotations

from pathlib import Path

import click

from crossedge.core.hookspecs import hookimpl


@hookimpl
def register_commands(cli):
    """Add ``crossedge new-package``."""

    @cli.command(name="new-package")
    @click.argument("name")
    @click.option(
        "--out",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Folder to create (default: packages/NAME in a crossedge checkout, else ./crossedge-NAME).",
    )
    def new_package_command(name: str, out: Path | None) -> None:
        """Create package crossedge-NAME (import crossedge.NAME): plugin, CLI group, backend, benchmark, tests, docs."""
        from crossedge.core.newpackage import default_out, new_package, placeholders

        target = out if out is not None else default_out(name)
        files = new_package(name, target)
        values = placeholders(name)
        click.echo(f"created {values['dist']} in {target} ({len(files)} files)")
        click.echo(f"next: pip install -e '{target}[test]' && pytest {target / 'tests'}")
