"""`stackrlhf configs`: list the shipped configs, or print where one is (or what it holds).

    stackrlhf configs                          # every short name, with the first line of its header
    stackrlhf configs llama-2-7b/ppo           # the file's path, e.g. for accelerate launch --config_file
    stackrlhf configs llama-2-7b/ppo --show    # its contents, to copy and edit

Imports nothing but PyYAML, so it answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from stackrlhf.configs import resolve_config, shipped_configs
from stackrlhf.errors import ConfigError, StackRLHFError

HELP = "List the shipped configs (recipes, accelerate), or print one's path (--show: its contents) by short name."


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error raised as a one-line `ConfigError` (`run` prints it and returns 2)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def make_parser(
    subparsers: argparse._SubParsersAction | None = None, prog: str | None = None
) -> argparse.ArgumentParser:
    """The parser of `stackrlhf configs`, standalone or as a subcommand."""
    if subparsers is not None:
        parser = subparsers.add_parser("configs", help=HELP, description=HELP)
    else:
        parser = _Parser(prog=prog, description=HELP)
    parser.add_argument("name", nargs="?", help="A config's short name (llama-2-7b/ppo) or path. Default: list all.")
    parser.add_argument("--show", action="store_true", help="Print the config's contents instead of its path.")
    return parser


def header(name: str) -> str:
    """The first comment line of a shipped config, without the `#`."""
    for line in shipped_configs()[name].read_text(encoding="utf-8").splitlines():
        return line.lstrip("# ").strip() if line.startswith("#") else ""
    return ""


def run(argv: Sequence[str] | None = None) -> int:
    """List configs or print one; a bad name prints `error: ...` (one line) and returns 2."""
    try:
        args = make_parser(prog="stackrlhf configs").parse_args(sys.argv[1:] if argv is None else argv)
        if args.name is None:
            names = sorted(shipped_configs())
            width = max(map(len, names))
            print("\n".join(f"{name:<{width}}  {header(name)}" for name in names))
            return 0
        path = resolve_config(args.name)
    except StackRLHFError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path.read_text(encoding="utf-8") if args.show else path, end="" if args.show else "\n")
    return 0
