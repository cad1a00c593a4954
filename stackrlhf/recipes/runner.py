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
from stackrlhf.launch import check_launch, cpu_deepspeed_backend
from stackrlhf.outputs import guard_run_outputs, share_run_outputs
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
    torch_threads: int | None = field(
        default=None,
        metadata={
            "help": "torch's intra-op CPU threads (torch.set_num_threads). Default: torch's own, one per core. The "
            "tiny offline configs of DPO and GRPO set 1: a 260K-parameter model's operations are too small to split, "
            "and threads that share their cores with other jobs wait for each other."
        },
    )
    verbose: bool = field(
        default=False,
        metadata={
            "help": "Show the third-party messages stackrlhf filters as noise you cannot act on (stackrlhf.quiet "
            "lists them); STACKRLHF_VERBOSE=1 does the same."
        },
    )


OPTION_ALIASES = {
    "gradient_checkpointing": "activation_checkpointing",
    "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
}
"""Old option names kept as spellings of the new ones (transformers 5.24 renamed these; TRL's configs and StackLLaMA's
scripts still say the old names, which warn when they reach `TrainingArguments`): on the command line, in a
`--config` file and in a recipe's defaults, the old name sets the new option."""


def canonical_options(parser: TrlParser, values: dict[str, Any]) -> dict[str, Any]:
    """`values` (option name -> value) with the old names `parser` aliases (see `_alias_options`) made new."""
    aliases = getattr(parser, "aliases", {})
    return {aliases.get(key, key): value for key, value in values.items()}


class RecipeParser(TrlParser):
    """A `TrlParser` whose defaults and `--config` files may also use the old names of `OPTION_ALIASES`."""

    def set_defaults(self, **kwargs: Any) -> None:
        super().set_defaults(**canonical_options(self, kwargs))

    def set_defaults_with_config(self, **kwargs: Any) -> list[str]:
        return super().set_defaults_with_config(**canonical_options(self, kwargs))


def _alias_options(parser: TrlParser) -> None:
    """Make each old option of `OPTION_ALIASES` (both in `parser`) set the new one, defaulting to the new one's
    default or else the old one's (TRL's `gradient_checkpointing=True`), so `TrainingArguments` sees only the new."""
    dests = {action.dest for action in parser._actions}
    aliases = {old: new for old, new in OPTION_ALIASES.items() if {old, new} <= dests}
    for old, new in aliases.items():
        main = {action.dest: action for action in parser._actions if f"--{action.dest}" in action.option_strings}
        default = main[new].default if main[new].default is not None else main[old].default
        for action in parser._actions:
            if action.dest == old:
                action.dest = new
                action.help = f"The old name of --{new} (transformers 5.24 renamed it); sets --{new}."
        parser.set_defaults(**{new: default})
        parser._defaults[old] = None  # the dataclass field still exists: unset, it leaves the new name in charge
    parser.aliases = aliases  # read by canonical_options


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
) -> RecipeParser:
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
        parser = RecipeParser(types, prog=prog, description=help_text)
    _alias_options(parser)
    values = read_config(defaults or offline_config(name)) if defaults or _has_offline_config(name) else {}
    values = canonical_options(parser, values)
    unknown = set(values) - {action.dest for action in parser._actions}
    if unknown:
        raise ConfigError(f"recipe {name}: its defaults set unknown options {sorted(unknown)}")
    parser.set_defaults(**values)
    parser.set_defaults(**_device_defaults({action.dest for action in parser._actions}))
    for action in parser._actions:
        if help_overrides and action.dest in help_overrides:
            action.help = help_overrides[action.dest]
    parser.recipe_check = check
    return parser


def _device_defaults(options: set[str]) -> dict[str, Any]:
    """Defaults of TRL trainers' options that depend on this machine: no pinned memory without a GPU (torch warns
    that it cannot pin), gloo for DeepSpeed's processes on a CPU (`stackrlhf.launch.cpu_deepspeed_backend`)."""
    import torch  # here: the light commands build no recipe parser

    defaults: dict[str, Any] = {}
    if "dataloader_pin_memory" in options and not torch.cuda.is_available():
        defaults["dataloader_pin_memory"] = False
    if "ddp_backend" in options and cpu_deepspeed_backend():
        defaults["ddp_backend"] = cpu_deepspeed_backend()
    return defaults


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
    values = canonical_options(parser, (read_config(config) if config else {}) | overrides)
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
        config = canonical_options(parser, read_config(config_path))  # a bad file is one clear line before TRL
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
        requested = vars(parser.parse_known_args(command_line)[0])
        if not (requested.get("dry_run") and "bf16/gpu" in str(err)):
            raise ConfigError(one_line(err)) from err
        arguments = _parse_bf16_without_gpu(parser, argv, requested)
    validate_arguments(arguments[:-1], getattr(parser, "recipe_check", None))
    set_default_logging_dir(arguments[:-1])
    return arguments


GPU_PRECISION = ("bf16", "bf16_full_eval")
"""TrainingArguments options that refuse to parse on a machine without a bf16-capable GPU."""


def _parse_bf16_without_gpu(parser: TrlParser, argv: list[str], requested: dict[str, Any]) -> tuple[Any, ...]:
    """`--dry_run` of a bf16 config (the shipped 7B ones) on a machine without a GPU: `TrainingArguments` refuses
    bf16 there, so parse with it off, then put back the values given. The real run checks them where it runs."""
    given = [name for name in GPU_PRECISION if requested.get(name)]
    arguments = parser.parse_args_and_config([*argv, *(item for name in given for item in (f"--{name}", "false"))])
    for arguments_of in arguments:
        for name in given:
            if hasattr(arguments_of, name):
                setattr(arguments_of, name, True)
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
            print(dump_config(*arguments, run_args))
        else:
            if run_args.torch_threads:
                import torch

                torch.set_num_threads(run_args.torch_threads)
            check_launch()  # a launch whose processes do not form one group stops before writing anything
            guard_run_outputs(arguments, overwrite=run_args.overwrite_output_dir)
            main(*arguments)
            share_run_outputs(arguments)
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
