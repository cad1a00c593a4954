"""What every recipe's command line shares, in one place: its parser (the recipe's dataclasses, its offline defaults
from `stackrlhf/configs/tiny/<recipe>`, `--config` by path or short name, `--dry_run`) and the run itself, where a
`StackRLHFError` ends as one line on stderr with exit code 2.

Each recipe module defines `make_parser(subparsers=None, prog=None)` (built with `recipe_parser`) and
`main(*dataclasses)`; the launcher under `recipes/` and the `stackrlhf <subcommand>` CLI both go through `run_recipe`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from trl import TrlParser

from stackrlhf.configs import offline_config, read_config, resolve_config
from stackrlhf.errors import ConfigError, StackRLHFError, one_line
from stackrlhf.launch import check_launch
from stackrlhf.outputs import guard_run_outputs
from stackrlhf.recipes.validation import validate_arguments, validate_options
from stackrlhf.trainer.ppo_config import set_default_logging_dir

logger = logging.getLogger(__name__)


@dataclass
class RunArguments:
    """Options about the run itself rather than the model, data or training; every recipe has them."""

    dry_run: bool = field(
        default=False,
        metadata={
            "help": "Print the resolved configuration (defaults, then the --config file, then command-line flags) as "
            "YAML and exit without loading any model or data."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Training recipes (sft, reward, ppo, sentiment): delete the outputs of an earlier run found in "
            "--output_dir (statistics, samples, checkpoints, model files; nothing else) before starting. Without it, "
            "such a directory is refused unless the run resumes with --resume_from_checkpoint."
        },
    )
    verbose: bool = field(
        default=False,
        metadata={
            "help": "Show the third-party messages stackrlhf filters as noise you cannot act on (stackrlhf.quiet "
            "lists them); STACKRLHF_VERBOSE=1 does the same."
        },
    )


def recipe_parser(
    subparsers: Any | None,
    name: str,
    help_text: str,
    dataclass_types: Sequence[type],
    *,
    defaults: str | None = None,
    prog: str | None = None,
    help_overrides: dict[str, str] | None = None,
    check: Callable[..., None] | None = None,
) -> TrlParser:
    """Build a recipe's parser, standalone or as `stackrlhf <name>`: its dataclasses plus `RunArguments`.

    `defaults` names the config (by default `tiny/<name>` when it exists) whose values replace the dataclass
    defaults: TRL's defaults target big GPUs, ours make a no-argument run work offline, and `--help` shows them.
    `help_overrides` rewords the help of options a recipe gives a new meaning. A `--config` and command-line flags
    override the defaults in turn. `check(*dataclasses)` is the recipe's own check of its parsed options (conflicts,
    files that must exist; no model or data loading): every parse runs it, `--dry_run` too (see `validation`).
    """
    types = (*dataclass_types, RunArguments)
    if subparsers is not None:
        parser = subparsers.add_parser(name, help=help_text, description=help_text, dataclass_types=types)
    else:
        parser = TrlParser(types, prog=prog, description=help_text)
    values = read_config(defaults or offline_config(name)) if defaults or _has_offline_config(name) else {}
    unknown = set(values) - {action.dest for action in parser._actions}
    if unknown:
        raise ConfigError(f"recipe {name}: its defaults set unknown options {sorted(unknown)}")
    parser.set_defaults(**values)
    for action in parser._actions:
        if help_overrides and action.dest in help_overrides:
            action.help = help_overrides[action.dest]
    parser.recipe_check = check
    return parser


def _has_offline_config(name: str) -> bool:
    try:
        resolve_config(offline_config(name))
    except ConfigError:
        return False
    return True


def parse_args(parser: TrlParser, argv: Sequence[str] | None = None) -> tuple[Any, ...]:
    """The recipe's dataclasses (without `RunArguments`) from `argv` (default: `sys.argv[1:]`) and its `--config`.

    Raises:
        ConfigError: an unreadable config file, an unknown key in it, or a value a dataclass rejects.
    """
    *arguments, _ = _parse(parser, argv)
    return tuple(arguments)


def parse_config(parser: TrlParser, config: str | None = None, **overrides: Any) -> tuple[Any, ...]:
    """The recipe's dataclasses from a config (path or short name) and option overrides, without a command line:
    how one recipe runs another (`stackrlhf.recipes.stages`).

    Raises:
        ConfigError: as `parse_args`, or an override that names no option of the recipe.
    """
    values = (read_config(config) if config else {}) | overrides
    unknown = set(values) - {action.dest for action in parser._actions}
    if unknown:
        raise ConfigError(f"{parser.prog}: unknown options {sorted(unknown)}")
    parser.set_defaults(**values)
    return parse_args(parser, [])


def _parse(parser: TrlParser, argv: Sequence[str] | None) -> tuple[Any, ...]:
    argv = list(sys.argv[1:] if argv is None else argv)
    config: dict[str, Any] = {}
    config_path, command_line = None, argv
    if "--config" in argv:
        at = argv.index("--config") + 1
        if at == len(argv):
            raise ConfigError("--config needs a value: a YAML file or a shipped config's short name.")
        config_path = argv[at] = str(resolve_config(argv[at]))  # a short name becomes the shipped file's path
        config = read_config(config_path)  # a missing, unreadable or malformed file is one clear line before TRL
        command_line = argv[: at - 1] + argv[at + 1 :]
    parser.exit_on_error = False  # a bad flag or value is a ConfigError, not argparse's usage text and exit
    validate_options(parser, command_line, config, config_path)
    try:
        arguments = parser.parse_args_and_config(argv)
    except FileNotFoundError as err:
        raise ConfigError(f"config file {err.filename!r} does not exist.") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config file is not valid YAML: {one_line(err)}") from err
    except (ValueError, TypeError) as err:
        raise ConfigError(one_line(err)) from err
    validate_arguments(arguments[:-1], getattr(parser, "recipe_check", None))
    set_default_logging_dir(arguments[:-1])
    return arguments


def run_recipe(parser: TrlParser, main: Callable[..., Any], argv: Sequence[str] | None = None) -> int:
    """Parse arguments, then print them (`--dry_run`) or run `main` with them; returns the exit code.

    A `StackRLHFError` (bad settings, bad data) becomes one line on stderr and exit code 2, and so does an `OSError`
    that reaches this far (a disk that fills up while a TRL trainer writes its checkpoint): it names the path.
    """
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        *arguments, run_args = _parse(parser, argv)
        if run_args.dry_run:
            print(dump_config(*arguments))
        else:
            check_launch()  # a launch whose processes do not form one group stops before writing anything
            guard_run_outputs(arguments, overwrite=run_args.overwrite_output_dir)
            main(*arguments)
    except StackRLHFError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or one_line(err)}.", file=sys.stderr)
        return 2
    return 0


def dump_config(*configs: Any) -> str:
    """Render dataclass configs as one YAML document, one section per dataclass (JSON-safe values)."""
    sections = {}
    for config in configs:
        values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        sections[type(config).__name__] = json.loads(json.dumps(values, default=str))
    return yaml.safe_dump(sections, sort_keys=False, allow_unicode=True)
