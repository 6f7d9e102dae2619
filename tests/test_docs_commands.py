"""Every ``idm-facade ...`` command line in README.md and docs/ parses: the command exists,
its options exist, its required arguments are there. Documentation that names a command that
fails (``clients add NAME --kind ldap``, ``clients add NAME scim``) cannot come back.

Synopsis notation is expanded first: ``[--opt X]`` keeps what is inside, ``a|b`` takes ``a``,
``list | revoke NAME`` is one command per alternative, ``<placeholder>`` is one word. Values
are not checked (``--size N``): only that the command line as written is accepted by the
parser.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from idm_facade.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_SPAN = re.compile(r"`((?:\.venv/bin/)?idm-facade(?:\s[^`]*)?)`")


def _command_lines() -> list[tuple[str, str]]:
    """(file:line, command line) of every command in a code block or an inline code span."""
    found: list[tuple[str, str]] = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        fenced = False
        for number, line in enumerate(text.splitlines(), 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            stripped = line.strip().removeprefix(".venv/bin/")
            if fenced and stripped.startswith("idm-facade "):
                call = stripped.split("  #")[0].split(" # ")[0].rstrip("\\ ")
                found.append((f"{doc.name}:{number}", call))
        for match in _SPAN.finditer(text):
            number = text.count("\n", 0, match.start()) + 1
            call = " ".join(match.group(1).split()).removeprefix(".venv/bin/")
            found.append((f"{doc.name}:{number}", call))
    return found


def _expand(call: str) -> list[list[str]]:
    """The argument lists a synopsis line stands for (without the program name)."""
    call = re.sub(r"<[^>]+>", "X", call)
    call = call.replace("[", " ").replace("]", " ")
    parts = [p.strip() for p in call.split(" | ")]
    words = shlex.split(parts[0])[1:]
    if not words:
        return [[]]
    lines = [words]
    group = words[:1]
    for alternative in parts[1:]:
        more = shlex.split(alternative)
        if more and more[0] == "idm-facade":
            lines.append(more[1:])
        else:
            lines.append(group + more)
    return [[w.split("|")[0] if "|" in w else w for w in line if w != "..."]
            for line in lines]


def _parse(args: list[str]) -> None:
    """Parse ``args`` as the command line would, down to the last subcommand. A bare
    command name (prose such as "`idm-facade roles` writes a record") only has to exist."""
    command: click.Command = main
    rest = list(args)
    parent = None
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.get_command(click.Context(command), rest[0])
        if sub is None:
            raise click.UsageError(f"no command {rest[0]!r}")
        parent = click.Context(command, info_name=command.name, parent=parent)
        command, rest = sub, rest[1:]
    if not rest and len(args) <= 2:
        return  # a command named in prose (`idm-facade roles`): it exists
    ctx = command.make_context(command.name, rest, parent=parent)
    ctx.close()


CALLS = _command_lines()


def test_the_docs_name_commands() -> None:
    assert len(CALLS) >= 30  # the extraction finds them
    assert any("clients add" in call for _, call in CALLS)


@pytest.mark.parametrize(("where", "call"), CALLS, ids=[w for w, _ in CALLS])
def test_documented_command_line_parses(where: str, call: str) -> None:
    for args in _expand(call):
        try:
            _parse(args)
        except (click.NoSuchOption, click.BadOptionUsage, click.MissingParameter) as exc:
            pytest.fail(f"{where}: `{call}` -> {' '.join(args)}: {exc.format_message()}")
        except click.BadParameter:
            pass  # a placeholder value (N, DATE, FILE): the option itself exists
        except click.UsageError as exc:
            pytest.fail(f"{where}: `{call}` -> {' '.join(args)}: {exc.format_message()}")
