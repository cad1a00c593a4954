"""`stackrlhf plan`: will this model, precision, LoRA rank, batch and sequence length fit my card?

stackrlhf plan --model EleutherAI/gpt-neox-20b --stage ppo --quantization 8bit --lora_r 16 --gpu_memory_gb 24
stackrlhf plan --config gpt-neox-20b/sentiment --gpu_memory_gb 24
stackrlhf plan --config llama-2-7b/dpo --model meta-llama/Llama-2-7b-hf --gpu_memory_gb 16
stackrlhf plan --model meta-llama/Llama-2-7b-hf --stage grpo --quantization 4bit --batch_size 8 --num_generations 8
python -m stackrlhf.planner --model meta-llama/Llama-2-13b-hf --quantization 4bit --json

`--config` plans the run a recipe config describes (`stackrlhf.planner.recipe_config`); flags given with it override
the config's values. Parsing imports neither torch nor the training stack: `--help` and bad options answer at once,
and only planning itself loads the model classes.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

from stackrlhf.errors import ConfigError, StackRLHFError
from stackrlhf.planner.settings import PlanSettings

if TYPE_CHECKING:
    from stackrlhf.planner.estimate import MemoryPlan

HELP = "Plan GPU memory before training: bytes per component, the peak, and which cards (16/24/40/80 GB) it fits."

_UNSET = object()


@dataclass
class PlanArguments(PlanSettings):
    """`PlanSettings` plus a recipe config to plan and the output format."""

    config: str | None = field(
        default=None,
        metadata={
            "help": "A recipe config, by path or short name (llama-2-7b/ppo; `stackrlhf configs` lists them; the "
            "recipe's own option names): plan the run it describes, with worst-case lengths. The recipe is told by "
            "the config's folder or keys, or by --stage. Flags given here override its values."
        },
    )
    json: bool = field(default=False, metadata={"help": "Print one JSON object instead of the table."})

    def to_settings(self) -> PlanSettings:
        """The `PlanSettings` part."""
        return PlanSettings(**{f.name: getattr(self, f.name) for f in fields(PlanSettings)})


def main(plan_args: PlanArguments, explicit: Collection[str] | None = None) -> MemoryPlan:
    """Plan `plan_args` (or, with `config`, the recipe run it describes) and print the table or the JSON object.

    Args:
        plan_args: the options.
        explicit: the options given on the command line, which override a config's values; default: those that
            differ from their defaults.

    Returns:
        The plan.

    Raises:
        StackRLHFError: a config or setting the planner cannot use, in one line.
    """
    if plan_args.config is None:
        from stackrlhf.planner.estimate import plan  # torch and transformers: after the options are known good
        from stackrlhf.planner.report import format_plan, plan_json

        result = plan(plan_args.to_settings())
        print(plan_json(result) if plan_args.json else format_plan(result))
        return result

    from stackrlhf.planner.recipe_config import read_recipe_config

    defaults = PlanArguments()
    if explicit is None:
        explicit = {f.name for f in fields(PlanArguments) if getattr(plan_args, f.name) != getattr(defaults, f.name)}
    run = read_recipe_config(plan_args.config, plan_args.stage if "stage" in explicit else None)
    overrides = {f.name: getattr(plan_args, f.name) for f in fields(PlanSettings) if f.name in explicit}
    settings = dataclasses.replace(run.settings, **overrides)

    from stackrlhf.planner.estimate import plan
    from stackrlhf.planner.report import format_plan, format_recipe_run, plan_json

    try:
        result = plan(settings)
    except ConfigError as err:
        if "model" in overrides or not str(err).startswith(f"model {settings.model!r}"):
            raise
        raise ConfigError(
            f"{err} It is model_name_or_path of {plan_args.config}: if that model is yet to be built (a merged SFT "
            "model), plan its base instead, e.g. --model meta-llama/Llama-2-7b-hf."
        ) from err
    if plan_args.json:
        print(plan_json(result, run, overrides))
    else:
        print(format_recipe_run(run, overrides, result) + "\n\n" + format_plan(result))
    return result


class _PlanParser(argparse.ArgumentParser):
    """argparse, with a usage error raised as a one-line `ConfigError` (`run` prints it and returns 2)."""

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(message)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one option per `PlanArguments` field, as transformers' `HfArgumentParser` spells them: `--flag` or
    `--flag true/false` for booleans (`--no_flag` too when the default is true), several values for lists."""
    hints = typing.get_type_hints(PlanArguments)
    for f in fields(PlanArguments):
        kind, optional = _unwrap(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        kwargs: dict[str, Any] = {"default": default, "help": f.metadata.get("help", "")}
        if typing.get_origin(kind) is Literal:
            kwargs |= {"type": str, "choices": list(typing.get_args(kind))}
        elif kind is bool:
            kwargs |= {"type": _to_bool, "nargs": "?", "const": True, "metavar": "true|false"}
        elif typing.get_origin(kind) is list:
            kwargs |= {"type": typing.get_args(kind)[0], "nargs": "+"}
        else:
            kwargs["type"] = kind
        parser.add_argument(f"--{f.name}", **kwargs)
        if kind is bool and default is True and not optional:
            parser.add_argument(f"--no_{f.name}", dest=f.name, action="store_false", help=f"Same as --{f.name} false.")


def make_parser(
    subparsers: argparse._SubParsersAction | None = None, prog: str | None = None
) -> argparse.ArgumentParser:
    """The planner's parser, standalone or as `stackrlhf plan`."""
    if subparsers is not None:
        parser = subparsers.add_parser("plan", help=HELP, description=HELP)
    else:
        parser = _PlanParser(prog=prog, description=HELP, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[PlanArguments, set[str]]:
    """The options and the names of those given on the command line (a config's values yield to them).

    Raises:
        ConfigError: an unknown option or a bad value (with `make_parser`'s standalone parser).
    """
    dests = {action.dest for action in parser._actions if action.dest != "help"}
    namespace = parser.parse_args(list(argv), namespace=argparse.Namespace(**dict.fromkeys(dests, _UNSET)))
    given = {name for name, value in vars(namespace).items() if value is not _UNSET}
    values = {name: getattr(namespace, name) for name in given}
    try:
        return PlanArguments(**values), given
    except TypeError as err:
        raise ConfigError(str(err)) from err


def run(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and plan; a bad option, config or value prints `error: ...` (one line) and returns 2."""
    parser = make_parser(prog="stackrlhf plan")
    try:
        plan_args, given = parse(parser, sys.argv[1:] if argv is None else argv)
        main(plan_args, given)
    except StackRLHFError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """(the type, whether None is allowed) of `X | None`."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return args[0], True
    return hint, False


def _to_bool(value: str) -> bool:
    text = str(value).lower()
    if text in ("true", "t", "yes", "y", "1"):
        return True
    if text in ("false", "f", "no", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
