"""`broker key`: where the encryption key for cached secrets lives, and rotating it."""

from __future__ import annotations

import click

from broker.app import App
from broker.commands.options import pass_app


@click.group()
def key() -> None:
    """The key that encrypts cached secrets at rest."""


@key.command(name="status")
@pass_app
def key_status(app: App) -> None:
    """Show where the key lives and how many cached secrets it seals."""
    from broker import keys

    state = keys.status(app)
    where = f" ({state.location})" if state.location else ""
    click.echo(f"source: {state.source}{where}")
    click.echo(f"key present: {'yes' if state.exists else 'no (created on first issuance)'}")
    click.echo(f"sealed cached secrets: {state.sealed_secrets}")


@key.command(name="rotate")
@pass_app
def key_rotate(app: App) -> None:
    """Re-encrypt every cached secret under a new key and store it where the old one was."""
    from broker import keys

    result = keys.rotate(app)
    click.echo(
        f"rotated: {result.reencrypted} secret(s) re-encrypted, {result.discarded} unreadable discarded", err=True
    )


@key.command(name="generate")
def key_generate() -> None:
    """Print a new random key (for BROKER_KEY)."""
    from broker import crypto

    click.echo(crypto.new_key_text())
