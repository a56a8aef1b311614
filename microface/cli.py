"""The user's front door: ``microface COMMAND``. Each command is a thin wrapper over a package function."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="microface: 3D reconstruction and recognition of facial micro-expressions.", no_args_is_help=True)


@app.command()
def version() -> None:
    """Print the package version."""
    from microface import __version__

    typer.echo(__version__)


if __name__ == "__main__":
    app()
