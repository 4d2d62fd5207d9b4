"""`dicomnode web hash-password`: a reviewer's password hash for `web.reviewers` in the config."""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer

from dicomnode.web.passwords import hash_password

web_app = typer.Typer(help="The web view's reviewers.", no_args_is_help=True)


@web_app.command("hash-password")
def hash_password_command(
    name: Annotated[str | None, typer.Option(help="print a ready config entry for this reviewer")]
    = None,
) -> None:
    """Read a password (prompted twice on a terminal, else the first line of stdin) and print its
    scrypt hash. The password never appears on the command line or in the shell history."""
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            typer.echo("dicomnode web: the passwords differ", err=True)
            raise typer.Exit(2)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        hashed = hash_password(password)
    except ValueError as exc:
        typer.echo(f"dicomnode web: {exc}", err=True)
        raise typer.Exit(2) from None
    if name:
        typer.echo(f'  - {{name: {name}, password_hash: "{hashed}"}}')
    else:
        typer.echo(hashed)
