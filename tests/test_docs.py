"""Every command has help text and a section in the README."""

import click
import pytest

from broker.cli import cli
from tests.support.brokerproc import ROOT

README = (ROOT / "README.md").read_text()


def commands(group: click.Group, prefix: str = ""):
    for name, command in group.commands.items():
        if command.hidden:
            continue
        yield f"{prefix}{name}", command
        if isinstance(command, click.Group):
            yield from commands(command, f"{prefix}{name} ")


@pytest.mark.parametrize(("name", "command"), list(commands(cli)), ids=lambda v: v if isinstance(v, str) else "")
def test_command_is_documented(name, command):
    assert command.help or command.short_help, f"{name} has no help text"
    assert f"broker {name}" in README, f"README does not mention `broker {name}`"
