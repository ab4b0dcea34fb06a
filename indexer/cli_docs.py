"""The README's command sections, written from the commands themselves: a heading with the command's arguments, its
description and a table of its options (option, default, meaning), from click's parameters.

README.md calls `section` between cog markers; `python -m cogapp -r README.md` rewrites them, and a test fails when
they differ from what the code says.
"""

from __future__ import annotations

import textwrap

import click

from indexer.cli import main


def command(path: str) -> click.Command:
    """The command at `path` ("index", "users add"; "" for the root group), loaded as the command line loads it."""
    found: click.Command = main
    context = click.Context(main, info_name="dinoscope")
    for name in path.split():
        found = found.get_command(context, name)
        context = click.Context(found, parent=context, info_name=name)
    return found


def section(path: str) -> str:
    """`### dinoscope PATH ARGUMENTS`, the command's description and its options table."""
    found = command(path)
    usage = " ".join(["dinoscope", path, *(_usage(param) for param in found.params if _in_usage(param))])
    text = f"### `{usage}`\n\n{textwrap.fill(_paragraph(found.help), 118)}\n"
    return f"{text}\n{options_table(path)}" if _options(found) else text


def options_table(path: str) -> str:
    rows = ["| option | default | meaning |", "| --- | --- | --- |"]
    for option in _options(command(path)):
        rows.append(f"| `{_usage(option, every_name=True)}` | {_default(option)} | {_meaning(option)} |")
    return "\n".join(rows) + "\n"


def _options(found: click.Command) -> list[click.Option]:
    return [param for param in found.params if isinstance(param, click.Option) and not param.hidden]


def _in_usage(param: click.Parameter) -> bool:
    return isinstance(param, click.Argument) or param.required


def _usage(param: click.Parameter, every_name: bool = False) -> str:
    if isinstance(param, click.Argument):
        return param.human_readable_name
    names = ", ".join(param.opts) if every_name else min(param.opts, key=len)
    metavar = _metavar(param)
    return f"{names} {metavar}" if metavar else names


def _metavar(param: click.Option) -> str:
    if param.is_flag:
        return ""
    if param.metavar:
        return param.metavar
    kind = param.type
    if isinstance(kind, click.Choice):
        return ""  # its values are in the meaning
    if isinstance(kind, (click.IntRange, click.types.IntParamType)):
        return "N"
    if isinstance(kind, click.Path):
        return "DIR" if not kind.file_okay else "FILE" if not kind.dir_okay else "PATH"
    return param.name.upper()


def _default(param: click.Option) -> str:
    if param.required:
        return "required"
    if param.is_flag or not param.show_default:
        return ""
    if isinstance(param.show_default, str):
        return _cell(param.show_default)
    return "" if param.default is None else f"`{param.default}`"


def _meaning(param: click.Option) -> str:
    meaning = _paragraph(param.help or "")
    if isinstance(param.type, click.Choice):
        values = [f"`{value}`" for value in param.type.choices]
        meaning += f" One of {', '.join(values[:-1])} or {values[-1]}."
    return _cell(meaning.strip())


def _paragraph(text: str) -> str:
    return " ".join(text.split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
