"""Generate the command-line reference of ``docs/usage.md`` from eegfmri's argument parser.

The reference sits between two markers in ``docs/usage.md``; the hand-written text around
it is kept. Run it after changing ``bids_app/cli.py``::

    python scripts/gen_usage.py           # rewrite docs/usage.md in place
    python scripts/gen_usage.py --check   # exit 1 if docs/usage.md is out of date

The same module is a MkDocs hook (``hooks:`` in ``mkdocs.yml``): while the site is built it
regenerates the reference from the installed parser and replaces
``<!-- include: FILE -->`` lines with the content of ``FILE`` (relative to the repository
root), which is how ``docs/changelog.md`` shows ``CHANGELOG.md`` without a plugin.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
USAGE_MD = ROOT / "docs" / "usage.md"
BEGIN = "<!-- BEGIN GENERATED USAGE (scripts/gen_usage.py; do not edit by hand) -->"
END = "<!-- END GENERATED USAGE -->"
PARSER_FACTORIES: tuple[str, ...] = ("build_parser", "get_parser", "make_parser", "_build_parser")
_INCLUDE = re.compile(r"^<!--\s*include:\s*(?P<path>\S+)\s*-->\s*$", re.MULTILINE)


def _cli_module() -> Any:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("bids_app.cli")


def get_parser() -> argparse.ArgumentParser:
    """Return eegfmri's BIDS-App parser, built by the factory in ``bids_app.cli``.

    Returns
    -------
    argparse.ArgumentParser
        The parser of ``eegfmri bids_dir output_dir analysis_level`` (``prog`` eegfmri).

    Raises
    ------
    RuntimeError
        If ``bids_app.cli`` exposes none of the known parser factories.
    """
    cli = _cli_module()
    for name in PARSER_FACTORIES:
        factory = getattr(cli, name, None)
        if callable(factory):
            parser = factory()
            parser.prog = "eegfmri"
            return parser
    raise RuntimeError(
        f"bids_app/cli.py defines none of {', '.join(PARSER_FACTORIES)}; cannot document it."
    )


def get_subcommand_parser() -> argparse.ArgumentParser | None:
    """The parser of ``eegfmri simulate|download|convert|demo`` (None if the CLI has none)."""
    factory = getattr(_cli_module(), "build_subcommand_parser", None)
    if not callable(factory):
        return None
    parser = factory()
    parser.prog = "eegfmri"
    return parser


def iter_parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """Yield ``(command path, parser, one-line help)`` for a parser and its subcommands."""
    yield path, parser, parser.description or ""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:  # aliases point at the same parser
                    continue
                seen.add(id(sub))
                for item in iter_parsers(sub, (*path, name)):
                    if item[0] == (*path, name):
                        item = (item[0], item[1], helps.get(name) or item[2])
                    yield item


def all_parsers() -> list[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """Every documented command: the BIDS-App parser, then each subcommand.

    The wrapper parser that only dispatches subcommands is left out (its ``--version`` is
    the BIDS-App parser's).
    """
    out = list(iter_parsers(get_parser()))
    sub = get_subcommand_parser()
    if sub is not None:
        out += [item for item in iter_parsers(sub) if item[0]]
    return out


def option_strings() -> list[str]:
    """Every option flag and positional name of every eegfmri command.

    Returns
    -------
    list of str
        ``"--work-dir"``, ``"-w"``, ``"bids_dir"``, ``"{participant,group}"`` ... as the
        reference shows them (help and subcommand actions excluded).
    """
    out: list[str] = []
    for _, sub, _ in all_parsers():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            out.extend(action.option_strings or [formatter._format_action_invocation(action)])
    return out


class CommandLineError(ValueError):
    """A documented command line that eegfmri's parser rejects."""


def _raise(message: str) -> None:
    raise CommandLineError(message)


def parse_command(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` (without ``eegfmri``) exactly as the CLI does, minus path checks.

    Type functions that require a path to exist (``_existing_dir``, ``_existing_file``,
    ``_filter_file``) are replaced by :class:`pathlib.Path`, so command lines written in
    the documentation with example paths can be checked on any machine.

    Raises
    ------
    CommandLineError
        If the parser rejects the command line (unknown option, bad choice or value).
    """
    cli = _cli_module()
    subcommands = getattr(cli, "SUBCOMMANDS", ())
    sub = get_subcommand_parser()
    use_sub = sub is not None and bool(argv) and argv[0] in subcommands
    parser = sub if use_sub else get_parser()
    for _, each, _ in iter_parsers(parser):
        each.error = _raise  # type: ignore[method-assign]
        for action in each._actions:
            name = getattr(action.type, "__name__", "")
            if name.startswith("_existing") or name.endswith("_file"):
                action.type = Path
    return parser.parse_args(argv)


def _plain(value: Any) -> str:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return " ".join(_plain(v) for v in value)
    return str(value)


def _render_action(formatter: argparse.HelpFormatter, action: argparse.Action) -> str:
    invocation = formatter._format_action_invocation(action)
    # The plain formatter expands %(default)s etc. without ArgumentDefaultsHelpFormatter's
    # "(default: None)" suffixes; useful defaults are added below.
    text = argparse.HelpFormatter("eegfmri")._expand_help(action) if action.help else ""
    if not text and isinstance(action, argparse._VersionAction):
        text = "show the program's version number and exit"
    if text and not text.endswith("."):
        text += "."
    text = " ".join(text.split())
    extra: list[str] = []
    if action.choices is not None and "{" not in invocation:
        extra.append("Choices: " + ", ".join(f"`{c}`" for c in action.choices) + ".")
    default = action.default
    if (
        action.option_strings
        and default not in (None, False, argparse.SUPPRESS, [], ())
        and not isinstance(action, argparse._VersionAction | argparse._CountAction)
        and "%(default)" not in (action.help or "")
        and "default" not in text.lower()
    ):
        extra.append(f"Default: `{_plain(default)}`.")
    body = " ".join(p for p in (text, *extra) if p) or "(no description)"
    return f"`{invocation}`\n:   {body}\n"


def render_parser(parser: argparse.ArgumentParser, level: int = 3) -> str:
    """Markdown reference of one parser: usage line, then its options grouped as in --help."""
    formatter = parser._get_formatter()
    usage = " ".join(parser.format_usage().split())
    usage = usage.removeprefix("usage: ")
    lines = [f"```text\n{usage}\n```\n"]
    for group in parser._action_groups:
        actions = [
            a for a in group._group_actions if not isinstance(a, argparse._SubParsersAction)
        ]
        if not actions:
            continue
        lines.append(f"{'#' * level} {group.title[:1].upper()}{group.title[1:]}\n")
        if group.description:
            lines.append(" ".join(group.description.split()) + "\n")
        lines.extend(_render_action(formatter, a) for a in actions)
    return "\n".join(lines)


def render() -> str:
    """The whole generated reference (the BIDS-App command, then each subcommand)."""
    parts: list[str] = []
    for path, sub, summary in all_parsers():
        title = " ".join(("eegfmri", *path)) if path else (
            "eegfmri bids_dir output_dir {participant,group}")
        parts.append(f"## `{title}`\n")
        if summary:
            parts.append(" ".join(summary.split()) + "\n")
        parts.append(render_parser(sub, level=3))
    return "\n".join(parts).rstrip() + "\n"


def splice(document: str, generated: str) -> str:
    """Replace the text between the markers of ``document`` with ``generated``."""
    start, stop = document.find(BEGIN), document.find(END)
    if start < 0 or stop < start:
        raise ValueError(f"docs/usage.md must contain the markers {BEGIN!r} and {END!r}.")
    return document[: start + len(BEGIN)] + "\n\n" + generated + "\n" + document[stop:]


def include_files(markdown: str, root: Path) -> str:
    """Replace ``<!-- include: PATH -->`` lines by the content of ``root / PATH``."""

    def _read(match: re.Match[str]) -> str:
        return (root / match.group("path")).read_text(encoding="utf-8")

    return _INCLUDE.sub(_read, markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs hook: fresh option reference in usage.md, includes resolved everywhere."""
    root = Path(config["config_file_path"]).resolve().parent
    if page.file.src_uri == "usage.md" and BEGIN in markdown:
        markdown = splice(markdown, render())
    return include_files(markdown, root)


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or with ``--check`` verify) the generated section of docs/usage.md."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if docs/usage.md is stale")
    ap.add_argument("--output", type=Path, default=USAGE_MD, help="usage page to update")
    args = ap.parse_args(argv)
    current = args.output.read_text(encoding="utf-8")
    updated = splice(current, render())
    if args.check:
        if updated != current:
            print(f"{args.output} is out of date: run python scripts/gen_usage.py")
            return 1
        return 0
    args.output.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
